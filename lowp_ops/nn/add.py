"""Residual adds as modules, so that static INT8 can hand int8 through them: Add (float, what static prepare makes
of a block's `out += identity`, registry/rewrite.py) and Int8Add (what convert makes of it where both operands
arrive as int8 codes).

A ResNet block's add ended every hand-off: conv2 and the shortcut wrote float, torch added float, and the next
block quantized again. With Int8Add the two int8 operands are added as the values they stand for and requantized
with the scale the next layers read (torch.ops.lowp.int8_add), relu fused: one pass over int8 where the float add,
relu and the next quantize were three over float32 ((32, 64, 56, 56) channels_last: 0.7 ms vs 5.0, CI machine,
2026-12-06). transformers' ResNet-50 (random weights, calibrated), CI machine, 2 threads: batch 16 4.4x FP32 with
every add an Int8Add, 2.7x with float adds, one process; batch 1 3.0x (2.8x).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import quant, reference
from ..cpu import add as cpu_add
from ..cpu.support import plain_eager
from ..ops._common import _eager_plain, _native_backend
from ..ops.add import _check_int8_add, _int8_add, eager_int8_add
from ._base import NormalTensors, float_cast, scale_arg
from .int8 import _zero_point_arg


class Add(nn.Module):
    """a + b, then `activation` ("none", "relu", "relu6"): the module form of a residual add, which static prepare
    puts where a block's forward adds two tensors (lowp_ops.registry.rewrite), so that the add can be observed,
    have the relu after it fused, and become an Int8Add. Anything `+` takes, as `+` takes it (broadcasting, Python
    numbers); the activation applies to tensors.

    >>> Add(activation="relu")(torch.tensor([1.0, -3.0]), torch.tensor([1.0, 1.0])).tolist()
    [2.0, 0.0]
    """

    def __init__(self, activation: str = "none") -> None:
        super().__init__()
        if activation not in ("none", "relu", "relu6"):
            raise ValueError(f"{type(self).__name__}: activation must be 'none', 'relu' or 'relu6', got "
                             f"{activation!r}")
        self.activation = activation

    def forward(self, a, b):
        y = a + b
        return reference.activation(y, self.activation) if isinstance(y, torch.Tensor) else y

    def extra_repr(self) -> str:
        return f"activation={self.activation}" if self.activation != "none" else ""


class Int8Add(NormalTensors, Add):
    """Two int8 tensors of one shape added as the values they stand for: act((a − a_zp)·a_scale + (b − b_zp)·b_scale),
    returned as int8 codes with output_scale / output_zero_point (torch.ops.lowp.int8_add, in a's layout), or as
    float32 values without them (where what reads the sum takes float: the last block of a ResNet before its pool;
    a cast of the module, .half() say, sets that dtype: see _apply). Float operands are added as Add adds them (what
    calibration ran), the int8 output quantized from that sum.

    Buffers: a_scale, b_scale, output_scale float32 (1,); a_zero_point, b_zero_point, output_zero_point int32 (1,)
    or None for 0. Built by static convert from an Add whose operands both arrive as int8 codes.

    >>> add = Int8Add(a_scale=0.5, b_scale=0.25, output_scale=0.5, activation="relu")
    >>> add(torch.tensor([4, -8], dtype=torch.int8), torch.tensor([4, 4], dtype=torch.int8)).tolist()
    [6, 0]
    """

    def __init__(self, *, a_scale, b_scale, a_zero_point=None, b_zero_point=None, output_scale=None,
                 output_zero_point=None, activation: str = "none") -> None:
        super().__init__(activation)
        name = type(self).__name__
        for key, value in (("a_scale", a_scale), ("b_scale", b_scale), ("output_scale", output_scale)):
            self.register_buffer(key, scale_arg(name, key, value, None))
        for key, value in (("a_zero_point", a_zero_point), ("b_zero_point", b_zero_point),
                           ("output_zero_point", output_zero_point)):
            self.register_buffer(key, _zero_point_arg(name, key, value, None))
        if self.a_scale is None or self.b_scale is None:
            raise ValueError(f"{name}: a_scale and b_scale are required (the scales of the int8 operands)")
        if output_zero_point is not None and output_scale is None:
            raise ValueError(f"{name}: output_zero_point needs output_scale (int8 output)")
        self.out_dtype: torch.dtype | None = None  # a float output's dtype after a cast (None: float32)

    @classmethod
    def from_float(cls, add: Add, a_qparams, b_qparams, output_qparams=None) -> Int8Add:
        """An Int8Add computing as `add` (its activation) on operands quantized with a_qparams / b_qparams
        ((scale, zero_point) each), with int8 output on output_qparams (None: float output)."""
        out_scale, out_zero_point = output_qparams or (None, None)
        return cls(a_scale=a_qparams[0], a_zero_point=a_qparams[1], b_scale=b_qparams[0], b_zero_point=b_qparams[1],
                   output_scale=out_scale, output_zero_point=out_zero_point, activation=add.activation)

    def forward(self, a, b):
        int8 = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype == torch.int8
        if int8 and self.output_scale is not None and a.shape == b.shape and a.device == b.device \
                and _eager_plain(a) and _eager_plain(b):
            # the op's body, its checks run once for these buffers (their values read once: no host sync per call
            # on CUDA), on the native backend straight to its pass: ~45 us a call of checks, dispatch and scalar
            # reads saved on the CPU, a batch-1 residual's whole cost
            scalars = self._checked(a, b)
            if a.device.type == "cpu" and _native_backend():
                return cpu_add.add_codes(a, b, scalars)
            outer, plain_eager.on = getattr(plain_eager, "on", False), True  # launched without wrap_triton
            try:
                return _int8_add(a, b, *self._operands())
            finally:
                plain_eager.on = outer
        if int8 and self.output_scale is not None:  # traced, or watched by a mode: the op
            return eager_int8_add(a, b, *self._operands())
        if int8:
            y = super().forward(self._real(a, self.a_scale, self.a_zero_point),
                                self._real(b, self.b_scale, self.b_zero_point))
            y = y if self.out_dtype is None or self.output_scale is not None else y.to(self.out_dtype)
        elif isinstance(a, torch.Tensor) and a.dtype == torch.int8 or isinstance(b, torch.Tensor) \
                and b.dtype == torch.int8:
            raise TypeError(f"{type(self).__name__}: a and b must both be int8 codes or both float, got "
                            f"{getattr(a, 'dtype', type(a).__name__)} and {getattr(b, 'dtype', type(b).__name__)}")
        else:
            y = super().forward(a, b)
        if self.output_scale is None:
            return y
        return quant.quantize(y, self.output_scale, self._zero(self.output_zero_point), reference.INT8_AFFINE)

    def _apply(self, fn, recurse=True):
        """.to(device) / .cuda() / .cpu() move the buffers; a float cast (.half(), .to(dtype)) leaves them as they
        are (the op takes float32 scales and int32 zero points) and sets the dtype of a float output (an int8 one
        stays int8), so that a float layer cast with it reads its dtype."""
        cast, device = float_cast(fn, self.a_scale.device)
        if cast is not None:  # the dtype of a float output, as a float layer's cast sets it (.float(): float32)
            self.out_dtype = None if cast == torch.float32 else cast
        return super()._apply(fn if cast is None else lambda t: t.to(device), recurse)

    def _operands(self) -> tuple:
        """int8_add's arguments after a and b, from this module."""
        return (self.a_scale, self.b_scale, self.output_scale, self.a_zero_point, self.b_zero_point,
                self.output_zero_point, self.activation)

    def _checked(self, a: torch.Tensor, b: torch.Tensor) -> tuple | None:
        """int8_add's checks of a and b (int8, one shape and device: the caller's) with this module's buffers, run
        again only after a buffer changed (written in place, loaded, moved: the checks read their values), raising
        as the op does; on the CPU, cpu.add.scalars() of the buffers."""
        operands = self._operands()
        stamp = tuple(None if t is None else (id(t), t._version) for t in operands[:-1]), operands[-1], a.device
        kept = self.__dict__.get("_kept")
        if kept is None or kept[0] != stamp:
            _check_int8_add(a, b, *operands)
            kept = self.__dict__["_kept"] = stamp, cpu_add.scalars(*operands) if a.device.type == "cpu" else None
        return kept[1]

    def _real(self, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None) -> torch.Tensor:
        return quant.dequantize(q, scale, self._zero(zero_point), reference.INT8_AFFINE)

    def _zero(self, zero_point: torch.Tensor | None) -> torch.Tensor:
        """zero_point, or for None an int32 0 on the buffers' device, made once (not a new tensor per call)."""
        if zero_point is not None:
            return zero_point
        zero = self.__dict__.get("_zero_code")
        if zero is None or zero.device != self.a_scale.device:
            zero = self.__dict__["_zero_code"] = self.a_scale.new_zeros(1, dtype=torch.int32)
        return zero

    def extra_repr(self) -> str:
        def q(scale, zero_point):
            return f"int8 (scale={scale.item():.4g}, zero_point={0 if zero_point is None else int(zero_point.item())})"

        out = q(self.output_scale, self.output_zero_point) if self.output_scale is not None else "float32"
        return (f"a={q(self.a_scale, self.a_zero_point)}, b={q(self.b_scale, self.b_zero_point)}, output={out}, "
                f"activation={self.activation}")


__all__ = ["Add", "Int8Add"]
