"""FP16 / BF16 benchmarks of issue 3, in one run on one card, each case beside its cuBLAS baseline.

    python bench/fp16.py --out bench/results            # on a CUDA machine
    python bench/fp16.py --smoke                        # CPU: checks the script's paths, no timing claims

  * fp16_mm forward vs cuBLAS `a @ b`, float16 and bfloat16, at 4096³, 8192³, (2048, 11008, 4096),
    (128, 4096, 4096), (16, 4096, 4096) (M, N, K); relative error vs float32 must stay under 1e-2.
  * fp16_linear forward and forward + backward vs F.linear + autograd (float16, bias), at (M, N, K) =
    (2048, 11008, 4096) and (8192, 4096, 4096); backward time = (forward + backward) − forward.
Writes fp16-<card>-<date>.json and .md under --out and prints the table.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import bench_ms, header, machine, save

MM_SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192), (2048, 11008, 4096), (128, 4096, 4096), (16, 4096, 4096)]
LINEAR_SHAPES = [(2048, 11008, 4096), (8192, 4096, 4096)]


def _rel_err(out, ref) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def mm_cases(device, smoke: bool) -> list[dict]:
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        for M, N, K in ([(13, 45, 37)] if smoke else MM_SHAPES):
            a = torch.randn(M, K, device=device).to(dtype)
            b = torch.randn(K, N, device=device).to(dtype)
            out = torch.ops.lowp.fp16_mm(a, b)
            err = _rel_err(out, a.float() @ b.float())
            assert err < 1e-2, f"fp16_mm relative error {err:.2e} at {(M, N, K)} {dtype}"
            row = {"case": "fp16_mm", "dtype": str(dtype).removeprefix("torch."), "M": M, "N": N, "K": K,
                   "rel_err": err}
            if not smoke:
                flops = 2 * M * N * K
                row["lowp_tflops"] = flops / bench_ms(lambda: torch.ops.lowp.fp16_mm(a, b)) / 1e9
                row["cublas_tflops"] = flops / bench_ms(lambda: a @ b) / 1e9
                row["speedup"] = row["lowp_tflops"] / row["cublas_tflops"]
            rows.append(row)
    return rows


def linear_cases(device, smoke: bool) -> list[dict]:
    rows = []
    for M, N, K in ([(13, 45, 37)] if smoke else LINEAR_SHAPES):
        x = torch.randn(M, K, device=device, dtype=torch.float16, requires_grad=True)
        w = (torch.randn(N, K, device=device) / K**0.5).half().requires_grad_()
        b = torch.randn(N, device=device, requires_grad=True)
        g = torch.randn(M, N, device=device, dtype=torch.float16)

        def ours():
            return torch.ops.lowp.fp16_linear(x, w, b)

        def theirs():
            return F.linear(x, w, b.half())

        y, y_ref = ours(), theirs()
        y.backward(g)
        grads = (x.grad.clone(), w.grad.clone())
        x.grad = w.grad = None
        y_ref.backward(g)
        errs = [_rel_err(y, y_ref.float()), *(_rel_err(o, r.float()) for o, r in zip(grads, (x.grad, w.grad)))]
        assert max(errs) < 1e-2, f"fp16_linear differs from F.linear: {errs}"
        row = {"case": "fp16_linear", "M": M, "N": N, "K": K, "rel_err": max(errs)}
        if not smoke:
            flops = 2 * M * N * K
            for name, fn in (("lowp", ours), ("torch", theirs)):
                fwd = bench_ms(fn)
                both = bench_ms(lambda fn=fn: fn().backward(g))
                row[f"{name}_fwd_tflops"] = flops / fwd / 1e9
                row[f"{name}_bwd_tflops"] = 2 * flops / (both - fwd) / 1e9
            row["fwd_speedup"] = row["lowp_fwd_tflops"] / row["torch_fwd_tflops"]
            row["bwd_speedup"] = row["lowp_bwd_tflops"] / row["torch_bwd_tflops"]
        rows.append(row)
    return rows


def markdown(info: dict, rows: list[dict]) -> str:
    lines = header(info, "lowp FP16/BF16 benchmarks")
    mm = [r for r in rows if r["case"] == "fp16_mm" and "speedup" in r]
    if mm:
        lines += ["| fp16_mm (M, N, K) | dtype | lowp TFLOPS | cuBLAS a @ b TFLOPS | speedup |", "|---|---|---:|---:|---:|"]
        lines += [f"| {r['M']}, {r['N']}, {r['K']} | {r['dtype']} | {r['lowp_tflops']:.0f} | {r['cublas_tflops']:.0f} | "
                  f"{r['speedup']:.2f}x |" for r in mm]
        lines.append("")
    lin = [r for r in rows if r["case"] == "fp16_linear" and "fwd_speedup" in r]
    if lin:
        lines += ["| fp16_linear (M, N, K) | lowp fwd | F.linear fwd | fwd speedup | lowp bwd | autograd bwd | "
                  "bwd speedup |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['M']}, {r['N']}, {r['K']} | {r['lowp_fwd_tflops']:.0f} | {r['torch_fwd_tflops']:.0f} | "
                  f"{r['fwd_speedup']:.2f}x | {r['lowp_bwd_tflops']:.0f} | {r['torch_bwd_tflops']:.0f} | "
                  f"{r['bwd_speedup']:.2f}x |" for r in lin]
        lines += ["", "(TFLOPS; backward counts the two GEMMs, 4·M·N·K)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results", help="folder for the JSON and markdown results")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, correctness only (CPU is fine)")
    args = parser.parse_args()
    smoke = args.smoke or not torch.cuda.is_available()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = machine()
    rows = mm_cases(device, smoke) + linear_cases(device, smoke)
    report = markdown(info, rows)
    print(report)
    if smoke:
        print("smoke run: all cases computed and checked; nothing timed")
    else:
        save(args.out, "fp16", info, {"rows": rows}, report)


if __name__ == "__main__":
    main()
