"""Which layers a call converts, and under which config: the per-layer config (a model-wide config, overridden by
name or pattern), the filter, and the checks on those arguments."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping

from torch import nn

from ..nn import Fp8Linear, Fp16Linear, Int8Conv2d, Int8Linear, QATConv2d, QATLinear
from .configs import CONFIG_NAMES, Int8StaticConfig, LowpConfig, QATConfig
from .handlers import handler_for, registered_types
from .swap import SwapReport, places

FilterFn = Callable[[nn.Module, str], bool]
Overrides = Mapping[str, "LowpConfig | None"]

# lowp's own modules are the result of a conversion, never its input: a model converted once is not converted again
# (and a QATLinear is finished by convert, not by a second prepare_qat)
LOWP_MODULES = (Int8Linear, Int8Conv2d, Fp8Linear, Fp16Linear, QATLinear, QATConv2d)
# parameterized layers handled with their neighbours (folded into a conv) rather than replaced: not "unsupported"
_FOLDED = (nn.BatchNorm2d,)


def _a(name: str) -> str:
    """The article by sound: an Int8StaticConfig, an Fp16Config (ef-pee), a QATConfig."""
    return f"{'an' if name[0] in 'AEIOU' or name.startswith('Fp') else 'a'} {name}"


def deferred(config: LowpConfig) -> type[LowpConfig] | None:
    """Int8StaticConfig or QATConfig for a config whose layers are prepared now and converted by convert; None for
    one applied at once (Int8DynamicConfig, Fp8DynamicConfig, Fp16Config, user configs)."""
    for kind in (Int8StaticConfig, QATConfig):
        if isinstance(config, kind):
            return kind
    return None


def check_common(caller: str, model, filter_fn, inplace) -> None:
    """TypeError naming the caller and the argument for a model, filter_fn or inplace of the wrong type."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller}: model must be a torch.nn.Module, got {type(model).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"{caller}: filter_fn must be a callable (module, fqn) -> bool or None, got "
                        f"{type(filter_fn).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"{caller}: inplace must be a bool, got {type(inplace).__name__} {inplace!r}")


def check_overrides(caller: str, config: LowpConfig, overrides) -> dict[str, LowpConfig | None]:
    """overrides as a dict, checked: str keys, lowp configs (or None) as values, of the same workflow as config
    (configs applied at once mix; static and QAT configs need their own prepare -> convert)."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"{caller}: overrides must be a dict of layer name or fnmatch pattern -> lowp config or None, "
                        f"got {type(overrides).__name__}")
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise TypeError(f"{caller}: overrides keys must be layer names or fnmatch patterns (str), got "
                            f"{type(key).__name__} {key!r}")
        if value is not None and not isinstance(value, LowpConfig):
            raise TypeError(f"{caller}: overrides[{key!r}] must be a lowp config ({CONFIG_NAMES}) or None, got "
                            f"{type(value).__name__} {value!r}")
        if value is not None and deferred(value) is not deferred(config):
            raise ValueError(f"{caller}: overrides[{key!r}] is {_a(type(value).__name__)} but config is "
                             f"{_a(type(config).__name__)}; one call runs one workflow: configs applied at once "
                             f"(Int8DynamicConfig, Fp8DynamicConfig, Fp16Config) mix, Int8StaticConfig and QATConfig "
                             f"each need their own prepare -> convert")
    return dict(overrides)


def matches(key: str, fqn: str) -> bool:
    """Whether an overrides key applies to the layer fqn: its name, an enclosing module's name, or a pattern."""
    return fqn == key or fqn.startswith(key + ".") or fnmatch.fnmatchcase(fqn, key)


def config_for(fqn: str, config: LowpConfig, overrides: dict[str, LowpConfig | None]) -> LowpConfig | None:
    """The config of layer fqn. The most specific overrides key wins: the layer's own name, then the name of the
    nearest module enclosing it, then the first fnmatch pattern that matches; else the model's config."""
    if fqn in overrides:
        return overrides[fqn]
    enclosing = [key for key in overrides if fqn.startswith(key + ".")]
    if enclosing:
        return overrides[max(enclosing, key=len)]
    for key, value in overrides.items():
        if fnmatch.fnmatchcase(fqn, key):
            return value
    return config


def plan(caller: str, model: nn.Module, config: LowpConfig, overrides: dict[str, LowpConfig | None],
         filter_fn: FilterFn | None, report: SwapReport) -> dict[str, LowpConfig]:
    """fqn -> config of every module a handler will replace; the rest goes into report.skipped. ValueError when
    that leaves nothing to convert.

    A module with several names (see swap.places) is planned once, under its first name; it stays float when any
    of its names is filtered out or given None, and otherwise all its names must get the same config."""
    chosen: dict[str, LowpConfig] = {}
    names = places(model)
    for fqn, module in model.named_modules():
        if not fqn or any(fqn.startswith(p + ".") for p in chosen):
            continue
        if isinstance(module, LOWP_MODULES):
            report.skipped[fqn] = f"already converted by lowp ({type(module).__name__})"
            continue
        aliases = names[fqn]
        cfgs = {name: config_for(name, config, overrides) for name in aliases}
        # None under any of its names leaves the module float (as filter_fn does); configs must agree
        none = [name for name, cfg in cfgs.items() if cfg is None]
        cfg = None if none else cfgs[fqn]
        if not none and any(other != cfg for other in cfgs.values()):
            raise ValueError(f"{caller}: the module at {', '.join(aliases)} is one module, converted once, but the "
                             f"overrides give its names different configs; give them one")
        if cfg is None or handler_for(module, cfg) is None:
            if not list(module.children()) and any(True for _ in module.parameters(recurse=False)) \
                    and not isinstance(module, _FOLDED):
                by = "" if cfg is not None or none[0] == fqn else f" (as {none[0]}, one of its names)"
                report.skipped[fqn] = (f"config None: left float{by}" if cfg is None else
                                       f"no lowp handler for {type(module).__name__} under {type(cfg).__name__}")
            continue
        filtered = [name for name in aliases if filter_fn is not None and not filter_fn(module, name)]
        if filtered:
            by = filtered[0]
            report.skipped[fqn] = "filtered out" if by == fqn else f"filtered out (as {by}, one of its names)"
        else:
            chosen[fqn] = cfg
    if chosen:
        return chosen
    if report.skipped and all(r.startswith(("filtered out", "config None")) for r in report.skipped.values()):
        raise ValueError(f"{caller}: every convertible layer was filtered out or given config None: {report.skipped}")
    kinds = sorted({type(m).__name__ for m in model.modules()} - {type(model).__name__})
    supported = ", ".join(t.__name__ for t in registered_types(type(config)) if not issubclass(t, LOWP_MODULES))
    raise ValueError(f"{caller}: the model has no layer lowp can convert under {type(config).__name__} (supported: "
                     f"{supported}); it holds {kinds or 'none'}" + (f"; skipped: {report.skipped}"
                                                                     if report.skipped else ""))
