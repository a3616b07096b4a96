"""Quantization error: measured noise and SQNR beside the uniform-noise model.

The model (§4.3 of the article lowp grew from: model acceleration and low-precision computing, with its formulas
and a small ConvNet): rounding to a grid of step Δ leaves an error uniform on [-Δ/2, Δ/2], of variance
Δ²/12. With Δ = (max - min) / (2^n - 1) that is σ² = (max - min)² / (12 · (2^n - 1)²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .affine import dequantize, quantize_tensor
from .qparams import as_groups, expand_param
from .spec import QuantSpec


def uniform_noise_variance(min_val: float, max_val: float, bits: int) -> float:
    """σ² = (max − min)² / (12 · (2ⁿ − 1)²): the article's formula for an n-bit grid spanning [min, max]."""
    return (max_val - min_val) ** 2 / (12.0 * (2**bits - 1) ** 2)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10·log10(Σ ref² / Σ (ref − approx)²) in dB; inf when exact."""
    ref = reference.double()
    noise = (ref - approx.double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass(frozen=True)
class QuantError:
    """measured_var: mean (x − x̂)²; predicted_var: mean over elements of Δ²/12 with Δ each element's scale (for
    an affine per-tensor spec this is the article's σ² on the range widened to contain 0); sqnr_db measured and
    predicted_sqnr_db = 10·log10(mean x² / predicted_var)."""

    measured_var: float
    predicted_var: float
    sqnr_db: float
    predicted_sqnr_db: float


def quantization_error(x: torch.Tensor, spec: QuantSpec) -> QuantError:
    """Quantize x under spec (parameters from its own min/max) and compare the noise with the model.

    >>> from lowp_ops.quant import per_tensor
    >>> e = quantization_error(torch.rand(100_000), per_tensor(8, symmetric=False, signed=False))
    >>> abs(e.measured_var / e.predicted_var - 1) < 0.05
    True
    """
    qt = quantize_tensor(x, spec)
    x_hat = dequantize(qt.qdata, qt.scale, qt.zero_point, spec)
    xf = x.detach().float()
    measured = (xf - x_hat).pow(2).mean().item()
    xg = as_groups(xf, spec)
    step = expand_param(qt.scale, xg, spec).expand_as(xg)
    predicted = (step.double().pow(2) / 12.0).mean().item()
    power = xf.double().pow(2).mean().item()
    predicted_sqnr = 10.0 * math.log10(power / predicted) if power > 0 else -math.inf
    return QuantError(measured, predicted, sqnr_db(xf, x_hat), predicted_sqnr)
