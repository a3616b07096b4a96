"""Choosing (scale, zero_point) from observed ranges.

Conventions used everywhere in lowp (kernels and references follow them bit for bit):
    q     = clamp(round_half_even(x * (1 / scale)) + zero_point, qmin, qmax)
    x_hat = (q - zero_point) * scale
which is exactly torch.fake_quantize_per_{tensor,channel}_affine's arithmetic (it multiplies by 1/scale too).

Parameter shapes, "reduced" form (what kernels take and state_dicts hold):
    per_tensor  ()                      per_channel(axis)  (x.shape[axis],)
    per_token   x.shape[:-1]            per_group(g)       x.shape[:-1] + (K // g,)
"""

from __future__ import annotations

import torch

from .spec import Granularity, Spec

# Smallest scale we ever produce: the smallest normal float32. It keeps 1/scale finite (2^126) and avoids
# subnormal scales, which GPUs may flush to zero. All-zero tensors get this scale and quantize to 0.
MIN_SCALE = 2.0**-126


def _check_group(x: torch.Tensor, spec: Spec) -> None:
    if x.shape[-1] % spec.group_size:
        raise ValueError(f"quant: per_group with group_size={spec.group_size} needs the last dim to be a "
                         f"multiple of it, got shape {tuple(x.shape)}")


def as_groups(x: torch.Tensor, spec: Spec) -> torch.Tensor:
    """For per_group specs, view x (..., K) as (..., K // g, g); other specs: x unchanged."""
    if spec.granularity is not Granularity.PER_GROUP:
        return x
    _check_group(x, spec)
    return x.reshape(*x.shape[:-1], x.shape[-1] // spec.group_size, spec.group_size)


def expand_param(p: torch.Tensor, x: torch.Tensor, spec: Spec) -> torch.Tensor:
    """View a reduced-form parameter so it broadcasts against x (x already in as_groups form)."""
    g = spec.granularity
    if g is Granularity.PER_TENSOR:
        return p.reshape(())
    if g is Granularity.PER_CHANNEL:
        axis = spec.axis % x.ndim
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        return p.reshape(shape)
    return p.unsqueeze(-1)  # per_token (..., 1) or per_group (..., K//g, 1)


def _minmax(x: torch.Tensor, dims) -> tuple[torch.Tensor, torch.Tensor]:
    """amin / amax over dims (None: all). A group of no elements (K = 0, a zero-size channel) gets 0 and 0: the
    range choose_qparams widens every range to (it always contains 0), where torch.amin would raise."""
    if x.numel() == 0:
        shape = [n for d, n in enumerate(x.shape) if dims is not None and d not in dims]
        zeros = x.new_zeros(shape)
        return zeros, zeros.clone()
    return (x.amin(), x.amax()) if dims is None else (x.amin(dim=dims), x.amax(dim=dims))


def reduce_minmax(x: torch.Tensor, spec: Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of x over the elements that share a scale, in reduced form, float32. A NaN makes both NaN
    (torch.amin / amax propagate it); an empty group gives (0, 0)."""
    g = spec.granularity
    x = x.detach().float()
    if g is Granularity.PER_TENSOR:
        return _minmax(x, None)
    if g is Granularity.PER_CHANNEL:
        axis = spec.axis % x.ndim
        return _minmax(x, [d for d in range(x.ndim) if d != axis])
    x = as_groups(x, spec)
    return _minmax(x, [x.ndim - 1])


def choose_qparams(min_val: torch.Tensor, max_val: torch.Tensor, spec: Spec,
                   min_scale: float = MIN_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero_point int32) with the shapes of min_val / max_val.

    The range is first widened to contain 0, so that 0 (padding, ReLU output) is exact.
    Affine:    scale = (max - min) / (qmax - qmin), zero_point = qmin - round(min / scale) — the formula
               q = round((x - min) / (max - min) * (2^n - 1)) of the article lowp grew from (model acceleration
               and low-precision computing), with the offset kept as an integer.
    Symmetric: scale = max(|min|, |max|) / qmax, zero_point = 0 (unsigned symmetric: max / qmax). An Fp8Spec is
               symmetric with qmax its largest finite value: scale = amax / 448 for e4m3.
    Degenerate finite ranges (all equal, all zero) give scale >= min_scale: never 0, NaN or inf.
    A range holding NaN or ±inf gives scale NaN (lowp's non-finite rule, as the per-token kernel: quantizing with
    it gives the zero point everywhere, dequantizing NaN) and, affine, zero_point 0 clamped into [qmin, qmax].
    """
    lo = torch.clamp(min_val.float(), max=0.0)
    hi = torch.clamp(max_val.float(), min=0.0)
    # 0 for a finite range, NaN otherwise (0·inf, 0·NaN); lo <= 0 <= hi, so lo + hi cannot overflow. Adding ±0 to
    # a positive scale leaves it bit-identical.
    poison = (lo + hi) * 0.0
    if spec.symmetric:
        amax = torch.maximum(-lo, hi) if spec.signed else hi
        scale = torch.clamp(amax / spec.qmax, min=min_scale) + poison
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / float(spec.qmax - spec.qmin), min=min_scale) + poison
        zero_point = spec.qmin - torch.round(lo / scale)
        zero_point = torch.clamp(zero_point.nan_to_num(nan=0.0), spec.qmin, spec.qmax).to(torch.int32)
    return scale, zero_point
