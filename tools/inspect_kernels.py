"""Kernel inspector: compile lowp's Triton kernels for a GPU target (no GPU needed) and report what came out.

    python tools/inspect_kernels.py                    # sm_90 (H100/H200): every int8 GEMM config x epilogue
    python tools/inspect_kernels.py --json out.json --variant int8+zp --large-only
    python tools/inspect_kernels.py --compile-check    # every kernel variant the ops can launch compiles

For each GEMM config the pruner can pick: registers, stack (spills), shared memory, and the matrix instruction
in the PTX (wgmma / mma.sync) and SASS (IGMMA). Exits 1 when a config with BLOCK_M >= 64 does not use wgmma s8
(it silently left Hopper's tensor-core path), when a config spills, or when a variant fails to compile. The
compile check matters on CPU-only machines: the Triton interpreter runs kernels the compiler would reject.
Triton ships ptxas and cuobjdump in its wheel, so all of this runs without a GPU.
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

from lowp_ops.kernels.conv import _conv2d_kernel, _conv2d_tuned
from lowp_ops.kernels.gemm import _gemm_fp16_tuned, _gemm_int8_tuned, _gemm_kernel
from lowp_ops.kernels.quantize import _quantize_kernel

_GEMM_POINTERS = ("a_scale_ptr", "b_scale_ptr", "bias_ptr", "a_zp_ptr", "b_sum_ptr", "out_scale_ptr", "out_zp_ptr")
_GEMM_FLAGS = dict(EVEN_K=True, ACCUMULATE=False, OUTPUT="int32", A_SCALE_PER_ROW=True, B_SCALE_PER_COL=True,
                   A_ZP_PER_ROW=False, ACTIVATION="none")
# Layouts by strides; a stride of 1 is a compile-time constant, as Triton's JIT specializes it.
_LINEAR = dict(stride_ak=1, stride_bk=1, stride_cn=1)  # y = x · Wᵀ: both operands K-contiguous
_DGRAD = dict(stride_ak=1, stride_bn=1, stride_cn=1)  # dx = dy · W
_WGRAD = dict(stride_am=1, stride_bn=1, stride_cn=1)  # dW = dyᵀ · x

# Epilogue variants of the performance table: raw int32, the W8A8 linear output, requantized int8 with zero points.
_INT8_GEMM_VARIANTS = {
    "int32": dict(_LINEAR, a_ptr="*i8", b_ptr="*i8", c_ptr="*i32"),
    "fp16+bias": dict(_LINEAR, a_ptr="*i8", b_ptr="*i8", c_ptr="*fp16", a_scale_ptr="*fp32", b_scale_ptr="*fp32",
                      bias_ptr="*fp32", OUTPUT="float"),
    "int8+zp": dict(_LINEAR, a_ptr="*i8", b_ptr="*i8", c_ptr="*i8", a_scale_ptr="*fp32", b_scale_ptr="*fp32",
                    bias_ptr="*fp32", a_zp_ptr="*i32", b_sum_ptr="*i32", out_scale_ptr="*fp32", out_zp_ptr="*i32",
                    OUTPUT="int8"),
}
_FP16_GEMM_VARIANTS = {
    "f16 fwd": dict(_LINEAR, a_ptr="*fp16", b_ptr="*fp16", c_ptr="*fp16", bias_ptr="*fp32", OUTPUT="float"),
    "f16 dgrad": dict(_DGRAD, a_ptr="*fp16", b_ptr="*fp16", c_ptr="*fp16", OUTPUT="float"),
    "f16 wgrad": dict(_WGRAD, a_ptr="*fp16", b_ptr="*fp16", c_ptr="*fp32", OUTPUT="float"),
}
_VARIANTS = {**_INT8_GEMM_VARIANTS, **_FP16_GEMM_VARIANTS}
# The rest of what the ops can launch, for the compile check (a small tile compiles fast).
_GEMM_EXTRA = {
    "bf16, per-tensor scales, gelu, K tail": dict(
        _LINEAR, a_ptr="*i8", b_ptr="*i8", c_ptr="*bf16", a_scale_ptr="*fp32", b_scale_ptr="*fp32", OUTPUT="float", A_SCALE_PER_ROW=False,
        B_SCALE_PER_COL=False, ACTIVATION="gelu", EVEN_K=False),
    "fp32, fp16 bias, relu6": dict(_LINEAR, a_ptr="*i8", b_ptr="*i8", c_ptr="*fp32", a_scale_ptr="*fp32", b_scale_ptr="*fp32", bias_ptr="*fp16",
                                   OUTPUT="float", ACTIVATION="relu6"),
    "int8, per-row zp, no out zp, relu": dict(
        _LINEAR, a_ptr="*i8", b_ptr="*i8", c_ptr="*i8", a_scale_ptr="*fp32", b_scale_ptr="*fp32",
        a_zp_ptr="*i32", b_sum_ptr="*i32", out_scale_ptr="*fp32", OUTPUT="int8", A_ZP_PER_ROW=True,
        ACTIVATION="relu"),
    "bf16 fwd, bf16 bias, gelu, K tail": dict(_LINEAR, a_ptr="*bf16", b_ptr="*bf16", c_ptr="*bf16",
                                              bias_ptr="*bf16", OUTPUT="float", ACTIVATION="gelu", EVEN_K=False),
    "bf16 wgrad, accumulate into fp32": dict(_WGRAD, a_ptr="*bf16", b_ptr="*bf16", c_ptr="*fp32", OUTPUT="float",
                                             ACCUMULATE=True),
    "f16 fwd, general strides, fp32 out": dict(a_ptr="*fp16", b_ptr="*fp16", c_ptr="*fp32", OUTPUT="float"),
}
# Convolutions: activations and weights channel-contiguous (compile-time unit channel stride, as specialized).
_CONV_INTS = ("M", "N", "K", "m_bucket", "H", "W", "OH", "OW", "R", "S", "K_PER_G", "stride_an", "stride_ah",
              "stride_aw", "stride_wk", "stride_wr", "stride_ws", "stride_cm", "conv_sh", "conv_sw", "pad_h",
              "pad_w", "dil_h", "dil_w")
_CONV_VARIANTS = {
    "conv fp16 out": dict(c_ptr="*fp16", a_scale_ptr="*fp32", b_scale_ptr="*fp32", bias_ptr="*fp32",
                          OUTPUT="float", ACTIVATION="relu"),
    "conv int8 out, zp": dict(c_ptr="*i8", a_scale_ptr="*fp32", b_scale_ptr="*fp32", bias_ptr="*fp32",
                              a_zp_ptr="*i32", b_sum_ptr="*i32", out_scale_ptr="*fp32", out_zp_ptr="*i32",
                              OUTPUT="int8", ACTIVATION="relu6", A_SCALE_PER_ROW=False),
}
_CONV_EXTRA = {
    "conv depthwise, bf16 out": dict(c_ptr="*bf16", a_scale_ptr="*fp32", b_scale_ptr="*fp32", OUTPUT="float",
                                     DEPTHWISE=True, BLOCK_K=32),
    "conv int32, channel tail": dict(c_ptr="*i32", EVEN_K=False),
}
_CONV_FLAGS = dict(EVEN_K=True, DEPTHWISE=False, OUTPUT="int32", A_SCALE_PER_ROW=True, B_SCALE_PER_COL=True,
                   ACTIVATION="none")
_SMALL = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 2}
_ROWS = dict(stride_xk=1, stride_qk=1)  # quantize_rows: (M, K) rows, K-contiguous in and out
_NCHW_TO_NHWC = dict(stride_xm=1, stride_qk=1)  # quantize_channels_last: pixels contiguous in, channels out
_QUANTIZE_VARIANTS = {
    "dynamic fp16, one pass": dict(_ROWS, x_ptr="*fp16", scale_ptr="*fp32", min_scale="fp32", DYNAMIC=True,
                                   SINGLE_PASS=True, QMIN=-127, QMAX=127, BLOCK_M=1, BLOCK_K=4096),
    "dynamic bf16, two pass": dict(_ROWS, x_ptr="*bf16", scale_ptr="*fp32", min_scale="fp32", DYNAMIC=True,
                                   SINGLE_PASS=False, QMIN=-127, QMAX=127, BLOCK_M=1, BLOCK_K=4096),
    "dynamic fp32, many rows": dict(_ROWS, x_ptr="*fp32", scale_ptr="*fp32", min_scale="fp32", DYNAMIC=True,
                                    SINGLE_PASS=True, QMIN=-127, QMAX=127, BLOCK_M=64, BLOCK_K=64),
    "static fp16 with zero point": dict(_ROWS, x_ptr="*fp16", scale_ptr="*fp32", zp_ptr="*i32", DYNAMIC=False,
                                        SINGLE_PASS=False, QMIN=-128, QMAX=127, BLOCK_M=1, BLOCK_K=4096),
    "NCHW fp32 -> NHWC int8": dict(_NCHW_TO_NHWC, x_ptr="*fp32", scale_ptr="*fp32", zp_ptr="*i32", DYNAMIC=False,
                                   SINGLE_PASS=True, QMIN=-128, QMAX=127, BLOCK_M=64, BLOCK_K=64),
    "NCHW fp16 -> NHWC int8, C loop": dict(_NCHW_TO_NHWC, x_ptr="*fp16", scale_ptr="*fp32", DYNAMIC=False,
                                           SINGLE_PASS=False, QMIN=-128, QMAX=127, BLOCK_M=64, BLOCK_K=64),
}


def _compile(fn, spec: dict, aligned, num_warps: int, num_stages: int, arch: int):
    """spec: argument -> Triton type string ("*fp16", "i32") for runtime arguments, or a constexpr value.
    Arguments of `fn` not in spec are constexpr None (switched-off pointers)."""
    sig, const = {}, {}
    for name in fn.arg_names:
        value = spec.get(name)
        if isinstance(value, str) and (value.startswith("*") or value in ("i32", "fp32")):
            sig[name] = value
        else:
            sig[name], const[name] = "constexpr", value
    # what Triton's JIT infers for 16-aligned pointers and sizes (the shapes we benchmark)
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned if n in sig and sig[n] != "constexpr"}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
                          target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages})


def _gemm_spec(config: dict, variant: dict) -> dict:
    spec = dict.fromkeys(("M", "N", "K", "m_bucket", "stride_am", "stride_ak", "stride_bk", "stride_bn", "stride_cm", "stride_cn"), "i32")
    spec.update(_GEMM_FLAGS)
    spec.update({k: v for k, v in config.items() if k not in ("num_warps", "num_stages")})
    spec.update(variant)
    return spec


def _compile_gemm(config: dict, variant: dict, arch: int):
    aligned = ("a_ptr", "b_ptr", "c_ptr") + _GEMM_POINTERS + ("N", "K", "stride_am", "stride_ak", "stride_bk",
                                                             "stride_bn", "stride_cm", "stride_cn")
    return _compile(_gemm_kernel, _gemm_spec(config, variant), aligned, config["num_warps"],
                    config["num_stages"], arch)


def _compile_conv(config: dict, variant: dict, arch: int):
    spec = {"a_ptr": "*i8", "w_ptr": "*i8", **dict.fromkeys(_CONV_INTS, "i32"), **_CONV_FLAGS}
    spec.update({k: v for k, v in config.items() if k not in ("num_warps", "num_stages")})
    spec.update(variant)
    aligned = ("a_ptr", "w_ptr", "c_ptr", "K", "N", "stride_an", "stride_ah", "stride_aw", "stride_wk",
               "stride_wr", "stride_ws", "stride_cm") + _GEMM_POINTERS
    return _compile(_conv2d_kernel, spec, aligned, config["num_warps"], config["num_stages"], arch)


def _resources(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "--dump-sass", f.name], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return {"regs": int(fields.get("REG", -1)), "stack": int(fields.get("STACK", -1)),
            "local": int(fields.get("LOCAL", -1)), "sass_gmma": sorted(set(re.findall(r"\b([A-Z]GMMA)\b", sass)))}


def compile_gemm(config: dict, variant: str, arch: int = 90) -> dict:
    """Compile one config (BLOCK_*/GROUP_M/num_warps/num_stages) x variant; return its report row."""
    conv = variant in _CONV_VARIANTS
    compiled = (_compile_conv(config, _CONV_VARIANTS[variant], arch) if conv
                else _compile_gemm(config, _VARIANTS[variant], arch))
    mma = sorted(set(re.findall(r"(wgmma\.mma_async\.\S*|mma\.sync\.\S*)", compiled.asm["ptx"])))
    int8 = conv or variant in _INT8_GEMM_VARIANTS
    row = {"kernel": "int8_conv" if conv else "int8_gemm" if int8 else "fp16_gemm", "variant": variant,
           "tile": f"{config['BLOCK_M']}x{config['BLOCK_N']}x{config['BLOCK_K']}",
           "stages": config["num_stages"], "warps": config["num_warps"], "shared": compiled.metadata.shared,
           "mma": mma, **_resources(compiled.asm["cubin"])}
    operands = ".s8.s8" if int8 else (".bf16.bf16" if "bf16" in variant else ".f16.f16")
    row["wgmma"] = any("wgmma" in m and operands in m for m in mma)
    needs_wgmma = arch >= 90 and config["BLOCK_M"] >= 64  # wgmma works on 64-row warpgroup tiles
    row["ok"] = (row["wgmma"] or not needs_wgmma) and bool(mma) and row["stack"] == 0
    return row


def _reachable(tuner, output: str, operand_dtype, strides: dict) -> list:
    """Configs the autotuner's pruner can pick for this epilogue, at decode, M≈128 and large M."""
    import torch

    a = torch.empty(0, dtype=operand_dtype)
    kept = set()
    for mb in (1, 16, 128, 8192):
        args = {"a_ptr": a, "m_bucket": mb, "N": 4096, "K": 4096, "OUTPUT": output, **strides}
        kept.update(id(c) for c in tuner.early_config_prune(tuner.configs, args))
    return [c for c in tuner.configs if id(c) in kept]


def inspect_gemm(arch: int = 90, variants=None, only_large: bool = False) -> list[dict]:
    """Every config the pruner can pick, for each epilogue variant (only_large: BLOCK_M >= 64 only)."""
    import torch

    rows = []
    for variant in variants or list(_VARIANTS) + list(_CONV_VARIANTS):
        spec = {**_VARIANTS, **_CONV_VARIANTS}[variant]
        int8 = variant in _INT8_GEMM_VARIANTS or variant in _CONV_VARIANTS
        tuner = _conv2d_tuned if variant in _CONV_VARIANTS else _gemm_int8_tuned if int8 else _gemm_fp16_tuned
        dtype = torch.int8 if int8 else torch.float16
        strides = {"stride_am": spec.get("stride_am", 4096), "stride_ak": spec.get("stride_ak", 4096)}
        for cfg in _reachable(tuner, spec.get("OUTPUT", "int32"), dtype, strides):
            if only_large and cfg.kwargs["BLOCK_M"] < 64:
                continue
            rows.append(compile_gemm(dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages),
                                          variant, arch))
    return rows


def compile_check(arch: int = 90) -> list[dict]:
    """Compile every kernel variant the ops can launch (small tiles); one row per variant with ok / error."""
    jobs = [("gemm", name, lambda v=v: _compile_gemm(_SMALL, v, arch))
            for name, v in {**_VARIANTS, **_GEMM_EXTRA}.items()]
    jobs += [("conv2d", name, lambda v=v: _compile_conv(_SMALL, v, arch))
             for name, v in {**_CONV_VARIANTS, **_CONV_EXTRA}.items()]
    strides = ("stride_xb", "stride_xm", "stride_xk", "stride_qb", "stride_qm", "stride_qk")
    quant_ints = dict.fromkeys(("M", "K") + strides, "i32")
    jobs += [("quantize", name, lambda v=v: _compile(
        _quantize_kernel, {"q_ptr": "*i8", **quant_ints, **v}, ("x_ptr", "q_ptr", "K") + strides, 8, 1, arch))
        for name, v in _QUANTIZE_VARIANTS.items()]
    rows = []
    for kernel, name, job in jobs:
        try:
            job()
            rows.append({"kernel": kernel, "variant": name, "ok": True})
        except Exception as e:  # report every failing variant, not just the first
            rows.append({"kernel": kernel, "variant": name, "ok": False, "error": f"{type(e).__name__}: {e}"})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = Hopper)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--variant", action="append", choices=list(_VARIANTS) + list(_CONV_VARIANTS),
                        help="epilogue variant(s) to compile (default: all)")
    parser.add_argument("--large-only", action="store_true", help="only tiles with BLOCK_M >= 64 (wgmma tiles)")
    parser.add_argument("--compile-check", action="store_true",
                        help="only check that every kernel variant compiles")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    warnings.filterwarnings("ignore", message=".*FP_FUSION.*")
    print(f"sm_{args.arch}, triton {triton.__version__}")
    checks = compile_check(args.arch)
    for r in checks:
        print(f"compiles  {r['kernel']:14} {r['variant']:36} {'ok' if r['ok'] else 'FAIL: ' + r['error']}")
    rows = [] if args.compile_check else inspect_gemm(args.arch, args.variant, args.large_only)
    if rows:
        print(f"{'kernel':10} {'variant':10} {'tile':12} {'st':>2} {'w':>2} {'regs':>4} {'stack':>5} {'smem':>7}  mma")
    for r in rows:
        mma = ", ".join(m.split(".sync.aligned.")[-1] if "sync" in m else m for m in r["mma"]) or "NONE"
        flag = "" if r["ok"] else "   <-- FAIL"
        print(f"{r['kernel']:10} {r['variant']:10} {r['tile']:12} {r['stages']:>2} {r['warps']:>2} {r['regs']:>4} "
              f"{r['stack']:>5} {r['shared']:>7}  {mma} {' '.join(r['sass_gmma'])}{flag}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "triton": triton.__version__, "compile_check": checks, "rows": rows},
                      f, indent=1)
    return 0 if all(r["ok"] for r in checks + rows) else 1


if __name__ == "__main__":
    sys.exit(main())
