"""lowp::quantize_per_token and lowp::quantize_per_tensor: float activations -> int8."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from .._validate import FLOAT_DTYPES
from ..quant import MIN_SCALE
from ._common import check_matrix_input, check_static_qparams, flat, rows
from .backends import dispatch


def _check_quantize_per_token(x: Tensor) -> None:
    check_matrix_input("quantize_per_token", "x", x, FLOAT_DTYPES)


@triton_op("lowp::quantize_per_token", mutates_args={})
def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """Dynamic symmetric int8 quantization, one scale per row ("token").

    x: (..., K) float16 / bfloat16 / float32, contiguous along K.
    Returns q: (..., K) int8 in [-127, 127] and scale: (...) float32, with x ≈ q * scale[..., None] and
    scale = max(max_k |x| / 127, MIN_SCALE). A row holding NaN or inf gets scale NaN and zero codes (README
    section "Non-finite input and overflow"); int8_mm refuses such a scale like any other, and on CUDA its check
    costs one device sync per fresh scale tensor (int8_linear and int8_conv2d quantize inside the op: no such cost).

    >>> q, s = torch.ops.lowp.quantize_per_token(torch.tensor([[0.5, -1.0, 0.25]]))
    >>> q.tolist(), s.tolist()
    ([[64, -127, 32]], [0.007874015718698502])
    """
    _check_quantize_per_token(x)
    M, K = rows(x)
    q, scale = dispatch("quantize_per_token", "quantize_rows", x.reshape(M, K), min_scale=MIN_SCALE)
    return q.reshape(x.shape), scale.reshape(x.shape[:-1])


@quantize_per_token.register_fake
def _quantize_per_token_fake(x):
    _check_quantize_per_token(x)
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32)


def _check_quantize_per_tensor(x: Tensor, scale: Tensor, zero_point: Tensor | None) -> None:
    check_matrix_input("quantize_per_tensor", "x", x, FLOAT_DTYPES)
    check_static_qparams("quantize_per_tensor", x, scale, zero_point)


@triton_op("lowp::quantize_per_tensor", mutates_args={})
def quantize_per_tensor(x: Tensor, scale: Tensor, zero_point: Tensor | None = None) -> Tensor:
    """Static affine int8 quantization with a given per-tensor scale and zero point (from calibration).

    x: (..., K) float16 / bfloat16 / float32, contiguous along K; scale: float32, one element, finite and normal
    (>= 2^-126); zero_point: int32, one element in [-128, 127] (None: 0). Returns (..., K) int8 =
    clamp(round_half_even(x * (1 / scale)) + zero_point, -128, 127), bit-identical to
    torch.fake_quantize_per_tensor_affine's integer grid. Values are checked on eager calls only (not under
    torch.compile or on fake tensors). NaN / inf in x: README section "Non-finite input and overflow".
    """
    _check_quantize_per_tensor(x, scale, zero_point)
    M, K = rows(x)
    q, _ = dispatch("quantize_per_tensor", "quantize_rows", x.reshape(M, K), scale=flat(scale),
                    zero_point=flat(zero_point))
    return q.reshape(x.shape)


@quantize_per_tensor.register_fake
def _quantize_per_tensor_fake(x, scale, zero_point=None):
    _check_quantize_per_tensor(x, scale, zero_point)
    return x.new_empty(x.shape, dtype=torch.int8)
