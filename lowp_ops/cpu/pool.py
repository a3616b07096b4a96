"""int8_max_pool2d on the CPU: native.cpp's channels_last loop (each tap's channels one vectorized max), else the
reference (a float max-pool of the codes, exact). torch's own max-pool refuses int8 channels_last input beyond 127
values per image (torch 2.13: "input_depth * input_height * input_width <= std::numeric_limits<integer_t>::max()")
and runs int8 NCHW input element by element (141 ms for (256, 64, 24, 24), 2x2, where float32 channels_last takes 4;
CI machine, 2026-12-06)."""

from __future__ import annotations

import torch

from .. import reference
from ..kernels.pool import pool_output_size
from . import native
from .support import traced


def int8_max_pool2d(x: torch.Tensor, *, kernel_size, stride, padding, dilation, ceil_mode=False,
                    channels_last=True) -> torch.Tensor:
    """x int8 (N, C, H, W) -> (N, C, OH, OW) int8, channels_last or contiguous; arguments as
    kernels.int8_max_pool2d."""
    cpp = None if traced(x) else native.load()
    if cpp is None or x.numel() == 0:
        return reference.int8_max_pool2d(x, kernel_size=kernel_size, stride=stride, padding=padding,
                                         dilation=dilation, ceil_mode=ceil_mode, channels_last=channels_last)
    OH, OW = (pool_output_size(s, k, st, p, d, ceil_mode)
              for s, k, st, p, d in zip(x.shape[2:], kernel_size, stride, padding, dilation, strict=True))
    return cpp.max_pool2d(x.contiguous(memory_format=torch.channels_last), *kernel_size, *stride, *padding,
                          *dilation, OH, OW, channels_last)
