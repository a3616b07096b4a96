"""int8_add on the CPU: native.cpp's one vectorized pass over both operands (bit-exact with the reference), else the
reference's torch ops (six passes over memory). (32, 64, 56, 56) channels_last with relu: 0.7 ms, where float32
add + relu takes 3.2 and with the next layer's quantize 5.0 (CI machine, 2 threads, 2026-12-06)."""

from __future__ import annotations

import torch

from .. import reference
from ..kernels.add import in_one_layout
from . import native
from .support import traced

_ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2}


def int8_add(a: torch.Tensor, b: torch.Tensor, *, a_scale, b_scale, out_scale, a_zero_point=None, b_zero_point=None,
             out_zero_point=None, activation="none") -> torch.Tensor:
    """a, b int8 (same shape) -> int8 of a's shape and layout; arguments as kernels.int8_add."""
    cpp = None if traced(a, b) else native.load()
    if cpp is None or a.numel() == 0:
        return reference.int8_add(a, b, a_scale=a_scale, b_scale=b_scale, out_scale=out_scale,
                                  a_zero_point=a_zero_point, b_zero_point=b_zero_point, out_zero_point=out_zero_point,
                                  activation=activation)
    return add_codes(a, b, scalars(a_scale, b_scale, out_scale, a_zero_point, b_zero_point, out_zero_point,
                                   activation))


def scalars(a_scale, b_scale, out_scale, a_zero_point, b_zero_point, out_zero_point, activation) -> tuple:
    """int8_add's constant arguments as native.cpp's add_int8 takes them: (a_scale, a_zp, b_scale, b_zp,
    out_scale, out_zp, activation code), Python numbers (reading each costs ~1 us: nn.Int8Add keeps them)."""
    zp = [0 if z is None else int(z.item()) for z in (a_zero_point, b_zero_point, out_zero_point)]
    return a_scale.item(), zp[0], b_scale.item(), zp[1], out_scale.item(), zp[2], _ACTIVATIONS[activation]


def add_codes(a: torch.Tensor, b: torch.Tensor, args: tuple) -> torch.Tensor:
    """The native pass on int8 a and b of one shape, on the CPU, with scalars()' arguments."""
    return native.load().add_int8(*in_one_layout(a, b), *args)
