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
from dataclasses import dataclass, field
from typing import Callable

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


def config_for(fqn: str, config: QuantConfig, overrides: dict[str, QuantConfig] | None) -> QuantConfig:
    """The per-layer override whose key (exact name or fnmatch pattern) matches fqn, else the model's config."""
    for pattern, override in (overrides or {}).items():
        if fqn == pattern or fnmatch.fnmatchcase(fqn, pattern):
            return override
    return config


# parameterized layers handled with their neighbours (folded into a conv) rather than replaced: not "unsupported"
_FOLDED = (nn.BatchNorm2d,)


def plan(model: nn.Module, scheme: str, config: QuantConfig, *, filter_fn: Callable[[str, nn.Module], bool] | None,
         overrides: dict[str, QuantConfig] | None, report: SwapReport) -> dict[str, QuantConfig]:
    """fqn -> config of every module the scheme will replace; the rest goes into report.skipped."""
    chosen: dict[str, QuantConfig] = {}
    for fqn, module in model.named_modules():
        if not fqn or any(fqn.startswith(p + ".") for p in chosen):
            continue
        cfg = config_for(fqn, config, overrides)
        if factory_for(module, scheme) is None:
            if not list(module.children()) and any(True for _ in module.parameters(recurse=False)) \
                    and not isinstance(module, _FOLDED):
                report.skipped[fqn] = f"no lowp replacement for {type(module).__name__} ({scheme})"
            continue
        if _matches(fqn, cfg.skip):
            report.skipped[fqn] = "skipped by config"
        elif filter_fn is not None and not filter_fn(fqn, module):
            report.skipped[fqn] = "filtered out"
        else:
            chosen[fqn] = cfg
    return chosen


def replace(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, name = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, name, new)
