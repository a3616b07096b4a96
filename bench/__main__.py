"""python -m bench: see bench/__init__.py."""

from __future__ import annotations

import argparse
import sys

import torch

from .cases import OPS, SHAPES
from .harness import markdown, run, save, speedups
from .providers import PROVIDERS

# The sets each issue asked for, in one run each.
PRESETS = {
    "int8": (["int8_mm", "int8_linear", "quantize"], ["square", "llm"],
             ["lowp", "torch_int_mm", "cupy_int8", "torch_fp16", "torch_fp32", "eager_w8a8", "torchao", "torch_fp8",
              "copy"]),
    "fp16": (["fp16_mm", "fp16_linear_train"], ["square", "llm"],
             ["lowp", "torch_fp16", "torch_bf16", "cupy_fp16", "torch_tf32", "torch_fp32"]),
    "conv": (["int8_conv"], ["resnet50", "convnet_conv", "depthwise"],
             ["lowp", "torch_fp16", "torch_tf32", "torch_fp32"]),
    # fp8_mm vs torch._scaled_mm row-wise (bf16 out); fp8_linear vs the same plus torch ops, and F.linear FP16
    "fp8": (["fp8_mm", "fp8_linear"], ["square", "llm"],
            ["lowp", "lowp_fast_accum", "torch_fp8_rowwise", "torch_fp8_rowwise_fast", "torch_fp16", "torch_bf16"]),
}


def _pick(value: str, choices, what: str) -> list[str]:
    if value == "all":
        return list(choices)
    picked = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in picked if v not in choices]
    if unknown:
        sys.exit(f"bench: unknown {what} {unknown}; choose from {', '.join(choices)} or 'all'")
    return picked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="lowp benchmarks vs cuBLAS / cuDNN / peers")
    parser.add_argument("--preset", choices=list(PRESETS), help="a named benchmark set (overrides the next three)")
    parser.add_argument("--ops", default="all", help=f"comma list of {', '.join(OPS)}, or all")
    parser.add_argument("--shapes", default="all", help=f"comma list of {', '.join(SHAPES)}, or all")
    parser.add_argument("--providers", default="all", help=f"comma list of {', '.join(PROVIDERS)}, or all")
    parser.add_argument("--out", default="bench/results", help="folder for JSON, CSV, markdown and plots")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on CPU: build and check every case, time nothing (what CI runs)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: the CPU benchmarks of bench/cpu.py (ConvNet, Linear, BERT-base, MiniLM vs FP32 / "
                             "torch.compile / torch.ao / ONNX Runtime / OpenVINO), which take --out, --smoke, "
                             "--repeats and --system-allocator only")
    parser.add_argument("--repeats", type=int, help="--device cpu: most timed calls per row (default 20)")
    parser.add_argument("--system-allocator", action="store_true",
                        help="--device cpu: keep glibc's default allocator settings (see bench/cpu.py)")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        from . import cpu

        return cpu.main(["--out", args.out] + ["--smoke"] * args.smoke + ["--system-allocator"] * args.system_allocator
                        + ([] if args.repeats is None else ["--repeats", str(args.repeats)]))
    if args.preset:
        ops, shapes, providers = PRESETS[args.preset]
    else:
        ops, shapes = _pick(args.ops, OPS, "op"), _pick(args.shapes, SHAPES, "shape set")
        providers = _pick(args.providers, PROVIDERS, "provider")
    smoke = args.smoke or not torch.cuda.is_available()
    if smoke and not args.smoke:
        print("bench: no CUDA device, running the smoke mode (correctness only, no timing)")
    info, rows = run(ops, shapes, providers, smoke=smoke, progress=not args.no_progress)
    speedups(rows)
    report = markdown(info, rows)
    print(report)
    wrong = [r for r in rows if r["status"] == "WRONG"]
    if smoke:
        print(f"smoke run: {sum(r['status'] == 'ok' for r in rows)} cases checked, {len(wrong)} wrong, nothing timed")
    else:
        for path in save(info, rows, report, args.out, args.preset or "bench"):
            print(f"wrote {path}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
