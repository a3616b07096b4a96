"""quantize / dequantize / fake_quantize under a QuantSpec or an Fp8Spec (pure torch, any device).

Rounding is round-half-to-even (torch.round onto the integer grid, torch's float8 casts onto an FP8 format); see
qparams.py for the formulas and parameter shapes. Non-finite values (lowp's rule, the kernels' too): on an integer
grid x · (1/scale) = NaN encodes as the zero point, +inf as qmax, -inf as qmin, so a NaN scale (choose_qparams of
a range holding NaN or ±inf) encodes everything as the zero point; FP8 keeps NaN as its NaN code and saturates ±inf
to ±qmax.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .qparams import as_groups, choose_qparams, expand_param, reduce_minmax
from .spec import Fp8Spec, Spec


def _codes(v: torch.Tensor, zp: torch.Tensor, spec: Spec) -> torch.Tensor:
    """v = x · (1/scale), float32 -> the codes as float32: clamp(round_half_even(v) + zp, qmin, qmax) (exact
    integers; NaN v gives zp, ±inf qmax / qmin, as the kernels' epilogue.quantize_values), or for an Fp8Spec
    (zp 0) v rounded onto the format, saturating."""
    if isinstance(spec, Fp8Spec):
        return spec.round(v)
    v = v.nan_to_num(nan=0.0, posinf=math.inf, neginf=-math.inf)
    return torch.clamp(torch.round(v) + zp, spec.qmin, spec.qmax)


def _inside(v: torch.Tensor, zp: torch.Tensor, q: torch.Tensor, spec: Spec) -> torch.Tensor:
    """Where the code was not clamped (False at NaN): where fake quantization passes the gradient through."""
    if isinstance(spec, Fp8Spec):
        return v.abs() <= spec.qmax
    return torch.round(v) + zp == q


def _quantize_float(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: Spec) -> torch.Tensor:
    """The quantized values as float32 (exact small integers), same shape as x."""
    xg = as_groups(x, spec).float()
    inv_scale = 1.0 / expand_param(scale.float(), xg, spec)
    return _codes(xg * inv_scale, expand_param(zero_point, xg, spec), spec).reshape(x.shape)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: Spec) -> torch.Tensor:
    """x float (any shape) -> q int8 (signed specs) / uint8 (unsigned) / the Fp8Spec's float8 dtype, same shape.

    >>> from lowp_ops.quant import Fp8Spec, per_tensor
    >>> quantize(torch.tensor([0.5, 1.5, -3.0]), torch.tensor(1.0), torch.tensor(0), per_tensor())
    tensor([ 0,  2, -3], dtype=torch.int8)
    >>> quantize(torch.tensor([1.0625, 1000.0]), torch.tensor(1.0), torch.tensor(0), Fp8Spec()).float()
    tensor([  1., 448.])
    """
    return _quantize_float(x, scale, zero_point, spec).to(spec.storage_dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: Spec,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """q int8 / uint8 / float8 (any shape) -> (q - zero_point) * scale, in `dtype` (computed in float32)."""
    qg = as_groups(q, spec)
    x = (qg.float() - expand_param(zero_point, qg, spec)) * expand_param(scale.float(), qg, spec)
    return x.reshape(q.shape).to(dtype)


class _FakeQuantizeSTE(torch.autograd.Function):
    """Forward: dequantize(quantize(x)), so NaN gives 0 on an integer grid, as the int8 path it simulates, and stays
    NaN on an FP8 one. Backward: straight-through inside the representable range, zero outside it and at NaN (the
    gradient torch.fake_quantize_* uses)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, spec):
        xg = as_groups(x, spec).float()
        inv_scale = 1.0 / expand_param(scale.float(), xg, spec)
        zp = expand_param(zero_point, xg, spec)
        v = xg * inv_scale
        q = _codes(v, zp, spec)
        ctx.save_for_backward(_inside(v, zp, q, spec).reshape(x.shape))  # False at NaN: no gradient there
        out = (q - zp) * expand_param(scale.float(), xg, spec)
        return out.reshape(x.shape).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: Spec) -> torch.Tensor:
    """dequantize(quantize(x)) in x's dtype, with a straight-through gradient for x (QAT)."""
    return _FakeQuantizeSTE.apply(x, scale, zero_point, spec)


class QuantizedTensor(NamedTuple):
    """A quantized tensor with what it takes to read it back: qdata int8 / uint8 / float8, scale float32 and
    zero_point int32 (0 for FP8) in reduced form (see qparams.py)."""

    qdata: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    spec: Spec

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.qdata, self.scale, self.zero_point, self.spec, dtype)


def quantize_tensor(x: torch.Tensor, spec: Spec) -> QuantizedTensor:
    """Quantize x with parameters chosen from its own min/max (the dynamic / weight path).

    >>> from lowp_ops.quant import per_channel
    >>> w = torch.randn(16, 32)
    >>> qw = quantize_tensor(w, per_channel(axis=0))
    >>> qw.qdata.dtype, tuple(qw.scale.shape), bool((qw.dequantize() - w).abs().max() <= qw.scale.max() / 2)
    (torch.int8, (16,), True)
    """
    scale, zero_point = choose_qparams(*reduce_minmax(x, spec), spec)
    return QuantizedTensor(quantize(x, scale, zero_point, spec), scale, zero_point, spec)
