"""FP8 modules: weights quantized once to e4m3 (torch.float8_e4m3fn, one scale per output channel or one for the
tensor), activations quantized to e4m3 on the fly — per token (row), or per tensor with a static input_scale —
and lowp's fp8 GEMM doing the rest (float32 accumulation, scales, bias, activation).

Fp8Linear holds plain tensors: `weight_scale` float32 (out_features,) or (1,), `qweight` float8_e4m3fn
(out_features, in_features), `bias` float32 (out_features,) or None, `input_scale` float32 (1,) or None (dynamic).
There is no zero point (FP8 is symmetric) and no fp8 output: a layer returns float. `weight` is the float weight,
dequantized on access, as code written for nn.Linear expects (nn/_base.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import quant
from ..ops.fp8 import eager_fp8_linear, eager_fp8_mm
from ._base import SCALE, _QuantModule

WEIGHT_SPEC = quant.Fp8Spec(granularity="per_channel", axis=0)  # e4m3, one scale = amax / 448 per output channel
FP8 = torch.float8_e4m3fn


class Fp8Linear(_QuantModule):
    """W8A8 FP8 Linear on torch.ops.lowp.fp8_linear / fp8_mm.

    weight: (out_features, in_features) float, quantized here with weight_spec: e4m3 per output channel
    (Fp8Spec(granularity="per_channel", axis=0), the default) or per tensor (Fp8Spec()). x: (..., in_features)
    float16 / bfloat16 / float32 / float64, quantized to e4m3 per token (scale = amax / 448 per row) or, with
    input_scale, per tensor (saturating at ±448 · input_scale); or float8_e4m3fn codes already quantized with
    input_scale. Returns (..., out_features) float: x's dtype (float32 for e4m3 x), or out_dtype.
    input_scale: one finite float32 > 0, normal (>= 2^-126). use_fast_accum: the whole reduction in sm_90's fp8
    accumulator, faster and with fewer bits (lowp.fp8_mm; CPU tensors accumulate in float32 either way).
    Casts as Int8Linear: _QuantModule._apply in nn/_base.py (m.half() returns float16, .float() undoes it).
    Non-finite x (lowp_ops/ops/fp8.py): NaN makes its row's outputs NaN; so does ±inf with dynamic scales, and
    with input_scale it saturates to ±448 · input_scale.

    >>> layer = Fp8Linear.from_float(torch.nn.Linear(64, 32), activation="relu")
    >>> x = torch.randn(4, 64)
    >>> y = layer(x)
    >>> y.shape, layer.qweight.dtype, layer.weight.dtype
    (torch.Size([4, 32]), torch.float8_e4m3fn, torch.float32)
    """

    _WEIGHT_DTYPE = FP8
    _WEIGHT_SPECS = (WEIGHT_SPEC, quant.Fp8Spec())
    _WEIGHT_WORDS = "an e4m3 Fp8Spec per output channel (axis 0) or per tensor"
    _FORMAT, _SCHEME = "e4m3", "FP8"
    _QPARAMS = {"input_scale": SCALE}
    _SCHEMES_DIFFER = "dynamic vs static"
    _CONVERTERS = "lowp_ops.quantize_dynamic(model, dtype=torch.float8_e4m3fn)"
    _OUT_DTYPE_NOTE = "; FP8 layers return float"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, activation: str = "none",
                 input_scale=None, out_dtype: torch.dtype | None = None, weight_spec: quant.Fp8Spec = WEIGHT_SPEC,
                 use_fast_accum: bool = False) -> None:
        super().__init__()
        if isinstance(weight, torch.Tensor) and weight.ndim != 2:  # not a tensor: _init_quant's TypeError
            raise ValueError(f"Fp8Linear: weight must be (out_features, in_features), got shape {tuple(weight.shape)}")
        if not isinstance(use_fast_accum, bool):
            raise TypeError(f"Fp8Linear: use_fast_accum must be a bool, got {type(use_fast_accum).__name__}")
        self._init_quant(weight, bias, activation, out_dtype, weight_spec, input_scale=input_scale)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.use_fast_accum = use_fast_accum

    @classmethod
    def from_float(cls, linear: nn.Linear, **kwargs) -> Fp8Linear:
        """Quantize an nn.Linear's weight (per output channel unless weight_spec says per tensor); kwargs as
        __init__."""
        return cls(linear.weight, linear.bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, out_dtype = self._linear_input(x)
        rest = (self.activation, self._kernel_dtype(out_dtype), self.use_fast_accum)
        if x.dtype == FP8:  # torch.ops.lowp.fp8_mm, or its eager lane
            y = eager_fp8_mm(self, x, self.qweight, self.input_scale, self.weight_scale, self.bias, *rest)
        else:  # torch.ops.lowp.fp8_linear, or its eager lane
            y = eager_fp8_linear(self, x, self.qweight, self.weight_scale, self.bias, self.input_scale, *rest)
        return y.to(out_dtype)

    def extra_repr(self) -> str:
        act = f"static e4m3 (scale={self.input_scale.item():.4g})" if self.static else "dynamic e4m3 per token"
        out = str(self.out_dtype).removeprefix("torch.") if self.out_dtype else "input dtype"
        per = "per-channel" if self.weight_scale.numel() > 1 else "per-tensor"
        return (f"in_features={self.in_features}, out_features={self.out_features}, weight=e4m3 {per}, "
                f"input={act}, activation={self.activation}, output={out}, bias={self.bias is not None}, "
                f"use_fast_accum={self.use_fast_accum}")
