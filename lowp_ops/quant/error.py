"""Quantization error: measured noise and SQNR beside the uniform-noise model.

The model (§4.3 of the article lowp grew from: model acceleration and low-precision computing, with its formulas
and a small ConvNet): rounding to a grid of step Δ leaves an error uniform on [-Δ/2, Δ/2], of variance
Δ²/12. With Δ = (max - min) / (2^n - 1) that is σ² = (max - min)² / (12 · (2^n - 1)²).

An integer grid has one step for every element it covers (Δ = scale). A floating grid (FP8) has a step that
grows with the value: Δ = scale · 2^(e − m) in the binade [2^e, 2^(e+1)) of |x| / scale, m mantissa bits, so the
error is relative, at most u = 2^-(m+1) of |x| (unit roundoff; 1/16 for e4m3). The same Δ²/12, taken element by
element, predicts both. For log-uniform data (|x| spread evenly in log over whole octaves below its amax) it gives
the floating format one SQNR whatever the tensor's range: amax lands on qmax = c · 2^E, c = 1.75 in both formats
(448 = 1.75 · 2^8, 57344 = 1.75 · 2^15), so every octave of the data covers the fraction 1 − log2 c of one binade
and log2 c of the next (step twice as large). For v log-uniform on [c, 2c), E[v²] = 3c²/(2 ln 2) and, with step
2^-m below 2 and 2^(1-m) above, E[Δ²] = 4^-m (1 + 3 log2 c), so

    SQNR = 18 c² 4^m / (ln 2 · (1 + 3 log2 c)) ≈ 31.7 dB for e4m3, 25.7 dB for e5m2

(measured 31.64-31.78 / 25.68-25.80 dB on 2^16 samples: tests/quant/test_quant_fp8.py) — where the integer grid's SQNR
falls as the range grows past the typical value (an outlier channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .affine import dequantize, quantize_tensor
from .qparams import as_groups, expand_param
from .spec import Fp8Spec, Spec


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


def grid_step(x: torch.Tensor, scale: torch.Tensor, spec: Spec) -> torch.Tensor:
    """The spacing Δ of the grid around each element of x (x in as_groups form, scale expanded to broadcast),
    float64: the scale itself on an integer grid; on an FP8 grid scale · 2^(e − m), e = floor(log2(|x| / scale))
    but not below the smallest normal exponent (the subnormals' fixed step), nor above the largest finite value's
    binade (saturated values)."""
    scale = scale.double()
    if not isinstance(spec, Fp8Spec):
        return scale.expand_as(x)
    _, e = torch.frexp((x.double() / scale).abs())  # |v| = f · 2^e with f in [0.5, 1): floor(log2 |v|) = e − 1
    e = (e - 1).clamp(spec.min_normal_exponent, math.frexp(spec.qmax)[1] - 1)  # qmax's binade: 448 = 1.75 · 2^8
    return scale * torch.exp2((e - spec.mantissa_bits).double())


@dataclass(frozen=True)
class QuantError:
    """measured_var: mean (x − x̂)²; predicted_var: mean over elements of Δ²/12 with Δ each element's grid step
    (grid_step: the scale on an integer grid, for an affine per-tensor spec the article's σ² on the range widened to
    contain 0; the binade's spacing on an FP8 grid); sqnr_db measured and predicted_sqnr_db = 10·log10(mean x² /
    predicted_var)."""

    measured_var: float
    predicted_var: float
    sqnr_db: float
    predicted_sqnr_db: float


def quantization_error(x: torch.Tensor, spec: Spec) -> QuantError:
    """Quantize x under spec (parameters from its own min/max) and compare the noise with the model.

    >>> from lowp_ops.quant import Fp8Spec, per_tensor
    >>> e = quantization_error(torch.rand(100_000), per_tensor(8, symmetric=False, signed=False))
    >>> abs(e.measured_var / e.predicted_var - 1) < 0.05
    True
    >>> e = quantization_error(torch.randn(100_000), Fp8Spec())
    >>> abs(e.measured_var / e.predicted_var - 1) < 0.05
    True
    """
    qt = quantize_tensor(x, spec)
    x_hat = dequantize(qt.qdata, qt.scale, qt.zero_point, spec)
    xf = x.detach().float()
    measured = (xf - x_hat).pow(2).mean().item()
    xg = as_groups(xf, spec)
    step = grid_step(xg, expand_param(qt.scale, xg, spec), spec)
    predicted = (step.pow(2) / 12.0).mean().item()
    power = xf.double().pow(2).mean().item()
    predicted_sqnr = 10.0 * math.log10(power / predicted) if power > 0 else -math.inf
    return QuantError(measured, predicted, sqnr_db(xf, x_hat), predicted_sqnr)
