"""What a quantization is: bit width, signedness, symmetric or affine, and which elements share a scale."""

from __future__ import annotations

import enum
from dataclasses import dataclass

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
        object.__setattr__(self, "granularity", Granularity(self.granularity))
        if self.granularity is Granularity.PER_CHANNEL and self.axis is None:
            raise ValueError("QuantSpec: granularity 'per_channel' needs an axis, got axis=None")
        if self.granularity is not Granularity.PER_CHANNEL and self.axis is not None:
            raise ValueError(f"QuantSpec: axis is only meaningful per channel, got axis={self.axis} "
                             f"with granularity '{self.granularity.value}'")
        if self.granularity is Granularity.PER_GROUP:
            if not isinstance(self.group_size, int) or self.group_size < 1:
                raise ValueError(f"QuantSpec: granularity 'per_group' needs a positive int group_size, "
                                 f"got {self.group_size!r}")
        elif self.group_size is not None:
            raise ValueError(f"QuantSpec: group_size is only meaningful per group, got group_size="
                             f"{self.group_size} with granularity '{self.granularity.value}'")

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


def per_tensor(bits: int = 8, *, symmetric: bool = True, signed: bool = True) -> QuantSpec:
    return QuantSpec(bits=bits, signed=signed, symmetric=symmetric)


def per_channel(axis: int = 0, bits: int = 8, *, symmetric: bool = True, signed: bool = True) -> QuantSpec:
    return QuantSpec(bits, signed, symmetric, Granularity.PER_CHANNEL, axis=axis)


def per_token(bits: int = 8, *, symmetric: bool = True, signed: bool = True) -> QuantSpec:
    return QuantSpec(bits, signed, symmetric, Granularity.PER_TOKEN)


def per_group(group_size: int, bits: int = 4, *, symmetric: bool = True, signed: bool = True) -> QuantSpec:
    return QuantSpec(bits, signed, symmetric, Granularity.PER_GROUP, group_size=group_size)
