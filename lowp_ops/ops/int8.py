"""lowp::int8_mm and lowp::int8_linear: INT8 GEMM with the fused dequantize / requantize epilogue; inference only
(a backward says so, and where training goes instead: inference_only, shared with the conv and FP8 ops)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from .._validate import FLOAT_DTYPES, check_reduction_length, check_scale, check_zero_point, fail
from ..quant import MIN_SCALE
from ._common import (
    Lane,
    check_epilogue,
    check_int8_output,
    check_linear_operands,
    check_out_dtype,
    check_zero_point_sums,
    flat,
    in_graphs,
    rows,
)
from .backends import dispatch


def inference_only(op, layer: str) -> None:
    """Give the triton_op `op` (run by the module `layer`) a backward that says it has none: the int8 / e4m3 ops
    round their input and hold no float weight, so there is nothing to differentiate. torch.library already routes
    every call through its autograd kernel; with no input requiring grad that kernel runs the op directly, so
    registering this costs a forward nothing."""
    def backward(ctx, *grads):
        fail(op._name, f"{layer} and this op are inference-only: their weights are quantized and their input "
                       f"rounded, with no gradient. To train a model that will run in {layer}, use "
                       f"lowp_ops.prepare_qat(model) (fake quantization, straight-through gradients), train, then "
                       f"lowp_ops.convert", RuntimeError)

    op.register_autograd(backward)


def _check_operands(op: str, names: tuple[str, str], a: Tensor, b: Tensor, a_dtypes,
                    zero_point: str | None) -> tuple[int, int]:
    """a (..., K) of a_dtypes and b (N, K) int8, both K-contiguous, on one device, K within the int32
    accumulator's bound (lower when the zero-point argument named `zero_point` is given) -> (M, N)."""
    M, N, K = check_linear_operands(op, names, a, b, a_dtypes, torch.int8)
    check_reduction_length(op, "K", K, zero_point)
    return M, N


def _check_int8_mm(a, b, a_scale, b_scale, bias, a_zero_point, b_sum, activation, out_dtype, out_scale,
                   out_zero_point) -> torch.dtype:
    """Validate; returns the output dtype (None resolved)."""
    op, like = "int8_mm", ("a", a)
    M, N = _check_operands(op, ("a", "b"), a, b, (torch.int8,), None if a_zero_point is None else "a_zero_point")
    out_dtype = check_int8_output(op, out_dtype, {"a_scale": a_scale, "b_scale": b_scale},
                                  {"bias": bias, "a_zero_point": a_zero_point, "b_sum": b_sum, "out_scale": out_scale,
                                   "out_zero_point": out_zero_point}, activation)
    if out_dtype == torch.int32:
        return out_dtype
    per_row = ((M,), tuple(a.shape[:-1]))  # flat, or the batch shape quantize_per_token returns its scales in
    check_scale(op, "a_scale", a_scale, like, per_row, "one scale per row")
    check_scale(op, "b_scale", b_scale, like, [(N,)], "one scale per output column")
    check_zero_point(op, "a_zero_point", a_zero_point, like, per_row, "one zero point per row")
    check_zero_point_sums(op, "b_sum", b_sum, "a_zero_point", a_zero_point, like, N)
    check_epilogue(op, like, N, bias, activation, out_dtype, out_scale, out_zero_point)
    return out_dtype


@triton_op("lowp::int8_mm", mutates_args={})
def int8_mm(a: Tensor, b: Tensor, a_scale: Tensor | None = None, b_scale: Tensor | None = None,
            bias: Tensor | None = None, a_zero_point: Tensor | None = None, b_sum: Tensor | None = None,
            activation: str = "none", out_dtype: torch.dtype | None = None, out_scale: Tensor | None = None,
            out_zero_point: Tensor | None = None) -> Tensor:
    """INT8 matmul with a fused epilogue: out = epilogue(a · bᵀ).

    a: (..., K) int8, contiguous along K. b: (N, K) int8, contiguous along K (nn.Linear's weight layout).
    out_dtype int32 (the default without scales): the raw int32 accumulator, nothing else may be given.
    Otherwise a_scale (float32: one per row of a, shaped (M,) or a.shape[:-1] as quantize_per_token returns it,
    or one element) and b_scale (float32, (N,) or one element) are required and
        y = ((acc − a_zero_point · b_sum) · a_scale) · b_scale + bias,  then activation
    ("none" | "relu" | "relu6" | "gelu"), returned as float16 / bfloat16 / float32 (default float32), or, with
    out_dtype int8, requantized: clamp(round(y / out_scale) + out_zero_point, -128, 127) so int8 layers chain.
    a_zero_point: int32, shaped like a_scale (affine activations); b_sum: int32 (N,) = b.sum(1), computed when
    omitted; bias: (N,) float; out_scale float32 / out_zero_point int32: one element each.
    Bounds: scales finite and normal (>= 2^-126), zero points in [-128, 127]; K <= 131071 (int32 accumulator:
    131071·128·128 < 2^31), K <= 65793 with a_zero_point (65793·255·128 < 2^31). Values are checked on eager
    calls only (not under torch.compile or on fake tensors; see lowp_ops/_validate.py).
    NaN / inf: README section "Non-finite input and overflow". Returns (..., N). Any M (1..16 included), any N.

    >>> a = torch.randint(-128, 128, (3, 5), dtype=torch.int8); b = torch.randint(-128, 128, (4, 5), dtype=torch.int8)
    >>> torch.equal(torch.ops.lowp.int8_mm(a, b), a.int() @ b.int().T)
    True
    """
    out_dtype = _check_int8_mm(a, b, a_scale, b_scale, bias, a_zero_point, b_sum, activation, out_dtype,
                               out_scale, out_zero_point)
    return _int8_mm(a, b, a_scale, b_scale, bias, a_zero_point, b_sum, activation, out_dtype, out_scale,
                    out_zero_point)


def _int8_mm(a, b, a_scale, b_scale, bias, a_zero_point, b_sum, activation, out_dtype, out_scale,
             out_zero_point) -> Tensor:
    """int8_mm after validation, out_dtype resolved (the op, and its Lane)."""
    M, K = rows(a)
    if a_zero_point is not None and b_sum is None:
        b_sum = b.sum(dim=1, dtype=torch.int32)
    out = dispatch("int8_mm", "int8_gemm", a.reshape(M, K), b, a_scale=flat(a_scale), b_scale=flat(b_scale),
                   bias=flat(bias), a_zero_point=flat(a_zero_point), b_sum=flat(b_sum), activation=activation,
                   out_dtype=out_dtype, out_scale=flat(out_scale), out_zero_point=flat(out_zero_point))
    # not a view of the (M, N) result: in-place ops after it stay legal with grad on (fp16_linear)
    return out.reshape(*a.shape[:-1], b.shape[0]).detach()


@int8_mm.register_fake
def _int8_mm_fake(a, b, a_scale=None, b_scale=None, bias=None, a_zero_point=None, b_sum=None,
                  activation="none", out_dtype=None, out_scale=None, out_zero_point=None):
    out_dtype = _check_int8_mm(a, b, a_scale, b_scale, bias, a_zero_point, b_sum, activation, out_dtype,
                               out_scale, out_zero_point)
    return a.new_empty((*a.shape[:-1], b.shape[0]), dtype=out_dtype)


def _check_int8_linear(x, weight, weight_scale, bias, x_scale, x_zero_point, weight_sum, activation, out_dtype,
                       out_scale, out_zero_point) -> torch.dtype:
    """Validate; returns the output dtype (None resolved)."""
    op, like = "int8_linear", ("x", x)
    _, N = _check_operands(op, ("x", "weight"), x, weight, FLOAT_DTYPES,
                           None if x_zero_point is None else "x_zero_point")
    out_dtype = check_out_dtype(op, x.dtype if out_dtype is None else out_dtype, (torch.int8,) + FLOAT_DTYPES)
    if x_zero_point is not None and x_scale is None:
        fail(op, "argument 'x_zero_point' needs 'x_scale' (static quantization); dynamic quantization is symmetric")
    check_scale(op, "x_scale", x_scale, like, what="static per-tensor activation scale")
    check_scale(op, "weight_scale", weight_scale, like, [(N,)], "one scale per output column", required=True)
    check_zero_point(op, "x_zero_point", x_zero_point, like, what="static per-tensor zero point")
    check_zero_point_sums(op, "weight_sum", weight_sum, "x_zero_point", x_zero_point, like, N)
    check_epilogue(op, like, N, bias, activation, out_dtype, out_scale, out_zero_point)
    return out_dtype


@triton_op("lowp::int8_linear", mutates_args={})
def int8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Tensor | None = None,
                x_scale: Tensor | None = None, x_zero_point: Tensor | None = None,
                weight_sum: Tensor | None = None, activation: str = "none",
                out_dtype: torch.dtype | None = None, out_scale: Tensor | None = None,
                out_zero_point: Tensor | None = None) -> Tensor:
    """W8A8 linear: quantize x to int8, multiply by the int8 weight, dequantize, bias, activation — two kernels.

    x: (..., K) float16 / bfloat16 / float32, contiguous along K. weight: (N, K) int8 (per-output-channel
    symmetric, e.g. lowp_ops.quant.quantize_tensor(w, per_channel(axis=0))); weight_scale: float32 (N,) or one
    element; bias: (N,) float.
    Activation quantization: dynamic per token when x_scale is None, else static per tensor with x_scale
    (float32, one element) and x_zero_point (int32, one element; weight_sum = weight.sum(1) int32 (N,) is computed
    when omitted). Returns y: (..., N) in out_dtype (default x.dtype), or int8 requantized with out_scale (float32,
    one element) / out_zero_point (int32, one element).
    Bounds: scales finite and normal (>= 2^-126), zero points in [-128, 127]; K <= 131071, K <= 65793 with
    x_zero_point (int32 accumulator, see int8_mm). Values are checked on eager calls only (not under
    torch.compile or on fake tensors). NaN / inf in x: README section "Non-finite input and overflow".

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
    return _int8_linear(x, weight, weight_scale, bias, x_scale, x_zero_point, weight_sum, activation, out_dtype,
                        out_scale, out_zero_point)


def _int8_linear(x, weight, weight_scale, bias, x_scale, x_zero_point, weight_sum, activation, out_dtype, out_scale,
                 out_zero_point) -> Tensor:
    """int8_linear after validation, out_dtype resolved (the op, and its Lane)."""
    M, K = rows(x)
    x2 = x.reshape(M, K)
    if x_scale is None:
        q, a_scale = dispatch("int8_linear", "quantize_rows", x2, min_scale=MIN_SCALE)
    else:
        q, a_scale = dispatch("int8_linear", "quantize_rows", x2, scale=flat(x_scale), zero_point=flat(x_zero_point))
    if x_zero_point is not None and weight_sum is None:
        weight_sum = weight.sum(dim=1, dtype=torch.int32)
    out = dispatch("int8_linear", "int8_gemm", q, weight, a_scale=a_scale, b_scale=flat(weight_scale),
                   bias=flat(bias), a_zero_point=flat(x_zero_point), b_sum=flat(weight_sum), activation=activation,
                   out_dtype=out_dtype, out_scale=flat(out_scale), out_zero_point=flat(out_zero_point))
    # not a view of the (M, N) result: in-place ops after it stay legal with grad on (fp16_linear)
    return out.reshape(*x.shape[:-1], weight.shape[0]).detach()


@int8_linear.register_fake
def _int8_linear_fake(x, weight, weight_scale, bias=None, x_scale=None, x_zero_point=None, weight_sum=None,
                      activation="none", out_dtype=None, out_scale=None, out_zero_point=None):
    out_dtype = _check_int8_linear(x, weight, weight_scale, bias, x_scale, x_zero_point, weight_sum, activation,
                                   out_dtype, out_scale, out_zero_point)
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=out_dtype)


inference_only(int8_mm, "Int8Linear")
inference_only(int8_linear, "Int8Linear")
_int8_mm = in_graphs(int8_mm, _int8_mm, _int8_mm_fake, plan=1)
_int8_linear = in_graphs(int8_linear, _int8_linear, _int8_linear_fake, plan=0)
eager_int8_mm = Lane(int8_mm, _check_int8_mm, _int8_mm, plan=1)
eager_int8_linear = Lane(int8_linear, _check_int8_linear, _int8_linear, plan=0)
