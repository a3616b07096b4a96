"""lowp::quantize_per_token and lowp::quantize_per_tensor: float activations -> int8 or float8_e4m3fn."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from .._validate import FLOAT_DTYPES, fail
from ..quant import MIN_SCALE
from ._common import (
    check_fp8_device,
    check_matrix_input,
    check_out_dtype,
    check_static_qparams,
    flat,
    in_graphs,
    rows,
)
from .backends import dispatch

CODE_DTYPES = (torch.int8, torch.float8_e4m3fn)


def _check_code_dtype(op: str, x: Tensor, dtype: torch.dtype) -> None:
    check_out_dtype(op, dtype, CODE_DTYPES, "dtype")
    if dtype != torch.int8:
        check_fp8_device(op, "x", x)


def _check_quantize_per_token(x: Tensor, dtype: torch.dtype) -> None:
    check_matrix_input("quantize_per_token", "x", x, FLOAT_DTYPES)
    _check_code_dtype("quantize_per_token", x, dtype)


@triton_op("lowp::quantize_per_token", mutates_args={})
def quantize_per_token(x: Tensor, dtype: torch.dtype = torch.int8) -> tuple[Tensor, Tensor]:
    """Dynamic symmetric quantization to int8 or FP8 (e4m3), one scale per row ("token").

    x: (..., K) float16 / bfloat16 / float32, contiguous along K. dtype: torch.int8 (default) or
    torch.float8_e4m3fn. Returns q: (..., K) in dtype and scale: (...) float32, with x ≈ q * scale[..., None] and
    scale = max(max_k |x| / QMAX, MIN_SCALE): QMAX 127 (int8 codes in [-127, 127]) or 448 (e4m3, rounded to nearest
    even). A row holding NaN or inf gets scale NaN and zero int8 codes / NaN e4m3 codes (README section
    "Non-finite input and overflow"); int8_mm and fp8_mm refuse such a scale like any other, and on CUDA their
    check costs one device sync per fresh scale tensor (int8_linear, fp8_linear and int8_conv2d quantize inside the
    op: no such cost).

    >>> q, s = torch.ops.lowp.quantize_per_token(torch.tensor([[0.5, -1.0, 0.25]]))
    >>> q.tolist(), s.tolist()
    ([[64, -127, 32]], [0.007874015718698502])
    >>> q, s = torch.ops.lowp.quantize_per_token(torch.tensor([[0.5, -1.0, 0.25]]), torch.float8_e4m3fn)
    >>> q.float().tolist(), s.tolist()
    ([[224.0, -448.0, 112.0]], [0.0022321429569274187])
    """
    _check_quantize_per_token(x, dtype)
    return _quantize_per_token(x, dtype)


def _quantize_per_token(x, dtype) -> tuple[Tensor, Tensor]:
    """quantize_per_token after validation."""
    M, K = rows(x)
    q, scale = dispatch("quantize_per_token", "quantize_rows", x.reshape(M, K), min_scale=MIN_SCALE, dtype=dtype)
    return q.reshape(x.shape), scale.reshape(x.shape[:-1])


@quantize_per_token.register_fake
def _quantize_per_token_fake(x, dtype=torch.int8):
    _check_quantize_per_token(x, dtype)
    return x.new_empty(x.shape, dtype=dtype), x.new_empty(x.shape[:-1], dtype=torch.float32)


def _check_quantize_per_tensor(x: Tensor, scale: Tensor, zero_point: Tensor | None, dtype: torch.dtype) -> None:
    op = "quantize_per_tensor"
    check_matrix_input(op, "x", x, FLOAT_DTYPES)
    _check_code_dtype(op, x, dtype)
    if dtype != torch.int8 and zero_point is not None:
        fail(op, "argument 'zero_point' applies to int8 codes only: FP8 quantization is symmetric")
    check_static_qparams(op, x, scale, zero_point)


@triton_op("lowp::quantize_per_tensor", mutates_args={})
def quantize_per_tensor(x: Tensor, scale: Tensor, zero_point: Tensor | None = None,
                        dtype: torch.dtype = torch.int8) -> Tensor:
    """Static quantization with a given per-tensor scale (from calibration): affine int8, or FP8 (e4m3).

    x: (..., K) float16 / bfloat16 / float32, contiguous along K; scale: float32, one element, finite and normal
    (>= 2^-126); zero_point: int32, one element in [-128, 127] (None: 0), int8 only. dtype: torch.int8 (default)
    or torch.float8_e4m3fn. Returns (..., K) in dtype: int8 = clamp(round_half_even(x * (1 / scale)) + zero_point,
    -128, 127), bit-identical to torch.fake_quantize_per_tensor_affine's integer grid; e4m3 = x * (1 / scale)
    rounded to the nearest e4m3 value (ties to even) and saturated at ±448. Values are checked on eager calls only
    (not under torch.compile or on fake tensors). NaN / inf in x: int8 codes as README section "Non-finite input
    and overflow" says (NaN -> zero_point, ±inf -> 127 / -128); e4m3 codes keep NaN (e4m3 has a NaN code) and
    saturate ±inf to ±448.

    >>> x = torch.tensor([[0.3, 1000.0, -2.5]])
    >>> torch.ops.lowp.quantize_per_tensor(x, torch.tensor([0.5]), dtype=torch.float8_e4m3fn).float().tolist()
    [[0.625, 448.0, -5.0]]
    """
    _check_quantize_per_tensor(x, scale, zero_point, dtype)
    return _quantize_per_tensor(x, scale, zero_point, dtype)


def _quantize_per_tensor(x, scale, zero_point, dtype) -> Tensor:
    """quantize_per_tensor after validation."""
    M, K = rows(x)
    q, _ = dispatch("quantize_per_tensor", "quantize_rows", x.reshape(M, K), scale=flat(scale),
                    zero_point=flat(zero_point), dtype=dtype)
    return q.reshape(x.shape)


@quantize_per_tensor.register_fake
def _quantize_per_tensor_fake(x, scale, zero_point=None, dtype=torch.int8):
    _check_quantize_per_tensor(x, scale, zero_point, dtype)
    return x.new_empty(x.shape, dtype=dtype)


_quantize_per_token = in_graphs(quantize_per_token, _quantize_per_token, _quantize_per_token_fake)
_quantize_per_tensor = in_graphs(quantize_per_tensor, _quantize_per_tensor, _quantize_per_tensor_fake)
