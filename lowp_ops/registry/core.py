"""The registry: which module becomes which, per scheme, and the swap that applies it to a model.

A factory takes the module to replace, the QuantConfig that applies to it, and keyword context from the workflow
(static input scales, a folded BatchNorm, a fused activation, the next layer's input scale), and returns the
replacement. Users add their own with the decorator:

    @register(MyLinear, scheme="int8_dynamic")
    def _(module, config, **context):
        return Int8Linear.from_float(module.inner, out_dtype=config.out_dtype)
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import QuantConfig

SCHEMES = ("int8_dynamic", "int8_static", "qat", "fp16")
Factory = Callable[..., nn.Module]
_REGISTRY: dict[str, dict[type, Factory]] = defaultdict(dict)


def register(source: type[nn.Module], scheme: str):
    """Decorator: `factory(module, config, **context) -> nn.Module` is how `scheme` converts `source` modules.

    Matching is by exact type (a subclass of nn.Linear is not an nn.Linear here: nn.MultiheadAttention reads its
    out_proj's weight directly, and swapping it would break it)."""
    if scheme not in SCHEMES:
        raise ValueError(f"register: scheme must be one of {SCHEMES}, got {scheme!r}")

    def decorator(factory: Factory) -> Factory:
        _REGISTRY[scheme][source] = factory
        return factory

    return decorator


def factory_for(module: nn.Module, scheme: str) -> Factory | None:
    return _REGISTRY[scheme].get(type(module))


def registered_types(scheme: str | None = None) -> tuple[type, ...]:
    schemes = [scheme] if scheme else SCHEMES
    return tuple({t for s in schemes for t in _REGISTRY[s]})


@dataclass
class SwapReport:
    """What a workflow did, layer by layer (fully qualified names)."""

    swapped: dict[str, str] = field(default_factory=dict)  # fqn -> the replacement's type and scheme
    skipped: dict[str, str] = field(default_factory=dict)  # fqn -> why it stayed float
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{len(self.swapped)} layers converted, {len(self.skipped)} left as they were"]
        lines += [f"  {k}: {v}" for k, v in self.swapped.items()]
        lines += [f"  {k}: kept ({v})" for k, v in self.skipped.items()]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _matches(fqn: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(fqn, p) for p in patterns)


def check_args(caller: str, model, config, overrides, filter_fn) -> None:
    """TypeError naming the workflow and the argument for anything but what the workflows take."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller}: model must be a torch.nn.Module, got {type(model).__name__}")
    if config is not None and not isinstance(config, QuantConfig):
        hint = (" (the workflow picks the scheme: quantize_dynamic for dynamic int8, prepare / calibrate / convert for "
                "static int8, prepare_qat for QAT, to_fp16 for fp16)" if isinstance(config, str) else "")
        raise TypeError(f"{caller}: config must be a lowp_ops.QuantConfig or None, got {type(config).__name__} "
                        f"{config!r}{hint}")
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise TypeError(f"{caller}: overrides must be a dict of layer name or fnmatch pattern -> QuantConfig, got "
                            f"{type(overrides).__name__}")
        for key, value in overrides.items():
            if not isinstance(key, str):
                raise TypeError(f"{caller}: overrides keys must be layer names or fnmatch patterns (str), got "
                                f"{type(key).__name__} {key!r}")
            if not isinstance(value, QuantConfig):
                raise TypeError(f"{caller}: overrides[{key!r}] must be a lowp_ops.QuantConfig, got "
                                f"{type(value).__name__} {value!r}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"{caller}: filter must be a callable (fqn, module) -> bool or None, got "
                        f"{type(filter_fn).__name__}")


def config_for(fqn: str, config: QuantConfig, overrides: dict[str, QuantConfig] | None) -> QuantConfig:
    """The per-layer override whose key (exact name or fnmatch pattern) matches fqn, else the model's config."""
    for pattern, override in (overrides or {}).items():
        if fqn == pattern or fnmatch.fnmatchcase(fqn, pattern):
            return override
    return config


def places(model: nn.Module) -> dict[str, list[str]]:
    """Each submodule's first name (what named_modules() and torch.fx call it) -> every name it has: a module
    filling two slots (one nn.Linear twice in an nn.Sequential, a block shared by two parents) has several."""
    first: dict[int, str] = {}
    out: dict[str, list[str]] = defaultdict(list)
    for fqn, module in model.named_modules(remove_duplicate=False):
        if fqn:
            out[first.setdefault(id(module), fqn)].append(fqn)
    return out


# parameterized layers handled with their neighbours (folded into a conv) rather than replaced: not "unsupported"
_FOLDED = (nn.BatchNorm2d,)


def plan(model: nn.Module, scheme: str, config: QuantConfig, *, filter_fn: Callable[[str, nn.Module], bool] | None,
         overrides: dict[str, QuantConfig] | None, report: SwapReport, caller: str = "plan") -> dict[str, QuantConfig]:
    """fqn -> config of every module the scheme will replace; the rest goes into report.skipped.

    A module with several names (see places) is planned once, under its first name; it is skipped or filtered out
    when any of its names is, and all its names must get the same config."""
    chosen: dict[str, QuantConfig] = {}
    names = places(model)
    for fqn, module in model.named_modules():
        if not fqn or any(fqn.startswith(p + ".") for p in chosen):
            continue
        if factory_for(module, scheme) is None:
            if not list(module.children()) and any(True for _ in module.parameters(recurse=False)) \
                    and not isinstance(module, _FOLDED):
                report.skipped[fqn] = f"no lowp replacement for {type(module).__name__} ({scheme})"
            continue
        aliases = names[fqn]
        cfgs = [config_for(name, config, overrides) for name in aliases]
        if any(cfg != cfgs[0] for cfg in cfgs):
            raise ValueError(f"{caller}: the module at {', '.join(aliases)} is one module, converted once, but the "
                             f"overrides give its names different configs; give them one")
        skipped = [name for name in aliases if _matches(name, cfgs[0].skip)]
        filtered = [name for name in aliases if filter_fn is not None and not filter_fn(name, module)]
        if skipped or filtered:
            why = "skipped by config" if skipped else "filtered out"
            by = (skipped or filtered)[0]
            report.skipped[fqn] = why if by == fqn else f"{why} (as {by}, one of its names)"
        else:
            chosen[fqn] = cfgs[0]
    return chosen


def replace(model: nn.Module, fqn: str, new: nn.Module, names: dict[str, list[str]]) -> None:
    """Put `new` in every slot that holds the module called fqn (names: from places(model), taken before any
    replacement)."""
    for name in names.get(fqn, [fqn]):
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


# A converted module's tensors that stand for its float weight / bias: shared when the float ones were
_TIED = {"weight": ("weight", "weight_scale", "weight_sum"), "bias": ("bias",)}


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
                        if getattr(owner, name, None) is not None:
                            setattr(other, name, getattr(owner, name))
                report.notes.append(f"{', '.join(fqns)} share one {attr}, and still do after conversion")
            else:
                report.notes.append(f"{', '.join(fqns)} shared one {attr} but were converted differently: each "
                                    f"holds its own copy")


def _same(a: nn.Module, b: nn.Module, names: tuple[str, ...]) -> bool:
    for name in names:
        x, y = getattr(a, name, None), getattr(b, name, None)
        if x is None and y is None:
            continue
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype
                and x.shape == y.shape and x.device == y.device and torch.equal(x, y)):
            return False
    return True
