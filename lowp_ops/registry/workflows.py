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
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn import Fp16Linear, Int8Conv2d, Int8Linear
from ..nn.qat import QATConv2d, QATLinear
from ..quant import QuantSpec
from ..quant.observers import OBSERVERS
from . import graph as graphs
from .config import QuantConfig
from .core import SwapReport, check_args, factory_for, places, plan, register, registered_types, replace, share_tied

# ------------------------------------------------------------------------------------------ built-in factories


@register(nn.Linear, "int8_dynamic")
def _(module, config, activation="none", **_):
    return Int8Linear.from_float(module, activation=activation, out_dtype=config.out_dtype, weight_spec=config.weight)


@register(nn.Conv2d, "int8_dynamic")
def _(module, config, activation="none", **_):
    return Int8Conv2d.from_float(module, activation=activation, out_dtype=config.out_dtype, weight_spec=config.weight)


def _static_kwargs(config, activation, input_qparams, output_qparams):
    scale, zero_point = input_qparams
    kw = {"activation": activation, "input_scale": scale, "input_zero_point": zero_point,
          "out_dtype": config.out_dtype, "weight_spec": config.weight}
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


def _fold_and_fuse(model: nn.Module, layers: set[str], report: SwapReport) -> dict[str, str]:
    """Fold each BatchNorm2d into the conv before it (running statistics) and replace it and any wholly fused
    nn.ReLU by nn.Identity, where every call of the layer agrees (graph.py); returns the activation to fuse per
    layer. From the fx graph, or from nn.Sequential order if the model is untraceable."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    graph = graphs.trace(model, _leaves())
    if graph is not None:
        found = graphs.find_fusions(graph, dict(model.named_modules()), layers)
    else:
        report.notes.append("the model could not be traced by torch.fx: BatchNorm / ReLU fused only inside "
                            "nn.Sequential, and no int8 hand-off between layers")
        found = graphs.sequential_fusions(model, layers)
    names = places(model)
    # a BatchNorm may be folded into several layers (one after each): look them all up before replacing any
    batchnorms = {f.batchnorm: model.get_submodule(f.batchnorm) for f in found.fusions if f.batchnorm is not None}
    activations = {}
    for f in found.fusions:
        layer = model.get_submodule(f.layer)
        if f.batchnorm is not None:
            bn = batchnorms[f.batchnorm]
            layer.weight, layer.bias = fuse_conv_bn_weights(layer.weight, layer.bias, bn.running_mean,
                                                            bn.running_var, bn.eps, bn.weight, bn.bias)
            report.notes.append(f"folded {f.batchnorm} into {f.layer}")
        if f.activation != "none":
            activations[f.layer] = f.activation
    for module in [*batchnorms, *found.fused_modules]:
        replace(model, module, nn.Identity(), names)
    report.notes.extend(found.notes)
    return activations


def _swap(model, scheme, configs, report, context: Callable[[str], dict]) -> None:
    """Replace each planned layer (in every slot it fills) by its factory's module; keep tied weights tied."""
    names, originals = places(model), {}
    for fqn, cfg in configs.items():
        module = originals[fqn] = model.get_submodule(fqn)
        new = factory_for(module, scheme)(module, cfg, **context(fqn))
        replace(model, fqn, new, names)
        report.swapped[fqn] = f"{type(new).__name__} ({scheme})"
        if len(names.get(fqn, ())) > 1:
            report.notes.append(f"{fqn} is one module at {len(names[fqn])} places ({', '.join(names[fqn])}): "
                                f"converted once, the same {type(new).__name__} fills each")
    share_tied(model, originals, report)


def _plan(model, scheme, config, filter, overrides, caller) -> tuple[dict[str, QuantConfig], SwapReport]:
    report = SwapReport()
    configs = plan(model, scheme, config, filter_fn=filter, overrides=overrides, report=report, caller=caller)
    if not configs and report.skipped and all(r.startswith(("filtered out", "skipped by config"))
                                              for r in report.skipped.values()):
        raise ValueError(f"{caller}: every convertible layer was filtered out or skipped: {report.skipped}")
    if not configs:
        kinds = sorted({type(m).__name__ for m in model.modules()} - {type(model).__name__})
        raise ValueError(f"{caller}: the model has no layer lowp can convert under '{scheme}' (supported: "
                         f"{', '.join(t.__name__ for t in registered_types(scheme))}); it holds {kinds or 'none'}"
                         + (f"; skipped: {report.skipped}" if report.skipped else ""))
    return configs, report


def _static_configs(caller, model, config, overrides, filter):
    """prepare / prepare_qat's arguments, checked, with static=True (what those workflows are) throughout."""
    check_args(caller, model, config, overrides, filter)
    config = dataclasses.replace(config or QuantConfig(), static=True)
    return config, {k: dataclasses.replace(v, static=True) for k, v in (overrides or {}).items()}


# ---------------------------------------------------------------------------------------------- workflows


def quantize_dynamic(model: nn.Module, config: QuantConfig | None = None, *,
                     filter: Callable[[str, nn.Module], bool] | None = None,
                     overrides: dict[str, QuantConfig] | None = None, inplace: bool = False) -> nn.Module:
    """Linear and Conv2d -> INT8 (weights quantized once, per channel; activations per token / per tensor at run
    time), BatchNorm folded and ReLU fused. filter(fqn, module) picks layers; overrides maps fqn (or fnmatch
    pattern) -> QuantConfig. Returns the converted model (a copy unless inplace); `model.lowp_report` says what
    was converted and what was not."""
    check_args("quantize_dynamic", model, config, overrides, filter)
    config = config or QuantConfig()
    static = ["config"] * config.static + [f"overrides[{k!r}]" for k, v in (overrides or {}).items() if v.static]
    if static:
        raise ValueError(f"quantize_dynamic: {', '.join(static)} asks for static=True, i.e. activation scales fixed by "
                         f"calibration, which quantize_dynamic does not compute; use lowp_ops.prepare(model, config), "
                         f"lowp_ops.calibrate(prepared, data) and lowp_ops.convert(prepared), or leave static=False")
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
    config, overrides = _static_configs("prepare", model, config, overrides, filter)
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
    """Run calibration batches through a prepared model in eval mode, without gradients; tensors go to the model's
    device. `data` yields batches (a DataLoader works), each one of
        a tensor                               model(x)
        a dict of keyword arguments            model(**batch): {"input": x}, or a tokenizer's {"input_ids": ...,
                                               "attention_mask": ...}; non-tensor values pass as they are
        a tuple / list (input, target, ...)    its first element, itself a tensor or a dict as above
    A tqdm bar shows progress when tqdm is installed.

    >>> import torch, lowp_ops
    >>> prepared = lowp_ops.prepare(torch.nn.Sequential(torch.nn.Linear(8, 4)))
    >>> _ = lowp_ops.calibrate(prepared, [(torch.randn(16, 8), torch.randn(16, 4))], progress=False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"calibrate: model must be a torch.nn.Module, got {type(model).__name__}")
    if not hasattr(model, "_lowp_prepared"):
        raise ValueError("calibrate: the model was not prepared; call lowp_ops.prepare(model, config) first")
    if isinstance(data, (torch.Tensor, Mapping)) or not isinstance(data, Iterable):
        raise TypeError(f"calibrate: data must be an iterable of batches (a DataLoader, a list), got "
                        f"{type(data).__name__}" + ("; to calibrate on one batch, pass [batch]"
                                                    if isinstance(data, (torch.Tensor, Mapping)) else ""))
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 0):
        raise TypeError(f"calibrate: max_batches must be None or an int >= 0, got {max_batches!r}")
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
            _run_batch(model, batch, device, i)
    return model


def _run_batch(model: nn.Module, batch, device: torch.device, index: int) -> None:
    """One calibration batch through the model (see calibrate for the forms a batch may take)."""
    whole = batch
    if isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if isinstance(batch, torch.Tensor):
        model(batch.to(device))
    elif isinstance(batch, Mapping) and all(isinstance(k, str) for k in batch):
        model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    else:
        raise TypeError(f"calibrate: batch {index} is {_describe(whole)}; a batch must be a tensor, a dict of keyword "
                        f"arguments for the model (str keys), or a tuple / list whose first element is one of those")


def _describe(batch) -> str:
    name = type(batch).__name__
    article = "an" if name[0].lower() in "aeiou" else "a"
    if isinstance(batch, (list, tuple)):
        kinds = ", ".join(type(b).__name__ for b in batch[:4])
        return f"an empty {name}" if not batch else f"{article} {name} of [{kinds}]"
    return f"{article} {name}"


def prepare_qat(model: nn.Module, config: QuantConfig | None = None, *,
                filter: Callable[[str, nn.Module], bool] | None = None,
                overrides: dict[str, QuantConfig] | None = None, inplace: bool = False) -> nn.Module:
    """Quantization-aware training, step 1: Linear / Conv2d -> QATLinear / QATConv2d (fake-quantized weights and
    inputs, straight-through gradients). BatchNorm is folded into the conv before it now, its statistics frozen
    from here on. Train as usual, then lowp_ops.convert."""
    config, overrides = _static_configs("prepare_qat", model, config, overrides, filter)
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
    with fixed input scales. Where every call of a quantized layer hands its output to the next quantized layer
    through int8-safe ops (relu, flatten / reshape, dropout, identity), and every call of that one reads it, it
    requantizes to int8 with that layer's input scale, and the next layer reads the int8 codes directly; an
    nn.Dropout on such a path becomes nn.Identity. Returns the model in eval mode: it is for inference only (its
    int8 layers hold buffers, not parameters), and .train() changes nothing in its forward.

    Refuses (ValueError) a layer whose observer saw NaN or inf; warns about a layer whose calibration inputs were a
    single value (all zero, a constant), whose scale would saturate every other input."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    state = getattr(model, "_lowp_prepared", None)
    if state is None:
        raise ValueError("convert: the model was not prepared; call lowp_ops.prepare(model, config) and "
                         "lowp_ops.calibrate(model, data), or lowp_ops.prepare_qat(model, config) and train, first")
    model = _copy(model, inplace).eval()
    report = copy.deepcopy(state.report)
    _check_observed(model, state.configs)
    qparams = {}
    for fqn in state.configs:
        qparams[fqn] = _input_qparams(fqn, model.get_submodule(fqn), state.scheme)

    outputs = {}
    graph = graphs.trace(model, _leaves())
    if graph is not None:
        names = places(model)
        edges, notes = graphs.find_int8_edges(graph, dict(model.named_modules()), set(state.configs))
        report.notes.extend(notes)
        for producer, edge in edges.items():
            consumer = edge.consumer
            if not (state.configs[producer].chain_int8 and state.configs[consumer].chain_int8):
                continue
            if edge.through_relu and int(qparams[consumer][1]) != 0:
                if state.scheme == "qat":  # QAT trained with these scales: keep them, hand over floats
                    continue
                qparams[consumer] = _symmetric(qparams[consumer], state.configs[consumer].activation)
            outputs[producer] = qparams[consumer]
            report.notes.append(f"{producer} hands int8 to {consumer}")
            for dropout in sorted(edge.dropouts):
                replace(model, dropout, nn.Identity(), names)
                report.notes.append(f"{dropout} -> Identity: int8 codes pass it, and dropout is the identity at "
                                    f"inference (the converted model is inference-only)")

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


def _check_observed(model: nn.Module, layers) -> None:
    """ValueError naming every layer whose observer saw NaN / inf (lowp never makes a scale of them), then the
    first that saw no data at all."""
    bad = {fqn: int(model.get_submodule(fqn).input_observer.nonfinite_batches) for fqn in layers}
    bad = {fqn: n for fqn, n in bad.items() if n}
    if bad:
        which = ", ".join(f"'{fqn}' in {n} observed input{'s' if n > 1 else ''}" for fqn, n in bad.items())
        raise ValueError(f"convert: NaN or inf reached the input of layer {which}; a scale cannot be made of them. "
                         f"Find where they come from (the data, or an earlier layer overflowing), or, to use the range "
                         f"of the finite batches only, zero <layer>.input_observer.nonfinite_batches")
    for fqn in layers:
        if not model.get_submodule(fqn).input_observer.has_data:
            raise ValueError(f"convert: layer '{fqn}' saw no calibration data; run lowp_ops.calibrate(model, data) "
                             f"(or forward passes) before convert")


def _input_qparams(fqn: str, layer: nn.Module, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's static input (scale, zero_point); a warning when calibration saw a single value."""
    obs = layer.input_observer
    scale, zero_point = layer.input_qparams() if scheme == "qat" else obs.calculate_qparams()
    if bool((obs.min_val == obs.max_val).any()):
        warnings.warn(f"convert: layer '{fqn}' saw a single input value in calibration (range "
                      f"[{obs.min_val.min().item():.4g}, {obs.max_val.max().item():.4g}]): its input scale "
                      f"{scale.min().item():.3g} makes every other input saturate; calibrate on representative data",
                      stacklevel=3)  # the caller of convert
    return scale, zero_point


def to_fp16(model: nn.Module, compute_dtype: torch.dtype = torch.float16, *,
            filter: Callable[[str, nn.Module], bool] | None = None, inplace: bool = False) -> nn.Module:
    """Linear layers -> Fp16Linear: float32 master weights, compute in float16 / bfloat16 on lowp's Tensor Core
    GEMM (training works, with torch.amp.GradScaler)."""
    check_args("to_fp16", model, None, None, filter)
    if not isinstance(compute_dtype, torch.dtype):
        raise TypeError(f"to_fp16: compute_dtype must be a torch.dtype (float16 or bfloat16), got "
                        f"{type(compute_dtype).__name__} {compute_dtype!r}")
    if compute_dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"to_fp16: compute_dtype must be torch.float16 or torch.bfloat16, got {compute_dtype}")
    model = _copy(model, inplace)
    configs, report = _plan(model, "fp16", QuantConfig(), filter, None, "to_fp16")
    _swap(model, "fp16", configs, report, lambda fqn: {"compute_dtype": compute_dtype})
    model.lowp_report = report
    return model


__all__ = ["calibrate", "convert", "prepare", "prepare_qat", "quantize_dynamic", "to_fp16"]
