"""Int8MaxPool2d: nn.MaxPool2d that also takes int8 codes, where static INT8 conversion hands int8 through a pool."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from ..cpu import native
from ..ops._common import WholeCall, _eager_plain, _native_backend
from ..ops.pool import _check_int8_max_pool2d, eager_int8_max_pool2d


class Int8MaxPool2d(WholeCall, nn.MaxPool2d):
    """nn.MaxPool2d whose int8 input (the codes an INT8 layer hands the next one) is pooled by
    torch.ops.lowp.int8_max_pool2d, and float input as nn.MaxPool2d does. Max commutes with per-tensor quantization,
    so the codes out are the codes of the pooled values: the layer after reads them with the producer's scale.

    x: (N, C, H, W) or unbatched (C, H, W): int8 -> int8 channels_last (unbatched: (C, OH, OW)), or contiguous
    with channels_last=False (convert sets it where a flatten into a Linear follows: flatten then reads the codes
    without a copy); float -> as nn.MaxPool2d. Eager CPU calls skip torch.library's dispatch (ops/pool.py).
    return_indices is not supported (indices of int8 codes serve no unpooling in an int8 model).

    >>> pool = Int8MaxPool2d(2)
    >>> pool(torch.tensor([[[[-5, 3], [7, -128]]]], dtype=torch.int8)).tolist()
    [[[[7]]]]
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False, *,
                 channels_last: bool = True) -> None:
        super().__init__(kernel_size, stride, padding, dilation, return_indices=False, ceil_mode=ceil_mode)
        self.channels_last = channels_last
        self._init_whole_call()

    @classmethod
    def from_float(cls, pool: nn.MaxPool2d, *, channels_last: bool = True) -> Int8MaxPool2d:
        """The same pooling as `pool` (which must not return indices)."""
        if pool.return_indices:
            raise ValueError("Int8MaxPool2d: a max-pool returning indices cannot take int8 codes")
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode,
                   channels_last=channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.int8:
            return super().forward(x)
        if x.ndim == 3:  # unbatched, as nn.MaxPool2d takes it
            return self.forward(x.unsqueeze(0)).squeeze(0)
        y = self._whole_call(x, torch.int8, self.channels_last)  # compiled: one graph op
        if y is not None:
            return y
        if x.device.type == "cpu" and _eager_plain(x) and _native_backend():
            # the op's native pass, its checks run once per input size and window: at batch 1 the op's dispatch and
            # checks cost 13 of its 21 us (seed ConvNet's pool, (1, 64, 24, 24), CI machine, 2026-12-06)
            window, out = self._checked(x)
            return native.load().max_pool2d(x.contiguous(memory_format=torch.channels_last), *window[0], *window[1],
                                            *window[2], *window[3], *out, self.channels_last)
        return eager_int8_max_pool2d(x, *self._window(), self.channels_last)

    def _checked(self, x: torch.Tensor) -> tuple:
        """(the window, (OH, OW)) for x, after the op's checks: run once per (C, H, W) and window attributes."""
        key = (x.shape[1:], self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        kept = self.__dict__.setdefault("_checked_sizes", {})
        if key not in kept:
            window = self._window()
            kept.clear()  # one input size at a time is what a model serves; a new one checks again
            kept[key] = window, _check_int8_max_pool2d(x, *window)
        return kept[key]

    def _window(self) -> tuple:
        return _pair(self.kernel_size), _pair(self.stride), _pair(self.padding), _pair(self.dilation), self.ceil_mode

    def _output_size(self, x: torch.Tensor) -> tuple:
        """(N, C, OH, OW) for a batched int8 x, checked as the op checks it."""
        return (*x.shape[:2], *_check_int8_max_pool2d(x, *self._window()))

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.channels_last else ", int8 output contiguous")
