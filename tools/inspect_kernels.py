"""Kernel inspector: compile every GEMM kernel config for a GPU target (no GPU needed) and report registers,
stack (spills), shared memory and which matrix instruction the PTX/SASS uses.

    python tools/inspect_kernels.py                 # sm_90 (H100/H200), every int8 GEMM config x variant
    python tools/inspect_kernels.py --json out.json --variant int8+zp --large-only

Exits 1 when a config with BLOCK_M >= 64 does not use wgmma s8 (it silently left Hopper's tensor-core path)
or when a config spills. Triton ships ptxas and cuobjdump in its wheel, so this runs on a CPU-only machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lowp_ops.kernels.int8_gemm import _int8_gemm_kernel, _int8_gemm_tuned

# The epilogue variants worth compiling: raw int32, the W8A8 linear output, requantized int8 with zero points.
_INT8_GEMM_VARIANTS = {
    "int32": dict(c="*i32", OUTPUT="int32", scales=False),
    "fp16+bias": dict(c="*fp16", OUTPUT="float", scales=True, bias=True),
    "int8+zp": dict(c="*i8", OUTPUT="int8", scales=True, bias=True, zp=True),
}


def _int8_gemm_source(config: dict, variant: dict) -> ASTSource:
    fn = _int8_gemm_kernel
    sig = {name: "constexpr" for name in fn.arg_names}
    const = {n: None for n in ("a_scale_ptr", "b_scale_ptr", "bias_ptr", "a_zp_ptr", "b_sum_ptr",
                               "out_scale_ptr", "out_zp_ptr")}
    ptrs = {"a_ptr": "*i8", "b_ptr": "*i8", "c_ptr": variant["c"]}
    if variant.get("scales"):
        ptrs.update(a_scale_ptr="*fp32", b_scale_ptr="*fp32")
    if variant.get("bias"):
        ptrs.update(bias_ptr="*fp32")
    if variant.get("zp"):
        ptrs.update(a_zp_ptr="*i32", b_sum_ptr="*i32", out_scale_ptr="*fp32", out_zp_ptr="*i32")
    for name in ptrs:
        const.pop(name, None)
    sig.update(ptrs)
    ints = ["M", "N", "K", "m_bucket", "stride_am", "stride_bn", "stride_cm"]
    sig.update({n: "i32" for n in ints})
    const.update({k: v for k, v in config.items() if k not in ("num_warps", "num_stages")})
    const.update(EVEN_K=True, OUTPUT=variant["OUTPUT"], A_SCALE_PER_ROW=True, B_SCALE_PER_COL=True,
                 A_ZP_PER_ROW=False, ACTIVATION="none")
    # What Triton's JIT would infer for 16-aligned pointers and sizes (the shapes we benchmark).
    aligned = list(ptrs) + ["N", "K", "stride_am", "stride_bn", "stride_cm"]
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    return ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)


def _resources(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "--dump-sass", f.name], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    gmma = sorted(set(re.findall(r"\b([A-Z]GMMA)\b", sass)))
    return {"regs": int(fields.get("REG", -1)), "stack": int(fields.get("STACK", -1)),
            "local": int(fields.get("LOCAL", -1)), "sass_gmma": gmma}


def _reachable(configs, output: str) -> list:
    """Configs the autotuner's pruner can pick for this epilogue, at decode, M≈128 and large M."""
    prune = _int8_gemm_tuned.early_config_prune
    kept = set()
    for mb in (1, 16, 128, 8192):
        kept.update(id(c) for c in prune(configs, {"m_bucket": mb, "N": 4096, "K": 4096, "OUTPUT": output}))
    return [c for c in configs if id(c) in kept]


def compile_int8_gemm(config: dict, variant: str, arch: int = 90) -> dict:
    """Compile one config (BLOCK_*/GROUP_M/num_warps/num_stages) x epilogue variant; return its report row."""
    compiled = triton.compile(_int8_gemm_source(config, _INT8_GEMM_VARIANTS[variant]),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": config["num_warps"], "num_stages": config["num_stages"]})
    ptx = compiled.asm["ptx"]
    mma = sorted(set(re.findall(r"(wgmma\.mma_async\.\S*|mma\.sync\.\S*)", ptx)))
    row = {"kernel": "int8_gemm", "variant": variant,
           "tile": f"{config['BLOCK_M']}x{config['BLOCK_N']}x{config['BLOCK_K']}",
           "stages": config["num_stages"], "warps": config["num_warps"], "shared": compiled.metadata.shared,
           "mma": mma, **_resources(compiled.asm["cubin"])}
    row["wgmma_s8"] = any("wgmma" in m and ".s8.s8" in m for m in mma)
    needs_wgmma = arch >= 90 and config["BLOCK_M"] >= 64  # wgmma works on 64-row warpgroup tiles
    row["ok"] = (row["wgmma_s8"] or not needs_wgmma) and bool(mma) and row["stack"] == 0
    return row


def inspect_int8_gemm(arch: int = 90, variants=None, only_large: bool = False) -> list[dict]:
    """Every config the pruner can pick, for each epilogue variant (only_large: BLOCK_M >= 64 only)."""
    rows = []
    configs = _int8_gemm_tuned.configs
    for variant in variants or list(_INT8_GEMM_VARIANTS):
        for cfg in _reachable(configs, _INT8_GEMM_VARIANTS[variant]["OUTPUT"]):
            if only_large and cfg.kwargs["BLOCK_M"] < 64:
                continue
            rows.append(compile_int8_gemm(dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages),
                                          variant, arch))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = Hopper)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--variant", action="append", choices=list(_INT8_GEMM_VARIANTS),
                        help="epilogue variant(s) to compile (default: all)")
    parser.add_argument("--large-only", action="store_true", help="only tiles with BLOCK_M >= 64 (wgmma tiles)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    warnings.filterwarnings("ignore", message=".*FP_FUSION.*")
    rows = inspect_int8_gemm(args.arch, args.variant, args.large_only)
    print(f"sm_{args.arch}, triton {triton.__version__}")
    print(f"{'kernel':10} {'variant':10} {'tile':12} {'st':>2} {'w':>2} {'regs':>4} {'stack':>5} {'smem':>7}  mma")
    for r in rows:
        mma = ", ".join(m.split(".sync.aligned.")[-1] if "sync" in m else m for m in r["mma"]) or "NONE"
        flag = "" if r["ok"] else "   <-- FAIL"
        print(f"{r['kernel']:10} {r['variant']:10} {r['tile']:12} {r['stages']:>2} {r['warps']:>2} {r['regs']:>4} "
              f"{r['stack']:>5} {r['shared']:>7}  {mma} {' '.join(r['sass_gmma'])}{flag}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "triton": triton.__version__, "rows": rows}, f, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
