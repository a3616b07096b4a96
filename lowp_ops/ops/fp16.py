"""lowp::fp16_mm, lowp::fp16_mm_accumulate_ and lowp::fp16_linear: float16 / bfloat16 GEMMs on Tensor Cores
(float32 accumulation), with autograd for fp16_linear.

Operands are float16 or bfloat16 (both the same); on CPU the reference also takes float32 and float64, which
the gradient checks use. Layouts come from strides: fp16_mm(a, b) multiplies any (M, K) and (K, N) views, so
A·B, A·Bᵀ and Aᵀ·B are the same call with transposed views, and the same kernel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.library import triton_op

from .._validate import FLOAT_DTYPES, check_activation, check_param, check_tensor, fail
from ._common import check_out_dtype, rows
from .backends import dispatch

_TENSOR_CORE_DTYPES = (torch.float16, torch.bfloat16)
_CPU_ONLY_DTYPES = (torch.float32, torch.float64)  # reference path only: gradient checks, float baselines


def _check_operands(op: str, names: tuple[str, str], a: Tensor, b: Tensor) -> None:
    check_tensor(op, names[0], a, _TENSOR_CORE_DTYPES + (_CPU_ONLY_DTYPES if a.device.type == "cpu" else ()))
    check_tensor(op, names[1], b, (a.dtype,), ndim=2, like=(names[0], a))


def _check_epilogue(op: str, like: tuple[str, Tensor], N: int, bias, activation: str, out_dtype) -> torch.dtype:
    """bias (N,) float, activation, out_dtype (None: the operands' dtype) -> the output dtype."""
    check_param(op, "bias", bias, like, FLOAT_DTYPES + (torch.float64,), [(N,)], "one value per output column",
                one=False)
    check_activation(op, activation)
    dtype = like[1].dtype
    return check_out_dtype(op, dtype if out_dtype is None else out_dtype,
                           FLOAT_DTYPES + ((torch.float64,) if dtype == torch.float64 else ()))


# ---------------------------------------------------------------------------------------------- fp16_mm


def _check_fp16_mm(a, b, bias, activation, out_dtype) -> torch.dtype:
    op = "fp16_mm"
    _check_operands(op, ("a", "b"), a, b)
    if a.ndim != 2:
        fail(op, f"argument 'a' must be 2-D (M, K), got shape {tuple(a.shape)}")
    if b.shape[0] != a.shape[1]:
        fail(op, f"argument 'b' must be (K, N) with K = a.shape[1] = {a.shape[1]}, got shape {tuple(b.shape)}")
    return _check_epilogue(op, ("a", a), b.shape[1], bias, activation, out_dtype)


@triton_op("lowp::fp16_mm", mutates_args={})
def fp16_mm(a: Tensor, b: Tensor, bias: Tensor | None = None, activation: str = "none",
            out_dtype: torch.dtype | None = None) -> Tensor:
    """out = activation(a · b + bias) on Tensor Cores, float32 accumulation.

    a: (M, K), b: (K, N), float16 or bfloat16 (both the same), any strides (pass a.T / b.T views for the
    transposed layouts); bias: (N,) float; activation: "none" | "relu" | "relu6" | "gelu".
    Returns (M, N) in out_dtype: float16 / bfloat16 / float32 (default a.dtype).

    >>> a, b = torch.randn(3, 5).half(), torch.randn(4, 5).half()
    >>> torch.ops.lowp.fp16_mm(a, b.T, out_dtype=torch.float32).shape
    torch.Size([3, 4])
    """
    out_dtype = _check_fp16_mm(a, b, bias, activation, out_dtype)
    return dispatch("fp16_mm", "gemm", a, b, bias=bias, activation=activation, out_dtype=out_dtype)


@fp16_mm.register_fake
def _fp16_mm_fake(a, b, bias=None, activation="none", out_dtype=None):
    out_dtype = _check_fp16_mm(a, b, bias, activation, out_dtype)
    return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)


def _check_fp16_mm_accumulate(c, a, b) -> None:
    op = "fp16_mm_accumulate_"
    _check_operands(op, ("a", "b"), a, b)
    if a.ndim != 2 or b.shape[0] != a.shape[1]:
        fail(op, f"arguments 'a' (M, K) and 'b' (K, N) must agree on K, got shapes {tuple(a.shape)} and "
                 f"{tuple(b.shape)}")
    check_tensor(op, "c", c, (torch.float32,), ndim=2, like=("a", a))
    if tuple(c.shape) != (a.shape[0], b.shape[1]):
        fail(op, f"argument 'c' must have shape (M, N) = {(a.shape[0], b.shape[1])}, got {tuple(c.shape)}")


@triton_op("lowp::fp16_mm_accumulate_", mutates_args={"c"})
def fp16_mm_accumulate_(c: Tensor, a: Tensor, b: Tensor) -> None:
    """c += a · b in place, c float32 (M, N): accumulates weight gradients (micro-batches) in float32 without
    a float16 round trip. a: (M, K), b: (K, N) float16 / bfloat16, any strides."""
    _check_fp16_mm_accumulate(c, a, b)
    dispatch("fp16_mm_accumulate_", "gemm", a, b, accumulate_into=c)


@fp16_mm_accumulate_.register_fake
def _fp16_mm_accumulate_fake(c, a, b):
    _check_fp16_mm_accumulate(c, a, b)


# ------------------------------------------------------------------------------------------- fp16_linear


def _check_fp16_linear(x, weight, bias, activation, out_dtype) -> torch.dtype:
    op = "fp16_linear"
    _check_operands(op, ("x", "weight"), x, weight)
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        fail(op, f"argument 'weight' must be (N, K) with K = x.shape[-1] = {x.shape[-1] if x.ndim else None}, "
                 f"got shape {tuple(weight.shape)}")
    return _check_epilogue(op, ("x", x), weight.shape[0], bias, activation, out_dtype)


@triton_op("lowp::fp16_linear", mutates_args={})
def fp16_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str = "none",
                out_dtype: torch.dtype | None = None) -> Tensor:
    """y = activation(x · weightᵀ + bias) on Tensor Cores, differentiable (dX and dW through the same kernel).

    x: (..., K) and weight: (N, K), float16 or bfloat16 (both the same), any strides; bias: (N,) float (keep it
    float32: its gradient comes back float32); activation: "none" | "relu" | "relu6" | "gelu".
    Returns (..., N) in out_dtype (default x.dtype).

    >>> x = torch.randn(2, 3, 8, dtype=torch.float16, requires_grad=True)
    >>> w = torch.randn(4, 8, dtype=torch.float16, requires_grad=True)
    >>> torch.ops.lowp.fp16_linear(x, w, activation="relu").sum().backward()
    >>> x.grad.shape, w.grad.dtype
    (torch.Size([2, 3, 8]), torch.float16)
    """
    out_dtype = _check_fp16_linear(x, weight, bias, activation, out_dtype)
    M, K = rows(x)
    out = dispatch("fp16_linear", "gemm", x.reshape(M, K), weight.T, bias=bias,
                   activation=activation, out_dtype=out_dtype)
    # detach: the same tensor, but no longer marked a view of the (M, N) result. Autograd refuses in-place ops
    # (SiLU(inplace=True), y += residual) on a view made inside a custom Function's forward.
    return out.reshape(*x.shape[:-1], weight.shape[0]).detach()


@fp16_linear.register_fake
def _fp16_linear_fake(x, weight, bias=None, activation="none", out_dtype=None):
    out_dtype = _check_fp16_linear(x, weight, bias, activation, out_dtype)
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=out_dtype)


def _setup_context(ctx, inputs, output):
    x, weight, bias, activation, _ = inputs
    ctx.activation = activation
    ctx.bias_dtype = None if bias is None else bias.dtype
    # relu / relu6 read their derivative off the output: kept as its mask, not the output itself, which the caller
    # may modify in place (a Dropout(inplace=True) after a fused relu); gelu recomputes its pre-activation in backward
    mask = (output > 0) if activation == "relu" else ((output > 0) & (output < 6)) if activation == "relu6" else None
    ctx.save_for_backward(x, weight, mask, bias if activation == "gelu" else None)


def _gelu_derivative(z: Tensor) -> Tensor:
    """d/dz [z · Φ(z)] = Φ(z) + z · φ(z) (erf form, as torch.nn.functional.gelu)."""
    return 0.5 * (1.0 + torch.erf(z * 0.7071067811865476)) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _backward(ctx, grad):
    x, weight, mask, bias = ctx.saved_tensors
    N, K = weight.shape
    x2 = x.reshape(-1, K)
    dz = grad.reshape(-1, N)
    if mask is not None:  # relu, relu6
        dz = dz * mask.reshape(-1, N)
    elif ctx.activation == "gelu":
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        z = torch.ops.lowp.fp16_mm(x2, weight.T, bias, out_dtype=acc_dtype)
        dz = dz.to(acc_dtype) * _gelu_derivative(z)
    dz = dz.to(x.dtype)  # the GEMM operands: this cast is where unscaled small gradients underflow in fp16
    dx = dw = db = None
    needs = tuple(ctx.needs_input_grad) + (False,) * 3  # as long as the arguments actually passed
    if needs[0]:
        dx = torch.ops.lowp.fp16_mm(dz, weight).reshape(x.shape)
    if needs[1]:
        dw = torch.ops.lowp.fp16_mm(dz.T, x2, out_dtype=weight.dtype)
    if needs[2]:
        db = dz.sum(dim=0, dtype=torch.float64 if dz.dtype == torch.float64 else torch.float32).to(ctx.bias_dtype)
    return dx, dw, db, None, None


fp16_linear.register_autograd(_backward, setup_context=_setup_context)
