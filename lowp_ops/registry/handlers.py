"""Which module becomes which: handlers, registered against (module type, config type).

A handler is `handler(module, config, context) -> nn.Module`: the module to replace, the config that applies to
it, and the LayerContext the workflow worked out for it (a fused activation; for static INT8, the calibrated
input scale and, where the next layer reads int8, its output scale). It returns the replacement. Users add
their own with the same decorator the built-ins use (lowp_ops.register).

Matching is by module type: the module's own, else the nearest base it computes as — one whose forward (and
_conv_forward) it inherits unchanged, as transformers' EfficientNetDepthwiseConv2d does nn.Conv2d's; a subclass
that computes otherwise is not its base here. (nn.MultiheadAttention's out_proj, which computes as nn.Linear but is
never called, is left float by plan.py with its reason.) Config types match along their bases, so a subclass of
Int8DynamicConfig still reaches the built-in INT8 handlers.

A handler may come with `refuses(module, config) -> str | None`: why this layer cannot be converted (None: it
can). The workflows ask it when they plan the layers, before anything is prepared or converted, and leave a
refused layer as it was, with the reason in lowp_report.skipped; the other layers are converted. The built-in
INT8 handlers refuse what the INT8 modules cannot represent: a Conv2d whose padding Int8Conv2d does not take
(padding_mode other than 'zeros', padding='same' needing asymmetric padding) and a reduction length K above
what the int32 accumulator bounds (_validate.check_reduction_length; static INT8 has an input zero point, which
lowers the bound).

    module type   config type          handler                 result
    nn.Linear     Int8DynamicConfig    linear_to_int8_dynamic  Int8Linear, input quantized per token
    nn.Conv2d     Int8DynamicConfig    conv2d_to_int8_dynamic  Int8Conv2d, input quantized per tensor
    nn.Linear     Int8StaticConfig     linear_to_int8_static   Int8Linear with a calibrated input scale
    nn.Conv2d     Int8StaticConfig     conv2d_to_int8_static   Int8Conv2d with a calibrated input scale
    nn.Linear     QATConfig            linear_to_qat           QATLinear (prepare_qat)
    nn.Conv2d     QATConfig            conv2d_to_qat           QATConv2d (prepare_qat)
    QATLinear     QATConfig            qat_linear_to_int8      Int8Linear with the trained scales (convert)
    QATConv2d     QATConfig            qat_conv2d_to_int8      Int8Conv2d with the trained scales (convert)
    nn.Linear     Fp16Config           linear_to_fp16          Fp16Linear
    nn.Linear     Fp8DynamicConfig     linear_to_fp8_dynamic   Fp8Linear, e4m3 weights, input quantized per token

transformers' Conv1D (GPT-2 family: weight (in_features, out_features), y = x @ W + b) is the nn.Linear of the
transposed weight: under each config above its handler (conv1d_to_int8_dynamic, ...) hands that Linear to the
Linear handler. It is registered lazily, the first time a handler is looked up after transformers.pytorch_utils
was imported (a model holding a Conv1D implies it was), so that lowp never imports transformers itself; matching
is by its type, not by a structural guess that another class named Conv1D could meet.

No handler converts an nn.Conv2d under Fp16Config or Fp8DynamicConfig (lowp has no float16 or FP8 conv): those
convs stay float, and the report says so.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._validate import ACTIVATIONS, check_reduction_length
from ..nn import Fp8Linear, Fp16Linear, Int8Conv2d, Int8Linear, QATConv2d, QATLinear
from ..nn.int8 import _conv_padding
from .configs import (
    CONFIG_NAMES,
    Fp8DynamicConfig,
    Fp16Config,
    Int8DynamicConfig,
    Int8StaticConfig,
    LowpConfig,
    QATConfig,
)

QParams = tuple[torch.Tensor, torch.Tensor]  # (scale, zero_point): float32 and int32 tensors of one element


@dataclass(frozen=True, kw_only=True, eq=False)
class LayerContext:
    """What the workflow worked out for one layer, beyond its module and config.

    activation:      "none", "relu" or "relu6": the activation after the layer, fused into it (the module that
                     ran it becomes nn.Identity; a functional relu stays, and is then a no-op).
    input_qparams:   static INT8 only: the layer's calibrated (or QAT-trained) input (scale, zero_point).
    output_qparams:  static INT8 only, or None: the (scale, zero_point) to requantize the output to int8 with,
                     where the next layer reads int8 codes (Int8StaticConfig.chain_int8).

    >>> import torch
    >>> LayerContext(activation="relu", input_qparams=(torch.tensor(0.05), torch.tensor(0))).output_qparams is None
    True
    """

    activation: str = "none"
    input_qparams: QParams | None = None
    output_qparams: QParams | None = None

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"LayerContext: activation must be one of {ACTIVATIONS}, got {self.activation!r}")


Handler = Callable[[nn.Module, LowpConfig, LayerContext], nn.Module]
Refusal = Callable[[nn.Module, LowpConfig], "str | None"]
_HANDLERS: dict[tuple[type, type], Handler] = {}
_REFUSALS: dict[tuple[type, type], Refusal] = {}


def register(module_type: type[nn.Module], config_type: type[LowpConfig], *,
             refuses: Refusal | None = None) -> Callable[[Handler], Handler]:
    """Decorator: `handler(module, config, context) -> nn.Module` converts modules of `module_type` (and subclasses
    computing as it) under configs of `config_type` (or a subclass of it). Registering a pair again replaces its
    handler (and refusal).

    refuses:  optional `refuses(module, config) -> str | None`, the reason a layer of this type cannot be converted
              (None: it can). A refused layer stays as it was, the reason in lowp_report.skipped.

    >>> import torch, lowp_ops
    >>> from lowp_ops.registry.handlers import linear_to_int8_dynamic
    >>> class Block(torch.nn.Module):  # a module lowp does not know, holding a Linear
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.inner = torch.nn.Linear(8, 4)
    ...     def forward(self, x):
    ...         return self.inner(x)
    >>> @lowp_ops.register(Block, lowp_ops.Int8DynamicConfig)
    ... def block_to_int8_dynamic(module, config, context):
    ...     return linear_to_int8_dynamic(module.inner, config, context)
    >>> q = lowp_ops.quantize(torch.nn.Sequential(Block()), lowp_ops.Int8DynamicConfig())
    >>> q.lowp_report.swapped
    {'0': 'Int8Linear by block_to_int8_dynamic'}
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register: module_type must be an nn.Module subclass, got {module_type!r}")
    if not (isinstance(config_type, type) and issubclass(config_type, LowpConfig)):
        hint = f" (schemes are config types now: {CONFIG_NAMES})" if isinstance(config_type, str) else ""
        raise TypeError(f"register: config_type must be a lowp config class (a LowpConfig subclass), got "
                        f"{config_type!r}{hint}")

    if refuses is not None and not callable(refuses):
        raise TypeError(f"register: refuses must be None or a callable (module, config) -> str | None, got "
                        f"{type(refuses).__name__}")

    def decorator(handler: Handler) -> Handler:
        if not callable(handler):
            raise TypeError(f"register: the handler must be callable (module, config, context) -> nn.Module, got "
                            f"{type(handler).__name__}")
        _HANDLERS[module_type, config_type] = handler
        if refuses is None:
            _REFUSALS.pop((module_type, config_type), None)
        else:
            _REFUSALS[module_type, config_type] = refuses
        return handler

    return decorator


# What a layer computes with: a subclass that keeps these of a registered type computes as that type (transformers'
# EfficientNetDepthwiseConv2d, torch's NonDynamicallyQuantizableLinear only change the constructor)
_COMPUTE_METHODS = ("forward", "_conv_forward")


def _computes_as(module_type: type) -> list[type]:
    """module_type, then each base it computes as: those whose compute methods it inherits unchanged."""
    return [base for base in module_type.__mro__ if base is module_type or all(
        getattr(module_type, name, None) is getattr(base, name, None) for name in _COMPUTE_METHODS)]


def _registered_pair(module: nn.Module, config: LowpConfig) -> tuple[type, type] | None:
    """(the module's own type, or the nearest base it computes as, that has a handler; the nearest of config's types
    with a handler for it), or None."""
    _register_third_party()
    for module_type in _computes_as(type(module)):
        for config_type in type(config).__mro__:
            if (module_type, config_type) in _HANDLERS:
                return module_type, config_type
    return None


def handler_for(module: nn.Module, config: LowpConfig) -> Handler | None:
    """The handler for type(module) (or the nearest base it computes as) under config's type, or the nearest of its
    bases; None if none."""
    pair = _registered_pair(module, config)
    return None if pair is None else _HANDLERS[pair]


def refusal(module: nn.Module, config: LowpConfig) -> str | None:
    """Why handler_for(module, config) cannot convert this layer (its `refuses`), or None."""
    pair = _registered_pair(module, config)
    refuses = None if pair is None else _REFUSALS.get(pair)
    return None if refuses is None else refuses(module, config)


def registered_types(config_type: type[LowpConfig] | None = None) -> tuple[type, ...]:
    """The module types some handler converts (under config_type or one of its bases, when given)."""
    _register_third_party()
    bases = config_type.__mro__ if config_type is not None else None
    return tuple(dict.fromkeys(m for m, c in _HANDLERS if bases is None or c in bases))


# ------------------------------------------------------------------------------------------ refusals


def _reduction_refusal(op: str, what: str, K: int, config: LowpConfig) -> str | None:
    """The op's own int32-accumulator check on K, as a reason. Static INT8 and QAT layers have an input zero point
    (convert always gives one, 0 when symmetric), which lowers the bound."""
    zero_point = isinstance(config, (Int8StaticConfig, QATConfig))
    try:
        check_reduction_length(op, what, K, "x_zero_point" if zero_point else None)
    except ValueError as e:
        return (f"cannot be INT8: {e}; left float (Fp8DynamicConfig and Fp16Config accumulate in float32, with no "
                f"such bound)")
    return None


def linear_refuses(module: nn.Module, config: LowpConfig) -> str | None:
    """An INT8 Linear's refusal: in_features above the int32 accumulator's bound."""
    return _reduction_refusal("int8_linear", "K = in_features", module.in_features, config)


def conv2d_refuses(module: nn.Conv2d, config: LowpConfig) -> str | None:
    """An INT8 Conv2d's refusal: padding Int8Conv2d does not take, or C/groups·R·S above the int32 accumulator's
    bound."""
    try:
        _conv_padding(module.padding, module.kernel_size, module.dilation, module.padding_mode)
    except ValueError as e:  # _conv_padding raises for unsupported padding only
        return f"cannot be INT8: {e}"
    r, s = module.kernel_size
    return _reduction_refusal("int8_conv2d", "the reduction length C/groups·R·S",
                              module.in_channels // module.groups * r * s, config)


# ------------------------------------------------------------------------------------------ built-in handlers


@register(nn.Linear, Int8DynamicConfig, refuses=linear_refuses)
def linear_to_int8_dynamic(module: nn.Linear, config: Int8DynamicConfig, context: LayerContext) -> Int8Linear:
    """nn.Linear -> Int8Linear: weights quantized now, inputs per token at run time."""
    return Int8Linear.from_float(module, activation=context.activation, out_dtype=config.out_dtype,
                                 weight_spec=config.weight)


@register(nn.Conv2d, Int8DynamicConfig, refuses=conv2d_refuses)
def conv2d_to_int8_dynamic(module: nn.Conv2d, config: Int8DynamicConfig, context: LayerContext) -> Int8Conv2d:
    """nn.Conv2d -> Int8Conv2d: weights quantized now, inputs per tensor at run time."""
    return Int8Conv2d.from_float(module, activation=context.activation, out_dtype=config.out_dtype,
                                 weight_spec=config.weight)


def _static_kwargs(handler: str, config: Int8StaticConfig | QATConfig, context: LayerContext,
                   activation: str) -> dict:
    """The Int8Linear / Int8Conv2d keywords of a layer with fixed input (and maybe output) qparams."""
    if context.input_qparams is None:
        raise ValueError(f"{handler}: context.input_qparams is None; a static INT8 layer needs its input "
                         f"(scale, zero_point), which convert computes from calibration or QAT")
    scale, zero_point = context.input_qparams
    kw = {"activation": activation, "input_scale": scale, "input_zero_point": zero_point,
          "out_dtype": config.out_dtype, "weight_spec": config.weight}
    if context.output_qparams is not None:
        kw.update(output_scale=context.output_qparams[0], output_zero_point=context.output_qparams[1])
    return kw


@register(nn.Linear, Int8StaticConfig, refuses=linear_refuses)
def linear_to_int8_static(module: nn.Linear, config: Int8StaticConfig, context: LayerContext) -> Int8Linear:
    """nn.Linear -> Int8Linear with the calibrated input scale (and an int8 output where one is handed on)."""
    return Int8Linear.from_float(module, **_static_kwargs("linear_to_int8_static", config, context,
                                                          context.activation))


@register(nn.Conv2d, Int8StaticConfig, refuses=conv2d_refuses)
def conv2d_to_int8_static(module: nn.Conv2d, config: Int8StaticConfig, context: LayerContext) -> Int8Conv2d:
    """nn.Conv2d -> Int8Conv2d with the calibrated input scale (and an int8 output where one is handed on)."""
    return Int8Conv2d.from_float(module, **_static_kwargs("conv2d_to_int8_static", config, context,
                                                          context.activation))


@register(nn.Linear, QATConfig, refuses=linear_refuses)
def linear_to_qat(module: nn.Linear, config: QATConfig, context: LayerContext) -> QATLinear:
    """nn.Linear -> QATLinear, training under fake quantization (prepare_qat)."""
    return QATLinear.from_float(module, config.weight, config.activation, context.activation)


@register(nn.Conv2d, QATConfig, refuses=conv2d_refuses)
def conv2d_to_qat(module: nn.Conv2d, config: QATConfig, context: LayerContext) -> QATConv2d:
    """nn.Conv2d -> QATConv2d (its BatchNorm already folded in by prepare_qat), training under fake quantization."""
    return QATConv2d.from_float(module, config.weight, config.activation, context.activation)


def _trained_activation(module: QATLinear | QATConv2d, context: LayerContext) -> str:
    # the activation the QAT module trained with, or one convert found after it (the same relu, usually)
    return context.activation if context.activation != "none" else module.activation


@register(QATLinear, QATConfig)
def qat_linear_to_int8(module: QATLinear, config: QATConfig, context: LayerContext) -> Int8Linear:
    """QATLinear -> Int8Linear with the input scale it trained with (convert after prepare_qat)."""
    return Int8Linear.from_float(module, **_static_kwargs("qat_linear_to_int8", config, context,
                                                          _trained_activation(module, context)))


@register(QATConv2d, QATConfig)
def qat_conv2d_to_int8(module: QATConv2d, config: QATConfig, context: LayerContext) -> Int8Conv2d:
    """QATConv2d -> Int8Conv2d with the input scale it trained with (convert after prepare_qat)."""
    return Int8Conv2d.from_float(module, **_static_kwargs("qat_conv2d_to_int8", config, context,
                                                          _trained_activation(module, context)))


@register(nn.Linear, Fp16Config)
def linear_to_fp16(module: nn.Linear, config: Fp16Config, context: LayerContext) -> Fp16Linear:
    """nn.Linear -> Fp16Linear computing in config.compute_dtype, float32 master weights copied from the layer."""
    return Fp16Linear.from_linear(module, compute_dtype=config.compute_dtype, activation=context.activation,
                                  out_dtype=config.out_dtype)


@register(nn.Linear, Fp8DynamicConfig)
def linear_to_fp8_dynamic(module: nn.Linear, config: Fp8DynamicConfig, context: LayerContext) -> Fp8Linear:
    """nn.Linear -> Fp8Linear: weights quantized to e4m3 now, inputs per token at run time."""
    return Fp8Linear.from_float(module, activation=context.activation, out_dtype=config.out_dtype,
                                weight_spec=config.weight, use_fast_accum=config.use_fast_accum)


# --------------------------------------------------------------------- transformers' Conv1D, registered lazily

def conv1d_refuses(module: nn.Module, config: LowpConfig) -> str | None:
    """An INT8 Conv1D's refusal: as linear_refuses, K = nx."""
    return _reduction_refusal("int8_linear", "K = in_features", module.nx, config)


# What a Conv1D gets under each config: the Linear handler it goes through, and its refusal
_LINEAR_HANDLERS = ((Int8DynamicConfig, linear_to_int8_dynamic, conv1d_refuses),
                    (Int8StaticConfig, linear_to_int8_static, conv1d_refuses),
                    (QATConfig, linear_to_qat, conv1d_refuses),
                    (Fp16Config, linear_to_fp16, None),
                    (Fp8DynamicConfig, linear_to_fp8_dynamic, None))
_THIRD_PARTY_DONE: set[type] = set()


def conv1d_as_linear(module: nn.Module) -> nn.Linear:
    """transformers' Conv1D (weight (in_features, out_features) = (nx, nf), y = x @ W + b) as the nn.Linear it
    computes: weight (nf, nx), a transposed copy of the Conv1D's, contiguous along K as the kernels read it."""
    linear = nn.Linear(module.nx, module.nf, bias=module.bias is not None, device="meta")
    linear.weight = nn.Parameter(module.weight.detach().t().contiguous(), requires_grad=module.weight.requires_grad)
    linear.bias = module.bias
    return linear


def _conv1d_handler(linear_handler: Handler) -> Handler:
    """The Conv1D handler that gives conv1d_as_linear(module) to linear_handler."""
    def handler(module: nn.Module, config: LowpConfig, context: LayerContext) -> nn.Module:
        return linear_handler(conv1d_as_linear(module), config, context)

    handler.__name__ = handler.__qualname__ = linear_handler.__name__.replace("linear_", "conv1d_", 1)
    handler.__doc__ = f"transformers' Conv1D -> as {linear_handler.__name__} converts the Linear it computes."
    return handler


def _register_third_party() -> None:
    """Register the Conv1D handlers once transformers.pytorch_utils is imported; a pair a user registered first
    is kept."""
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    if conv1d is None or conv1d in _THIRD_PARTY_DONE:
        return
    _THIRD_PARTY_DONE.add(conv1d)
    for config_type, linear_handler, refuses in _LINEAR_HANDLERS:
        if (conv1d, config_type) not in _HANDLERS:
            register(conv1d, config_type, refuses=refuses)(_conv1d_handler(linear_handler))
