"""INT8 modules: weights quantized once (int8, symmetric, per output channel), activations quantized on the fly —
dynamically, or statically with a scale and zero point from calibration — and the lowp kernels doing the rest
(int32 accumulation, dequantize, bias, activation, optional requantize so consecutive INT8 layers chain).

Each holds plain tensors: `weight_scale` float32, `qweight` int8, `bias` float32, and — when static —
`input_scale` float32 (1,) / `input_zero_point` int32 (1,); with int8 output, `output_scale` / `output_zero_point`.
`weight` is the float weight, dequantized on access, as code written for nn.Linear / nn.Conv2d expects (nn/_base.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from .. import quant
from .._validate import INT8_RANGE
from ..kernels.conv import conv_output_size
from ..ops._common import run_plan, trust_plan
from ..ops.conv import eager_int8_conv2d
from ..ops.int8 import eager_int8_linear, eager_int8_mm
from ._base import SCALE, Buffer, _QuantModule

WEIGHT_SPEC = quant.per_channel(axis=0)  # symmetric int8 [-127, 127], one scale per output channel


def _zero_point_arg(owner: str, arg: str, value, device) -> torch.Tensor | None:
    """A per-tensor int8 zero point given to a constructor (integer or one-element tensor) -> int32 (1,).
    Integral floats (3.0) are taken; 3.7 is refused rather than truncated to 3."""
    if value is None:
        return None
    # float64 holds every int8 code and every float32 exactly: 3.7 is judged as 3.7, not as its float32 rounding
    t = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{owner}: argument '{arg}' must be an integer zero point, got a {t.dtype} value")
    if t.numel() != 1:
        raise ValueError(f"{owner}: argument '{arg}' must be one value (a per-tensor zero point), got shape "
                         f"{tuple(t.shape)}")
    v = t.item() if isinstance(value, torch.Tensor) else value
    if not float(v).is_integer() or not -128 <= v <= 127:
        raise ValueError(f"{owner}: argument '{arg}' must be an integer in [-128, 127] (an int8 code), got {v!r}")
    return torch.tensor([int(v)], dtype=torch.int32, device=device)


_ZERO_POINT = Buffer((torch.int32,), "int32", INT8_RANGE, "int8 codes in [-128, 127]", _zero_point_arg)


class _Int8Module(_QuantModule):
    """The INT8 scheme of _QuantModule: int8 weights (symmetric, per output channel or per tensor), and when static
    input_scale / input_zero_point; with int8 output, output_scale / output_zero_point. Casts: _QuantModule."""

    _WEIGHT_DTYPE = torch.int8
    _WEIGHT_SPECS = (WEIGHT_SPEC, quant.per_tensor())
    _WEIGHT_WORDS = "int8 symmetric per output channel or per tensor"
    _FORMAT, _SCHEME = "int8", "INT8"
    _QPARAMS = {"input_scale": SCALE, "input_zero_point": _ZERO_POINT, "output_scale": SCALE,
                "output_zero_point": _ZERO_POINT}
    _SCHEMES_DIFFER = "dynamic vs static, float vs int8 output"
    _CONVERTERS = "lowp_ops.quantize_dynamic, or prepare / calibrate / convert"
    _OUT_DTYPE_NOTE = "; int8 output comes from output_scale"

    def _init_quant(self, weight: torch.Tensor, bias, activation: str, out_dtype, weight_spec, **qparams) -> None:
        name = type(self).__name__
        if qparams["input_zero_point"] is not None and qparams["input_scale"] is None:
            raise ValueError(f"{name}: input_zero_point needs input_scale (static quantization)")
        if qparams["output_zero_point"] is not None and qparams["output_scale"] is None:
            raise ValueError(f"{name}: output_zero_point needs output_scale (int8 output)")
        super()._init_quant(weight, bias, activation, out_dtype, weight_spec, **qparams)
        # Σ_k weight, for the zero-point correction; derived, so kept out of the state_dict and refreshed on load
        # (in _load_from_state_dict, not a load hook: a hook closure would make the module unpicklable)
        self.register_buffer("weight_sum", None, persistent=False)

    def _load_from_state_dict(self, *args):
        super()._load_from_state_dict(*args)
        self._refresh_weight_sum()

    def _refresh_weight_sum(self) -> None:
        dims = tuple(range(1, self.qweight.ndim))
        self.weight_sum = self.qweight.sum(dim=dims, dtype=torch.int32) if self.input_zero_point is not None else None

    def _output_dtype(self, x: torch.Tensor) -> torch.dtype:
        return torch.int8 if self.output_scale is not None else super()._output_dtype(x)

    def _trust_plan(self, out_dtype: torch.dtype) -> None:
        """Let the next calls run the plan the lane just made, on x alone (ops/_common.py, run_plan): this module
        drops it whenever an attribute is set or its tensors move (_QuantModule), and for an x the plan serves
        (float32 and contiguous, or int8) forward changes neither x nor the output, unless the output is widened
        after the op (float64)."""
        trust_plan(self, out_dtype == self._kernel_dtype(out_dtype))

    def _scheme(self) -> str:
        act = (f"static int8 (scale={self.input_scale.item():.4g}, zero_point="
               f"{0 if self.input_zero_point is None else int(self.input_zero_point.item())})"
               if self.static else self._dynamic_input)
        out = (f"int8 (scale={self.output_scale.item():.4g})" if self.output_scale is not None
               else str(self.out_dtype).removeprefix("torch.") if self.out_dtype else "input dtype")
        per = "per-channel" if self.weight_scale.numel() > 1 else "per-tensor"
        return (f"weight=int8 {per} symmetric, input={act}, activation={self.activation}, output={out}, "
                f"bias={self.bias is not None}")


class Int8Linear(_Int8Module):
    """W8A8 Linear on torch.ops.lowp.int8_linear / int8_mm.

    weight: (out_features, in_features) float, quantized here. x: (..., in_features) float16 / bfloat16 /
    float32 / float64 (quantized per token, or with the static input_scale / input_zero_point), or int8 already
    quantized with input_scale / input_zero_point (the output of an INT8 layer before it).
    Returns (..., out_features): float (x's dtype, or out_dtype) or int8 when output_scale is set.
    input_scale / output_scale: one finite float32 > 0, normal (>= 2^-126); zero points: one integer in
    [-128, 127]. Casts: see _QuantModule._apply in nn/_base.py (m.half() returns float16, .float() undoes it).

    >>> layer = Int8Linear.from_float(torch.nn.Linear(64, 32))
    >>> layer(torch.randn(4, 64)).shape
    torch.Size([4, 32])
    """

    _dynamic_input = "dynamic int8 per token"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, activation: str = "none",
                 input_scale=None, input_zero_point=None, output_scale=None, output_zero_point=None,
                 out_dtype: torch.dtype | None = None, weight_spec: quant.QuantSpec = WEIGHT_SPEC) -> None:
        super().__init__()
        if weight.ndim != 2:
            raise ValueError(f"Int8Linear: weight must be (out_features, in_features), got shape "
                             f"{tuple(weight.shape)}")
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self._init_quant(weight, bias, activation, out_dtype, weight_spec, input_scale=input_scale,
                         input_zero_point=input_zero_point, output_scale=output_scale,
                         output_zero_point=output_zero_point)
        self._refresh_weight_sum()

    @classmethod
    def from_float(cls, linear: nn.Linear, **kwargs) -> Int8Linear:
        """Quantize an nn.Linear's weight (per output channel); kwargs as __init__."""
        return cls(linear.weight, linear.bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = run_plan(self, x)  # the last call's C++ plan, where it serves x (see _trust_plan)
        if y is not None:
            return y
        given = x
        x, out_dtype = self._linear_input(x)
        y = self._whole_call(given, out_dtype)  # compiled: one graph op
        if y is not None:
            return y
        epilogue = (self.activation, self._kernel_dtype(out_dtype), self.output_scale, self.output_zero_point)
        if x.dtype == torch.int8:  # torch.ops.lowp.int8_mm, or its eager lane
            y = eager_int8_mm(self, x, self.qweight, self.input_scale, self.weight_scale, self.bias,
                              self.input_zero_point, self.weight_sum, *epilogue)
        else:  # torch.ops.lowp.int8_linear, or its eager lane
            y = eager_int8_linear(self, x, self.qweight, self.weight_scale, self.bias, self.input_scale,
                                  self.input_zero_point, self.weight_sum, *epilogue)
        self._trust_plan(out_dtype)
        return y.to(out_dtype)

    def _output_size(self, x: torch.Tensor) -> tuple:
        return (*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._scheme()}"


def _conv_padding(padding, kernel_size, dilation, padding_mode: str = "zeros") -> tuple[int, int]:
    """nn.Conv2d's padding forms (int, pair, 'valid', 'same') -> (ph, pw)."""
    if padding_mode != "zeros":
        raise ValueError(f"Int8Conv2d: padding_mode {padding_mode!r} is not supported, only 'zeros'")
    if not isinstance(padding, str):
        return _pair(padding)
    if padding == "valid":
        return 0, 0
    if padding != "same":
        raise ValueError(f"Int8Conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    total = [d * (k - 1) for d, k in zip(dilation, kernel_size, strict=True)]
    if any(t % 2 for t in total):
        raise ValueError(f"Int8Conv2d: padding='same' with kernel {tuple(kernel_size)} and dilation "
                         f"{tuple(dilation)} needs asymmetric padding, which is not supported")
    return total[0] // 2, total[1] // 2


class Int8Conv2d(_Int8Module):
    """INT8 Conv2d on torch.ops.lowp.int8_conv2d (implicit GEMM, channels_last).

    Built from an nn.Conv2d, optionally with the BatchNorm2d after it folded in (inference statistics) and an
    activation (relu / relu6) fused into the epilogue; or from a float weight (K, C / groups, R, S) with
    stride / padding / dilation as nn.Conv2d takes them (an int or a pair; padding also 'valid' / 'same').
    x: (N, C, H, W) or unbatched (C, H, W), float16 / bfloat16 / float32 / float64 (quantized per tensor —
    dynamically, or with the static input_scale / input_zero_point — fused with the NCHW -> NHWC change), or int8
    already quantized with input_scale / input_zero_point. Returns (N, K, OH, OW) channels_last, or (K, OH, OW)
    for an unbatched input: float (x's dtype, or out_dtype) or int8 when output_scale is set.

    Float x goes to the op as it is: int8_conv2d quantizes it, dynamically (one scale for the whole call, so a NaN or
    inf anywhere in x makes every output NaN, or the output zero point for int8 output) or with input_scale.

    >>> conv = Int8Conv2d.from_float(torch.nn.Conv2d(3, 8, 3, padding=1), activation="relu")
    >>> conv(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
    """

    _dynamic_input = "dynamic int8 per tensor"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, stride=1, padding=0,
                 dilation=1, groups: int = 1, activation: str = "none", input_scale=None,
                 input_zero_point=None, output_scale=None, output_zero_point=None,
                 out_dtype: torch.dtype | None = None, weight_spec: quant.QuantSpec = WEIGHT_SPEC) -> None:
        super().__init__()
        if weight.ndim != 4:
            raise ValueError(f"Int8Conv2d: weight must be (out_channels, in_channels / groups, kH, kW), got shape "
                             f"{tuple(weight.shape)}")
        self.in_channels, self.out_channels = weight.shape[1] * groups, weight.shape[0]
        self.kernel_size = tuple(weight.shape[2:])
        self.stride, self.dilation, self.groups = _pair(stride), _pair(dilation), groups
        self.padding = _conv_padding(padding, self.kernel_size, self.dilation)
        self._init_quant(weight, bias, activation, out_dtype, weight_spec, input_scale=input_scale,
                         input_zero_point=input_zero_point, output_scale=output_scale,
                         output_zero_point=output_zero_point)
        self.qweight = self.qweight.contiguous(memory_format=torch.channels_last)
        self._refresh_weight_sum()

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, **kwargs) -> Int8Conv2d:
        """Quantize an nn.Conv2d (after folding `bn`, if given, with its running statistics); kwargs as
        __init__ (activation="relu" fuses a following ReLU)."""
        weight, bias = conv.weight, conv.bias
        if bn is not None:
            from torch.nn.utils.fusion import fuse_conv_bn_weights

            weight, bias = fuse_conv_bn_weights(weight, bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                                bn.bias)
        padding = _conv_padding(conv.padding, conv.kernel_size, conv.dilation, conv.padding_mode)
        return cls(weight, bias, stride=conv.stride, padding=padding, dilation=conv.dilation, groups=conv.groups,
                   **kwargs)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # checkpoints hold the plain (K, C/groups, R, S) layout (safetensors takes contiguous tensors only); loading
        # copies into the channels_last buffer, which keeps its layout
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "qweight"] = destination[prefix + "qweight"].contiguous()

    def _load_from_state_dict(self, state_dict, prefix, *args):
        super()._load_from_state_dict(state_dict, prefix, *args)
        # load_state_dict(assign=True) takes the checkpoint's plain-layout tensor itself: back to channels_last
        self.qweight = self.qweight.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = run_plan(self, x)  # the last call's C++ plan, where it serves x (see _trust_plan)
        if y is not None:
            return y
        if x.ndim not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"Int8Conv2d: input must be (N, C, H, W) or unbatched (C, H, W) with C = in_channels "
                             f"= {self.in_channels}, got shape {tuple(x.shape)}")
        if x.ndim == 3:  # unbatched, as nn.Conv2d takes it: (C, H, W) -> (K, OH, OW)
            return self._conv(x.unsqueeze(0)).squeeze(0)
        return self._conv(x)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        given = x
        x, out_dtype = self._prepare_input(x)
        y = self._whole_call(given, out_dtype, channels_last=True)  # compiled: one graph op
        if y is not None:
            return y
        if x.dtype == torch.int8:  # ops between int8 layers (relu, dropout) may hand it back in NCHW order
            x = x.contiguous(memory_format=torch.channels_last)
        # torch.ops.lowp.int8_conv2d, or its eager lane; float x is quantized inside the op: dynamically without
        # input_scale, else with it
        y = eager_int8_conv2d(self, x, self.qweight, self.stride, self.padding, self.dilation, self.groups,
                              self.input_scale, self.weight_scale, self.bias, self.input_zero_point, self.weight_sum,
                              self.activation, self._kernel_dtype(out_dtype), self.output_scale,
                              self.output_zero_point)
        self._trust_plan(out_dtype)
        return y.to(out_dtype)

    def _output_size(self, x: torch.Tensor) -> tuple:
        """(N, K, OH, OW) for a batched x."""
        hw = (conv_output_size(*a) for a in zip(x.shape[2:], self.kernel_size, self.stride, self.padding,
                                                self.dilation, strict=True))
        return (x.shape[0], self.out_channels, *hw)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, {self._scheme()}")
