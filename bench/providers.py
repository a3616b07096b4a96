"""Who computes each case: lowp and its baselines. A provider turns a Problem into a callable to time (all setup —
weight quantization, layout changes, compilation — happens before, untimed) or says why it cannot run it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lowp_ops import quant, reference
from lowp_ops._validate import fp8_supported
from lowp_ops.nn import Int8Conv2d

from .cases import Problem

CL = torch.channels_last


@dataclass
class Provider:
    name: str
    description: str
    ops: tuple[str, ...]  # the ops it has a version of
    min_sqnr_db: float  # what its output must reach against FP32 before it is timed (int8_mm: exact instead)
    build: Callable[[Problem], Callable | str]  # a callable returning the output, or why it cannot run here


def _needs_cuda(p: Problem) -> str | None:
    return None if p.reference.is_cuda else "needs a CUDA device"


_FP8_OPS = ("fp8_mm", "fp8_linear")


def _no_fp8(p: Problem) -> str | None:
    """Why an FP8 GEMM cannot run here: a GPU older than sm_89 has no e4m3 Tensor Cores (the CPU runs it)."""
    if not fp8_supported(p.reference.device):
        return "FP8 needs sm_89 or newer"
    return None


# ---------------------------------------------------------------------------------------------------- lowp


def _lowp_fp8(p: Problem, fast_accum: bool):
    """fp8_mm: bfloat16 out, as torch._scaled_mm's row-wise path; fp8_linear: fp16 in and out, dynamic per-token
    e4m3 activations, per-channel e4m3 weights quantized before timing."""
    if (reason := _no_fp8(p)) is not None:
        return reason
    d = p.data
    if p.op == "fp8_mm":
        return lambda: torch.ops.lowp.fp8_mm(d["a"], d["b"], d["a_scale"], d["b_scale"], out_dtype=torch.bfloat16,
                                             use_fast_accum=fast_accum)
    qw = quant.quantize_tensor(d["w"], quant.Fp8Spec(granularity="per_channel", axis=0))
    x16, b16 = d["x"].half(), d["b"].half()
    return lambda: torch.ops.lowp.fp8_linear(x16, qw.qdata, qw.scale, b16, use_fast_accum=fast_accum)


def _lowp(p: Problem):
    d = p.data
    if p.op in _FP8_OPS:
        return _lowp_fp8(p, fast_accum=False)
    if p.op == "int8_mm":
        return lambda: torch.ops.lowp.int8_mm(d["a"], d["b"])
    if p.op == "int8_linear":
        qw = quant.quantize_tensor(d["w"], quant.per_channel(axis=0))
        x16, b16 = d["x"].half(), d["b"].half()
        return lambda: torch.ops.lowp.int8_linear(x16, qw.qdata, qw.scale, b16)
    if p.op == "fp16_mm":
        return lambda: torch.ops.lowp.fp16_mm(d["a"], d["b"])
    if p.op == "fp16_linear_train":
        x = d["x"].half().requires_grad_()
        w = d["w"].half().requires_grad_()
        b, g = d["b"].clone().requires_grad_(), d["g"].half()

        def step():
            y = torch.ops.lowp.fp16_linear(x, w, b)
            y.backward(g)
            return y
        return step
    if p.op == "int8_conv":
        return _lowp_conv(p, affine=False)
    if p.op == "quantize":
        x = d["x"]

        def run():
            q, s = torch.ops.lowp.quantize_per_token(x)
            return q.float() * s[:, None]
        return run
    return "not a lowp op"


def _lowp_conv(p: Problem, affine: bool):
    """A static Int8Conv2d on int8 NHWC input, as the previous layer hands it over; fp16 out. affine: with an input
    zero point (what Int8StaticConfig's affine activations give): padding then reads the zero point."""
    d = p.data
    stride, pad, groups = d["geometry"]
    conv = torch.nn.Conv2d(d["x"].shape[1], d["w"].shape[0], d["w"].shape[2], stride, pad, groups=groups,
                           device=d["x"].device)
    with torch.no_grad():
        conv.weight.copy_(d["w"])
        conv.bias.copy_(d["b"])
    lo, hi = d["x"].aminmax()
    scale, zero_point = quant.choose_qparams(lo, hi, reference.INT8_AFFINE if affine else reference.INT8_PER_TENSOR)
    m = Int8Conv2d.from_float(conv, input_scale=scale.reshape(1),
                              input_zero_point=zero_point.reshape(1) if affine else None, out_dtype=torch.float16)
    q = torch.ops.lowp.quantize_channels_last(d["x"], m.input_scale, m.input_zero_point)
    return lambda: m(q)


# --------------------------------------------------------------------------------------- torch / cuBLAS / cuDNN


def _torch_float(dtype: torch.dtype, tf32: bool):
    def build(p: Problem):
        d = p.data
        if p.op in ("int8_mm", "fp8_mm", "quantize"):
            return "no float version of this op"
        if p.op in ("int8_linear", "fp8_linear"):
            x, w, b = d["x"].to(dtype), d["w"].to(dtype), d["b"].to(dtype)
            return lambda: F.linear(x, w, b)
        if p.op == "fp16_mm":
            a, b = d["a"].to(dtype), d["b"].to(dtype)
            return lambda: a @ b
        if p.op == "fp16_linear_train":
            x, w = d["x"].to(dtype).requires_grad_(), d["w"].to(dtype).requires_grad_()
            b, g = d["b"].to(dtype).requires_grad_(), d["g"].to(dtype)

            def step():
                y = F.linear(x, w, b)
                y.backward(g)
                return y
            return step
        if p.op == "int8_conv":
            stride, pad, groups = d["geometry"]
            fmt = CL if dtype != torch.float32 else torch.contiguous_format  # cuDNN FP16 wants NHWC; FP32 NCHW
            x, w = d["x"].to(dtype).contiguous(memory_format=fmt), d["w"].to(dtype).contiguous(memory_format=fmt)
            b = d["b"].to(dtype)
            return lambda: F.conv2d(x, w, b, stride, pad, 1, groups)
        return "unsupported op"

    def guarded(p):
        if dtype != torch.float32 and not p.reference.is_cuda and p.op == "int8_conv":
            return "half-precision conv needs CUDA"
        result = build(p)
        if callable(result) and dtype == torch.float32 and p.reference.is_cuda:
            def timed():  # set the TF32 switches on every call: other providers change them
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
                return result()
            return timed
        return result
    return guarded


def _int_mm(p: Problem):
    if p.op != "int8_mm":
        return "int8_mm only"
    a, b = p.data["a"], p.data["b"]
    M, K = a.shape
    if a.is_cuda and (M <= 16 or K % 8 or b.shape[0] % 8):
        return "cuBLASLt int8 needs M > 16 and K, N multiples of 8"
    bt = b.T
    return lambda: torch._int_mm(a, bt)


def _eager_w8a8(p: Problem):
    """The unfused W8A8 linear: quantize rows with torch ops, torch._int_mm, dequantize + bias with torch ops."""
    if p.op != "int8_linear":
        return "int8_linear only"
    qw = quant.quantize_tensor(p.data["w"], quant.per_channel(axis=0))
    x, b, wt, ws = p.data["x"].half(), p.data["b"].half(), qw.qdata.T, qw.scale
    M = x.shape[0]
    if x.is_cuda and (M <= 16 or x.shape[1] % 8 or wt.shape[1] % 8):
        return "torch._int_mm needs M > 16 and K, N multiples of 8"

    def run():
        s = x.abs().amax(dim=1, keepdim=True).float().clamp_min(quant.MIN_SCALE * 127) / 127
        q = torch.round(x.float() / s).clamp(-127, 127).to(torch.int8)
        return (torch._int_mm(q, wt).float() * s * ws + b.float()).half()
    return run


def _fp8(p: Problem):
    if not p.reference.is_cuda or not fp8_supported(p.reference.device):
        return "FP8 needs sm_89 or newer"
    if p.op not in ("fp16_mm", "int8_linear"):
        return "GEMM ops only"
    if p.op == "fp16_mm":
        a, bt = p.data["a"], p.data["b"].T  # (N, K)
    else:
        a, bt = p.data["x"], p.data["w"]
    if a.shape[0] % 16 or a.shape[1] % 16 or bt.shape[0] % 16:
        return "torch._scaled_mm needs dims that are multiples of 16"
    e4m3 = torch.float8_e4m3fn
    sa = (a.abs().max().float() / torch.finfo(e4m3).max).reshape(())
    sb = (bt.abs().max().float() / torch.finfo(e4m3).max).reshape(())
    a8 = (a.float() / sa).to(e4m3)
    b8 = (bt.float() / sb).to(e4m3).T  # column-major (K, N), as _scaled_mm wants
    return lambda: torch._scaled_mm(a8, b8, scale_a=sa, scale_b=sb, out_dtype=torch.float16)


def _fp8_rowwise(fast_accum: bool):
    """torch._scaled_mm with row-wise scales: scale_a (M, 1), scale_b (1, N), float32. On CUDA row-wise scaling
    requires bfloat16 output, so fp8_mm is compared at bfloat16 out and this fp8_linear casts to fp16 at the end.
    fp8_linear is built from torch ops around it, as a user would without lowp: per-token amax, divide, clamp to
    ±448, cast to e4m3; the weight is quantized per output channel before timing."""
    def build(p: Problem):
        if (reason := _no_fp8(p)) is not None:
            return reason
        d = p.data
        if (d["a"] if p.op == "fp8_mm" else d["x"]).shape[1] % 16 or p.reference.shape[1] % 16:
            return "torch._scaled_mm needs K and N multiples of 16"
        if p.op == "fp8_mm":
            a, bt = d["a"], d["b"].T  # bt: (K, N) column-major, as _scaled_mm wants
            sa, sb = d["a_scale"][:, None], d["b_scale"][None, :]

            def run():
                return torch._scaled_mm(a, bt, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16,
                                        use_fast_accum=fast_accum)
        else:
            qw = quant.quantize_tensor(d["w"], quant.Fp8Spec(granularity="per_channel", axis=0))
            x, wt, sw, b = d["x"].half(), qw.qdata.T, qw.scale[None, :], d["b"].bfloat16()
            e4m3, qmax = torch.float8_e4m3fn, torch.finfo(torch.float8_e4m3fn).max

            def run():
                s = x.abs().amax(dim=1, keepdim=True).float().clamp_min(quant.MIN_SCALE * qmax) / qmax
                q = (x.float() / s).clamp(-qmax, qmax).to(e4m3)
                return torch._scaled_mm(q, wt, scale_a=s, scale_b=sw, bias=b, out_dtype=torch.bfloat16,
                                        use_fast_accum=fast_accum).half()
        try:
            run()
        except RuntimeError as e:  # a build or device that refuses this case (sm_89 row-wise, a shape): say so
            return f"torch._scaled_mm failed: {str(e).splitlines()[0][:100]}"
        return run
    return build


def _copy(p: Problem):
    if p.op != "quantize":
        return "quantize only"
    x = p.data["x"]
    out = torch.empty(x.numel() * 3 // 2 + x.shape[0] * 4, dtype=torch.uint8, device=x.device)
    src = torch.empty_like(out).random_()
    return lambda: (out.copy_(src), x.float())[1]  # the same bytes moved; the check sees x itself


# ------------------------------------------------------------------------------------------- CuPy / torchao


def _cupy(dtype: str):
    """cuBLAS gemmEx called directly through CuPy, on torch's stream: an independent baseline."""
    def build(p: Problem):
        if (reason := _needs_cuda(p)) is not None:
            return reason
        try:
            import cupy
            from cupy.cuda import cublas
        except ImportError:
            return "CuPy not installed"
        if (dtype == "int8") != (p.op == "int8_mm") or p.op not in ("int8_mm", "fp16_mm"):
            return "int8_mm (int8) / fp16_mm (fp16) only"
        CUDA_R_16F, CUDA_R_8I, CUDA_R_32I = 2, 3, 10  # cudaDataType_t
        COMPUTE_32F, COMPUTE_32I, OP_N, OP_T, GEMM_DEFAULT = 68, 72, 0, 1, -1  # cublasComputeType_t, ...
        import numpy as np

        if p.op == "int8_mm":
            a, b = p.data["a"], p.data["b"]  # (M, K), (N, K) row-major
            M, K = a.shape
            N = b.shape[0]
            c = torch.empty(M, N, dtype=torch.int32, device=a.device)
            one, zero = np.array(1, dtype=np.int32), np.array(0, dtype=np.int32)
            # row-major C = A·Bᵀ is column-major Cᵀ = B·Aᵀ: op(B) = T on B's (K, N) column-major view, Aᵀ as is
            args = (OP_T, OP_N, N, M, K, one.ctypes.data, b.data_ptr(), CUDA_R_8I, K, a.data_ptr(), CUDA_R_8I, K,
                    zero.ctypes.data, c.data_ptr(), CUDA_R_32I, N, COMPUTE_32I, GEMM_DEFAULT)
        else:
            a, b = p.data["a"], p.data["b"]  # (M, K), (K, N) row-major
            M, K = a.shape
            N = b.shape[1]
            c = torch.empty(M, N, dtype=torch.float16, device=a.device)
            one, zero = np.array(1, dtype=np.float32), np.array(0, dtype=np.float32)
            # row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ, both already in that layout
            args = (OP_N, OP_N, N, M, K, one.ctypes.data, b.data_ptr(), CUDA_R_16F, N, a.data_ptr(), CUDA_R_16F, K,
                    zero.ctypes.data, c.data_ptr(), CUDA_R_16F, N, COMPUTE_32F, GEMM_DEFAULT)
        handle = cupy.cuda.device.get_cublas_handle()
        keep = (one, zero)  # alive as long as the closure

        def run():
            with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
                cublas.gemmEx(handle, *args)
            assert keep
            return c
        return run
    return build


def _torchao(p: Problem):
    if p.op != "int8_linear":
        return "int8_linear only"
    if (reason := _needs_cuda(p)) is not None:
        return reason
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return "torchao not installed"
    layer = torch.nn.Linear(p.data["w"].shape[1], p.data["w"].shape[0], device=p.data["w"].device).half()
    with torch.no_grad():
        layer.weight.copy_(p.data["w"])
        layer.bias.copy_(p.data["b"])
    quantize_(layer, Int8DynamicActivationInt8WeightConfig())
    compiled = torch.compile(copy.deepcopy(layer))
    x = p.data["x"].half()
    try:
        compiled(x)
    except Exception as e:  # torchao refuses some shapes (M <= 16): report, don't crash the run
        return f"torchao failed: {type(e).__name__}: {str(e)[:80]}"
    return lambda: compiled(x)


_GEMMS = ("int8_linear", "fp8_linear", "fp16_mm", "fp16_linear_train")
_FLOAT = _GEMMS + ("int8_conv",)
PROVIDERS = {p.name: p for p in [
    Provider("lowp", "lowp Triton kernels (int8 / fp8 / fp16 tensor cores, fused epilogues)",
             ("int8_mm", "int8_linear", *_FP8_OPS, "fp16_mm", "fp16_linear_train", "int8_conv", "quantize"), 30.0,
             _lowp),
    Provider("lowp_affine", "lowp INT8 conv with an input zero point (static affine activations)", ("int8_conv",),
             30.0, lambda p: _lowp_conv(p, affine=True)),
    Provider("lowp_fast_accum", "lowp FP8 with use_fast_accum=True (whole K in sm_90's fp8 accumulator)", _FP8_OPS,
             30.0, lambda p: _lowp_fp8(p, fast_accum=True)),
    Provider("torch_fp32", "torch FP32 (cuBLAS / cuDNN, TF32 off)", _FLOAT, 60.0, _torch_float(torch.float32, False)),
    Provider("torch_tf32", "torch TF32 (cuBLAS / cuDNN)", _FLOAT, 35.0, _torch_float(torch.float32, True)),
    Provider("torch_fp16", "torch FP16 (cuBLAS; cuDNN channels_last)", _FLOAT, 35.0,
             _torch_float(torch.float16, False)),
    Provider("torch_bf16", "torch BF16 (cuBLAS; cuDNN channels_last)", _FLOAT, 30.0,
             _torch_float(torch.bfloat16, False)),
    Provider("torch_int_mm", "torch._int_mm (cuBLASLt INT8)", ("int8_mm",), 0.0, _int_mm),
    Provider("eager_w8a8", "unfused W8A8 in torch ops around torch._int_mm", ("int8_linear",), 30.0, _eager_w8a8),
    Provider("torch_fp8", "torch._scaled_mm FP8 e4m3, per-tensor scales", ("fp16_mm", "int8_linear"), 20.0, _fp8),
    Provider("torch_fp8_rowwise", "torch._scaled_mm FP8 e4m3, row-wise scales, bf16 out (fp8_linear: + torch ops)",
             _FP8_OPS, 30.0, _fp8_rowwise(fast_accum=False)),
    Provider("torch_fp8_rowwise_fast", "torch_fp8_rowwise with use_fast_accum=True", _FP8_OPS, 30.0,
             _fp8_rowwise(fast_accum=True)),
    Provider("cupy_int8", "cuBLAS gemmEx INT8 through CuPy", ("int8_mm",), 0.0, _cupy("int8")),
    Provider("cupy_fp16", "cuBLAS gemmEx FP16 through CuPy", ("fp16_mm",), 35.0, _cupy("fp16")),
    Provider("torchao", "torchao Int8DynamicActivationInt8Weight + torch.compile", ("int8_linear",), 30.0, _torchao),
    Provider("copy", "device-to-device copy of the same bytes (bandwidth ceiling)", ("quantize",), 0.0, _copy),
]}
