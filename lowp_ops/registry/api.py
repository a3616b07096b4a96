"""The entry point, quantize(model, config), and convert, which finishes what it prepares.

    config              quantize returns                          then
    Int8DynamicConfig   the converted model (Int8Linear / Int8Conv2d)
    Fp16Config          the converted model (Fp16Linear)
    Int8StaticConfig    the prepared model: observers on the layers   calibrate(model, data); convert(model)
    QATConfig           the prepared model: QATLinear / QATConv2d     train; convert(model)

Each conversion reads the model's dataflow once, through graph.analyse: which BatchNorm and relu follow which layer
(to fold and fuse them) and, for static INT8, which converted layer feeds which (to hand int8 between them). The
analysis runs torch.export on an example call when it has one (example_inputs, or the first calibration batch);
without one it falls back to weaker analyses, and the report says so.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..nn.add import Add, Int8Add
from ..quant.observers import OBSERVERS
from . import graph, rewrite, sharded, timing
from .calibration import sync_observers
from .configs import CONFIG_NAMES, Int8StaticConfig, LowpConfig
from .fusion import apply_fusions, int8_outputs
from .handlers import LayerContext, QParams, registered_types
from .plan import LOWP_MODULES, FilterFn, check_common, check_mapping, check_overrides, deferred, plan
from .swap import SwapReport, places, replace, swap


@dataclass
class _Prepared:
    """What quantize leaves on a static / QAT model for convert (as model._lowp_prepared)."""

    kind: type[LowpConfig]  # Int8StaticConfig (observers on float layers) or QATConfig (QAT modules)
    configs: dict[str, LowpConfig]
    report: SwapReport
    example: graph.Example | None  # example_inputs, or the first forward call (calibration / training)
    # static: the residual adds prepare made modules (rewrite.py) -> the config observing their operands
    adds: dict[str, LowpConfig] = field(default_factory=dict)


def as_example(caller: str, example_inputs) -> graph.Example | None:
    """example_inputs (a tensor, a tuple of positional arguments or a dict of keyword arguments) as the
    (args, kwargs) of one model call."""
    if example_inputs is None:
        return None
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, tuple):
        return example_inputs, {}
    if isinstance(example_inputs, Mapping) and all(isinstance(k, str) for k in example_inputs):
        return (), dict(example_inputs)
    raise TypeError(f"{caller}: example_inputs must be a tensor, a tuple of positional arguments or a dict of keyword "
                    f"arguments (str keys) for one call of the model, got {type(example_inputs).__name__}")


def _leaves() -> tuple[type, ...]:
    """Module types the analysis keeps whole: every type a handler converts, and lowp's own modules."""
    return registered_types() + LOWP_MODULES + (Add,)


def _analyse(model: nn.Module, layers: set[str], example: graph.Example | None, report: SwapReport,
             caller: str) -> graph.Analysis:
    analysis = graph.analyse(model, layers, example=example, leaves=_leaves())
    report.notes.extend(analysis.notes)
    if analysis.source != "torch.export":
        if example is not None:
            how = "torch.export could not export the model on the example call (see the notes above)"
        elif caller == "convert":
            how = "no example call to export it on: calibrate (or train) before convert, or give example_inputs"
        else:
            how = f"give {caller} example_inputs= (one call's inputs) so that torch.export can read the model"
        what = "fusions and int8 hand-offs were" if caller == "convert" else "fusions were"
        report.notes.append(f"{caller}: {what} read with {analysis.source}, not torch.export: {how}")
    return analysis


def quantize(model: nn.Module, config: LowpConfig, *, filter_fn: FilterFn | None = None,
             overrides: Mapping[str, LowpConfig | None] | None = None, example_inputs=None,
             inplace: bool = False, time_layers: bool = False) -> nn.Module:
    """Convert (or, for static and QAT configs, prepare) every layer a handler converts under `config`.

    model:           any nn.Module. Copied first unless inplace=True (torchao's quantize_ works in place and
                     returns None; this returns the model either way, so that the copy can be kept).
    config:          an Int8DynamicConfig, Fp8DynamicConfig or Fp16Config (the model comes back converted), an
                     Int8StaticConfig (it comes back prepared: run lowp_ops.calibrate, then lowp_ops.convert) or a
                     QATConfig (it comes back with QAT modules: train, then lowp_ops.convert).
    filter_fn:       filter_fn(module, fqn) -> bool; False leaves that layer as it is.
    overrides:       layer name or fnmatch pattern -> config, or None to leave those layers float. A name also
                     covers the modules inside it; the most specific key wins (the layer's own name, then the
                     nearest enclosing module's, then the first matching pattern). Int8DynamicConfig,
                     Fp8DynamicConfig and Fp16Config mix; Int8StaticConfig and QATConfig do not mix with others.
    example_inputs:  one call's inputs (a tensor, a tuple of positional arguments, or a dict of keyword
                     arguments), for torch.export to read the model's graph; without it the analysis falls back to
                     torch.fx or nn.Sequential order, which may fuse less.
    time_layers:     time each converted layer against its float original on this machine at example_inputs'
                     shapes (required then), and leave float every layer that is slower converted, with both times
                     in lowp_report, unless the whole model runs faster with them converted (registry/timing.py).
                     For the configs converted at once; for static INT8 pass it to convert.

    Linear / Conv2d (and registered types, transformers' Conv1D among them) are replaced; a BatchNorm2d after a
    converted conv is folded into it and a relu after a converted layer fused into it (static INT8: at convert).
    Fp8DynamicConfig and Fp16Config convert Linear only: convs, and the BatchNorm after them, stay float. Left float
    too, the rest converting: a layer the handler refuses (INT8: a conv padding Int8Conv2d does not take, K above the
    int32 accumulator's bound), nn.MultiheadAttention's (its forward never calls them), and a layer whose weight is
    tied to a module left float (a tied lm_head: converting it would add a copy; name it in overrides to convert it
    anyway). The result's `lowp_report` (after convert, for static / QAT) says what was converted, what was not and
    why. An overrides key that matches no layer is a ValueError. A transformers model's save_pretrained refuses on
    the result: from_pretrained would rebuild it float.

    >>> import torch, lowp_ops
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    >>> q = lowp_ops.quantize(model, lowp_ops.Int8DynamicConfig(), overrides={"2": lowp_ops.Fp16Config()})
    >>> [type(m).__name__ for m in q], q[0].activation
    (['Int8Linear', 'Identity', 'Fp16Linear'], 'relu')
    """
    if not isinstance(config, LowpConfig):
        raise TypeError(f"quantize: config must be a lowp config ({CONFIG_NAMES}), got {type(config).__name__} "
                        f"{config!r}")
    return apply_config("quantize", model, config, filter_fn=filter_fn, overrides=overrides,
                        example_inputs=example_inputs, inplace=inplace, time_layers=time_layers)


def apply_config(caller: str, model: nn.Module, config: LowpConfig, *, filter_fn, overrides, example_inputs,
                 inplace: bool, named: Collection[str] | None = None, time_layers: bool = False) -> nn.Module:
    """What quantize does, with errors naming `caller` (the workflow the user called): check the arguments, plan
    the layers, then convert them (configs applied at once) or prepare them (static: observers; QAT: QAT modules).
    named: the layer names the user gave (default: the overrides keys), which convert a layer tied to a float
    module anyway (see plan). time_layers: convert a copy first, time it layer by layer against model, and convert
    again with the slower layers left float (timing.py)."""
    check_common(caller, model, filter_fn, inplace)
    overrides = check_overrides(caller, config, overrides)
    example = as_example(caller, example_inputs)
    model, inplace = sharded.ordinary(caller, model, inplace, None)  # FSDP2: whole weights, the same on every rank
    if time_layers:
        def convert_with(float_too: dict, target: nn.Module, in_place: bool) -> nn.Module:
            return apply_config(caller, target, config, filter_fn=filter_fn,
                                overrides={**overrides, **dict.fromkeys(float_too)}, example_inputs=example_inputs,
                                inplace=in_place, named=overrides if named is None else named)

        trial, slow = _slower_layers(caller, model, config, example, lambda m: convert_with({}, m, True))
        everything = set(slow) >= set(trial.lowp_report.swapped)
        mixed = None if everything or not slow else convert_with(slow, copy.deepcopy(model), True)
        slow, note = _whole_model_check(trial, model if everything else mixed, slow, example)
        if slow and everything:  # nothing pays here: the model as it was, saying why
            kept = model if inplace else copy.deepcopy(model)
            kept.lowp_report = SwapReport(skipped={**trial.lowp_report.skipped, **slow})
            return kept
        # the trial and mixed conversions are copies: kept as they are unless the user's model is to be converted
        converted = convert_with(slow, model, True) if inplace else mixed if slow else trial
        converted.lowp_report.skipped.update(slow)
        converted.lowp_report.notes.extend(note)
        return converted
    report = SwapReport()
    if getattr(model, "qconfig", None) is not None:
        report.notes.append(f"{caller}: model.qconfig (torch.ao's) is not read; lowp takes its config as an argument")
    # planned on the model as given, so that filter_fn sees the user's own modules
    configs = plan(caller, model, config, overrides, filter_fn, report, overrides if named is None else named)
    model = model if inplace else copy.deepcopy(model)
    kind = deferred(config)
    adds = {}
    if kind is Int8StaticConfig:
        if any(c.chain_int8 for c in configs.values()):  # pools and adds matter only to hand-offs
            report.notes.extend(rewrite.modularise(model, set(configs)))  # before the observers: they wrap children
            adds = {fqn: config for fqn, m in model.named_modules() if type(m) is Add}
        _attach_observers(model, configs, adds)
    else:
        analysis = _analyse(model, set(configs), example, report, caller)
        if kind is None:
            _say_batchnorm_mode(caller, model, analysis, report)
        activations = apply_fusions(model, analysis, report)
        swap(model, configs, report, lambda fqn: LayerContext(activation=activations.get(fqn, "none")), caller)
    _refuse_save_pretrained_on(model)
    if kind is None:
        model.lowp_report = report
        return model
    model._lowp_prepared = _Prepared(kind, configs, report, example, adds)
    if example is None:  # convert's analysis will use the first calibration (or training) call
        model.register_forward_pre_hook(_record_example, with_kwargs=True)
    return model


def _slower_layers(caller: str, model: nn.Module, config: LowpConfig, example: graph.Example | None,
                   convert_copy) -> tuple[nn.Module, dict[str, str]]:
    """(the trial conversion, name -> why it stays float (timing.slower_than_float)), for a workflow that converts
    at once: convert_copy converts a copy of model in place, which is timed against model."""
    if deferred(config) is not None:
        raise ValueError(f"{caller}: time_layers times converted layers, and {type(config).__name__} converts at "
                         f"lowp_ops.convert: pass time_layers=True there")
    if example is None:
        raise ValueError(f"{caller}: time_layers=True times each layer at the shapes of one call: give "
                         f"example_inputs= (a call's inputs at the batch size you will serve)")
    trial = convert_copy(copy.deepcopy(model))
    return trial, timing.slower_than_float(trial, model, trial.lowp_report.swapped, example)


def _say_batchnorm_mode(caller: str, model: nn.Module, analysis: graph.Analysis, report: SwapReport) -> None:
    """A warning and a note when a BatchNorm about to be folded is in training mode: folding uses its running
    statistics (what eval mode computes), never the batch statistics training mode would use, so the converted
    model computes as model.eval() did. Converting a model in training mode is allowed (torch.ao's quantize_dynamic
    does not look at the mode either); saying so is what keeps it from being a surprise."""
    training = [f.batchnorm for f in analysis.fusions
                if f.batchnorm is not None and model.get_submodule(f.batchnorm).training]
    if training:
        message = (f"{caller}: the model is in training mode, but BatchNorm {', '.join(training)} "
                   f"{'was' if len(training) == 1 else 'were'} folded with running statistics (as in eval mode, not "
                   f"the batch statistics training mode uses): the converted model computes as model.eval() does; "
                   f"call model.eval() before converting to silence this")
        report.notes.append(message)
        warnings.warn(message, UserWarning, stacklevel=4)  # the caller of the workflow


def _refuse_save_pretrained(model_type: str, *args, **kwargs):
    raise ValueError(f"{model_type}.save_pretrained: this model was prepared or converted by lowp; transformers' "
                     f"from_pretrained would rebuild the float architecture and read lowp's int8 / e4m3 tensors as "
                     f"float weights or leave them at random init: a wrong model. Save it whole (torch.save(model)) "
                     f"or its state_dict (safetensors.torch.save_model) and load that into the model converted the "
                     f"same way; or save the float model and convert it after from_pretrained")


def _refuse_save_pretrained_on(model: nn.Module) -> None:
    """A transformers model's save_pretrained (and push_to_hub, which calls it) refuses: no round trip through
    from_pretrained exists for lowp's modules. An instance attribute shadowing the method; a partial of a module
    function, so the model still pickles and deep-copies."""
    if callable(getattr(type(model), "save_pretrained", None)):
        model.save_pretrained = functools.partial(_refuse_save_pretrained, type(model).__name__)


# -------------------------------------------------------------------------------- static: observers and example


def _observe_input(layer: nn.Module, args) -> None:
    layer.input_observer(args[0])


def _observe_operands(add: nn.Module, args) -> None:
    """An Add's operands, where both are float tensors (anything else `+` takes is no residual to quantize)."""
    a, b = args
    if all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in (a, b)) and a.shape == b.shape:
        add.input_observer(a)
        add.other_observer(b)


def _record_example(model: nn.Module, args, kwargs) -> None:
    """Root forward pre-hook: keep the first call's (args, kwargs), detached, as convert's example."""
    state = model._lowp_prepared
    if state.example is None:
        state.example = (tuple(tree_map(_detach, args)), tree_map(_detach, dict(kwargs)))


def _detach(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def _attach_observers(model: nn.Module, configs: dict[str, LowpConfig], adds: dict[str, LowpConfig]) -> None:
    """An observer on each layer's input, and on each Add's two operands, fed by a forward pre-hook.

    BatchNorm is folded at convert, not here: an observer sees its layer's input, and folding changes only a conv's
    output (which is what its BatchNorm returned), so calibration gives the same scales either way."""
    for fqn, cfg in configs.items():
        layer = model.get_submodule(fqn)
        layer.input_observer = OBSERVERS[cfg.observer](cfg.activation)
        layer.register_forward_pre_hook(_observe_input)
    for fqn, cfg in adds.items():
        add = model.get_submodule(fqn)
        add.input_observer, add.other_observer = (OBSERVERS[cfg.observer](cfg.activation) for _ in range(2))
        add.register_forward_pre_hook(_observe_operands)


def _remove_hooks(module: nn.Module, hook) -> None:
    """Remove `hook` from module's forward pre-hooks, by identity: hook handles do not survive deepcopy."""
    for key in [k for k, h in module._forward_pre_hooks.items() if h is hook]:
        del module._forward_pre_hooks[key]
        module._forward_pre_hooks_with_kwargs.pop(key, None)


# ------------------------------------------------------------------------------------------------- convert


def convert(model: nn.Module, mapping=None, inplace: bool = False, *, time_layers: bool = False,
            example_inputs=None, process_group=None) -> nn.Module:
    """Static INT8, last step: a prepared-and-calibrated (or QAT-trained) model -> Int8Linear / Int8Conv2d with
    fixed input scales. The model is copied first unless inplace=True. torch.ao's positional form
    convert(model, None, True) works; mapping (torch.ao's float -> quantized module table) must be None: lowp's
    handlers do that job (lowp_ops.register).

    After static prepare, BatchNorm is folded and relu fused now, from one analysis of the model on its first
    calibration call (or prepare's example_inputs). Where every call of a converted layer hands its output to
    converted layers through int8-safe ops (relu, flatten / reshape, dropout, identity, max-pool), and every call
    of those reads it, the first requantizes to int8 with their input scale (the first reader's) and they read the
    codes; an nn.Dropout on such a path becomes nn.Identity. A residual add static prepare made a module
    (lowp_ops.nn.Add) counts as a reader of both its operands, and becomes an Int8Add where both arrive as int8.
    Returns the model in eval mode: it is for inference only (its int8 layers hold buffers, not parameters), and
    .train() changes nothing in its forward.

    Refuses (ValueError) a layer whose observer saw NaN or inf; warns about a layer whose calibration inputs were a
    single value (all zero, a constant), whose scale would saturate every other input.

    process_group (torch.distributed): reduce the model's observers across its ranks first, in place
    (lowp_ops.sync_observers), so that every rank converts to the same model — a QAT model's input observers
    average each rank's own batches; every rank then calls convert. Not done unasked: a convert on one rank alone
    must not wait for the others.
    A model sharded by FSDP2 (fully_shard) converts on every rank (a collective: each rank calls convert): its
    weights are gathered into an ordinary copy, its observers reduced across the ranks (of process_group, default
    the default group), and each rank gets the same ordinary converted model; the sharded model trains on
    unchanged. inplace=True is refused for it.

    time_layers (static INT8): time each converted layer against its float original on this machine, on
    example_inputs (default: the first calibration call; give one at the batch size you will serve), and leave
    float every layer that is slower converted, with both times in lowp_report, unless the whole model runs faster
    with them converted (registry/timing.py).

    >>> import torch, lowp_ops
    >>> prepared = lowp_ops.prepare(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
    ...                                                 torch.nn.Linear(16, 4)))
    >>> _ = lowp_ops.calibrate(prepared, [torch.randn(32, 8) for _ in range(4)], progress=False)
    >>> q = lowp_ops.convert(prepared)
    >>> q[0].output_scale is not None, q(torch.randn(2, 8)).dtype
    (True, torch.float32)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    check_mapping("convert", mapping)
    if not isinstance(inplace, bool):
        raise TypeError(f"convert: inplace must be a bool, got {type(inplace).__name__} {inplace!r}")
    state = getattr(model, "_lowp_prepared", None)
    if state is None:
        raise ValueError("convert: the model was not prepared; call lowp_ops.prepare(model) and "
                         "lowp_ops.calibrate(model, data), or lowp_ops.prepare_qat(model) and train, first")
    if process_group is not None and not sharded.sharded(model):
        sync_observers(model, process_group)
    # FSDP2: whole weights, the same on every rank
    model, inplace = sharded.ordinary("convert", model, inplace, process_group)
    static = state.kind is Int8StaticConfig
    _check_observed(model, state.configs, static)
    slow, note = {}, []
    if time_layers:
        if not static:
            raise ValueError("convert: time_layers times converted layers against their float originals, and a "
                             "QAT model's layers are fake-quantized, not float: time the float model's layers "
                             "instead (lowp_ops.quantize(..., time_layers=True) or a static prepare)")
        example = state.example if example_inputs is None else as_example("convert", example_inputs)
        if example is None:
            raise ValueError("convert: time_layers=True times each layer at the shapes of one call: calibrate first, "
                             "or give example_inputs=")
        float_twin = _without_observers(copy.deepcopy(model), state)
        del float_twin._lowp_prepared
        trial = _convert_prepared(copy.deepcopy(model), state, {}, inplace=True)
        slow = timing.slower_than_float(trial, float_twin, state.configs, example)
        mixed = _convert_prepared(copy.deepcopy(model), state, slow, inplace=True) if slow else None
        slow, note = _whole_model_check(trial, mixed, slow, example)
        built = mixed if slow else trial
    elif example_inputs is not None:
        raise ValueError("convert: example_inputs is the call time_layers=True times layers on; without it, "
                         "convert reads the model on its first calibration call (or prepare's example_inputs)")
    # time_layers' conversions are copies: the one chosen serves, unless the user's model is to be converted
    converted = built if time_layers and not inplace else _convert_prepared(model, state, slow, inplace)
    converted.lowp_report.notes.extend(note)
    return converted


def _whole_model_check(trial: nn.Module, mixed: nn.Module | None, slow: dict[str, str],
                       example: graph.Example) -> tuple[dict[str, str], list[str]]:
    """time_layers' last word: (the layers to leave float, notes). When some layers lost alone (slow), the model
    with them float (mixed) is timed whole against the trial (every layer converted); the faster stands."""
    if not slow:
        return slow, []
    faster, q_us, m_us = timing.whole_model_faster(trial, mixed, example)
    return ({}, [timing.whole_model_note(q_us, m_us)]) if faster else (slow, [])


def _convert_prepared(model: nn.Module, state: _Prepared, slow: dict[str, str], inplace: bool) -> nn.Module:
    """convert's work on a checked prepared model: every layer of state.configs but those in slow (name -> why it
    stays float) converted, fused and handed int8 as the analysis allows."""
    static = state.kind is Int8StaticConfig
    model = (model if inplace else copy.deepcopy(model)).eval()
    report = copy.deepcopy(state.report)
    inputs: dict[tuple[str, int], QParams] = {}  # (module, port) -> its input (scale, zero_point)
    for fqn in state.configs:  # a loop, not a comprehension: the warnings' stacklevel counts frames
        inputs[fqn, 0] = _input_qparams(fqn, model.get_submodule(fqn), static)
    for fqn in state.adds:  # an operand never observed (or not finite) is handed no int8, nor is the other one
        add = model.get_submodule(fqn)
        for port, obs in enumerate((add.input_observer, add.other_observer)):
            if obs.has_data and not obs.nonfinite_batches:
                inputs[fqn, port] = obs.calculate_qparams()
    # The calibration machinery goes before the analysis: torch.export runs the forward, and observers must not
    # see its tracing tensors. (A QAT module's observer is its own, frozen in eval mode.)
    _without_observers(model, state)
    configs = {fqn: cfg for fqn, cfg in state.configs.items() if fqn not in slow}
    report.skipped.update(slow)
    analysis = _analyse(model, set(configs) | set(state.adds), state.example, report, "convert")
    # after prepare_qat (which folded and fused already) this normally finds nothing left to do
    activations = apply_fusions(model, analysis, report)
    outputs = int8_outputs(model, analysis, {**configs, **state.adds}, inputs, report, trained=not static)

    def context(fqn: str) -> LayerContext:
        return LayerContext(activation=activations.get(fqn, "none"), input_qparams=inputs[fqn, 0],
                            output_qparams=outputs.get(fqn))

    swap(model, configs, report, context, "convert")
    fed = {reader for producer in outputs for reader in analysis.edges[producer].readers}
    for fqn, _ in fed:  # a layer reading int8 codes looks int8 to code that casts to weight.dtype
        if fqn in configs:
            model.get_submodule(fqn).int8_input = True
    _convert_adds(model, state.adds, activations, inputs, outputs, fed, report)
    del model._lowp_prepared
    model.lowp_report = report
    return model


def _convert_adds(model: nn.Module, adds: Collection[str], activations: dict[str, str],
                  inputs: dict[tuple[str, int], QParams], outputs: dict[str, QParams], fed: set[tuple[str, int]],
                  report: SwapReport) -> None:
    """Each Add gets the relu fused into it; one handed int8 on both operands (int8_outputs: both or neither)
    becomes an Int8Add, writing int8 where its readers take it, else float32."""
    names = places(model)
    for fqn in adds:
        add = model.get_submodule(fqn)
        add.activation = activations.get(fqn, "none")
        if (fqn, 0) in fed:
            replace(model, fqn, Int8Add.from_float(add, inputs[fqn, 0], inputs[fqn, 1], outputs.get(fqn)), names)
            report.notes.append(f"{fqn} -> Int8Add: it adds the int8 codes it is handed"
                                + (", and hands int8 on" if fqn in outputs else ", to float32"))


def _without_observers(model: nn.Module, state: _Prepared) -> nn.Module:
    """A prepared model without its calibration hooks and observers (QAT modules keep theirs): the float model
    for static INT8."""
    _remove_hooks(model, _record_example)
    for fqn in state.configs:
        layer = model.get_submodule(fqn)
        _remove_hooks(layer, _observe_input)
        if state.kind is Int8StaticConfig:
            del layer.input_observer
    for fqn in state.adds:
        add = model.get_submodule(fqn)
        _remove_hooks(add, _observe_operands)
        del add.input_observer, add.other_observer
    return model


def _check_observed(model: nn.Module, layers, static: bool) -> None:
    """ValueError naming every layer whose input observer (calibration's, or a QAT module's own) saw NaN / inf
    (lowp never makes a scale of them), then the first that saw no data at all."""
    bad = {fqn: int(model.get_submodule(fqn).input_observer.nonfinite_batches) for fqn in layers}
    bad = {fqn: n for fqn, n in bad.items() if n}
    if bad:
        which = ", ".join(f"'{fqn}' in {n} observed input{'s' if n > 1 else ''}" for fqn, n in bad.items())
        raise ValueError(f"convert: NaN or inf reached the input of layer {which}; a scale cannot be made of them. "
                         f"Find where they come from (the data, or an earlier layer overflowing), or, to use the range "
                         f"of the finite batches only, zero <layer>.input_observer.nonfinite_batches")
    for fqn in layers:
        if not model.get_submodule(fqn).input_observer.has_data:
            run = "run lowp_ops.calibrate(model, data)" if static else "train it"
            raise ValueError(f"convert: layer '{fqn}' saw no {'calibration ' * static}data; {run} (or forward "
                             f"passes) before convert")


def _input_qparams(fqn: str, layer: nn.Module, static: bool) -> QParams:
    """The layer's fixed input (scale, zero_point); a warning when calibration saw a single value."""
    obs = layer.input_observer
    scale, zero_point = obs.calculate_qparams() if static else layer.input_qparams()
    if bool((obs.min_val == obs.max_val).any()):
        warnings.warn(f"convert: layer '{fqn}' saw a single input value in calibration (range "
                      f"[{obs.min_val.min().item():.4g}, {obs.max_val.max().item():.4g}]): its input scale "
                      f"{scale.min().item():.3g} makes every other input saturate; calibrate on representative data",
                      stacklevel=4)  # the caller of convert (convert -> _convert_prepared -> here)
    return scale, zero_point


__all__ = ["convert", "quantize"]
