"""INT8 modules: weights quantized once (int8, symmetric, per output channel), activations quantized on the fly —
dynamically, or statically with a scale and zero point from calibration — and the lowp kernels doing the rest
(int32 accumulation, dequantize, bias, activation, optional requantize so consecutive INT8 layers chain).

Each holds plain tensors: `weight` int8, `weight_scale` float32, `bias` float32, and — when static —
`input_scale` float32 (1,) / `input_zero_point` int32 (1,); with int8 output, `output_scale` / `output_zero_point`.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from .. import quant
from .._validate import ACTIVATIONS, INT8_RANGE, SCALE_RANGE, outside

WEIGHT_SPEC = quant.per_channel(axis=0)  # symmetric int8 [-127, 127], one scale per output channel
# Float dtypes a cast (.half(), .to(dtype)) may give an INT8 layer's float output; float64 is computed in float32
_CAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# What each buffer of a checkpoint must hold, as _init_quant stores it: key -> (dtypes, in words)
_CHECKPOINT_DTYPES = {
    "weight": ((torch.int8,), "int8"), "weight_scale": ((torch.float32,), "float32"),
    "bias": ((torch.float16, torch.bfloat16, torch.float32, torch.float64), "a float dtype"),
    "input_scale": ((torch.float32,), "float32"), "input_zero_point": ((torch.int32,), "int32"),
    "output_scale": ((torch.float32,), "float32"), "output_zero_point": ((torch.int32,), "int32"),
}
_SCALES, _ZERO_POINTS = ("weight_scale", "input_scale", "output_scale"), ("input_zero_point", "output_zero_point")


def _scale_arg(owner: str, arg: str, value, device) -> torch.Tensor | None:
    """A per-tensor scale given to a constructor (number or one-element tensor) -> float32 (1,)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and (value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{owner}: argument '{arg}' must be a real scale, got a {value.dtype} tensor")
    t = torch.as_tensor(value, dtype=torch.float32, device=device)  # the float32 the kernels will read
    if t.numel() != 1:
        raise ValueError(f"{owner}: argument '{arg}' must be one value (a per-tensor scale), got shape "
                         f"{tuple(t.shape)}")
    if outside(t, *SCALE_RANGE).numel():
        given = value.item() if isinstance(value, torch.Tensor) else value
        as_f32 = f" ({t.item()!r} in float32)" if repr(t.item()) != repr(float(given)) else ""
        raise ValueError(f"{owner}: argument '{arg}' must be a finite positive normal float32 scale (>= 2^-126), "
                         f"got {given!r}{as_f32}")
    return t.reshape(1).clone()


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


# One .to() / .cuda() call -> {id(source buffer): (source, result)}, keyed by the function nn.Module._apply hands
# down to every submodule (alive for that one call). nn.Module moves each module's buffers on its own, so two INT8
# layers sharing one weight (tied weights, lowp_ops.registry.swap.share_tied) would come out with two copies;
# through this table the second layer gets the first one's result and the weights stay one tensor.
_MOVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tied(key, fn):
    """fn, applied at most once per source tensor during the _apply call identified by key."""
    memo = _MOVED.setdefault(key, {})

    def apply(t: torch.Tensor) -> torch.Tensor:
        hit = memo.get(id(t))
        if hit is None or hit[0] is not t:
            hit = memo[id(t)] = (t, fn(t))
        return hit[1]

    return apply


class _Int8Module(nn.Module):
    """Buffers and checks shared by the INT8 modules.

    Casts follow one rule (see _apply): .half() / .bfloat16() / .double() / .to(dtype) set the dtype of the float
    output; .float() gives back the output dtype the layer was built with (None: follow the input), so
    m.half().float() behaves exactly as m did. float64 input or output is computed in float32 (the kernels' own
    arithmetic) and returned as float64.
    """

    def _init_quant(self, weight: torch.Tensor, bias, activation: str, input_scale, input_zero_point,
                    output_scale, output_zero_point, out_dtype, weight_spec) -> None:
        name = type(self).__name__
        if activation not in ACTIVATIONS:
            raise ValueError(f"{name}: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if input_zero_point is not None and input_scale is None:
            raise ValueError(f"{name}: input_zero_point needs input_scale (static quantization)")
        if output_zero_point is not None and output_scale is None:
            raise ValueError(f"{name}: output_zero_point needs output_scale (int8 output)")
        if out_dtype is not None and out_dtype not in _CAST_DTYPES:
            raise TypeError(f"{name}: out_dtype must be None (follow the input), float16, bfloat16, float32 or "
                            f"float64, got {out_dtype}; int8 output comes from output_scale")
        if weight_spec not in (WEIGHT_SPEC, quant.per_tensor()):
            raise ValueError(f"{name}: weight_spec must be int8 symmetric per output channel or per tensor, "
                             f"got {weight_spec}")
        if not weight.is_floating_point():
            raise TypeError(f"{name}: weight must be the float weight to quantize, got {weight.dtype}")
        # a NaN / inf weight would silently give its whole output channel a NaN / inf scale
        bad = ~torch.isfinite(weight.detach())
        if bool(bad.any()):
            raise ValueError(f"{name}: weight holds {int(bad.sum())} NaN / inf value(s), first at index "
                             f"{tuple(bad.nonzero()[0].tolist())}; an int8 weight scale cannot represent them")
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"{name}: bias must have shape ({weight.shape[0]},) (one per output channel), got "
                             f"{tuple(bias.shape)}")
        device = weight.device
        qparams = (("input_scale", _scale_arg(name, "input_scale", input_scale, device)),
                   ("input_zero_point", _zero_point_arg(name, "input_zero_point", input_zero_point, device)),
                   ("output_scale", _scale_arg(name, "output_scale", output_scale, device)),
                   ("output_zero_point", _zero_point_arg(name, "output_zero_point", output_zero_point, device)))
        qw = quant.quantize_tensor(weight.detach().float(), weight_spec)
        self.register_buffer("weight", qw.qdata)
        self.register_buffer("weight_scale", qw.scale.reshape(-1))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        for buf, value in qparams:
            self.register_buffer(buf, value)
        # Σ_k weight, for the zero-point correction; derived, so kept out of the state_dict and refreshed on load
        # (in _load_from_state_dict, not a load hook: a hook closure would make the module unpicklable)
        self.register_buffer("weight_sum", None, persistent=False)
        self.activation, self.out_dtype = activation, out_dtype
        self.built_out_dtype = out_dtype  # what .float() returns to

    def _apply(self, fn, recurse=True):
        """.to(device) / .cuda() / .cpu() move the buffers. A float dtype cast never touches them — the kernels
        need the int8 weight and float32 scales — and sets the layer's float output dtype instead:
            .half() / .bfloat16() / .double() / .to(dtype)  ->  out_dtype = that dtype
            .float() / .to(torch.float32)                    ->  out_dtype = as built (None: follow the input)
        float32 is what the layer already computes in, so casting to it undoes earlier casts: m.half().float()
        behaves exactly as m. An int8 output (output_scale set) stays int8 whatever the cast."""
        device = self.weight.device
        # fn is opaque: run it on a float16 and a float32 probe. A device move changes neither dtype; .float()
        # changes only the float16 one; any other float cast changes the float32 one.
        p16, p32 = fn(torch.zeros((), dtype=torch.float16, device=device)), fn(torch.zeros((), device=device))
        cast = p32.dtype if p32.dtype != torch.float32 else p16.dtype if p16.dtype != torch.float16 else None
        if cast is None:
            return super()._apply(_tied(fn, fn), recurse)
        if cast not in _CAST_DTYPES:
            raise TypeError(f"{type(self).__name__}: cannot cast to {cast}: a cast sets the float output dtype, "
                            f"which must be float16, bfloat16, float32 or float64")
        self.out_dtype = self.built_out_dtype if cast == torch.float32 else cast
        return super()._apply(_tied(fn, lambda t: t.to(p32.device)), recurse)

    def _check_checkpoint(self, state_dict, prefix: str, name: str) -> None:
        """Every buffer of a checkpoint with the dtype this layer stores, and values the kernels can use."""
        for key, (dtypes, words) in _CHECKPOINT_DTYPES.items():
            theirs = state_dict.get(prefix + key)
            if not isinstance(theirs, torch.Tensor) or theirs.dtype in dtypes:
                continue
            hint = "it was not saved from a lowp INT8 layer"
            if theirs.is_floating_point() and key == "weight":
                hint = (f"a float model's state_dict cannot be loaded into a quantized one: load it into the float "
                        f"model and convert that (lowp_ops.quantize_dynamic, or prepare / calibrate / convert, or "
                        f"{type(self).__name__}.from_float), not load_state_dict")
            raise ValueError(f"{name}: checkpoint '{prefix + key}' has dtype {str(theirs.dtype).removeprefix('torch.')}"
                             f" but this layer stores {words}; {hint}")
        for keys, valid, what in ((_SCALES, SCALE_RANGE, "finite positive normal float32 scales (>= 2^-126)"),
                                  (_ZERO_POINTS, INT8_RANGE, "int8 codes in [-128, 127]")):
            for key in keys:
                theirs = state_dict.get(prefix + key)
                bad = outside(theirs, *valid) if isinstance(theirs, torch.Tensor) else ()
                if len(bad):
                    raise ValueError(f"{name}: checkpoint '{prefix + key}' must hold {what}, got {bad[:4].tolist()}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Say plainly when a checkpoint was made for another layer, another scheme or a float model."""
        name = f"{type(self).__name__} '{prefix.rstrip('.') or '(root)'}'"
        self._check_checkpoint(state_dict, prefix, name)
        for key in ("weight", "weight_scale", "bias"):
            mine, theirs = getattr(self, key), state_dict.get(prefix + key)
            if mine is not None and theirs is not None and mine.shape != theirs.shape:
                raise ValueError(f"{name}: checkpoint {key} has shape {tuple(theirs.shape)} but this layer's is "
                                 f"{tuple(mine.shape)}; load it into a model of the same architecture")
        for key in ("input_scale", "input_zero_point", "output_scale", "output_zero_point"):
            if (getattr(self, key) is None) != (prefix + key not in state_dict):
                have, mine = ("has", "lacks") if prefix + key in state_dict else ("lacks", "has")
                raise ValueError(f"{name}: the checkpoint {have} '{key}' but this layer {mine}"
                                 f" it: it was converted with another scheme (dynamic vs static, float vs int8 "
                                 f"output); convert this model the same way before loading")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._refresh_weight_sum()

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

    def _prepare_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        """(x as the ops take it, the dtype to return). float64 goes in rounded to float32 — the kernels'
        arithmetic is float32 throughout, so nothing is lost that they would have kept (a value beyond float32's
        range becomes inf) — and a float64 output is computed in float32 (_kernel_dtype) and widened after."""
        if x.dtype == torch.int8 and not self.static:
            raise ValueError(f"{type(self).__name__}: an int8 input needs a static input_scale (from calibration); "
                             f"this module quantizes its input dynamically, so give it float input")
        out_dtype = self._output_dtype(x)
        return (x.float() if x.dtype == torch.float64 else x), out_dtype

    @staticmethod
    def _kernel_dtype(out_dtype: torch.dtype) -> torch.dtype:
        return torch.float32 if out_dtype == torch.float64 else out_dtype

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
    [-128, 127]. Casts: see _Int8Module._apply (m.half() returns float16, .float() undoes it).

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
        self._init_quant(weight, bias, activation, input_scale, input_zero_point, output_scale, output_zero_point,
                         out_dtype, weight_spec)
        self._refresh_weight_sum()

    @classmethod
    def from_float(cls, linear: nn.Linear, **kwargs) -> Int8Linear:
        """Quantize an nn.Linear's weight (per output channel); kwargs as __init__."""
        return cls(linear.weight, linear.bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear: input must be (..., in_features={self.in_features}), got shape "
                             f"{tuple(x.shape)}")
        x, out_dtype = self._prepare_input(x)
        if x.shape[-1] > 1 and x.stride(-1) != 1:  # the ops read rows contiguously; nn.Linear takes any strides
            x = x.contiguous()
        kw = {"activation": self.activation, "out_dtype": self._kernel_dtype(out_dtype),
              "out_scale": self.output_scale, "out_zero_point": self.output_zero_point}
        if x.dtype == torch.int8:
            y = torch.ops.lowp.int8_mm(x, self.weight, self.input_scale, self.weight_scale, self.bias,
                                       self.input_zero_point, self.weight_sum, **kw)
        else:
            y = torch.ops.lowp.int8_linear(x, self.weight, self.weight_scale, self.bias, self.input_scale,
                                           self.input_zero_point, self.weight_sum, **kw)
        return y.to(out_dtype)

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
        self._init_quant(weight, bias, activation, input_scale, input_zero_point, output_scale, output_zero_point,
                         out_dtype, weight_spec)
        self.weight = self.weight.contiguous(memory_format=torch.channels_last)
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
        destination[prefix + "weight"] = destination[prefix + "weight"].contiguous()

    def _load_from_state_dict(self, state_dict, prefix, *args):
        super()._load_from_state_dict(state_dict, prefix, *args)
        # load_state_dict(assign=True) takes the checkpoint's plain-layout tensor itself: back to channels_last
        self.weight = self.weight.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"Int8Conv2d: input must be (N, C, H, W) or unbatched (C, H, W) with C = in_channels "
                             f"= {self.in_channels}, got shape {tuple(x.shape)}")
        if x.ndim == 3:  # unbatched, as nn.Conv2d takes it: (C, H, W) -> (K, OH, OW)
            return self._conv(x.unsqueeze(0)).squeeze(0)
        return self._conv(x)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        x, out_dtype = self._prepare_input(x)
        if x.dtype == torch.int8:  # ops between int8 layers (relu, dropout) may hand it back in NCHW order
            x = x.contiguous(memory_format=torch.channels_last)
        # float x is quantized inside the op: dynamically without input_scale, else with it
        y = torch.ops.lowp.int8_conv2d(
            x, self.weight, self.stride, self.padding, self.dilation, self.groups, self.input_scale,
            self.weight_scale, self.bias, self.input_zero_point, self.weight_sum, activation=self.activation,
            out_dtype=self._kernel_dtype(out_dtype), out_scale=self.output_scale,
            out_zero_point=self.output_zero_point)
        return y.to(out_dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, {self._scheme()}")
