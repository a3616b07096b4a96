"""What a quantization is: the number format (an integer grid, or an 8-bit floating-point format), symmetric or
affine, and which elements share a scale."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

import torch


class Granularity(str, enum.Enum):
    """Which elements share one (scale, zero_point) pair."""

    PER_TENSOR = "per_tensor"  # the whole tensor
    PER_CHANNEL = "per_channel"  # one pair per index along `axis` (weights: axis 0 = output channel)
    PER_TOKEN = "per_token"  # one pair per row: every index but the last (activations (..., K))
    PER_GROUP = "per_group"  # one pair per `group_size` consecutive elements of the last dim (K)


@dataclass(frozen=True)
class QuantSpec:
    """A uniform integer quantization scheme.

    bits:        2..8 (values are stored in int8 / uint8).
    signed:      int range [-2^(b-1), 2^(b-1)-1] if True, else [0, 2^b - 1].
    symmetric:   zero_point fixed at 0 and the range made symmetric around 0. Signed symmetric specs use the
                 narrow range [-(2^(b-1)-1), 2^(b-1)-1] (-127..127 for int8) so that q -> -q is exact and the
                 int8 product corner -128 * -128 never occurs.
    granularity: see Granularity; `axis` is required for PER_CHANNEL, `group_size` for PER_GROUP.

    >>> QuantSpec(bits=8).qmin, QuantSpec(bits=8).qmax
    (-127, 127)
    >>> QuantSpec(bits=4, symmetric=False, signed=False).qmax
    15
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    granularity: Granularity = Granularity.PER_TENSOR
    axis: int | None = None
    group_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"QuantSpec: bits must be an int in 2..8, got {self.bits!r}")
        _check_granularity(self)

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.symmetric else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def storage_dtype(self) -> torch.dtype:
        return torch.int8 if self.signed else torch.uint8


def _check_granularity(spec) -> None:
    """Coerce spec.granularity to a Granularity and check that axis / group_size go with it."""
    name = type(spec).__name__
    try:
        object.__setattr__(spec, "granularity", Granularity(spec.granularity))
    except ValueError:
        raise ValueError(f"{name}: granularity must be one of {tuple(g.value for g in Granularity)}, got "
                         f"{spec.granularity!r}") from None
    if spec.granularity is Granularity.PER_CHANNEL and spec.axis is None:
        raise ValueError(f"{name}: granularity 'per_channel' needs an axis, got axis=None")
    if spec.granularity is not Granularity.PER_CHANNEL and spec.axis is not None:
        raise ValueError(f"{name}: axis is only meaningful per channel, got axis={spec.axis} "
                         f"with granularity '{spec.granularity.value}'")
    if spec.granularity is Granularity.PER_GROUP:
        if not isinstance(spec.group_size, int) or spec.group_size < 1:
            raise ValueError(f"{name}: granularity 'per_group' needs a positive int group_size, "
                             f"got {spec.group_size!r}")
    elif spec.group_size is not None:
        raise ValueError(f"{name}: group_size is only meaningful per group, got group_size="
                         f"{spec.group_size} with granularity '{spec.granularity.value}'")


# OCP 8-bit floating-point formats: (torch dtype, exponent bits, mantissa bits, largest finite value)
_FP8_FORMATS = {"e4m3": (torch.float8_e4m3fn, 4, 3, 448.0), "e5m2": (torch.float8_e5m2, 5, 2, 57344.0)}


@dataclass(frozen=True)
class Fp8Spec:
    """A scaled 8-bit floating-point quantization (OCP FP8), always symmetric (zero_point 0):

        q = saturate(round_to_format(x · (1/scale))),   x̂ = q · scale,   scale = max(amax / qmax, MIN_SCALE)

    round_to_format rounds to the nearest value of the format, ties to even; saturate clamps to ±qmax, so ±inf
    and overflows become ±qmax (a saturating cast). NaN stays NaN: both formats have a NaN code, unlike int8.

    format:  "e4m3" (torch.float8_e4m3fn: 4 exponent bits, 3 mantissa bits, ±448, no inf): weights and
             activations, what the FP8 GEMM takes. "e5m2" (torch.float8_e5m2: 5 and 2 bits, ±57344): the wider,
             coarser format of gradients.
    granularity, axis, group_size: which elements share a scale, as in QuantSpec.

    Where the integer grid has one step Δ = scale for every element, a floating grid's step grows with the
    value: Δ = scale · 2^(e − mantissa_bits) for |x| / scale in the binade [2^e, 2^(e+1)) (e not below the
    smallest normal exponent, where the subnormals keep the step fixed). So the error is relative: at most
    unit_roundoff = 2^-(mantissa_bits + 1) of |x| in the normal range, whatever the scale (quant/error.py).

    >>> Fp8Spec().qmax, Fp8Spec().unit_roundoff, Fp8Spec(format="e5m2").dtype
    (448.0, 0.0625, torch.float8_e5m2)
    """

    format: str = "e4m3"
    granularity: Granularity = Granularity.PER_TENSOR
    axis: int | None = None
    group_size: int | None = None

    symmetric: ClassVar[bool] = True  # what choose_qparams reads: scale = amax / qmax, zero_point 0
    signed: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.format, str) or self.format not in _FP8_FORMATS:
            raise ValueError(f"Fp8Spec: format must be one of {tuple(_FP8_FORMATS)}, got {self.format!r}")
        _check_granularity(self)

    @property
    def dtype(self) -> torch.dtype:
        return _FP8_FORMATS[self.format][0]

    storage_dtype = dtype

    @property
    def exponent_bits(self) -> int:
        return _FP8_FORMATS[self.format][1]

    @property
    def mantissa_bits(self) -> int:
        return _FP8_FORMATS[self.format][2]

    @property
    def qmax(self) -> float:
        """The largest finite value: 448 (e4m3), 57344 (e5m2)."""
        return _FP8_FORMATS[self.format][3]

    @property
    def qmin(self) -> float:
        return -self.qmax

    @property
    def min_normal_exponent(self) -> int:
        """1 − bias: −6 (e4m3), −14 (e5m2). Below 2^min_normal_exponent the values are subnormal."""
        return 2 - 2 ** (self.exponent_bits - 1)

    @property
    def unit_roundoff(self) -> float:
        """2^-(mantissa_bits + 1): the largest relative error of rounding in the normal range."""
        return 2.0 ** -(self.mantissa_bits + 1)

    def round(self, v: torch.Tensor) -> torch.Tensor:
        """v float -> the nearest value of the format (ties to even), saturated at ±qmax, as float32; NaN stays
        NaN. torch's float8 casts round to nearest even; the clamp makes them saturate."""
        return v.float().clamp(self.qmin, self.qmax).to(self.dtype).float()


Spec = QuantSpec | Fp8Spec  # what quantize / dequantize / choose_qparams take


def per_tensor(bits: int = 8, *, symmetric: bool = True, signed: bool = True) -> QuantSpec:
    return QuantSpec(bits=bits, signed=signed, symmetric=symmetric)


def per_channel(axis: int = 0, bits: int = 8, *, symmetric: bool = True, signed: bool = True) -> QuantSpec:
    return QuantSpec(bits, signed, symmetric, Granularity.PER_CHANNEL, axis=axis)


def per_token(bits: int = 8, *, symmetric: bool = True, signed: bool = True) -> QuantSpec:
    return QuantSpec(bits, signed, symmetric, Granularity.PER_TOKEN)


def per_group(group_size: int, bits: int = 4, *, symmetric: bool = True, signed: bool = True) -> QuantSpec:
    return QuantSpec(bits, signed, symmetric, Granularity.PER_GROUP, group_size=group_size)
