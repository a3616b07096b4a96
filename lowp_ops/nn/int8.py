"""INT8 modules: weights quantized once (int8, symmetric, per output channel), activations quantized on the fly —
dynamically, or statically with a scale and zero point from calibration — and the lowp kernels doing the rest
(int32 accumulation, dequantize, bias, activation, optional requantize so consecutive INT8 layers chain).

Each holds plain tensors: `weight` int8, `weight_scale` float32, `bias` float32, and — when static —
`input_scale` float32 (1,) / `input_zero_point` int32 (1,); with int8 output, `output_scale` / `output_zero_point`.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import quant
from .._validate import ACTIVATIONS, trust_scales

WEIGHT_SPEC = quant.per_channel(axis=0)  # symmetric int8 [-127, 127], one scale per output channel
_DYNAMIC_INPUT_SPEC = quant.per_tensor()  # symmetric per-tensor (conv inputs); Linear inputs go per token


class _Int8Module(nn.Module):
    """Buffers and checks shared by the INT8 modules."""

    def _init_quant(self, weight: torch.Tensor, bias, activation: str, input_scale, input_zero_point,
                    output_scale, output_zero_point, out_dtype, weight_spec) -> None:
        name = type(self).__name__
        if activation not in ACTIVATIONS:
            raise ValueError(f"{name}: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if input_zero_point is not None and input_scale is None:
            raise ValueError(f"{name}: input_zero_point needs input_scale (static quantization)")
        if output_zero_point is not None and output_scale is None:
            raise ValueError(f"{name}: output_zero_point needs output_scale (int8 output)")
        if weight_spec not in (WEIGHT_SPEC, quant.per_tensor()):
            raise ValueError(f"{name}: weight_spec must be int8 symmetric per output channel or per tensor, "
                             f"got {weight_spec}")
        qw = quant.quantize_tensor(weight.detach().float(), weight_spec)
        device = weight.device
        self.register_buffer("weight", qw.qdata)
        self.register_buffer("weight_scale", qw.scale.reshape(-1))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        for buf, value, dtype in (("input_scale", input_scale, torch.float32),
                                  ("input_zero_point", input_zero_point, torch.int32),
                                  ("output_scale", output_scale, torch.float32),
                                  ("output_zero_point", output_zero_point, torch.int32)):
            self.register_buffer(buf, None if value is None else
                                 torch.as_tensor(value, dtype=dtype, device=device).reshape(1).clone())
        # Σ_k weight, for the zero-point correction; derived, so kept out of the state_dict and refreshed on load
        self.register_buffer("weight_sum", None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: module._refresh_weight_sum())
        self.activation, self.out_dtype = activation, out_dtype

    def _apply(self, fn, recurse=True):
        """.to(device) / .cuda() move the buffers; a float dtype change (.half(), .to(torch.bfloat16)) keeps the
        int8 weights and float32 scales the kernels need and becomes the layer's output dtype instead."""
        probe = fn(torch.zeros((), device=self.weight_scale.device))
        if probe.dtype != torch.float32:
            self.out_dtype = probe.dtype
            return super()._apply(lambda t: t.to(probe.device), recurse)
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Say plainly when a checkpoint was made for another layer or another scheme."""
        name = f"{type(self).__name__} '{prefix.rstrip('.') or '(root)'}'"
        for key in ("weight", "weight_scale", "bias"):
            mine, theirs = getattr(self, key), state_dict.get(prefix + key)
            if mine is not None and theirs is not None and mine.shape != theirs.shape:
                raise ValueError(f"{name}: checkpoint {key} has shape {tuple(theirs.shape)} but this layer's is "
                                 f"{tuple(mine.shape)}; load it into a model of the same architecture")
        for key in ("input_scale", "input_zero_point", "output_scale", "output_zero_point"):
            if (getattr(self, key) is None) != (prefix + key not in state_dict):
                have = "has" if prefix + key in state_dict else "lacks"
                raise ValueError(f"{name}: the checkpoint {have} '{key}' but this layer {'lacks' if have == 'has' else 'has'}"
                                 f" it: it was converted with another scheme (dynamic vs static, float vs int8 "
                                 f"output); convert this model the same way before loading")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _refresh_weight_sum(self) -> None:
        dims = tuple(range(1, self.weight.ndim))
        self.weight_sum = self.weight.sum(dim=dims, dtype=torch.int32) if self.input_zero_point is not None else None

    @property
    def static(self) -> bool:
        return self.input_scale is not None

    def _output_dtype(self, x: torch.Tensor) -> torch.dtype:
        if self.output_scale is not None:
            return torch.int8
        return self.out_dtype or (x.dtype if x.is_floating_point() else torch.float32)

    def _check_int8_input(self, x: torch.Tensor) -> None:
        if x.dtype == torch.int8 and not self.static:
            raise ValueError(f"{type(self).__name__}: an int8 input needs a static input_scale (from calibration); "
                             f"this module quantizes its input dynamically, so give it float input")

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

    x: (..., in_features) float (quantized per token, or with the static input_scale / input_zero_point), or int8
    already quantized with input_scale / input_zero_point (the output of an INT8 layer before it).
    Returns (..., out_features): float (x's dtype, or out_dtype) or int8 when output_scale is set.

    >>> layer = Int8Linear.from_float(torch.nn.Linear(64, 32))
    >>> layer(torch.randn(4, 64)).shape
    torch.Size([4, 32])
    """

    _dynamic_input = "dynamic int8 per token"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, activation: str = "none",
                 input_scale=None, input_zero_point=None, output_scale=None, output_zero_point=None,
                 out_dtype: torch.dtype | None = None, weight_spec: quant.QuantSpec = WEIGHT_SPEC) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self._init_quant(weight, bias, activation, input_scale, input_zero_point, output_scale, output_zero_point,
                         out_dtype, weight_spec)
        self._refresh_weight_sum()

    @classmethod
    def from_float(cls, linear: nn.Linear, **kwargs) -> "Int8Linear":
        """Quantize an nn.Linear's weight (per output channel); kwargs as __init__."""
        return cls(linear.weight, linear.bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_int8_input(x)
        kw = dict(activation=self.activation, out_dtype=self._output_dtype(x), out_scale=self.output_scale,
                  out_zero_point=self.output_zero_point)
        if x.dtype == torch.int8:
            return torch.ops.lowp.int8_mm(x, self.weight, self.input_scale, self.weight_scale, self.bias,
                                          self.input_zero_point, self.weight_sum, **kw)
        return torch.ops.lowp.int8_linear(x, self.weight, self.weight_scale, self.bias, self.input_scale,
                                          self.input_zero_point, self.weight_sum, **kw)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._scheme()}"


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding_mode != "zeros":
        raise ValueError(f"Int8Conv2d: padding_mode {conv.padding_mode!r} is not supported, only 'zeros'")
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError(f"Int8Conv2d: padding='same' with kernel {conv.kernel_size} and dilation "
                             f"{conv.dilation} needs asymmetric padding, which is not supported")
        return total[0] // 2, total[1] // 2
    return tuple(conv.padding)


class Int8Conv2d(_Int8Module):
    """INT8 Conv2d on torch.ops.lowp.int8_conv2d (implicit GEMM, channels_last).

    Built from an nn.Conv2d, optionally with the BatchNorm2d after it folded in (inference statistics) and an
    activation (relu / relu6) fused into the epilogue. x: (N, C, H, W) float (quantized per tensor — dynamically,
    or with the static input_scale / input_zero_point — fused with the NCHW -> NHWC change), or int8
    channels_last already quantized with input_scale / input_zero_point. Returns (N, K, OH, OW) channels_last:
    float (x's dtype, or out_dtype) or int8 when output_scale is set.

    >>> conv = Int8Conv2d.from_float(torch.nn.Conv2d(3, 8, 3, padding=1), activation="relu")
    >>> conv(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
    """

    _dynamic_input = "dynamic int8 per tensor"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), groups: int = 1, activation: str = "none", input_scale=None,
                 input_zero_point=None, output_scale=None, output_zero_point=None,
                 out_dtype: torch.dtype | None = None, weight_spec: quant.QuantSpec = WEIGHT_SPEC) -> None:
        super().__init__()
        self.in_channels, self.out_channels = weight.shape[1] * groups, weight.shape[0]
        self.kernel_size = tuple(weight.shape[2:])
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups
        self._init_quant(weight, bias, activation, input_scale, input_zero_point, output_scale, output_zero_point,
                         out_dtype, weight_spec)
        self.weight = self.weight.contiguous(memory_format=torch.channels_last)
        self._refresh_weight_sum()

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, **kwargs) -> "Int8Conv2d":
        """Quantize an nn.Conv2d (after folding `bn`, if given, with its running statistics); kwargs as
        __init__ (activation="relu" fuses a following ReLU)."""
        weight, bias = conv.weight, conv.bias
        if bn is not None:
            from torch.nn.utils.fusion import fuse_conv_bn_weights

            weight, bias = fuse_conv_bn_weights(weight, bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                                bn.bias)
        return cls(weight, bias, stride=conv.stride, padding=_conv_padding(conv), dilation=conv.dilation,
                   groups=conv.groups, **kwargs)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # checkpoints hold the plain (K, C/groups, R, S) layout (safetensors takes contiguous tensors only); loading
        # copies into the channels_last buffer, which keeps its layout
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = destination[prefix + "weight"].contiguous()

    def _quantize_input(self, x: torch.Tensor):
        if x.dtype == torch.int8:  # ops between int8 layers (relu, dropout) may hand it back in NCHW order
            return x.contiguous(memory_format=torch.channels_last), self.input_scale
        scale = self.input_scale
        if scale is None:  # dynamic per tensor: absmax from a min and a max reduction (no |x| copy), then
            amax = torch.maximum(-x.detach().amin(), x.detach().amax()).float()  # quantize + layout change
            scale = trust_scales(quant.choose_qparams(-amax, amax, _DYNAMIC_INPUT_SPEC)[0].reshape(1))
        return torch.ops.lowp.quantize_channels_last(x, scale, self.input_zero_point), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_int8_input(x)
        q, scale = self._quantize_input(x)
        return torch.ops.lowp.int8_conv2d(
            q, self.weight, self.stride, self.padding, self.dilation, self.groups, scale, self.weight_scale,
            self.bias, self.input_zero_point, self.weight_sum, activation=self.activation,
            out_dtype=self._output_dtype(x), out_scale=self.output_scale, out_zero_point=self.output_zero_point)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, {self._scheme()}")
