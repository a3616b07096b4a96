"""lowp::int8_max_pool2d: max-pooling on int8 codes, so that an int8 hand-off runs through a max-pool."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.library import triton_op

from .._validate import check_tensor, fail
from ..kernels.pool import pool_output_size
from ._common import _eager_plain, in_graphs
from .backends import dispatch
from .conv import _check_pair


def _check_int8_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode) -> tuple[int, int]:
    """Validate as torch's max_pool2d does; returns (OH, OW)."""
    op = "int8_max_pool2d"
    check_tensor(op, "x", x, (torch.int8,), ndim=4)
    (kh, kw), (sh, sw) = _check_pair(op, "kernel_size", kernel_size), _check_pair(op, "stride", stride)
    (ph, pw), (dh, dw) = _check_pair(op, "padding", padding), _check_pair(op, "dilation", dilation)
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        fail(op, f"kernel_size, stride and dilation must be >= 1 and padding >= 0, got kernel_size "
                 f"{list(kernel_size)}, stride {list(stride)}, padding {list(padding)}, dilation {list(dilation)}")
    if ph > kh // 2 or pw > kw // 2:
        fail(op, f"argument 'padding' {list(padding)} must be at most half of kernel_size {list(kernel_size)} (as "
                 f"torch's max_pool2d): a window of padding alone has no value")
    _, _, H, W = x.shape
    OH, OW = pool_output_size(H, kh, sh, ph, dh, ceil_mode), pool_output_size(W, kw, sw, pw, dw, ceil_mode)
    if OH < 1 or OW < 1:
        fail(op, f"the {kh}x{kw} window (dilation {list(dilation)}, padding {list(padding)}) does not fit the "
                 f"{H}x{W} input: output would be {OH}x{OW}")
    return OH, OW


@triton_op("lowp::int8_max_pool2d", mutates_args={})
def int8_max_pool2d(x: Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                    dilation: Sequence[int], ceil_mode: bool = False, channels_last: bool = True) -> Tensor:
    """Max-pool int8 codes: max commutes with quantization (per tensor, scale > 0), so the codes of the pooled
    values are the pooled codes and no scale is needed.

    x: (N, C, H, W) int8, any memory format (channels_last, as int8_conv2d returns it, reads fastest).
    kernel_size, stride, padding, dilation: 2 ints each, as torch.nn.functional.max_pool2d takes them (all given;
    padding at most half the kernel); ceil_mode as there. Returns (N, C, OH, OW) int8, channels_last (what the next
    conv reads), or contiguous with channels_last=False (what a flatten before a Linear reads without a copy),
    equal to torch's max_pool2d of x's values. Padding never wins: at least one tap of every window is inside x.

    >>> x = torch.tensor([[[[-5, 3], [7, -128]]]], dtype=torch.int8)
    >>> torch.ops.lowp.int8_max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1]).tolist()
    [[[[7]]]]
    """
    _check_int8_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    return _int8_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, channels_last)


def _int8_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, channels_last) -> Tensor:
    """The op's body after validation: the device's backend."""
    return dispatch("int8_max_pool2d", "int8_max_pool2d", x, kernel_size=list(kernel_size), stride=list(stride),
                    padding=list(padding), dilation=list(dilation), ceil_mode=ceil_mode, channels_last=channels_last)


def eager_int8_max_pool2d(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool = False,
                          channels_last: bool = True) -> Tensor:
    """int8_max_pool2d for lowp's modules: a plain eager CPU call runs the op's body without torch.library's dispatch
    (~40 us a call, more than the pool at batch 1); anything that must see the op (tracing, dispatch modes,
    subclasses: ops/_common.py, _eager_plain) goes through it."""
    if _eager_plain(x):
        _check_int8_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
        return _int8_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, channels_last)
    return int8_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, channels_last)


@int8_max_pool2d.register_fake
def _int8_max_pool2d_fake(x, kernel_size, stride, padding, dilation, ceil_mode=False, channels_last=True):
    OH, OW = _check_int8_max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    return torch.empty((x.shape[0], x.shape[1], OH, OW), dtype=torch.int8, device=x.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


_int8_max_pool2d = in_graphs(int8_max_pool2d, _int8_max_pool2d, _int8_max_pool2d_fake)
