"""Putting the handlers' modules into a model: in every slot a module fills, tied weights kept tied, and a
SwapReport of what was done."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .configs import LowpConfig
from .handlers import LayerContext, handler_for


@dataclass
class SwapReport:
    """What a workflow did, layer by layer (fully qualified names); a converted model's `lowp_report`.

    >>> import torch, lowp_ops
    >>> q = lowp_ops.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.LayerNorm(4)))
    >>> print(q.lowp_report.swapped["0"], "|", q.lowp_report.skipped["1"])
    Int8Linear by linear_to_int8_dynamic | no lowp handler for LayerNorm under Int8DynamicConfig
    """

    swapped: dict[str, str] = field(default_factory=dict)  # fqn -> the replacement's type and the handler
    skipped: dict[str, str] = field(default_factory=dict)  # fqn -> why it stayed as it was
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{len(self.swapped)} layers converted, {len(self.skipped)} left as they were"]
        lines += [f"  {k}: {v}" for k, v in self.swapped.items()]
        lines += [f"  {k}: kept ({v})" for k, v in self.skipped.items()]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def places(model: nn.Module) -> dict[str, list[str]]:
    """Each submodule's first name (what named_modules() calls it) -> every name it has: a module filling two
    slots (one nn.Linear twice in an nn.Sequential, a block shared by two parents) has several."""
    first: dict[int, str] = {}
    out: dict[str, list[str]] = defaultdict(list)
    for fqn, module in model.named_modules(remove_duplicate=False):
        if fqn:
            out[first.setdefault(id(module), fqn)].append(fqn)
    return out


def replace(model: nn.Module, fqn: str, new: nn.Module, names: dict[str, list[str]]) -> None:
    """Put `new` in every slot that holds the module called fqn (names: from places(model), taken before any
    replacement)."""
    for name in names.get(fqn, [fqn]):
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def swap(model: nn.Module, configs: dict[str, LowpConfig], report: SwapReport,
         context: Callable[[str], LayerContext], caller: str) -> None:
    """Replace each layer in `configs` (fqn -> its config), in every slot it fills, by what its handler returns
    for context(fqn); keep tied weights tied."""
    names, originals = places(model), {}
    for fqn, cfg in configs.items():
        module = originals[fqn] = model.get_submodule(fqn)
        handler = handler_for(module, cfg)
        if handler is None:  # convert after prepare_qat with a user QAT module no handler finishes
            raise ValueError(f"{caller}: no handler converts the {type(module).__name__} at '{fqn}' under "
                             f"{type(cfg).__name__}; add one with @lowp_ops.register({type(module).__name__}, "
                             f"{type(cfg).__name__})")
        new = handler(module, cfg, context(fqn))
        if not isinstance(new, nn.Module):
            raise TypeError(f"{caller}: handler {handler.__qualname__} returned {type(new).__name__} for '{fqn}'; a "
                            f"handler must return an nn.Module")
        replace(model, fqn, new, names)
        report.swapped[fqn] = f"{type(new).__name__} by {handler.__name__}"
        if len(names.get(fqn, ())) > 1:
            report.notes.append(f"{fqn} is one module at {len(names[fqn])} places ({', '.join(names[fqn])}): "
                                f"converted once, the same {type(new).__name__} fills each")
    share_tied(model, originals, report)
    call_converted(model, report)


def call_converted(model: nn.Module, report: SwapReport) -> None:
    """nn.TransformerEncoderLayer's inference fast path (eval mode, no grad) hands linear1 / linear2's .weight to one
    fused torch kernel instead of calling them: with converted layers there it would compute on their dequantized
    (or, for QAT / Fp16 layers, float32 master) weights, skipping lowp's kernels, slower than float. Its own switch
    (activation_relu_or_gelu, read by the fast paths of the layer and of nn.TransformerEncoder only) turns them off,
    so the layer calls what lowp put there."""
    for fqn, module in model.named_modules():
        if isinstance(module, nn.TransformerEncoderLayer) and getattr(module, "activation_relu_or_gelu", 0) and (
                type(module.linear1) is not nn.Linear or type(module.linear2) is not nn.Linear):
            module.activation_relu_or_gelu = 0
            report.notes.append(f"{fqn or '(root)'}: nn.TransformerEncoderLayer's fast path is off, so that it calls "
                                f"the converted linear1 / linear2 rather than reading their weights")


# A converted module's tensors that stand for its float weight / bias: shared when the float ones were. "weight" is
# the master Parameter of QAT / Fp16 modules; quantized ones hold "qweight" (their `weight` is a property, not held)
_TIED = {"weight": ("weight", "qweight", "weight_scale", "weight_sum"), "bias": ("bias",)}


def share_tied(model: nn.Module, originals: dict[str, nn.Module], report: SwapReport) -> None:
    """Tied weights stay tied: layers that shared one weight (or bias) Parameter before conversion share one
    converted tensor after it (the int8 weight and its scale, or a QAT / fp16 master weight), when they were
    converted alike. originals: fqn -> the module before conversion; the converted ones are at the same fqns."""
    for attr, names in _TIED.items():
        groups: dict[int, list[str]] = defaultdict(list)
        for fqn, module in originals.items():
            tensor = getattr(module, attr, None)
            if isinstance(tensor, torch.Tensor):
                groups[id(tensor)].append(fqn)
        still_float = {id(p): name for name, p in model.named_parameters()}
        for key, fqns in groups.items():
            if key in still_float:
                report.notes.append(f"{', '.join(fqns)} {'share their' if len(fqns) > 1 else 'shares its'} {attr} with "
                                    f"{still_float[key]}, which stays float: the converted copy is separate")
            owner, *others = (model.get_submodule(f) for f in fqns)
            if not others:
                continue
            if all(_same(owner, other, names) for other in others):
                for other in others:
                    for name in names:
                        if _held(owner, name) is not None:
                            setattr(other, name, _held(owner, name))
                report.notes.append(f"{', '.join(fqns)} share one {attr}, and still do after conversion")
            else:
                report.notes.append(f"{', '.join(fqns)} shared one {attr} but were converted differently: each "
                                    f"holds its own copy")


def _held(module: nn.Module, name: str) -> torch.Tensor | None:
    """The parameter or buffer `name` of module (None: it holds none; a quantized layer's `weight` is a property)."""
    return module._parameters.get(name, module._buffers.get(name))


def _same(a: nn.Module, b: nn.Module, names: tuple[str, ...]) -> bool:
    for name in names:
        x, y = _held(a, name), _held(b, name)
        if x is None and y is None:
            continue
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype
                and x.shape == y.shape and x.device == y.device and torch.equal(x, y)):
            return False
    return True
