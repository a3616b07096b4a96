"""The workflows: quantize_dynamic, prepare -> calibrate -> convert, prepare_qat -> train -> convert, to_fp16.

The names and shapes are torch.ao's (the seed article calls torch.quantization.quantize_dynamic), so switching is
an import away — but the result runs lowp's kernels: on GPU, and on Conv2d as well as Linear.

>>> import torch, lowp_ops
>>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> qmodel = lowp_ops.quantize_dynamic(model)
>>> [type(m).__name__ for m in qmodel]
['Int8Linear', 'Identity', 'Int8Linear']
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from ..nn import Fp16Linear, Int8Conv2d, Int8Linear
from ..nn.qat import QATConv2d, QATLinear
from ..quant import QuantSpec
from ..quant.observers import OBSERVERS
from . import graph as graphs
from .config import QuantConfig
from .core import SwapReport, factory_for, plan, register, registered_types, replace

# ------------------------------------------------------------------------------------------ built-in factories


@register(nn.Linear, "int8_dynamic")
def _(module, config, activation="none", **_):
    return Int8Linear.from_float(module, activation=activation, out_dtype=config.out_dtype, weight_spec=config.weight)


@register(nn.Conv2d, "int8_dynamic")
def _(module, config, activation="none", **_):
    return Int8Conv2d.from_float(module, activation=activation, out_dtype=config.out_dtype, weight_spec=config.weight)


def _static_kwargs(config, activation, input_qparams, output_qparams):
    scale, zero_point = input_qparams
    kw = dict(activation=activation, input_scale=scale, input_zero_point=zero_point, out_dtype=config.out_dtype,
              weight_spec=config.weight)
    if output_qparams is not None:
        kw.update(output_scale=output_qparams[0], output_zero_point=output_qparams[1])
    return kw


@register(nn.Linear, "int8_static")
@register(QATLinear, "int8_static")
def _(module, config, input_qparams, output_qparams=None, activation="none", **_):
    return Int8Linear(module.weight, module.bias, **_static_kwargs(config, activation, input_qparams, output_qparams))


@register(nn.Conv2d, "int8_static")
@register(QATConv2d, "int8_static")
def _(module, config, input_qparams, output_qparams=None, activation="none", **_):
    return Int8Conv2d.from_float(module, **_static_kwargs(config, activation, input_qparams, output_qparams))


@register(nn.Linear, "qat")
def _(module, config, activation="none", **_):
    return QATLinear.from_float(module, config.weight, config.activation, activation)


@register(nn.Conv2d, "qat")
def _(module, config, activation="none", **_):
    return QATConv2d.from_float(module, config.weight, config.activation, activation)


@register(nn.Linear, "fp16")
def _(module, config, compute_dtype=torch.float16, **_):
    return Fp16Linear.from_linear(module, compute_dtype=compute_dtype)


# ------------------------------------------------------------------------------------------------ helpers


@dataclass
class _Prepared:
    """What prepare / prepare_qat leave on the model for convert."""

    scheme: str  # "int8_static" (observers on float layers) or "qat"
    configs: dict[str, QuantConfig]
    report: SwapReport
    activations: dict[str, str] = field(default_factory=dict)  # fused relu / relu6 per layer


def _copy(model: nn.Module, inplace: bool) -> nn.Module:
    return model if inplace else copy.deepcopy(model)


def _leaves() -> tuple[type, ...]:
    return registered_types() + (Int8Linear, Int8Conv2d, Fp16Linear)


def _fusions(model: nn.Module, layers: set[str], report: SwapReport) -> list[graphs.Fusion]:
    """BatchNorm / ReLU that follow each layer: from the fx graph, or from nn.Sequential order if untraceable."""
    graph = graphs.trace(model, _leaves())
    if graph is not None:
        return graphs.find_fusions(graph, dict(model.named_modules()), layers)
    report.notes.append("the model could not be traced by torch.fx: BatchNorm / ReLU fused only inside "
                        "nn.Sequential, and no int8 hand-off between layers")
    fusions = []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        for i, (name, child) in enumerate(kids):
            fqn = f"{prefix}.{name}" if prefix else name
            if fqn not in layers:
                continue
            f, j = graphs.Fusion(fqn), i + 1
            if isinstance(child, nn.Conv2d) and j < len(kids) and isinstance(kids[j][1], nn.BatchNorm2d):
                f.batchnorm, j = f"{prefix}.{kids[j][0]}" if prefix else kids[j][0], j + 1
            if j < len(kids) and type(kids[j][1]) in graphs._RELU_MODULES:
                f.activation = graphs._RELU_MODULES[type(kids[j][1])]
                f.activation_module = f"{prefix}.{kids[j][0]}" if prefix else kids[j][0]
            if f.batchnorm or f.activation_module:
                fusions.append(f)
    return fusions


def _fold_and_fuse(model: nn.Module, layers: set[str], report: SwapReport) -> dict[str, str]:
    """Fold each BatchNorm2d into the conv before it (running statistics) and replace it and any fused nn.ReLU
    by nn.Identity; returns the activation to fuse per layer."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    activations = {}
    for f in _fusions(model, layers, report):
        layer = model.get_submodule(f.layer)
        if f.batchnorm is not None:
            bn = model.get_submodule(f.batchnorm)
            layer.weight, layer.bias = fuse_conv_bn_weights(layer.weight, layer.bias, bn.running_mean,
                                                            bn.running_var, bn.eps, bn.weight, bn.bias)
            replace(model, f.batchnorm, nn.Identity())
            report.notes.append(f"folded {f.batchnorm} into {f.layer}")
        if f.activation != "none":
            activations[f.layer] = f.activation
            if f.activation_module is not None:
                replace(model, f.activation_module, nn.Identity())
    return activations


def _swap(model, scheme, configs, report, context: Callable[[str], dict]) -> None:
    for fqn, cfg in configs.items():
        module = model.get_submodule(fqn)
        new = factory_for(module, scheme)(module, cfg, **context(fqn))
        replace(model, fqn, new)
        report.swapped[fqn] = f"{type(new).__name__} ({scheme})"


def _plan(model, scheme, config, filter, overrides, caller) -> tuple[dict[str, QuantConfig], SwapReport]:
    report = SwapReport()
    configs = plan(model, scheme, config, filter_fn=filter, overrides=overrides, report=report)
    if not configs and report.skipped and all(r in ("filtered out", "skipped by config") for r in report.skipped.values()):
        raise ValueError(f"{caller}: every convertible layer was filtered out or skipped: {report.skipped}")
    if not configs:
        kinds = sorted({type(m).__name__ for m in model.modules()} - {type(model).__name__})
        raise ValueError(f"{caller}: the model has no layer lowp can convert under '{scheme}' (supported: "
                         f"{', '.join(t.__name__ for t in registered_types(scheme))}); it holds {kinds or 'none'}"
                         + (f"; skipped: {report.skipped}" if report.skipped else ""))
    return configs, report


# ---------------------------------------------------------------------------------------------- workflows


def quantize_dynamic(model: nn.Module, config: QuantConfig | None = None, *,
                     filter: Callable[[str, nn.Module], bool] | None = None,
                     overrides: dict[str, QuantConfig] | None = None, inplace: bool = False) -> nn.Module:
    """Linear and Conv2d -> INT8 (weights quantized once, per channel; activations per token / per tensor at run
    time), BatchNorm folded and ReLU fused. filter(fqn, module) picks layers; overrides maps fqn (or fnmatch
    pattern) -> QuantConfig. Returns the converted model (a copy unless inplace); `model.lowp_report` says what
    was converted and what was not."""
    config = config or QuantConfig()
    model = _copy(model, inplace)
    configs, report = _plan(model, "int8_dynamic", config, filter, overrides, "quantize_dynamic")
    activations = _fold_and_fuse(model, set(configs), report)
    _swap(model, "int8_dynamic", configs, report, lambda fqn: {"activation": activations.get(fqn, "none")})
    model.lowp_report = report
    return model


def _observe_input(module: nn.Module, args) -> None:
    module.input_observer(args[0])


def prepare(model: nn.Module, config: QuantConfig | None = None, *,
            filter: Callable[[str, nn.Module], bool] | None = None,
            overrides: dict[str, QuantConfig] | None = None, inplace: bool = False) -> nn.Module:
    """Static post-training quantization, step 1: fold BatchNorm into convs and put an observer on the input of
    every Linear / Conv2d to convert. Then run calibration data (lowp_ops.calibrate) and lowp_ops.convert."""
    config = dataclasses.replace(config or QuantConfig(), static=True)
    model = _copy(model, inplace)
    configs, report = _plan(model, "int8_static", config, filter, overrides, "prepare")
    activations = _fold_and_fuse(model, set(configs), report)
    for fqn, cfg in configs.items():
        layer = model.get_submodule(fqn)
        layer.input_observer = OBSERVERS[cfg.observer](cfg.activation)
        layer.register_forward_pre_hook(_observe_input)
    model._lowp_prepared = _Prepared("int8_static", configs, report, activations)
    return model


def calibrate(model: nn.Module, data: Iterable, *, max_batches: int | None = None, progress: bool = True) -> nn.Module:
    """Run calibration batches through a prepared model in eval mode, without gradients. `data` yields inputs or
    (input, target, ...) tuples (a DataLoader works); a tqdm bar shows progress when tqdm is installed."""
    if not hasattr(model, "_lowp_prepared"):
        raise ValueError("calibrate: the model was not prepared; call lowp_ops.prepare(model, config) first")
    device = next(model.parameters()).device
    batches = data
    if progress:
        try:
            from tqdm.auto import tqdm

            batches = tqdm(data, total=max_batches or (len(data) if hasattr(data, "__len__") else None),
                           desc="calibrating", unit="batch")
        except ImportError:
            pass
    model.eval()
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(x.to(device))
    return model


def prepare_qat(model: nn.Module, config: QuantConfig | None = None, *,
                filter: Callable[[str, nn.Module], bool] | None = None,
                overrides: dict[str, QuantConfig] | None = None, inplace: bool = False) -> nn.Module:
    """Quantization-aware training, step 1: Linear / Conv2d -> QATLinear / QATConv2d (fake-quantized weights and
    inputs, straight-through gradients). BatchNorm is folded into the conv before it now, its statistics frozen
    from here on. Train as usual, then lowp_ops.convert."""
    config = dataclasses.replace(config or QuantConfig(), static=True)
    model = _copy(model, inplace)
    configs, report = _plan(model, "qat", config, filter, overrides, "prepare_qat")
    activations = _fold_and_fuse(model, set(configs), report)
    _swap(model, "qat", configs, report, lambda fqn: {"activation": activations.get(fqn, "none")})
    model._lowp_prepared = _Prepared("qat", configs, report, activations)
    return model


def _symmetric(qparams: tuple[torch.Tensor, torch.Tensor], spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero-point-0 grid covering the same range: int8 codes that a relu may clamp in place."""
    scale, zero_point = qparams
    hi = (spec.qmax - zero_point.float()) * scale
    lo = (spec.qmin - zero_point.float()) * scale
    return torch.maximum(hi.abs(), lo.abs()) / 127.0, torch.zeros_like(zero_point)


def convert(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Static quantization, last step: prepared-and-calibrated (or QAT-trained) layers -> Int8Linear / Int8Conv2d
    with fixed input scales. Where a quantized layer's output goes only to the next quantized layer through int8-
    safe ops (relu, flatten / reshape, dropout in eval), it requantizes to int8 with that layer's input scale, and
    the next layer reads the int8 codes directly. Returns the model in eval mode."""
    state = getattr(model, "_lowp_prepared", None)
    if state is None:
        raise ValueError("convert: the model was not prepared; call lowp_ops.prepare(model, config) and "
                         "lowp_ops.calibrate(model, data), or lowp_ops.prepare_qat(model, config) and train, first")
    model = _copy(model, inplace).eval()
    report = copy.deepcopy(state.report)
    qparams = {}
    for fqn in state.configs:
        layer = model.get_submodule(fqn)
        if not layer.input_observer.has_data:
            raise ValueError(f"convert: layer '{fqn}' saw no calibration data; run lowp_ops.calibrate(model, data) "
                             f"(or forward passes) before convert")
        qparams[fqn] = layer.input_qparams() if state.scheme == "qat" else layer.input_observer.calculate_qparams()

    outputs = {}
    graph = graphs.trace(model, _leaves())
    if graph is not None:
        edges = graphs.find_int8_edges(graph, dict(model.named_modules()), set(state.configs))
        for producer, (consumer, through_relu) in edges.items():
            if not (state.configs[producer].chain_int8 and state.configs[consumer].chain_int8):
                continue
            if through_relu and int(qparams[consumer][1]) != 0:
                if state.scheme == "qat":  # QAT trained with these scales: keep them, hand over floats
                    continue
                qparams[consumer] = _symmetric(qparams[consumer], state.configs[consumer].activation)
            outputs[producer] = qparams[consumer]
            report.notes.append(f"{producer} hands int8 to {consumer}")

    for fqn in state.configs:  # drop the calibration machinery before the swap copies weights
        layer = model.get_submodule(fqn)
        layer._forward_pre_hooks.clear()
        if state.scheme == "int8_static":
            del layer.input_observer

    def context(fqn):
        return {"input_qparams": qparams[fqn], "output_qparams": outputs.get(fqn),
                "activation": state.activations.get(fqn, "none")}

    _swap(model, "int8_static", state.configs, report, context)
    del model._lowp_prepared
    model.lowp_report = report
    return model


def to_fp16(model: nn.Module, compute_dtype: torch.dtype = torch.float16, *,
            filter: Callable[[str, nn.Module], bool] | None = None, inplace: bool = False) -> nn.Module:
    """Linear layers -> Fp16Linear: float32 master weights, compute in float16 / bfloat16 on lowp's Tensor Core
    GEMM (training works, with torch.amp.GradScaler)."""
    model = _copy(model, inplace)
    configs, report = _plan(model, "fp16", QuantConfig(), filter, None, "to_fp16")
    _swap(model, "fp16", configs, report, lambda fqn: {"compute_dtype": compute_dtype})
    model.lowp_report = report
    return model


__all__ = ["calibrate", "convert", "prepare", "prepare_qat", "quantize_dynamic", "to_fp16"]
