"""What the quantized modules share, whatever their number format (INT8: nn/int8.py, FP8: nn/fp8.py): a float
weight quantized once into buffers, a `weight` that looks like the float layer's to code that inspects it, the cast
rules, device moves that keep tied weights tied, and checkpoint loading that says plainly what is wrong with a
checkpoint (and still takes checkpoints saved before the codes were called `qweight`).

A scheme is a subclass of _QuantModule that sets its class attributes: the weight's storage dtype and the specs
it may be quantized with, and the optional per-tensor buffers (input_scale, ...) it stores, each a Buffer that
says its dtype, the values the kernels take and how a constructor argument becomes it.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from .. import quant
from .._validate import ACTIVATIONS, SCALE_RANGE, outside
from ..ops._common import WholeCall, forget_plans

# Float dtypes a cast (.half(), .to(dtype)) may give a quantized layer's float output; float64 is computed in float32
CAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def scale_arg(owner: str, arg: str, value, device) -> torch.Tensor | None:
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


class Buffer(NamedTuple):
    """One buffer a quantized module stores, for its checks: the dtypes a checkpoint may hold for it (and those in
    words), the values the kernels take ([lo, hi] and in words; None: any), and for an optional per-tensor buffer
    the constructor argument's parser (owner, arg, value, device) -> tensor or None."""

    dtypes: tuple[torch.dtype, ...]
    words: str
    valid: tuple[float, float] | None = None
    what: str = ""
    parse: Callable | None = None


SCALE = Buffer((torch.float32,), "float32", SCALE_RANGE, "finite positive normal float32 scales (>= 2^-126)",
               scale_arg)
_BIAS = Buffer(CAST_DTYPES, "a float dtype")


# One .to() / .cuda() call -> {id(source buffer): (source, result)}, keyed by the function nn.Module._apply hands
# down to every submodule (alive for that one call). nn.Module moves each module's buffers on its own, so two
# quantized layers sharing one weight (tied weights, lowp_ops.registry.swap.share_tied) would come out with two
# copies; through this table the second layer gets the first one's result and the weights stay one tensor.
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


def float_cast(fn, device) -> tuple[torch.dtype | None, torch.device]:
    """What the function nn.Module._apply hands down does, for modules that give float casts their own meaning:
    (the float dtype it casts to, or None for a device move alone; the device it moves to). fn is opaque: it runs on
    a float16 and a float32 probe. A device move changes neither dtype; .float() changes only the float16 one; any
    other float cast changes the float32 one."""
    p16, p32 = fn(torch.zeros((), dtype=torch.float16, device=device)), fn(torch.zeros((), device=device))
    cast = p32.dtype if p32.dtype != torch.float32 else p16.dtype if p16.dtype != torch.float16 else None
    return cast, p32.device


def _normal(value):
    """value, or a copy that is a normal tensor where it is an inference tensor (made under torch.inference_mode):
    those keep no version counter, so the eager lane and the native plans (ops/_common.py), which check a module's
    tensors once and then watch their versions, would have to check them again on every call (on CUDA a device read
    each: a host sync). A model converted or moved inside inference mode stays fast."""
    if isinstance(value, torch.Tensor) and value.is_inference():
        with torch.inference_mode(False):
            return value.clone()
    return value


class NormalTensors(nn.Module):
    """Stores the tensors it is given as normal ones (_normal), however made: buffers registered or assigned, and
    the results of .to() / .cuda() even inside torch.inference_mode."""

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, _normal(value))

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        super().register_buffer(name, _normal(tensor), persistent)

    def _apply(self, fn, recurse=True):
        with torch.inference_mode(False):  # moved tensors stay normal ones
            return super()._apply(fn, recurse)


class _QuantModule(WholeCall, NormalTensors):
    """Buffers and checks shared by the quantized modules: `weight_scale` float32 (one per output channel, or (1,)),
    `qweight` (_WEIGHT_DTYPE: the quantized weight, the float layer's weight shape), `bias` float32 or None, and each
    of _QPARAMS (float32 / int32 (1,), or None), in that order (the state_dict's keys).

    `weight` is not stored: it is a read-only property giving the float weight the layer computes with, dequantized
    (qweight · weight_scale) on each access, so that code written for the float layer keeps working:
    `x.to(layer.weight.dtype)` (transformers' ViT patch embedding, T5's feed-forward) feeds float input, and
    `layer.weight.shape` / `.device` are the float layer's. Its dtype is the layer's float compute dtype: out_dtype
    when set (by the constructor or a cast), else float32 (what the kernels compute in) — except on a layer fed int8
    codes by the one before it (int8_input), which looks like the int8 layer it is: weight is qweight. The buffers
    are registered float32 scales first, so a dtype probe walking module.buffers() for the first floating-point
    tensor finds float32, not the e4m3 codes (float8 is_floating_point() too).

    Casts follow one rule (see _apply): .half() / .bfloat16() / .double() / .to(dtype) set the dtype of the float
    output; .float() gives back the output dtype the layer was built with (None: follow the input), so
    m.half().float() behaves exactly as m did. float64 input or output is computed in float32 (the kernels' own
    arithmetic) and returned as float64.
    """

    _WEIGHT_DTYPE: ClassVar[torch.dtype]  # what the quantized weight is stored as
    _WEIGHT_SPECS: ClassVar[tuple[quant.Spec, ...]]  # the weight specs the kernels take
    _WEIGHT_WORDS: ClassVar[str]  # those specs, in words
    _FORMAT: ClassVar[str]  # the number format in messages: "int8", "e4m3"
    _SCHEME: ClassVar[str]  # the scheme in messages: "INT8", "FP8"
    _QPARAMS: ClassVar[dict[str, Buffer]]  # optional per-tensor buffers, in the order the state_dict holds them
    _SCHEMES_DIFFER: ClassVar[str]  # how two conversions of one layer may differ, for checkpoint messages
    _CONVERTERS: ClassVar[str]  # what converts a float model to this scheme, for checkpoint messages
    _OUT_DTYPE_NOTE: ClassVar[str] = ""  # said after a refused out_dtype
    # True when the layer before hands this one its output as int8 codes (set by the converter that plans the
    # hand-off): `weight` is then qweight itself, so model code that casts the input to weight.dtype leaves the
    # codes as they are (T5's feed-forward casts to wo.weight.dtype unless that is int8) instead of turning them
    # into float values the layer would quantize again
    int8_input: bool = False

    def _init_quant(self, weight: torch.Tensor, bias, activation: str, out_dtype, weight_spec, **qparams) -> None:
        """Check the arguments, quantize `weight` with weight_spec and register the buffers; qparams: a value (or
        None) for each key of _QPARAMS, as the constructor was given it."""
        name = type(self).__name__
        if activation not in ACTIVATIONS:
            raise ValueError(f"{name}: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if out_dtype is not None and out_dtype not in CAST_DTYPES:
            raise TypeError(f"{name}: out_dtype must be None (follow the input), float16, bfloat16, float32 or "
                            f"float64, got {out_dtype}{self._OUT_DTYPE_NOTE}")
        if weight_spec not in self._WEIGHT_SPECS:
            raise ValueError(f"{name}: weight_spec must be {self._WEIGHT_WORDS}, got {weight_spec}")
        if not isinstance(weight, torch.Tensor) or weight.dtype not in CAST_DTYPES:
            got = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise TypeError(f"{name}: weight must be the float weight to quantize, got {got}")
        # a NaN / inf weight would silently give its whole output channel a NaN / inf scale
        bad = ~torch.isfinite(weight.detach())
        if bool(bad.any()):
            raise ValueError(f"{name}: weight holds {int(bad.sum())} NaN / inf value(s), first at index "
                             f"{tuple(bad.nonzero()[0].tolist())}; an {self._FORMAT} weight scale cannot represent "
                             f"them")
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"{name}: bias must have shape ({weight.shape[0]},) (one per output channel), got "
                             f"{tuple(bias.shape)}")
        device = weight.device
        parsed = {key: buf.parse(name, key, qparams[key], device) for key, buf in self._QPARAMS.items()}
        qw = quant.quantize_tensor(weight.detach().float(), weight_spec)
        self.register_buffer("weight_scale", qw.scale.reshape(-1))
        self.register_buffer("qweight", qw.qdata)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        for key, value in parsed.items():
            self.register_buffer(key, value)
        self.activation, self.out_dtype = activation, out_dtype
        self.built_out_dtype = out_dtype  # what .float() returns to
        self._init_whole_call()

    @property
    def weight(self) -> torch.Tensor:
        """The float weight this layer computes with: qweight · weight_scale (one scale per output channel, or one),
        shaped as the float layer's weight, in out_dtype (float32 when unset), on the layer's device. Computed on
        each access and not stored (a float copy would double the layer's memory); read-only — the quantized data
        is `qweight`, and to change the weight convert the float layer again. With int8_input: qweight itself."""
        if self.int8_input:
            return self.qweight
        scale = self.weight_scale.reshape(-1, *(1,) * (self.qweight.ndim - 1))
        return (self.qweight.float() * scale).to(self.out_dtype or torch.float32)

    def __setattr__(self, name: str, value) -> None:
        forget_plans(self)  # a plan it trusted held the arguments this attribute may have been (ops/_common.py)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        forget_plans(self)
        super().__delattr__(name)

    def _apply(self, fn, recurse=True):
        """.to(device) / .cuda() / .cpu() move the buffers. A float dtype cast never touches them — the kernels
        need the quantized weight and float32 scales — and sets the layer's float output dtype instead:
            .half() / .bfloat16() / .double() / .to(dtype)  ->  out_dtype = that dtype
            .float() / .to(torch.float32)                    ->  out_dtype = as built (None: follow the input)
        float32 is what the layer already computes in, so casting to it undoes earlier casts: m.half().float()
        behaves exactly as m. An int8 output (Int8*'s output_scale set) stays int8 whatever the cast."""
        forget_plans(self)  # they hold the tensors about to be replaced
        cast, device = float_cast(fn, self.qweight.device)
        if cast is not None and cast not in CAST_DTYPES:
            raise TypeError(f"{type(self).__name__}: cannot cast to {cast}: a cast sets the float output dtype, "
                            f"which must be float16, bfloat16, float32 or float64")
        if cast is not None:
            self.out_dtype = self.built_out_dtype if cast == torch.float32 else cast
        return super()._apply(_tied(fn, fn if cast is None else lambda t: t.to(device)), recurse)

    def _stored(self) -> dict[str, Buffer]:
        """Every buffer a checkpoint of this layer holds, as _init_quant stores it."""
        qweight = Buffer((self._WEIGHT_DTYPE,), str(self._WEIGHT_DTYPE).removeprefix("torch."))
        return {"weight_scale": SCALE, "qweight": qweight, "bias": _BIAS, **self._QPARAMS}

    def _check_checkpoint(self, state_dict, prefix: str, name: str) -> None:
        """Every buffer of a checkpoint with the dtype this layer stores, and values the kernels can use."""
        stored = self._stored()
        for key, buf in stored.items():
            theirs = state_dict.get(prefix + key)
            if not isinstance(theirs, torch.Tensor) or theirs.dtype in buf.dtypes:
                continue
            raise ValueError(f"{name}: checkpoint '{prefix + key}' has dtype {str(theirs.dtype).removeprefix('torch.')}"
                             f" but this layer stores {buf.words}; it was not saved from a lowp {self._SCHEME} layer")
        for key, buf in stored.items():
            theirs = state_dict.get(prefix + key)
            bad = outside(theirs, *buf.valid) if buf.valid and isinstance(theirs, torch.Tensor) else ()
            if len(bad):
                raise ValueError(f"{name}: checkpoint '{prefix + key}' must hold {buf.what}, got {bad[:4].tolist()}")
        weight = state_dict.get(prefix + "qweight")
        if isinstance(weight, torch.Tensor) and weight.is_floating_point():  # FP8 codes: NaN has one, the GEMM none
            nan = torch.isnan(weight.detach().float())
            if bool(nan.any()):
                raise ValueError(f"{name}: checkpoint '{prefix}qweight' must hold finite {self._FORMAT} values, got "
                                 f"{int(nan.sum())} NaN code(s), first at index {tuple(nan.nonzero()[0].tolist())}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Say plainly when a checkpoint was made for another layer, another scheme or a float model. A checkpoint
        saved before the quantized weight was called `qweight` holds it under `weight`: renamed here (state_dict is
        load_state_dict's own copy), so old checkpoints keep loading."""
        name = f"{type(self).__name__} '{prefix.rstrip('.') or '(root)'}'"
        old = state_dict.get(prefix + "weight")
        if isinstance(old, torch.Tensor) and old.dtype in CAST_DTYPES:
            raise ValueError(f"{name}: checkpoint '{prefix}weight' has dtype {str(old.dtype).removeprefix('torch.')} "
                             f"but this layer stores {str(self._WEIGHT_DTYPE).removeprefix('torch.')} (qweight); a "
                             f"float model's state_dict cannot be loaded into a quantized one: load it into the float "
                             f"model and convert that ({self._CONVERTERS}, or {type(self).__name__}.from_float), not "
                             f"load_state_dict")
        if isinstance(old, torch.Tensor) and prefix + "qweight" not in state_dict:
            state_dict[prefix + "qweight"] = state_dict.pop(prefix + "weight")
        self._check_checkpoint(state_dict, prefix, name)
        for key in ("qweight", "weight_scale", "bias"):
            mine, theirs = getattr(self, key), state_dict.get(prefix + key)
            if mine is not None and theirs is not None and mine.shape != theirs.shape:
                raise ValueError(f"{name}: checkpoint {key} has shape {tuple(theirs.shape)} but this layer's is "
                                 f"{tuple(mine.shape)}; load it into a model of the same architecture")
        for key in self._QPARAMS:
            if (getattr(self, key) is None) != (prefix + key not in state_dict):
                have, mine = ("has", "lacks") if prefix + key in state_dict else ("lacks", "has")
                raise ValueError(f"{name}: the checkpoint {have} '{key}' but this layer {mine}"
                                 f" it: it was converted with another scheme ({self._SCHEMES_DIFFER}); convert this "
                                 f"model the same way before loading")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def __getstate__(self):
        """The state to pickle, a float8 weight as its bytes: pickle.loads cannot rebuild a float8 tensor (torch
        2.13's non-torch.save path looks for a typed storage, which float8 has none of: AttributeError
        'UntypedStorage' has no attribute 'dtype'). torch.save and deepcopy would manage; this serves all three."""
        forget_plans(self)  # C++ objects: neither picklable nor worth copying
        state = super().__getstate__()
        weight = state["_buffers"].get("qweight")
        if weight is not None and weight.is_floating_point() and weight.element_size() == 1:
            state["_buffers"] = copy.copy(state["_buffers"])
            state["_buffers"]["qweight"], state["_weight_dtype"] = weight.view(torch.uint8), weight.dtype
        return state

    def __setstate__(self, state) -> None:
        dtype = state.pop("_weight_dtype", None)
        if "weight" in state["_buffers"]:  # pickled before the codes were called qweight
            state["_buffers"] = {"qweight" if k == "weight" else k: v for k, v in state["_buffers"].items()}
        super().__setstate__(state)
        if dtype is not None:
            self._buffers["qweight"] = self._buffers["qweight"].view(dtype)

    @property
    def static(self) -> bool:
        return self.input_scale is not None

    def _output_dtype(self, x: torch.Tensor) -> torch.dtype:
        return self.out_dtype or (x.dtype if x.dtype in CAST_DTYPES else torch.float32)

    def _prepare_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        """(x as the ops take it, the dtype to return). float64 goes in rounded to float32 — the kernels'
        arithmetic is float32 throughout, so nothing is lost that they would have kept (a value beyond float32's
        range becomes inf) — and a float64 output is computed in float32 (_kernel_dtype) and widened after.
        x already quantized (_WEIGHT_DTYPE) needs the static input_scale it was quantized with."""
        if x.dtype == self._WEIGHT_DTYPE and not self.static:
            raise ValueError(f"{type(self).__name__}: an {self._FORMAT} input needs a static input_scale (from "
                             f"calibration); this module quantizes its input dynamically, so give it float input")
        out_dtype = self._output_dtype(x)
        return (x.float() if x.dtype == torch.float64 else x), out_dtype

    def _linear_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        """_prepare_input for a Linear layer's x (..., in_features), checked, made contiguous along K: the ops read
        rows contiguously, where nn.Linear takes any strides."""
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: input must be (..., in_features={self.in_features}), got shape "
                             f"{tuple(x.shape)}")
        x, out_dtype = self._prepare_input(x)
        return (x.contiguous() if x.shape[-1] > 1 and x.stride(-1) != 1 else x), out_dtype

    @staticmethod
    def _kernel_dtype(out_dtype: torch.dtype) -> torch.dtype:
        return torch.float32 if out_dtype == torch.float64 else out_dtype
