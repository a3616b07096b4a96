"""torch.ops.lowp: the torch.library registrations.

Every op is a `triton_op`, so torch.compile traces into the Triton kernels it launches (through wrap_triton).
CUDA tensors run the Triton kernels; CPU tensors run lowp_ops.reference (the same arithmetic, bit for bit on
integer outputs); other devices are refused. Each op has a fake implementation (shape and dtype only, after the
same validation), and none has autograd: these are inference ops on integer data.

    quantize_per_token(x)                         float (..., K) -> int8 (..., K), float32 scales (...)
    quantize_per_tensor(x, scale, zero_point)     float (...)    -> int8 (...)
    int8_mm(a, b, a_scale, b_scale, bias, ...)    int8 (..., K) x int8 (N, K)ᵀ -> (..., N), fused epilogue
    int8_linear(x, weight, weight_scale, ...)     float (..., K) -> quantize -> int8_mm -> (..., N)
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.library import triton_op, wrap_triton

from . import kernels, reference
from ._validate import (ACTIVATIONS, FLOAT_DTYPES, MAX_K, check_activation, check_k_contiguous, check_numel,
                        check_scale_values, check_tensor, fail)
from .quant import MIN_SCALE

_OUT_DTYPES = (torch.int32, torch.int8) + FLOAT_DTYPES


def _run(op: str, launcher, ref, *args, **kwargs):
    """CUDA -> the Triton launcher (through wrap_triton), CPU -> the reference."""
    device = args[0].device
    if device.type == "cuda":
        return launcher(*args, wrap=wrap_triton, **kwargs)
    if device.type == "cpu":
        return ref(*args, **kwargs)
    fail(op, f"tensors on {device} are not supported: use cuda (Triton kernels) or cpu (reference)")


def _flat(t: Optional[Tensor]) -> Optional[Tensor]:
    """Per-row / per-column / per-tensor parameters as the contiguous 1-D vectors the kernels index."""
    return None if t is None else t.reshape(-1).contiguous()


def _rows(x: Tensor) -> tuple[int, int]:
    """x (..., K) viewed as a matrix: (M, K) with M the product of the leading dims."""
    return math.prod(x.shape[:-1]), x.shape[-1]


def _check_matrix_input(op: str, name: str, x: Tensor, dtypes) -> None:
    check_tensor(op, name, x, dtypes=dtypes)
    if x.ndim < 1:
        fail(op, f"argument '{name}' must have at least 1 dim (..., K), got a 0-d tensor")
    check_k_contiguous(op, name, x)


def _check_epilogue(op: str, x: Tensor, M: int, N: int, *, a_scale, b_scale, bias, a_zero_point, b_sum,
                    activation, out_dtype, out_scale, out_zero_point, names: dict) -> None:
    """The epilogue arguments shared by int8_mm and int8_linear (names: how this op calls a_scale etc.)."""
    dev = x.device
    check_activation(op, activation)
    if a_scale is not None:
        check_tensor(op, names["a_scale"], a_scale, dtypes=(torch.float32,), device=dev, device_of="a")
        check_numel(op, names["a_scale"], a_scale, (1, M), f"one scale per row (M={M}) or one for all")
    check_tensor(op, names["b_scale"], b_scale, dtypes=(torch.float32,), device=dev, device_of=names["a"])
    check_numel(op, names["b_scale"], b_scale, (1, N), f"one scale per output column (N={N}) or one for all")
    if bias is not None:
        check_tensor(op, "bias", bias, dtypes=FLOAT_DTYPES, ndim=1, device=dev, device_of=names["a"])
        check_numel(op, "bias", bias, (N,), f"one value per output column (N={N})")
    if a_zero_point is not None:
        check_tensor(op, names["a_zero_point"], a_zero_point, dtypes=(torch.int32,), device=dev,
                     device_of=names["a"])
        check_numel(op, names["a_zero_point"], a_zero_point, (1, M), f"one zero point per row (M={M}) or one")
    if b_sum is not None:
        check_tensor(op, names["b_sum"], b_sum, dtypes=(torch.int32,), ndim=1, device=dev, device_of=names["a"])
        check_numel(op, names["b_sum"], b_sum, (N,), f"Σ_k {names['b']}[n, k] for each of the N={N} rows")
        if a_zero_point is None:
            fail(op, f"argument '{names['b_sum']}' only serves the zero-point correction; "
                     f"give '{names['a_zero_point']}' too or leave it out")
    if out_dtype == torch.int8:
        if out_scale is None:
            fail(op, "out_dtype int8 requantizes the output and needs 'out_scale' (float32, one element)")
        check_tensor(op, "out_scale", out_scale, dtypes=(torch.float32,), device=dev, device_of=names["a"])
        check_numel(op, "out_scale", out_scale, (1,), "one element (per-tensor output scale)")
        if out_zero_point is not None:
            check_tensor(op, "out_zero_point", out_zero_point, dtypes=(torch.int32,), device=dev,
                         device_of=names["a"])
            check_numel(op, "out_zero_point", out_zero_point, (1,), "one element (per-tensor zero point)")
    elif out_scale is not None or out_zero_point is not None:
        fail(op, f"'out_scale' / 'out_zero_point' only apply to out_dtype int8, got out_dtype {out_dtype}")
    for name, t in ((names["a_scale"], a_scale), (names["b_scale"], b_scale), ("out_scale", out_scale)):
        check_scale_values(op, name, t)


# ---------------------------------------------------------------------------------------------- quantize


def _check_quantize_per_token(x: Tensor) -> None:
    _check_matrix_input("quantize_per_token", "x", x, FLOAT_DTYPES)


@triton_op("lowp::quantize_per_token", mutates_args={})
def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """Dynamic symmetric int8 quantization, one scale per row ("token").

    x: (..., K) float16 / bfloat16 / float32, contiguous along K.
    Returns q: (..., K) int8 in [-127, 127] and scale: (...) float32, with x ≈ q * scale[..., None] and
    scale = max(max_k |x| / 127, MIN_SCALE).

    >>> q, s = torch.ops.lowp.quantize_per_token(torch.tensor([[0.5, -1.0, 0.25]]))
    >>> q.tolist(), s.tolist()
    ([[64, -127, 32]], [0.007874015718698502])
    """
    _check_quantize_per_token(x)
    M, K = _rows(x)
    q, scale = _run("quantize_per_token", kernels.quantize_rows, reference.quantize_rows, x.reshape(M, K),
                    **({"min_scale": MIN_SCALE} if x.device.type == "cuda" else {}))
    return q.reshape(x.shape), scale.reshape(x.shape[:-1])


@quantize_per_token.register_fake
def _(x):
    _check_quantize_per_token(x)
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32)


def _check_quantize_per_tensor(x: Tensor, scale: Tensor, zero_point: Optional[Tensor]) -> None:
    op = "quantize_per_tensor"
    _check_matrix_input(op, "x", x, FLOAT_DTYPES)
    check_tensor(op, "scale", scale, dtypes=(torch.float32,), device=x.device, device_of="x")
    check_numel(op, "scale", scale, (1,), "one element (per-tensor scale)")
    if zero_point is not None:
        check_tensor(op, "zero_point", zero_point, dtypes=(torch.int32,), device=x.device, device_of="x")
        check_numel(op, "zero_point", zero_point, (1,), "one element (per-tensor zero point)")
    check_scale_values(op, "scale", scale)


@triton_op("lowp::quantize_per_tensor", mutates_args={})
def quantize_per_tensor(x: Tensor, scale: Tensor, zero_point: Optional[Tensor] = None) -> Tensor:
    """Static affine int8 quantization with a given per-tensor scale and zero point (from calibration).

    x: (..., K) float16 / bfloat16 / float32, contiguous along K; scale: float32, one element; zero_point: int32,
    one element (None: 0). Returns (..., K) int8 = clamp(round_half_even(x * (1 / scale)) + zero_point, -128, 127),
    bit-identical to torch.fake_quantize_per_tensor_affine's integer grid.
    """
    _check_quantize_per_tensor(x, scale, zero_point)
    M, K = _rows(x)
    q, _ = _run("quantize_per_tensor", kernels.quantize_rows, reference.quantize_rows, x.reshape(M, K),
                scale=_flat(scale), zero_point=_flat(zero_point))
    return q.reshape(x.shape)


@quantize_per_tensor.register_fake
def _(x, scale, zero_point=None):
    _check_quantize_per_tensor(x, scale, zero_point)
    return x.new_empty(x.shape, dtype=torch.int8)


# ---------------------------------------------------------------------------------------------- int8_mm

_MM_NAMES = {"a": "a", "b": "b", "a_scale": "a_scale", "b_scale": "b_scale", "a_zero_point": "a_zero_point",
             "b_sum": "b_sum"}


def _check_int8_mm(a, b, a_scale, b_scale, bias, a_zero_point, b_sum, activation, out_dtype, out_scale,
                   out_zero_point) -> torch.dtype:
    """Validate; returns the output dtype (None resolved)."""
    op = "int8_mm"
    _check_matrix_input(op, "a", a, (torch.int8,))
    check_tensor(op, "b", b, dtypes=(torch.int8,), ndim=2, device=a.device, device_of="a")
    M, K = _rows(a)
    N = b.shape[0]
    if b.shape[1] != K:
        fail(op, f"argument 'b' must be (N, K) with K = a.shape[-1] = {K}, got shape {tuple(b.shape)}")
    check_k_contiguous(op, "b", b)
    if K > MAX_K:
        fail(op, f"K = {K} can overflow the int32 accumulator; at most {MAX_K} is supported")
    if out_dtype is None:
        out_dtype = torch.int32 if a_scale is None and b_scale is None else torch.float32
    if out_dtype not in _OUT_DTYPES:
        fail(op, f"argument 'out_dtype' must be int32, int8, float16, bfloat16 or float32, got {out_dtype}",
             TypeError)
    if out_dtype == torch.int32:
        given = [n for n, v in (("a_scale", a_scale), ("b_scale", b_scale), ("bias", bias),
                                ("a_zero_point", a_zero_point), ("b_sum", b_sum), ("out_scale", out_scale),
                                ("out_zero_point", out_zero_point)) if v is not None]
        if activation != "none":
            given.append("activation")
        if given:
            fail(op, f"out_dtype int32 returns the raw accumulator, so {', '.join(given)} cannot apply; "
                     f"ask for a float or int8 out_dtype")
        return out_dtype
    for name, t in (("a_scale", a_scale), ("b_scale", b_scale)):
        if t is None:
            fail(op, f"argument '{name}' is required for out_dtype {str(out_dtype).removeprefix('torch.')}")
    _check_epilogue(op, a, M, N, a_scale=a_scale, b_scale=b_scale, bias=bias, a_zero_point=a_zero_point,
                    b_sum=b_sum, activation=activation, out_dtype=out_dtype, out_scale=out_scale,
                    out_zero_point=out_zero_point, names=_MM_NAMES)
    return out_dtype


@triton_op("lowp::int8_mm", mutates_args={})
def int8_mm(a: Tensor, b: Tensor, a_scale: Optional[Tensor] = None, b_scale: Optional[Tensor] = None,
            bias: Optional[Tensor] = None, a_zero_point: Optional[Tensor] = None, b_sum: Optional[Tensor] = None,
            activation: str = "none", out_dtype: Optional[torch.dtype] = None, out_scale: Optional[Tensor] = None,
            out_zero_point: Optional[Tensor] = None) -> Tensor:
    """INT8 matmul with a fused epilogue: out = epilogue(a · bᵀ).

    a: (..., K) int8, contiguous along K. b: (N, K) int8, contiguous along K (nn.Linear's weight layout).
    out_dtype int32 (the default without scales): the raw int32 accumulator, nothing else may be given.
    Otherwise a_scale (float32, (M,) = one per row of a, or one element) and b_scale (float32, (N,) or one)
    are required and
        y = ((acc − a_zero_point · b_sum) · a_scale) · b_scale + bias,  then activation
    ("none" | "relu" | "relu6" | "gelu"), returned as float16 / bfloat16 / float32 (default float32), or, with
    out_dtype int8, requantized: clamp(round(y / out_scale) + out_zero_point, -128, 127) so int8 layers chain.
    a_zero_point: int32, (M,) or one (affine activations); b_sum: int32 (N,) = b.sum(1), computed when omitted.
    Returns (..., N). Any M (1..16 included), any N, K <= 131072.

    >>> a = torch.randint(-128, 128, (3, 5), dtype=torch.int8); b = torch.randint(-128, 128, (4, 5), dtype=torch.int8)
    >>> torch.equal(torch.ops.lowp.int8_mm(a, b), a.int() @ b.int().T)
    True
    """
    out_dtype = _check_int8_mm(a, b, a_scale, b_scale, bias, a_zero_point, b_sum, activation, out_dtype,
                               out_scale, out_zero_point)
    M, K = _rows(a)
    if a_zero_point is not None and b_sum is None:
        b_sum = b.sum(dim=1, dtype=torch.int32)
    out = _run("int8_mm", kernels.int8_gemm, reference.int8_gemm, a.reshape(M, K), b,
               a_scale=_flat(a_scale), b_scale=_flat(b_scale), bias=_flat(bias),
               a_zero_point=_flat(a_zero_point), b_sum=_flat(b_sum), activation=activation, out_dtype=out_dtype,
               out_scale=_flat(out_scale), out_zero_point=_flat(out_zero_point))
    return out.reshape(*a.shape[:-1], b.shape[0])


@int8_mm.register_fake
def _(a, b, a_scale=None, b_scale=None, bias=None, a_zero_point=None, b_sum=None, activation="none",
      out_dtype=None, out_scale=None, out_zero_point=None):
    out_dtype = _check_int8_mm(a, b, a_scale, b_scale, bias, a_zero_point, b_sum, activation, out_dtype,
                               out_scale, out_zero_point)
    return a.new_empty((*a.shape[:-1], b.shape[0]), dtype=out_dtype)


# ---------------------------------------------------------------------------------------------- int8_linear

_LINEAR_NAMES = {"a": "x", "b": "weight", "a_scale": "x_scale", "b_scale": "weight_scale",
                 "a_zero_point": "x_zero_point", "b_sum": "weight_sum"}


def _check_int8_linear(x, weight, weight_scale, bias, x_scale, x_zero_point, weight_sum, activation, out_dtype,
                       out_scale, out_zero_point) -> torch.dtype:
    op = "int8_linear"
    _check_matrix_input(op, "x", x, FLOAT_DTYPES)
    check_tensor(op, "weight", weight, dtypes=(torch.int8,), ndim=2, device=x.device, device_of="x")
    M, K = _rows(x)
    N = weight.shape[0]
    if weight.shape[1] != K:
        fail(op, f"argument 'weight' must be (N, K) with K = x.shape[-1] = {K}, got shape {tuple(weight.shape)}")
    check_k_contiguous(op, "weight", weight)
    if K > MAX_K:
        fail(op, f"K = {K} can overflow the int32 accumulator; at most {MAX_K} is supported")
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if out_dtype not in (torch.int8,) + FLOAT_DTYPES:
        fail(op, f"argument 'out_dtype' must be int8, float16, bfloat16 or float32, got {out_dtype}", TypeError)
    if x_scale is not None:
        check_numel(op, "x_scale", x_scale, (1,), "one element (static per-tensor activation scale)")
    elif x_zero_point is not None:
        fail(op, "argument 'x_zero_point' needs 'x_scale' (static quantization); dynamic quantization is symmetric")
    _check_epilogue(op, x, M, N, a_scale=x_scale, b_scale=weight_scale, bias=bias, a_zero_point=x_zero_point,
                    b_sum=weight_sum, activation=activation, out_dtype=out_dtype, out_scale=out_scale,
                    out_zero_point=out_zero_point, names=_LINEAR_NAMES)
    if x_zero_point is not None:
        check_numel(op, "x_zero_point", x_zero_point, (1,), "one element (static per-tensor zero point)")
    return out_dtype


@triton_op("lowp::int8_linear", mutates_args={})
def int8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
                x_scale: Optional[Tensor] = None, x_zero_point: Optional[Tensor] = None,
                weight_sum: Optional[Tensor] = None, activation: str = "none",
                out_dtype: Optional[torch.dtype] = None, out_scale: Optional[Tensor] = None,
                out_zero_point: Optional[Tensor] = None) -> Tensor:
    """W8A8 linear: quantize x to int8, multiply by the int8 weight, dequantize, bias, activation — two kernels.

    x: (..., K) float16 / bfloat16 / float32, contiguous along K. weight: (N, K) int8 (per-output-channel
    symmetric, e.g. lowp_ops.quant.quantize_tensor(w, per_channel(axis=0))); weight_scale: float32 (N,) or one.
    Activation quantization: dynamic per token when x_scale is None, else static per tensor with x_scale
    (float32, one) and x_zero_point (int32, one; weight_sum = weight.sum(1) int32 (N,) is computed when omitted).
    Returns y: (..., N) in out_dtype (default x.dtype), or int8 requantized with out_scale / out_zero_point.

    >>> from lowp_ops import quant
    >>> lin = torch.nn.Linear(64, 32)
    >>> qw = quant.quantize_tensor(lin.weight, quant.per_channel(axis=0))
    >>> x = torch.randn(4, 64)
    >>> y = torch.ops.lowp.int8_linear(x, qw.qdata, qw.scale, lin.bias)
    >>> quant.sqnr_db(lin(x), y) > 30
    True
    """
    out_dtype = _check_int8_linear(x, weight, weight_scale, bias, x_scale, x_zero_point, weight_sum, activation,
                                   out_dtype, out_scale, out_zero_point)
    M, K = _rows(x)
    x2 = x.reshape(M, K)
    if x_scale is None:
        q, a_scale = _run("int8_linear", kernels.quantize_rows, reference.quantize_rows, x2,
                          **({"min_scale": MIN_SCALE} if x.device.type == "cuda" else {}))
    else:
        q, a_scale = _run("int8_linear", kernels.quantize_rows, reference.quantize_rows, x2,
                          scale=_flat(x_scale), zero_point=_flat(x_zero_point))
    if x_zero_point is not None and weight_sum is None:
        weight_sum = weight.sum(dim=1, dtype=torch.int32)
    out = _run("int8_linear", kernels.int8_gemm, reference.int8_gemm, q, weight,
               a_scale=a_scale, b_scale=_flat(weight_scale), bias=_flat(bias), a_zero_point=_flat(x_zero_point),
               b_sum=_flat(weight_sum), activation=activation, out_dtype=out_dtype, out_scale=_flat(out_scale),
               out_zero_point=_flat(out_zero_point))
    return out.reshape(*x.shape[:-1], weight.shape[0])


@int8_linear.register_fake
def _(x, weight, weight_scale, bias=None, x_scale=None, x_zero_point=None, weight_sum=None, activation="none",
      out_dtype=None, out_scale=None, out_zero_point=None):
    out_dtype = _check_int8_linear(x, weight, weight_scale, bias, x_scale, x_zero_point, weight_sum, activation,
                                   out_dtype, out_scale, out_zero_point)
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=out_dtype)


__all__ = ["ACTIVATIONS", "int8_linear", "int8_mm", "quantize_per_tensor", "quantize_per_token"]
