"""lowp::fp8_mm and lowp::fp8_linear: FP8 (e4m3) GEMM, row-wise scaled, with the fused float epilogue.

The same GEMM kernel as INT8 (kernels/gemm.py, an fp8 variant of it), accumulating in float32. Non-finite input:
e4m3 has a NaN code, so NaN in x or among the codes gives NaN where it enters (the row of x, the column of the
weight), as a float matmul would; ±inf in x saturates to ±448 · scale when quantized with a given scale, and a row
holding ±inf or NaN quantized dynamically gets scale NaN, so its outputs are NaN. A product beyond the output
dtype's range is ±inf, as in a float16 matmul.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from .._validate import FLOAT_DTYPES, check_scale
from ..quant import MIN_SCALE
from ._common import (
    Lane,
    check_epilogue,
    check_fp8_device,
    check_linear_operands,
    check_out_dtype,
    flat,
    rows,
)
from .backends import dispatch
from .int8 import inference_only

FP8 = torch.float8_e4m3fn


def _check_fp8_mm(a, b, a_scale, b_scale, bias, activation, out_dtype) -> torch.dtype:
    """Validate; returns the output dtype (None resolved)."""
    op, like = "fp8_mm", ("a", a)
    M, N, _ = check_linear_operands(op, ("a", "b"), a, b, (FP8,), FP8)
    check_fp8_device(op, "a", a)
    out_dtype = check_out_dtype(op, torch.float32 if out_dtype is None else out_dtype, FLOAT_DTYPES)
    check_scale(op, "a_scale", a_scale, like, ((M,), tuple(a.shape[:-1])), "one scale per row", required=True)
    check_scale(op, "b_scale", b_scale, like, [(N,)], "one scale per output column", required=True)
    check_epilogue(op, like, N, bias, activation, out_dtype, None, None)
    return out_dtype


@triton_op("lowp::fp8_mm", mutates_args={})
def fp8_mm(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, bias: Tensor | None = None,
           activation: str = "none", out_dtype: torch.dtype | None = None, use_fast_accum: bool = False) -> Tensor:
    """FP8 matmul, row-wise scaled, with a fused epilogue: out = activation((a · bᵀ) · a_scale · b_scale + bias).

    a: (..., K) float8_e4m3fn, contiguous along K. b: (N, K) float8_e4m3fn, contiguous along K (nn.Linear's weight
    layout; sm_90's fp8 Tensor Cores take both operands K-major). a_scale: float32, one per row of a (shaped (M,) or
    a.shape[:-1], as quantize_per_token returns it) or one element; b_scale: float32, (N,) or one element; both
    finite and normal (>= 2^-126), checked on eager calls only. bias: (N,) float. activation: "none" | "relu" |
    "relu6" | "gelu". out_dtype: float16 / bfloat16 / float32 (default float32). Returns (..., N).
    Accumulation is float32: exact products (e4m3 · e4m3 has 8 significant bits), each BLOCK_K slice summed in
    the Tensor Cores and added in float32. use_fast_accum=True (CUDA): the whole reduction in sm_90's fp8
    accumulator, which keeps fewer bits (kernels/gemm.py) and is faster, as torch._scaled_mm's flag of that name;
    CPU tensors accumulate in float32 either way. No bound on K: nothing overflows a float32 accumulator here.
    NaN / inf: lowp_ops/ops/fp8.py's docstring.

    >>> a = torch.randn(3, 16).to(torch.float8_e4m3fn); b = torch.randn(4, 16).to(torch.float8_e4m3fn)
    >>> y = torch.ops.lowp.fp8_mm(a, b, torch.ones(3), torch.ones(4))
    >>> torch.allclose(y, a.float() @ b.float().T)
    True
    """
    out_dtype = _check_fp8_mm(a, b, a_scale, b_scale, bias, activation, out_dtype)
    return _fp8_mm(a, b, a_scale, b_scale, bias, activation, out_dtype, use_fast_accum)


def _fp8_mm(a, b, a_scale, b_scale, bias, activation, out_dtype, use_fast_accum) -> Tensor:
    """fp8_mm after validation, out_dtype resolved (the op, and its Lane)."""
    M, K = rows(a)
    out = dispatch("fp8_mm", "fp8_gemm", a.reshape(M, K), b, a_scale=flat(a_scale), b_scale=flat(b_scale),
                   bias=flat(bias), activation=activation, out_dtype=out_dtype, fast_accum=use_fast_accum)
    # not a view of the (M, N) result: in-place ops after it stay legal with grad on (fp16_linear)
    return out.reshape(*a.shape[:-1], b.shape[0]).detach()


@fp8_mm.register_fake
def _fp8_mm_fake(a, b, a_scale, b_scale, bias=None, activation="none", out_dtype=None, use_fast_accum=False):
    out_dtype = _check_fp8_mm(a, b, a_scale, b_scale, bias, activation, out_dtype)
    return a.new_empty((*a.shape[:-1], b.shape[0]), dtype=out_dtype)


def _check_fp8_linear(x, weight, weight_scale, bias, x_scale, activation, out_dtype) -> torch.dtype:
    """Validate; returns the output dtype (None resolved)."""
    op, like = "fp8_linear", ("x", x)
    _, N, _ = check_linear_operands(op, ("x", "weight"), x, weight, FLOAT_DTYPES, FP8)
    check_fp8_device(op, "x", x)
    out_dtype = check_out_dtype(op, x.dtype if out_dtype is None else out_dtype, FLOAT_DTYPES)
    check_scale(op, "x_scale", x_scale, like, what="static per-tensor activation scale")
    check_scale(op, "weight_scale", weight_scale, like, [(N,)], "one scale per output column", required=True)
    check_epilogue(op, like, N, bias, activation, out_dtype, None, None)
    return out_dtype


@triton_op("lowp::fp8_linear", mutates_args={})
def fp8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Tensor | None = None,
               x_scale: Tensor | None = None, activation: str = "none", out_dtype: torch.dtype | None = None,
               use_fast_accum: bool = False) -> Tensor:
    """FP8 W8A8 linear: quantize x to e4m3, multiply by the e4m3 weight, scale, bias, activation — two kernels.

    x: (..., K) float16 / bfloat16 / float32, contiguous along K. weight: (N, K) float8_e4m3fn (e.g.
    lowp_ops.quant.quantize_tensor(w, Fp8Spec(granularity="per_channel", axis=0)).qdata); weight_scale: float32
    (N,) or one element; bias: (N,) float. Activation quantization: dynamic per token (scale = amax / 448 per row)
    when x_scale is None, else static per tensor with x_scale (float32, one element), saturating at ±448.
    Returns y: (..., N) in out_dtype (float16 / bfloat16 / float32, default x.dtype). use_fast_accum: as fp8_mm.
    Scales finite and normal (>= 2^-126), checked on eager calls only. NaN / inf: lowp_ops/ops/fp8.py's docstring.

    >>> from lowp_ops import quant
    >>> lin = torch.nn.Linear(64, 32)
    >>> qw = quant.quantize_tensor(lin.weight, quant.Fp8Spec(granularity="per_channel", axis=0))
    >>> x = torch.randn(4, 64)
    >>> y = torch.ops.lowp.fp8_linear(x, qw.qdata, qw.scale, lin.bias)
    >>> quant.sqnr_db(lin(x), y) > 25
    True
    """
    out_dtype = _check_fp8_linear(x, weight, weight_scale, bias, x_scale, activation, out_dtype)
    return _fp8_linear(x, weight, weight_scale, bias, x_scale, activation, out_dtype, use_fast_accum)


def _fp8_linear(x, weight, weight_scale, bias, x_scale, activation, out_dtype, use_fast_accum) -> Tensor:
    """fp8_linear after validation, out_dtype resolved (the op, and its Lane)."""
    M, K = rows(x)
    x2 = x.reshape(M, K)
    if x_scale is None:
        q, a_scale = dispatch("fp8_linear", "quantize_rows", x2, min_scale=MIN_SCALE, dtype=FP8)
    else:
        q, a_scale = dispatch("fp8_linear", "quantize_rows", x2, scale=flat(x_scale), dtype=FP8)
    out = dispatch("fp8_linear", "fp8_gemm", q, weight, a_scale=a_scale, b_scale=flat(weight_scale),
                   bias=flat(bias), activation=activation, out_dtype=out_dtype, fast_accum=use_fast_accum)
    # not a view of the (M, N) result: in-place ops after it stay legal with grad on (fp16_linear)
    return out.reshape(*x.shape[:-1], weight.shape[0]).detach()


@fp8_linear.register_fake
def _fp8_linear_fake(x, weight, weight_scale, bias=None, x_scale=None, activation="none", out_dtype=None,
                     use_fast_accum=False):
    out_dtype = _check_fp8_linear(x, weight, weight_scale, bias, x_scale, activation, out_dtype)
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=out_dtype)


inference_only(fp8_mm, "Fp8Linear")
inference_only(fp8_linear, "Fp8Linear")
eager_fp8_mm = Lane(fp8_mm, _check_fp8_mm, _fp8_mm)
eager_fp8_linear = Lane(fp8_linear, _check_fp8_linear, _fp8_linear)
