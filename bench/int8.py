"""INT8 benchmarks of issue 2, in one run on one card, each case beside its baselines.

    python bench/int8.py --out bench/results            # on a CUDA machine
    python bench/int8.py --smoke                        # CPU: checks the script's paths, no timing claims

Cases (every case is checked for correctness before it is timed, on random non-zero data):
  * int8 GEMM, int32 out: lowp int8_mm vs torch._int_mm (cuBLASLt) at 4096³, 8192³, (2048, 11008, 4096),
    (128, 4096, 4096); the result must equal torch._int_mm's exactly.
  * W8A8 linear, fp16 in/out with bias: lowp int8_linear vs F.linear FP16 and FP32 at M in {1, 16, 128, 2048,
    8192}, N=11008, K=4096; SQNR vs the FP32 layer must exceed 30 dB. Timed eagerly (what a user calls) and as a
    CUDA-graph replay (the GPU time alone, without Python launch overhead).
  * quantize_per_token at (8192, 4096) fp16: bandwidth vs a device-to-device copy measured in the same run.
Timing: triton.testing.do_bench (CUDA events, median; it clears L2 before each repetition).
Writes int8-<card>-<date>.json and .md under --out and prints the table.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import bench_ms, copy_bandwidth_tbps, header, machine, save

from lowp_ops import quant

GEMM_SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192), (2048, 11008, 4096), (128, 4096, 4096)]  # (M, N, K)
LINEAR_MS = [1, 16, 128, 2048, 8192]
LINEAR_NK = (11008, 4096)
def gemm_cases(device, smoke: bool) -> list[dict]:
    rows = []
    for M, N, K in ([(67, 45, 33)] if smoke else GEMM_SHAPES):
        a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device=device)
        b = torch.randint(-128, 128, (N, K), dtype=torch.int8, device=device)
        ours = torch.ops.lowp.int8_mm(a, b)
        ref = torch._int_mm(a, b.T) if not smoke else a.int() @ b.int().T
        assert torch.equal(ours, ref), f"int8_mm != torch._int_mm at {(M, N, K)}"
        row = {"case": "int8_mm int32", "M": M, "N": N, "K": K}
        if not smoke:
            ops = 2 * M * N * K
            row["lowp_tops"] = ops / bench_ms(lambda: torch.ops.lowp.int8_mm(a, b)) / 1e9
            row["int_mm_tops"] = ops / bench_ms(lambda: torch._int_mm(a, b.T)) / 1e9
            row["speedup_vs_int_mm"] = row["lowp_tops"] / row["int_mm_tops"]
            from lowp_ops.kernels.gemm import _gemm_int8_tuned

            row["config"] = str(_gemm_int8_tuned.best_config)
        rows.append(row)
    return rows


def linear_cases(device, smoke: bool) -> list[dict]:
    rows = []
    N, K = (37, 45) if smoke else LINEAR_NK
    layer = torch.nn.Linear(K, N, device=device)
    w16, b16 = layer.weight.detach().half(), layer.bias.detach().half()
    qw = quant.quantize_tensor(layer.weight.detach(), quant.per_channel(axis=0))
    for M in ([1, 13] if smoke else LINEAR_MS):
        x = torch.randn(M, K, device=device)
        x16 = x.half()
        with torch.no_grad():
            y8 = torch.ops.lowp.int8_linear(x16, qw.qdata, qw.scale, b16)
            sqnr = quant.sqnr_db(layer(x), y8)
        assert y8.dtype == torch.float16 and sqnr > 30, f"int8_linear SQNR {sqnr:.1f} dB at M={M}"
        row = {"case": "int8_linear fp16", "M": M, "N": N, "K": K, "sqnr_db": sqnr}
        if not smoke:
            flops = 2 * M * N * K
            fns = {"lowp": lambda: torch.ops.lowp.int8_linear(x16, qw.qdata, qw.scale, b16),
                   "fp16": lambda: F.linear(x16, w16, b16),
                   "fp32": lambda: F.linear(x, layer.weight, layer.bias)}
            with torch.no_grad():
                for name, fn in fns.items():
                    row[f"{name}_tflops"] = flops / bench_ms(fn) / 1e9
                    row[f"{name}_graph_tflops"] = flops / bench_ms(fn, graph=True) / 1e9
            row["speedup_vs_fp16"] = row["lowp_tflops"] / row["fp16_tflops"]
            row["speedup_vs_fp16_graph"] = row["lowp_graph_tflops"] / row["fp16_graph_tflops"]
            row["speedup_vs_fp32"] = row["lowp_tflops"] / row["fp32_tflops"]
        rows.append(row)
    return rows


def quantize_case(device, smoke: bool, copy_tbps: float | None) -> dict:
    M, K = (13, 45) if smoke else (8192, 4096)
    x = torch.randn(M, K, device=device).half()
    q, s = torch.ops.lowp.quantize_per_token(x)
    q_ref = quant.quantize_tensor(x, quant.per_token()).qdata
    assert torch.equal(q, q_ref), "quantize_per_token differs from lowp_ops.quant"
    row = {"case": "quantize_per_token fp16", "M": M, "K": K}
    if not smoke:
        moved = M * K * 2 + M * K + M * 4  # read fp16, write int8 + one float32 scale per row
        row["tbps"] = moved / bench_ms(lambda: torch.ops.lowp.quantize_per_token(x)) / 1e9
        row["fraction_of_copy"] = row["tbps"] / copy_tbps
    return row


def markdown(info: dict, copy_tbps, rows: list[dict]) -> str:
    lines = header(info, "lowp INT8 benchmarks") + [f"Copy bandwidth {copy_tbps or 0:.2f} TB/s (read + write).", ""]
    gemm = [r for r in rows if r["case"] == "int8_mm int32"]
    if gemm and "lowp_tops" in gemm[0]:
        lines += ["| int8 GEMM (M, N, K) | lowp TOPS | torch._int_mm TOPS | speedup | config |", "|---|---:|---:|---:|---|"]
        lines += [f"| {r['M']}, {r['N']}, {r['K']} | {r['lowp_tops']:.0f} | {r['int_mm_tops']:.0f} | "
                  f"{r['speedup_vs_int_mm']:.2f}x | {r['config']} |" for r in gemm]
        lines.append("")
    lin = [r for r in rows if r["case"] == "int8_linear fp16"]
    if lin and "lowp_tflops" in lin[0]:
        lines += ["| W8A8 linear M (N=11008, K=4096) | lowp | F.linear FP16 | F.linear FP32 | vs FP16 | "
                  "vs FP16 (graphs) | vs FP32 | SQNR dB |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['M']} | {r['lowp_tflops']:.1f} | {r['fp16_tflops']:.1f} | {r['fp32_tflops']:.1f} | "
                  f"{r['speedup_vs_fp16']:.2f}x | {r['speedup_vs_fp16_graph']:.2f}x | {r['speedup_vs_fp32']:.2f}x | "
                  f"{r['sqnr_db']:.1f} |" for r in lin]
        lines += ["", "(effective TFLOPS = 2·M·N·K / time; 'graphs' = CUDA-graph replays, launch overhead removed)", ""]
    for r in rows:
        if r["case"].startswith("quantize") and "tbps" in r:
            lines.append(f"quantize_per_token ({r['M']}, {r['K']}) fp16: {r['tbps']:.2f} TB/s = "
                         f"{100 * r['fraction_of_copy']:.0f} % of copy bandwidth")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results", help="folder for the JSON and markdown results")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, correctness only (CPU is fine)")
    args = parser.parse_args()
    smoke = args.smoke or not torch.cuda.is_available()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = machine()
    copy_tbps = None if smoke else copy_bandwidth_tbps(device)
    rows = gemm_cases(device, smoke) + linear_cases(device, smoke) + [quantize_case(device, smoke, copy_tbps)]
    report = markdown(info, copy_tbps, rows)
    print(report)
    if not smoke:
        save(args.out, "int8", info, {"copy_tbps": copy_tbps, "rows": rows}, report)
    else:
        print("smoke run: all cases computed and checked; nothing timed")


if __name__ == "__main__":
    main()
