"""lowp::int8_add: two int8 tensors added as the values they stand for and requantized, so that an int8 hand-off runs
through a residual connection (ResNet's `out += identity`)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from .._validate import check_scale, check_tensor, check_zero_point, fail
from ..kernels.add import add_layout
from ._common import _eager_plain, in_graphs
from .backends import dispatch

_ACTIVATIONS = ("none", "relu", "relu6")


def _check_int8_add(a, b, a_scale, b_scale, out_scale, a_zero_point, b_zero_point, out_zero_point,
                    activation) -> None:
    op = "int8_add"
    check_tensor(op, "a", a, (torch.int8,))
    check_tensor(op, "b", b, (torch.int8,), like=("a", a))
    if a.shape != b.shape:
        fail(op, f"argument 'b' must have a's shape {tuple(a.shape)} (no broadcasting), got {tuple(b.shape)}")
    for name, scale in (("a_scale", a_scale), ("b_scale", b_scale), ("out_scale", out_scale)):
        check_scale(op, name, scale, ("a", a), required=True)
    for name, zero_point in (("a_zero_point", a_zero_point), ("b_zero_point", b_zero_point),
                             ("out_zero_point", out_zero_point)):
        check_zero_point(op, name, zero_point, ("a", a))
    if activation not in _ACTIVATIONS:
        fail(op, f"argument 'activation' must be one of {', '.join(map(repr, _ACTIVATIONS))}, got {activation!r}")


@triton_op("lowp::int8_add", mutates_args={})
def int8_add(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, out_scale: Tensor,
             a_zero_point: Tensor | None = None, b_zero_point: Tensor | None = None,
             out_zero_point: Tensor | None = None, activation: str = "none") -> Tensor:
    """Add int8 codes as the values they stand for, per-tensor affine each, and requantize:

        q = clamp(round_half_even(act((a − za)·sa + (b − zb)·sb) / so) + zo, −128, 127)

    in float32 (kernels/add.py has the order). a, b: int8, the same shape (no broadcasting), any strides.
    a_scale, b_scale, out_scale: float32, one element each, finite and normal; the zero points: int32, one element
    in [-128, 127], or None for 0. activation: "none", "relu" or "relu6", applied to the sum (a residual block's
    relu after its add). Returns int8 of a's shape: channels_last where a is a channels_last 4-D tensor (as
    int8_conv2d returns it), else contiguous.

    >>> one = torch.tensor([0.5])
    >>> torch.ops.lowp.int8_add(torch.tensor([2, -4], dtype=torch.int8), torch.tensor([6, 1], dtype=torch.int8),
    ...                         one, one, one, activation="relu").tolist()
    [8, 0]
    """
    _check_int8_add(a, b, a_scale, b_scale, out_scale, a_zero_point, b_zero_point, out_zero_point, activation)
    return _int8_add(a, b, a_scale, b_scale, out_scale, a_zero_point, b_zero_point, out_zero_point, activation)


def _int8_add(a, b, a_scale, b_scale, out_scale, a_zero_point, b_zero_point, out_zero_point, activation) -> Tensor:
    """The op's body after validation: the device's backend."""
    return dispatch("int8_add", "int8_add", a, b, a_scale=a_scale, b_scale=b_scale, out_scale=out_scale,
                    a_zero_point=a_zero_point, b_zero_point=b_zero_point, out_zero_point=out_zero_point,
                    activation=activation)


def eager_int8_add(a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, out_scale: Tensor,
                   a_zero_point: Tensor | None = None, b_zero_point: Tensor | None = None,
                   out_zero_point: Tensor | None = None, activation: str = "none") -> Tensor:
    """int8_add for lowp's modules (nn.Int8Add): a plain eager call runs the op's checks and body without
    torch.library's dispatch (~40 us a call, a batch-1 residual add's whole cost); anything that must see the op
    (tracing, dispatch modes, subclasses: ops/_common.py, _eager_plain) goes through it."""
    args = (a, b, a_scale, b_scale, out_scale, a_zero_point, b_zero_point, out_zero_point, activation)
    if _eager_plain(a) and _eager_plain(b):
        _check_int8_add(*args)
        return _int8_add(*args)
    return int8_add(*args)


@int8_add.register_fake
def _int8_add_fake(a, b, a_scale, b_scale, out_scale, a_zero_point=None, b_zero_point=None, out_zero_point=None,
                   activation="none"):
    _check_int8_add(a, b, a_scale, b_scale, out_scale, a_zero_point, b_zero_point, out_zero_point, activation)
    return torch.empty_like(a, memory_format=add_layout(a))


_int8_add = in_graphs(int8_add, _int8_add, _int8_add_fake)
