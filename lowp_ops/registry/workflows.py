"""torch.ao's workflows, as thin wrappers over lowp_ops.quantize: quantize_dynamic, prepare -> calibrate ->
convert, prepare_qat -> train -> convert, and to_fp16.

They take torch.ao's arguments (qconfig_spec, dtype, inplace), so that switching is an import away, and lowp's
own (config, filter_fn, overrides, example_inputs); the result runs lowp's kernels, on GPU and on Conv2d too. The
call of the article lowp started from (model acceleration and low-precision computing; its formulas and ConvNet)
runs as it is:

>>> import torch, lowp_ops
>>> from lowp_ops.examples import ConvNet
>>> qmodel = lowp_ops.quantize_dynamic(ConvNet(), {torch.nn.Linear}, dtype=torch.qint8)
>>> type(qmodel.fc1).__name__, type(qmodel.conv1).__name__
('Int8Linear', 'Conv2d')

and so does its FP8 spelling (e4m3 weights and activations; there is no FP8 conv, so the convs stay float):

>>> fp8 = lowp_ops.quantize_dynamic(ConvNet(), dtype=torch.float8_e4m3fn)
>>> type(fp8.fc1).__name__, fp8.lowp_report.skipped["conv1"]
('Fp8Linear', 'no lowp handler for Conv2d under Fp8DynamicConfig')
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .api import apply_config, convert
from .calibration import calibrate
from .configs import (
    CONFIG_NAMES,
    Fp8DynamicConfig,
    Fp16Config,
    Int8DynamicConfig,
    Int8StaticConfig,
    LowpConfig,
    QATConfig,
    check_compute_dtype,
)
from .plan import FilterFn, check_common, check_mapping, check_names, check_overrides, deferred, matches

# the workflow that takes each config, for the messages that point a config to its workflow
_WORKFLOW = {Int8DynamicConfig: "lowp_ops.quantize_dynamic(model, config=config)",
             Fp8DynamicConfig: "lowp_ops.quantize_dynamic(model, dtype=torch.float8_e4m3fn, config=config) or "
                               "lowp_ops.quantize(model, config)",
             Fp16Config: "lowp_ops.to_fp16(model) or lowp_ops.quantize(model, config)",
             Int8StaticConfig: "lowp_ops.prepare(model, config), lowp_ops.calibrate and lowp_ops.convert",
             QATConfig: "lowp_ops.prepare_qat(model, config), training and lowp_ops.convert"}
# torch.ao's dtype argument -> the config it stands for, and the modules that makes (for messages)
_DYNAMIC_DTYPES = {torch.qint8: Int8DynamicConfig, torch.float16: Fp16Config, torch.float8_e4m3fn: Fp8DynamicConfig}
_DYNAMIC_RESULTS = {torch.qint8: "Int8Linear / Int8Conv2d", torch.float16: "Fp16Linear",
                    torch.float8_e4m3fn: "Fp8Linear"}


def _hint(config) -> str:
    if isinstance(config, bool):
        return " (torch.ao's second positional argument is inplace; here it is a keyword: inplace=True)"
    if isinstance(config, str):
        return f" (schemes are config types now: {CONFIG_NAMES})"
    for kind, workflow in _WORKFLOW.items():
        if isinstance(config, kind):
            return f"; {type(config).__name__} goes to {workflow}"
    return ""


def _config(caller: str, config, wanted: type[LowpConfig]) -> LowpConfig:
    """config, or wanted() for None; TypeError naming the caller unless it is a `wanted`."""
    if config is None:
        return wanted()
    if not isinstance(config, wanted):
        raise TypeError(f"{caller}: config must be a lowp_ops.{wanted.__name__} or None, got {type(config).__name__} "
                        f"{config!r}{_hint(config)}")
    return config


def quantize_dynamic(model: nn.Module, qconfig_spec=None, dtype: torch.dtype = torch.qint8, mapping=None,
                     inplace: bool = False, *, config: Int8DynamicConfig | Fp16Config | Fp8DynamicConfig | None = None,
                     filter_fn: FilterFn | None = None, overrides: Mapping[str, LowpConfig | None] | None = None,
                     example_inputs=None, time_layers: bool = False) -> nn.Module:
    """Weights converted now, activations handled at run time: torch.ao.quantization.quantize_dynamic's call,
    on lowp's modules.

    dtype:           torch.qint8 (default): Linear / Conv2d -> Int8Linear / Int8Conv2d (Int8DynamicConfig;
                     inputs quantized per token / per tensor at run time, BatchNorm folded, relu fused).
                     torch.float16: Linear -> Fp16Linear (Fp16Config).
                     torch.float8_e4m3fn: Linear -> Fp8Linear (Fp8DynamicConfig; e4m3 weights, inputs quantized to
                     e4m3 per token at run time, relu fused); Conv2d stays float (no FP8 conv).
    qconfig_spec:    which layers, as torch.ao takes it. None: every layer lowp can convert (torch.ao converts only
                     Linear and recurrent layers: pass {nn.Linear} for that). A set of module types (exact types)
                     and / or layer names: those layers, and the modules inside named ones. A dict of those keys to
                     a lowp config (Int8DynamicConfig, Fp8DynamicConfig or Fp16Config) or None (leave float); a
                     layer's own name wins over its type, which wins over an enclosing module's entry. torch.ao's
                     QConfig values are refused: lowp's configs replace them. A name that is no layer of the
                     model is a ValueError (a misspelt name would leave its layer converted).
    mapping:         torch.ao's float -> quantized module table: must be None (lowp's handlers pick the modules);
                     there so that torch.ao's positional call quantize_dynamic(m, spec, dtype, None, True) works.
    inplace:         convert `model` itself rather than a copy.
    config:          the config for dtype (Int8DynamicConfig for qint8, Fp16Config for float16, Fp8DynamicConfig
                     for float8_e4m3fn) given to every layer qconfig_spec selects (all of them when it is None);
                     not with a dict qconfig_spec.
    filter_fn, overrides, example_inputs, time_layers:  as lowp_ops.quantize; overrides win over qconfig_spec.

    Returns the converted model; its `lowp_report` says what was converted and what was not. A model in training
    mode is converted as in eval mode (BatchNorm folded with its running statistics), with a warning and a note.

    >>> import torch, lowp_ops
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    >>> [type(m).__name__ for m in lowp_ops.quantize_dynamic(model)]
    ['Int8Linear', 'Identity', 'Int8Linear']
    >>> [type(m).__name__ for m in lowp_ops.quantize_dynamic(model, {"2"}, dtype=torch.float16)]
    ['Linear', 'ReLU', 'Fp16Linear']
    >>> [type(m).__name__ for m in lowp_ops.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.float8_e4m3fn)]
    ['Fp8Linear', 'Identity', 'Fp8Linear']
    """
    caller = "quantize_dynamic"
    check_mapping(caller, mapping)
    check_common(caller, model, filter_fn, inplace)
    wanted = next((kind for d, kind in _DYNAMIC_DTYPES.items() if dtype is d), None)
    if wanted is None:
        options = [f"{d} ({made})" for d, made in _DYNAMIC_RESULTS.items()]
        raise ValueError(f"{caller}: dtype must be {', '.join(options[:-1])} or {options[-1]}, got {dtype!r}")
    if config is not None and deferred(config) is not None:
        raise ValueError(f"{caller}: config is {type(config).__name__}(...), whose activation scales come from "
                         f"{'calibration' if isinstance(config, Int8StaticConfig) else 'training'}, which "
                         f"quantize_dynamic does not run; use {_WORKFLOW[deferred(config)]}")
    other = next((d for d, kind in _DYNAMIC_DTYPES.items() if isinstance(config, kind) and kind is not wanted), None)
    if other is not None:
        raise ValueError(f"{caller}: config is {type(config).__name__}(...) but dtype is {dtype}; pass dtype={other} "
                         f"with it")
    config_given = config is not None
    config = _config(caller, config, wanted)
    named = None
    if qconfig_spec is not None:
        overrides = check_overrides(caller, config, overrides)
        per_layer = _from_qconfig_spec(caller, model, qconfig_spec, config, config_given)
        # the layers the user named (not those a type key selects) convert even when tied to a float module
        named = {*overrides, *(key for key in qconfig_spec if isinstance(key, str))}
        # overrides win: a layer one of their keys covers gets no entry from qconfig_spec
        overrides.update({fqn: cfg for fqn, cfg in per_layer.items()
                          if fqn and not any(matches(key, fqn) for key in overrides)})
    return apply_config(caller, model, config, filter_fn=filter_fn, overrides=overrides,
                        example_inputs=example_inputs, inplace=inplace, named=named, time_layers=time_layers)


def _from_qconfig_spec(caller: str, model: nn.Module, spec, config: LowpConfig,
                       config_given: bool) -> dict[str, LowpConfig | None]:
    """Every name in the model -> its config under qconfig_spec, by torch.ao's rules (own name, else own type,
    else the enclosing module's), None where nothing applies."""
    if isinstance(spec, LowpConfig):
        raise TypeError(f"{caller}: qconfig_spec is torch.ao's set or dict of layers; pass a lowp config as "
                        f"config={type(spec).__name__}(...)")
    if isinstance(spec, (set, frozenset)):
        spec = dict.fromkeys(spec, config)
    elif isinstance(spec, Mapping):
        if config_given:
            raise ValueError(f"{caller}: config does nothing with a dict qconfig_spec, whose values are the configs; "
                             f"put it in the dict")
    else:
        raise TypeError(f"{caller}: qconfig_spec must be None, a set of module types / layer names, or a dict of "
                        f"those to lowp configs, got {type(spec).__name__}")
    for key, value in spec.items():
        _check_spec_entry(caller, key, value, config)
    # torch.ao matches names exactly; a type that matches no layer is fine ({nn.Linear, nn.Conv2d} on any model)
    check_names(caller, model, [key for key in spec if isinstance(key, str)], "qconfig_spec name", patterns=False)
    per_layer: dict[str, LowpConfig | None] = {}
    for fqn, module in model.named_modules(remove_duplicate=False):  # every name: shared modules have several
        inherited = per_layer.get(fqn.rpartition(".")[0]) if fqn else None
        per_layer[fqn] = spec.get(fqn, spec.get(type(module), inherited))
    return per_layer


def _check_spec_entry(caller: str, key, value, config: LowpConfig) -> None:
    if not (isinstance(key, str) or (isinstance(key, type) and issubclass(key, nn.Module))):
        raise TypeError(f"{caller}: qconfig_spec keys must be nn.Module types or layer names (str), got "
                        f"{type(key).__name__} {key!r}")
    where = f"{caller}: qconfig_spec[{key.__name__ if isinstance(key, type) else repr(key)}]"
    if value is None:
        return
    if type(value).__module__.startswith(("torch.ao.quantization", "torch.quantization")):
        raise TypeError(f"{where} is torch.ao's {type(value).__name__}, which lowp does not read; use "
                        f"lowp_ops.{type(config).__name__}() (or None to leave those layers float)")
    if not isinstance(value, LowpConfig):
        raise TypeError(f"{where} must be a lowp config (Int8DynamicConfig, Fp8DynamicConfig, Fp16Config) or None, got "
                        f"{type(value).__name__} {value!r}")
    if deferred(value) is not None:
        raise ValueError(f"{where} is {type(value).__name__}(...), which quantize_dynamic does not run; use "
                         f"{_WORKFLOW[deferred(value)]}")


def prepare(model: nn.Module, config: Int8StaticConfig | None = None, *, inplace: bool = False,
            filter_fn: FilterFn | None = None, overrides: Mapping[str, Int8StaticConfig | None] | None = None,
            example_inputs=None) -> nn.Module:
    """Static INT8, step 1 (torch.ao's prepare): an observer on the input of every layer to convert. Then run
    calibration data (lowp_ops.calibrate) and lowp_ops.convert, which folds BatchNorm, fuses relu and hands int8
    between layers from one analysis of the model on its first calibration call (or on example_inputs).

    config:  an Int8StaticConfig (default Int8StaticConfig()); torch.ao's model.qconfig is not read.
    inplace, filter_fn, overrides, example_inputs:  as lowp_ops.quantize; overrides take Int8StaticConfig or None.

    >>> import torch, lowp_ops
    >>> prepared = lowp_ops.prepare(torch.nn.Sequential(torch.nn.Linear(8, 4)),
    ...                             lowp_ops.Int8StaticConfig(observer="percentile"))
    >>> type(prepared[0].input_observer).__name__
    'PercentileObserver'
    """
    config = _config("prepare", config, Int8StaticConfig)
    return apply_config("prepare", model, config, filter_fn=filter_fn, overrides=overrides,
                        example_inputs=example_inputs, inplace=inplace)


def prepare_qat(model: nn.Module, config: QATConfig | None = None, *, inplace: bool = False,
                filter_fn: FilterFn | None = None, overrides: Mapping[str, QATConfig | None] | None = None,
                example_inputs=None) -> nn.Module:
    """Quantization-aware training, step 1 (torch.ao's prepare_qat): Linear / Conv2d -> QATLinear / QATConv2d
    (fake-quantized weights and inputs, straight-through gradients). BatchNorm is folded into the conv before it
    now, its statistics frozen from here on, as training must see the folded weights. Train as usual, then
    lowp_ops.convert.

    config:  a QATConfig (default QATConfig()).
    inplace, filter_fn, overrides, example_inputs:  as lowp_ops.quantize; overrides take QATConfig or None.

    >>> import torch, lowp_ops
    >>> qat = lowp_ops.prepare_qat(torch.nn.Sequential(torch.nn.Linear(8, 4)))
    >>> type(qat[0]).__name__
    'QATLinear'
    """
    config = _config("prepare_qat", config, QATConfig)
    return apply_config("prepare_qat", model, config, filter_fn=filter_fn, overrides=overrides,
                        example_inputs=example_inputs, inplace=inplace)


def to_fp16(model: nn.Module, compute_dtype: torch.dtype = torch.float16, *, inplace: bool = False,
            filter_fn: FilterFn | None = None, overrides: Mapping[str, LowpConfig | None] | None = None,
            example_inputs=None) -> nn.Module:
    """Linear layers -> Fp16Linear: float32 master weights, compute in compute_dtype (torch.float16 or
    torch.bfloat16) on lowp's Tensor Core GEMM, output in the input's dtype, a following relu fused (training
    works, with torch.amp.GradScaler). lowp_ops.quantize(model, Fp16Config(compute_dtype=...)); arguments as there.

    >>> import torch, lowp_ops
    >>> h = lowp_ops.to_fp16(torch.nn.Sequential(torch.nn.Linear(8, 4)), torch.bfloat16)
    >>> h[0].compute_dtype, h(torch.randn(2, 8)).dtype
    (torch.bfloat16, torch.float32)
    """
    check_compute_dtype("to_fp16", compute_dtype)
    return apply_config("to_fp16", model, Fp16Config(compute_dtype=compute_dtype), filter_fn=filter_fn,
                        overrides=overrides, example_inputs=example_inputs, inplace=inplace)


__all__ = ["calibrate", "convert", "prepare", "prepare_qat", "quantize_dynamic", "to_fp16"]
