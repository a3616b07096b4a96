"""Which module becomes which: handlers, registered against (module type, config type).

A handler is `handler(module, config, context) -> nn.Module`: the module to replace, the config that applies to
it, and the LayerContext the workflow worked out for it (a fused activation; for static INT8, the calibrated
input scale and, where the next layer reads int8, its output scale). It returns the replacement. Users add
their own with the same decorator the built-ins use (lowp_ops.register).

Matching is by exact module type: a subclass of nn.Linear is not an nn.Linear here (nn.MultiheadAttention
reads its out_proj's weight directly, and swapping that NonDynamicallyQuantizableLinear would break it). Config
types match along their bases, so a subclass of Int8DynamicConfig still reaches the built-in INT8 handlers.

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

No handler converts an nn.Conv2d under Fp16Config or Fp8DynamicConfig (lowp has no float16 or FP8 conv): those
convs stay float, and the report says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .._validate import ACTIVATIONS
from ..nn import Fp8Linear, Fp16Linear, Int8Conv2d, Int8Linear, QATConv2d, QATLinear
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
_HANDLERS: dict[tuple[type, type], Handler] = {}


def register(module_type: type[nn.Module], config_type: type[LowpConfig]) -> Callable[[Handler], Handler]:
    """Decorator: `handler(module, config, context) -> nn.Module` converts modules of exactly `module_type` under
    configs of `config_type` (or a subclass of it). Registering a pair again replaces its handler.

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

    def decorator(handler: Handler) -> Handler:
        if not callable(handler):
            raise TypeError(f"register: the handler must be callable (module, config, context) -> nn.Module, got "
                            f"{type(handler).__name__}")
        _HANDLERS[module_type, config_type] = handler
        return handler

    return decorator


def handler_for(module: nn.Module, config: LowpConfig) -> Handler | None:
    """The handler for exactly type(module) under config's type, or the nearest of its bases; None if none."""
    for config_type in type(config).__mro__:
        handler = _HANDLERS.get((type(module), config_type))
        if handler is not None:
            return handler
    return None


def registered_types(config_type: type[LowpConfig] | None = None) -> tuple[type, ...]:
    """The module types some handler converts (under config_type or one of its bases, when given)."""
    bases = config_type.__mro__ if config_type is not None else None
    return tuple(dict.fromkeys(m for m, c in _HANDLERS if bases is None or c in bases))


# ------------------------------------------------------------------------------------------ built-in handlers


@register(nn.Linear, Int8DynamicConfig)
def linear_to_int8_dynamic(module: nn.Linear, config: Int8DynamicConfig, context: LayerContext) -> Int8Linear:
    """nn.Linear -> Int8Linear: weights quantized now, inputs per token at run time."""
    return Int8Linear.from_float(module, activation=context.activation, out_dtype=config.out_dtype,
                                 weight_spec=config.weight)


@register(nn.Conv2d, Int8DynamicConfig)
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


@register(nn.Linear, Int8StaticConfig)
def linear_to_int8_static(module: nn.Linear, config: Int8StaticConfig, context: LayerContext) -> Int8Linear:
    """nn.Linear -> Int8Linear with the calibrated input scale (and an int8 output where one is handed on)."""
    return Int8Linear.from_float(module, **_static_kwargs("linear_to_int8_static", config, context,
                                                          context.activation))


@register(nn.Conv2d, Int8StaticConfig)
def conv2d_to_int8_static(module: nn.Conv2d, config: Int8StaticConfig, context: LayerContext) -> Int8Conv2d:
    """nn.Conv2d -> Int8Conv2d with the calibrated input scale (and an int8 output where one is handed on)."""
    return Int8Conv2d.from_float(module, **_static_kwargs("conv2d_to_int8_static", config, context,
                                                          context.activation))


@register(nn.Linear, QATConfig)
def linear_to_qat(module: nn.Linear, config: QATConfig, context: LayerContext) -> QATLinear:
    """nn.Linear -> QATLinear, training under fake quantization (prepare_qat)."""
    return QATLinear.from_float(module, config.weight, config.activation, context.activation)


@register(nn.Conv2d, QATConfig)
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
    return Fp16Linear.from_linear(module, compute_dtype=config.compute_dtype, activation=context.activation)


@register(nn.Linear, Fp8DynamicConfig)
def linear_to_fp8_dynamic(module: nn.Linear, config: Fp8DynamicConfig, context: LayerContext) -> Fp8Linear:
    """nn.Linear -> Fp8Linear: weights quantized to e4m3 now, inputs per token at run time."""
    return Fp8Linear.from_float(module, activation=context.activation, out_dtype=config.out_dtype,
                                weight_spec=config.weight, use_fast_accum=config.use_fast_accum)
