"""Which layers a call converts, and under which config: the per-layer config (a model-wide config, overridden by
name or pattern), the filter, and the checks on those arguments."""

from __future__ import annotations

import difflib
import fnmatch
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping

from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from ..nn import Fp8Linear, Fp16Linear, Int8Conv2d, Int8Linear, QATConv2d, QATLinear
from .configs import CONFIG_NAMES, Int8StaticConfig, LowpConfig, QATConfig
from .handlers import handler_for, refusal, registered_types
from .swap import SwapReport, places

FilterFn = Callable[[nn.Module, str], bool]
Overrides = Mapping[str, "LowpConfig | None"]

# lowp's own modules are the result of a conversion, never its input: a model converted once is not converted again
# (and a QATLinear is finished by convert, not by a second prepare_qat)
LOWP_MODULES = (Int8Linear, Int8Conv2d, Fp8Linear, Fp16Linear, QATLinear, QATConv2d)
# parameterized layers handled with their neighbours (folded into a conv) rather than replaced: not "unsupported"
_FOLDED = (nn.BatchNorm2d,)
# layers whose weights their owner's forward reads directly, never calling them: converting them would change
# nothing, so they stay float with this reason rather than the generic "no lowp handler"
_NOT_CALLED = {
    nn.MultiheadAttention: "nn.MultiheadAttention runs its in-projection (in_proj_weight) and out_proj inside "
                           "F.multi_head_attention_forward, which reads the weights directly: left float",
    NonDynamicallyQuantizableLinear: "nn.MultiheadAttention passes out_proj.weight to F.multi_head_attention_forward "
                                     "and never calls out_proj: converting it would change nothing; left float",
}


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


def check_mapping(caller: str, mapping) -> None:
    """TypeError unless mapping (torch.ao's positional float -> quantized module table) is None."""
    if mapping is not None:
        raise TypeError(f"{caller}: mapping (torch.ao's float -> quantized module table) must be None, got "
                        f"{type(mapping).__name__}; lowp's handlers pick each layer's replacement: add one with "
                        f"@lowp_ops.register(module_type, config_type)")


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


def check_names(caller: str, model: nn.Module, keys: Collection[str], what: str, *, patterns: bool) -> None:
    """ValueError naming each key that matches no layer name of the model (by matches() when patterns, else
    exactly), with the closest names: a misspelt key would otherwise be ignored and its layer converted."""
    names = [fqn for fqn, _ in model.named_modules(remove_duplicate=False) if fqn]
    for key in keys:
        if not any((matches(key, fqn) if patterns else key == fqn) for fqn in names):
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
            hint = f"; closest: {', '.join(map(repr, close))}" if close else f"; the model's layers: {names[:8]}"
            raise ValueError(f"{caller}: {what} {key!r} matches no layer of the model{hint}")


def plan(caller: str, model: nn.Module, config: LowpConfig, overrides: dict[str, LowpConfig | None],
         filter_fn: FilterFn | None, report: SwapReport, named: Collection[str] = ()) -> dict[str, LowpConfig]:
    """fqn -> config of every module a handler will replace; the rest goes into report.skipped. ValueError when
    that leaves nothing to convert, or when an overrides key matches no layer.

    A module with several names (see swap.places) is planned once, under its first name; it stays float when any
    of its names is filtered out or given None, and otherwise all its names must get the same config. A layer its
    handler refuses (handlers.refusal: what the converted module cannot represent) stays float with the reason. So
    does a layer whose weight is tied to a module left float, unless one of its names is in `named` (the layer
    names the user gave: overrides keys, qconfig_spec names): see _untie."""
    check_names(caller, model, overrides, "overrides key", patterns=True)
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
        if cfg is not None and type(module) in _NOT_CALLED:
            report.skipped[fqn] = _NOT_CALLED[type(module)]
            continue
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
        elif (why := refusal(module, cfg)) is not None:
            report.skipped[fqn] = why
        else:
            chosen[fqn] = cfg
    chosen = _untie(model, chosen, names, set(named), report)
    if chosen:
        return chosen
    if report.skipped and all(r.startswith(("filtered out", "config None", "its weight is tied"))
                              for r in report.skipped.values()):
        raise ValueError(f"{caller}: every convertible layer was filtered out or given config None, or is tied to a "
                         f"float module: {report.skipped}")
    kinds = sorted({type(m).__name__ for m in model.modules()} - {type(model).__name__})
    supported = ", ".join(t.__name__ for t in registered_types(type(config)) if not issubclass(t, LOWP_MODULES))
    raise ValueError(f"{caller}: the model has no layer lowp can convert under {type(config).__name__} (supported: "
                     f"{supported}); it holds {kinds or 'none'}" + (f"; skipped: {report.skipped}"
                                                                     if report.skipped else ""))


def _untie(model: nn.Module, chosen: dict[str, LowpConfig], names: dict[str, list[str]], named: set[str],
           report: SwapReport) -> dict[str, LowpConfig]:
    """chosen, less the layers whose weight is the same Parameter as a module's that stays float (a language
    model's lm_head tied to its input embedding): converting one would add a separate low-precision copy (more
    memory, not less) and untie them, so that anything that re-ties or saves the pair (transformers'
    save_pretrained / from_pretrained) sees a float head. A layer named in `named` is converted anyway."""
    holders: dict[int, list[str]] = defaultdict(list)  # id(parameter) -> first names of the modules holding it
    for fqn, module in model.named_modules():
        for p in module.parameters(recurse=False):
            holders[id(p)].append(fqn)
    kept = {}
    for fqn, cfg in chosen.items():
        weight = getattr(model.get_submodule(fqn), "weight", None)
        floats = [h for h in holders.get(id(weight), ()) if h != fqn and h not in chosen]
        if floats and not named.intersection(names.get(fqn, [fqn])):
            module = model.get_submodule(floats[0])
            report.skipped[fqn] = (f"its weight is tied to {floats[0]} ({type(module).__name__}), which stays float: "
                                   f"converting it would add a separate copy (more memory) and untie them; left "
                                   f"float (overrides={{{fqn!r}: config}} converts it anyway)")
        else:
            kept[fqn] = cfg
    return kept
