"""Kernel inspector: compile lowp's Triton kernels for a GPU target (no GPU needed) and report what came out.

    python tools/inspect_kernels.py                    # sm_90 (H100/H200): every GEMM config x epilogue
    python tools/inspect_kernels.py --json out.json --variant int8+zp --large-only
    python tools/inspect_kernels.py --compile-check    # every kernel variant the ops can launch compiles

For each GEMM config the pruner can pick: registers, stack (spills), shared memory, and the matrix instruction
in the PTX (wgmma / mma.sync) and SASS (IGMMA, QGMMA, HGMMA). Exits 1 when a config with BLOCK_M >= 64 does not
use wgmma on its operand type (.s8.s8, .e4m3.e4m3, .f16.f16, .bf16.bf16: it silently left Hopper's tensor-core
path), when a config spills, or when a variant fails to compile. The compile check matters on CPU-only machines:
the Triton interpreter runs kernels the compiler would reject.
Triton ships ptxas and cuobjdump in its wheel, so all of this runs without a GPU.

Nothing here repeats a kernel's signature. A variant is a call of a launcher (kernels/) on meta tensors, which
have shapes, dtypes and strides but no memory; the launcher's `wrap` hook records the kernel and its arguments
instead of launching, and the compile is specialized as Triton's JIT would specialize that launch.
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
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lowp_ops.kernels import gemm, int8_conv2d, int8_max_pool2d, quantize_channels_last, quantize_rows
from lowp_ops.quant import MIN_SCALE

I8, I32, F16, BF16, F32 = torch.int8, torch.int32, torch.float16, torch.bfloat16, torch.float32
E4M3 = torch.float8_e4m3fn
CL = torch.channels_last


def _t(*shape, dtype=F32, memory_format=torch.contiguous_format):
    """A meta tensor: the shape, dtype and strides a launcher reads, and no memory."""
    return torch.empty(shape, dtype=dtype, device="meta", memory_format=memory_format)


# Epilogue arguments by the (rows, columns) of the call: GEMM rows and columns, or a convolution's images and
# output channels (its a_scale is per image).
def _per_row(dtype=F32):
    return lambda rows, cols: _t(rows, dtype=dtype)


def _per_col(dtype=F32):
    return lambda rows, cols: _t(cols, dtype=dtype)


def _one(dtype=F32):
    return lambda rows, cols: _t(1, dtype=dtype)


def _out(dtype=F32):  # an (M, N) output to accumulate into
    return lambda rows, cols: _t(rows, cols, dtype=dtype)


_W8A8 = dict(a_scale=_per_row(), b_scale=_per_col(), bias=_per_col())  # the W8A8 linear's dequantize + bias
_ZERO_POINT = dict(a_zero_point=_one(I32), b_sum=_per_col(I32))  # asymmetric activations, one zero point
_REQUANT = dict(out_scale=_one(), out_zero_point=_one(I32))  # int8 output


def _build(epilogue: dict, rows: int, cols: int) -> dict:
    return {name: make(rows, cols) if callable(make) else make for name, make in epilogue.items()}


# GEMM layouts, operands (a, b) for an (M, N, K) product. Triton's JIT specializes a stride of 1 at compile time,
# so each layout compiles its own loads.
def _linear(m, n, k, dtype):  # y = x · Wᵀ, W stored (N, K): both operands K-contiguous
    return _t(m, k, dtype=dtype), _t(n, k, dtype=dtype).T


def _dgrad(m, n, k, dtype):  # dx = dy · W, W stored (K, N): B N-contiguous
    return _t(m, k, dtype=dtype), _t(k, n, dtype=dtype)


def _wgrad(m, n, k, dtype):  # dW = dyᵀ · x, dy stored (K, M): A M-contiguous
    return _t(k, m, dtype=dtype).T, _t(k, n, dtype=dtype)


def _strided(m, n, k, dtype):  # no unit stride in A or B (every 16th element of a wider buffer)
    return _t(m, k, 16, dtype=dtype)[:, :, 0], _t(k, n, 16, dtype=dtype)[:, :, 0]


def _gemm(layout, dtype, out_dtype, *, k_tail=False, **epilogue):
    """A gemm() call: `layout` operands of `dtype`; k_tail: K not a multiple of BLOCK_K (the masked loop)."""

    def call(m, n, k, **launch):
        k = k + 16 if k_tail else k
        return gemm(*layout(m, n, k, dtype), out_dtype=out_dtype, **_build(epilogue, m, n), **launch)

    return call


def _conv(out_dtype, *, depthwise=False, channel_tail=False, **epilogue):
    """An int8_conv2d() call, sized as a GEMM: pixels (output pixels, rounded to whole images), out_channels and
    in_channels. 3x3 images, a 3x3 kernel and stride, padding and dilation 2 give 2x2 output pixels per image and
    no geometry argument equal to 1 (which the JIT would make a constant). depthwise: out_channels / 2 groups of
    one input channel and two output channels; channel_tail: in_channels not a multiple of BLOCK_K."""

    def call(pixels, out_channels, in_channels, **launch):
        images = max(2, pixels // 4)  # two at least, so that a per-image a_scale is one
        in_channels += 16 if channel_tail else 0
        groups, c, c_g = (out_channels // 2, out_channels // 2, 1) if depthwise else (1, in_channels, in_channels)
        x = _t(images, c, 3, 3, dtype=I8, memory_format=CL)
        w = _t(out_channels, c_g, 3, 3, dtype=I8, memory_format=CL)
        return int8_conv2d(x, w, stride=(2, 2), padding=(2, 2), dilation=(2, 2), groups=groups,
                           out_dtype=out_dtype, **_build(epilogue, images, out_channels), **launch)

    return call


def _quantize(launcher, x, **kwargs):
    """A quantize launcher's call; it picks its blocks from x's shape (kernels/quantize.py)."""
    return lambda **launch: launcher(x, **kwargs, **launch)


# The problem compiled: M = 100 rows, neither 1 nor a multiple of 16 (a serving batch: the JIT specializes
# neither), N = K = 4096, a multiple of every BLOCK_N and BLOCK_K. The pruner is asked at M = 1, 16, 100, 128, 8192;
# a tile it keeps only where M is a multiple of 16 (the weight gradient's: kernels/gemm.py, _register_heavy) is
# compiled at M = 4096, as the JIT then specializes it.
_M = 100
_SIZE = (_M, 4096, 4096)
_ALIGNED_SIZE = (4096, 4096, 4096)
_PRUNER_MS = (1, 16, _M, 128, 8192)
_SMALL = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 2}
_SPLIT = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 256, "GROUP_M": 8, "num_warps": 4, "num_stages": 4, "SPLIT_K": 2}


# Epilogue variants of the performance table: raw int32, the W8A8 linear output, requantized int8 with zero points.
_INT8_GEMM_VARIANTS = {
    "int32": _gemm(_linear, I8, I32),
    "fp16+bias": _gemm(_linear, I8, F16, **_W8A8),
    "int8+zp": _gemm(_linear, I8, I8, **_W8A8, **_ZERO_POINT, **_REQUANT),
}
# The FP8 linear (lowp::fp8_mm / fp8_linear): e4m3 operands, per-token and per-channel scales, bias, with the
# BLOCK_K-slice promotion to float32 (the default) and without it (fast accumulation; kernels/gemm.py).
_FP8_GEMM_VARIANTS = {
    "fp8 fp16+bias": _gemm(_linear, E4M3, F16, **_W8A8),
    "fp8 bf16+bias": _gemm(_linear, E4M3, BF16, **_W8A8),
    "fp8 fast fp16+bias": _gemm(_linear, E4M3, F16, **_W8A8, fast_accum=True),
    "fp8 fast bf16+bias": _gemm(_linear, E4M3, BF16, **_W8A8, fast_accum=True),
}
_FP16_GEMM_VARIANTS = {
    "f16 fwd": _gemm(_linear, F16, F16, bias=_per_col()),
    "f16 dgrad": _gemm(_dgrad, F16, F16),
    "f16 wgrad": _gemm(_wgrad, F16, F32),
}
_CONV_VARIANTS = {
    "conv fp16 out": _conv(F16, **_W8A8, activation="relu"),
    "conv int8 out, zp": _conv(I8, a_scale=_one(), b_scale=_per_col(), bias=_per_col(), **_ZERO_POINT, **_REQUANT,
                               activation="relu6"),
}
_VARIANTS = {**_INT8_GEMM_VARIANTS, **_FP8_GEMM_VARIANTS, **_FP16_GEMM_VARIANTS, **_CONV_VARIANTS}
# The rest of what the ops can launch, for the compile check (a small tile compiles fast).
_GEMM_EXTRA = {
    "bf16, per-tensor scales, gelu, K tail": _gemm(_linear, I8, BF16, a_scale=_one(), b_scale=_one(),
                                                   activation="gelu", k_tail=True),
    "fp32, fp16 bias, relu6": _gemm(_linear, I8, F32, a_scale=_per_row(), b_scale=_per_col(), bias=_per_col(F16),
                                    activation="relu6"),
    "int8, per-row zp, no out zp, relu": _gemm(_linear, I8, I8, a_scale=_per_row(), b_scale=_per_col(),
                                               a_zero_point=_per_row(I32), b_sum=_per_col(I32), out_scale=_one(),
                                               activation="relu"),
    "fp8 fp32, per-tensor scales, gelu, K tail": _gemm(_linear, E4M3, F32, a_scale=_one(), b_scale=_one(),
                                                       activation="gelu", k_tail=True),
    "fp8 fast fp32, fp16 bias, relu6, K tail": _gemm(_linear, E4M3, F32, **_W8A8, activation="relu6", k_tail=True,
                                                     fast_accum=True),
    "bf16 fwd, bf16 bias, gelu, K tail": _gemm(_linear, BF16, BF16, bias=_per_col(BF16), activation="gelu",
                                               k_tail=True),
    "bf16 wgrad, accumulate into fp32": _gemm(_wgrad, BF16, F32, accumulate_into=_out(F32)),
    "f16 fwd, general strides, fp32 out": _gemm(_strided, F16, F32),
}
_CONV_EXTRA = {
    "conv depthwise, bf16 out": _conv(BF16, depthwise=True, a_scale=_per_row(), b_scale=_per_col()),
    "conv int32, channel tail": _conv(I32, channel_tail=True),
}
# quantize_rows: K <= 4096 is one pass over a row, longer rows take two, rows of 64 go 64 to a block.
# quantize_channels_last: blocks of 64 pixels x up to 64 channels, more channels loop.
_QUANTIZE_VARIANTS = {
    "dynamic fp16, one pass": _quantize(quantize_rows, _t(_M, 4096, dtype=F16), min_scale=MIN_SCALE),
    "dynamic bf16, two pass": _quantize(quantize_rows, _t(_M, 8192, dtype=BF16), min_scale=MIN_SCALE),
    "dynamic fp32, many rows": _quantize(quantize_rows, _t(_M, 64), min_scale=MIN_SCALE),
    "static fp16 with zero point": _quantize(quantize_rows, _t(_M, 8192, dtype=F16), scale=_t(1),
                                             zero_point=_t(1, dtype=I32)),
    "e4m3 dynamic fp16, one pass": _quantize(quantize_rows, _t(_M, 4096, dtype=F16), min_scale=MIN_SCALE, dtype=E4M3),
    "e4m3 dynamic bf16, two pass": _quantize(quantize_rows, _t(_M, 8192, dtype=BF16), min_scale=MIN_SCALE, dtype=E4M3),
    "e4m3 static fp32, one pass": _quantize(quantize_rows, _t(_M, 4096), scale=_t(1), dtype=E4M3),
    "e4m3 static fp16, two pass": _quantize(quantize_rows, _t(_M, 8192, dtype=F16), scale=_t(1), dtype=E4M3),
    "NCHW fp32 -> NHWC int8": _quantize(quantize_channels_last, _t(2, 64, 8, 8), scale=_t(1),
                                        zero_point=_t(1, dtype=I32)),
    "NCHW fp16 -> NHWC int8, C loop": _quantize(quantize_channels_last, _t(2, 128, 8, 8, dtype=F16), scale=_t(1)),
}
# int8_max_pool2d: the window unrolled (a constexpr), channels_last or NCHW input, channel tails masked, output
# channels_last or contiguous.
_POOL_VARIANTS = {
    "2x2, channels_last": _quantize(int8_max_pool2d, _t(2, 64, 24, 24, dtype=I8, memory_format=torch.channels_last),
                                    kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1)),
    "3x3 s2 p1 ceil, NCHW, channel tail": _quantize(int8_max_pool2d, _t(2, 70, 13, 13, dtype=I8), kernel_size=(3, 3),
                                                    stride=(2, 2), padding=(1, 1), dilation=(1, 1), ceil_mode=True),
    "2x2, contiguous out (before a flatten)": _quantize(
        int8_max_pool2d, _t(2, 64, 24, 24, dtype=I8, memory_format=torch.channels_last), kernel_size=(2, 2),
        stride=(2, 2), padding=(0, 0), dilation=(1, 1), channels_last=False),
}


@dataclass
class Launch:
    kernel: object  # the @triton.jit kernel, or the autotuner when the launcher was given no config
    args: dict  # every argument by name, num_warps / num_stages included when the launcher passes them


class _Recorder:
    """A launcher's `wrap`: wrap(kernel)[grid](**kwargs) records the launch instead of making it (the launchers
    pass every kernel argument by keyword)."""

    def __init__(self):
        self.launches = []

    def __call__(self, kernel):
        self.kernel = kernel
        return self

    def __getitem__(self, grid):
        return self._record

    def _record(self, **kwargs):
        self.launches.append(Launch(self.kernel, kwargs))


def capture(call, *args, **kwargs) -> Launch:
    """Run call(*args, **kwargs, wrap=...), a launcher call; return the one launch it made instead of making it."""
    recorder = _Recorder()
    call(*args, **kwargs, wrap=recorder)
    (launch,) = recorder.launches
    return launch


_POINTER = {I8: "*i8", I32: "*i32", F16: "*fp16", BF16: "*bf16", F32: "*fp32", E4M3: "*fp8e4nv"}


def _compile(launch: Launch, arch: int):
    """Compile a captured launch as Triton's JIT specializes it: a tensor is a pointer ("*i8"), marked divisible by
    16 when 16-byte aligned; an int is "i32", a compile-time constant when it is 1 and marked divisible when a
    multiple of 16; a float is "fp32"; tl.constexpr parameters and None are constants. num_warps and num_stages
    are compile options (Triton's defaults where the launcher passes none), and so are parameters' defaults."""
    fn = launch.kernel
    args = {p.name: p.default for p in fn.params if p.has_default} | launch.args
    missing = [name for name in fn.arg_names if name not in args]
    if missing:
        raise TypeError(f"{fn.__name__}: the launch passes no {', '.join(missing)}")
    sig, const, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        name, value = param.name, args[param.name]
        if param.is_constexpr or value is None or (isinstance(value, int) and value == 1):
            sig[name], const[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            sig[name] = _POINTER[value.dtype]
            aligned = value.data_ptr() % 16 == 0
        elif isinstance(value, int):
            sig[name], aligned = "i32", value % 16 == 0
        elif isinstance(value, float):
            sig[name], aligned = "fp32", False
        else:
            raise TypeError(f"{fn.__name__}: argument {name}={value!r} has no Triton type here")
        if sig[name] != "constexpr" and aligned:
            attrs[(i,)] = [["tt.divisibility", 16]]
    options = {k: launch.args[k] for k in ("num_warps", "num_stages") if k in launch.args}
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
                          target=GPUTarget("cuda", arch, 32), options=options)


def _resources(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "--dump-sass", f.name], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return {"regs": int(fields.get("REG", -1)), "stack": int(fields.get("STACK", -1)),
            "local": int(fields.get("LOCAL", -1)), "sass_gmma": sorted(set(re.findall(r"\b([A-Z]GMMA)\b", sass))),
            "loops": _matrix_loops(sass)}


def _matrix_loops(sass: str) -> list[int]:
    """SASS instructions per iteration of each loop that issues a matrix instruction (a backward branch whose body
    holds a wgmma's *GMMA or an mma.sync's IMMA / HMMA), in code order: what each reduction step costs the warp
    schedulers besides the tensor cores. A 128x128x64 int8 step's wgmma takes ~256 cycles of an SM's tensor cores
    (4096 int8 MACs per cycle), while 8 warps of n instructions take 8·n/4 issue cycles: past ~128 instructions
    the loop is issue-bound."""
    code = [(int(a, 16), text) for a, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []
    for end, text in code:
        target = re.search(r"\bBRA\s+0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < end:
            body = [t for a, t in code if int(target.group(1), 16) <= a <= end]
            if any(re.search(r"\b([A-Z]GMMA|[IH]MMA)\b", t) for t in body):
                loops.append(len(body))
    return loops


# The operand types of a wgmma instruction in the PTX, and the kernel each operand makes.
_WGMMA_OPERANDS = {"*i8": ".s8.s8", "*fp8e4nv": ".e4m3.e4m3", "*fp16": ".f16.f16", "*bf16": ".bf16.bf16"}
_GEMM_KERNEL = {"*i8": "int8_gemm", "*fp8e4nv": "fp8_gemm", "*fp16": "fp16_gemm", "*bf16": "fp16_gemm"}


def compile_gemm(config: dict, variant: str, arch: int = 90, size: tuple = _SIZE) -> dict:
    """Compile one config (BLOCK_*/GROUP_M/num_warps/num_stages) x variant at size (M, N, K); its report row."""
    launch = capture(_VARIANTS[variant], *size, config=config)
    compiled = _compile(launch, arch)
    mma = sorted(set(re.findall(r"(wgmma\.mma_async\.\S*|mma\.sync\.\S*)", compiled.asm["ptx"])))
    operand = _POINTER[launch.args["a_ptr"].dtype]
    kernel = "int8_conv" if variant in _CONV_VARIANTS else _GEMM_KERNEL[operand]
    # the GEMM's variants: split K (programs per tile), the persistent TMA one
    variant_mark = f"/{config['SPLIT_K']}" if config.get("SPLIT_K", 1) > 1 else " tma" * config.get("TMA", False)
    row = {"kernel": kernel, "variant": variant, "M": size[0],
           "tile": f"{config['BLOCK_M']}x{config['BLOCK_N']}x{config['BLOCK_K']}{variant_mark}",
           "stages": config["num_stages"], "warps": config["num_warps"], "shared": compiled.metadata.shared,
           "mma": mma, **_resources(compiled.asm["cubin"])}
    row["wgmma"] = any("wgmma" in m and _WGMMA_OPERANDS[operand] in m for m in mma)
    # the wgmma groups left in flight at each wait: 0 only means every K step waits for its own wgmma to finish
    # (no overlap of one step's tensor-core work with the next step's loads); 1 or more, the overlapping form
    row["pendings"] = sorted({int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)",
                                                          compiled.asm["ptx"])})
    needs_wgmma = arch >= 90 and config["BLOCK_M"] >= 64  # wgmma works on 64-row warpgroup tiles
    row["ok"] = (row["wgmma"] or not needs_wgmma) and bool(mma) and row["stack"] == 0
    return row


def _reachable(variant: str) -> list[tuple]:
    """(config, the size to compile it at) for each config the variant's autotuner can pick (its pruner's choice)
    at decode, M≈100 and large M: M = 100 where the pruner keeps it for an M not a multiple of 16, else M = 4096."""
    unaligned, kept = set(), {}
    for m in _PRUNER_MS:
        launch = capture(_VARIANTS[variant], m, *_SIZE[1:])  # no config: the autotuned launch
        tuner = launch.kernel
        for c in tuner.early_config_prune(tuner.configs, launch.args):
            kept[id(c)] = c
            if m % 16:
                unaligned.add(id(c))
    return [(c, _SIZE if id(c) in unaligned else _ALIGNED_SIZE) for c in tuner.configs if id(c) in kept]


def inspect_gemm(arch: int = 90, variants=None, only_large: bool = False) -> list[dict]:
    """Every config the pruner can pick, for each epilogue variant (only_large: BLOCK_M >= 64 only)."""
    rows = []
    for variant in variants or list(_VARIANTS):
        for cfg, size in _reachable(variant):
            if only_large and cfg.kwargs["BLOCK_M"] < 64:
                continue
            rows.append(compile_gemm(dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages),
                                     variant, arch, size))
    return rows


def compile_check(arch: int = 90) -> list[dict]:
    """Compile every kernel variant the ops can launch (small tiles); one row per variant with ok / error."""
    jobs = [("gemm", name, call, (*_SIZE,), {"config": _SMALL})
            for name, call in {**_INT8_GEMM_VARIANTS, **_FP8_GEMM_VARIANTS, **_FP16_GEMM_VARIANTS,
                               **_GEMM_EXTRA}.items()]
    jobs += [("conv2d", name, call, (*_SIZE,), {"config": _SMALL})
             for name, call in {**_CONV_VARIANTS, **_CONV_EXTRA}.items()]
    # the GEMM's variants (kernels/gemm.py): split K at decode, int8; the persistent TMA tiles, 8-bit
    jobs += [("gemm", f"{name}, split K", call, (16, 4096, 4096), {"config": _SPLIT})
             for name, call in _INT8_GEMM_VARIANTS.items()]
    jobs += [("gemm", f"{name}, TMA", call, (*_SIZE,), {"config": {**_SMALL, "TMA": True}})
             for name, call in {**_INT8_GEMM_VARIANTS, **_FP8_GEMM_VARIANTS}.items()]
    # the conv's padding correction with tap sums past 2^22 (three float16 parts: C/groups > 32768)
    jobs += [("conv2d", "conv int8 out, zp, 40000 channels", _CONV_VARIANTS["conv int8 out, zp"], (100, 64, 40000),
              {"config": _SMALL})]
    jobs += [("quantize", name, call, (), {}) for name, call in _QUANTIZE_VARIANTS.items()]
    jobs += [("max_pool2d", name, call, (), {}) for name, call in _POOL_VARIANTS.items()]
    rows = []
    for kernel, name, call, args, kwargs in jobs:
        try:
            _compile(capture(call, *args, **kwargs), arch)
            rows.append({"kernel": kernel, "variant": name, "ok": True})
        except Exception as e:  # report every failing variant, not just the first
            rows.append({"kernel": kernel, "variant": name, "ok": False, "error": f"{type(e).__name__}: {e}"})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = Hopper)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--variant", action="append", choices=list(_VARIANTS),
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
        print(f"compiles  {r['kernel']:14} {r['variant']:42} {'ok' if r['ok'] else 'FAIL: ' + r['error']}")
    rows = [] if args.compile_check else inspect_gemm(args.arch, args.variant, args.large_only)
    if rows:
        print(f"{'kernel':10} {'variant':18} {'M':>4} {'tile':15} {'st':>2} {'w':>2} {'regs':>4} {'stack':>5} "
              f"{'smem':>7} {'pend':>5} {'loop':>7}  mma")
    for r in rows:
        mma = ", ".join(m.split(".sync.aligned.")[-1] if "sync" in m else m for m in r["mma"]) or "NONE"
        flag = "" if r["ok"] else "   <-- FAIL"
        pend = ",".join(map(str, r["pendings"])) or "-"
        loops = ",".join(map(str, r["loops"])) or "-"
        print(f"{r['kernel']:10} {r['variant']:18} {r['M']:>4} {r['tile']:15} {r['stages']:>2} {r['warps']:>2} "
              f"{r['regs']:>4} {r['stack']:>5} {r['shared']:>7} {pend:>5} {loops:>7}  {mma} "
              f"{' '.join(r['sass_gmma'])}{flag}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "triton": triton.__version__, "compile_check": checks, "rows": rows},
                      f, indent=1)
    return 0 if all(r["ok"] for r in checks + rows) else 1


if __name__ == "__main__":
    sys.exit(main())
