"""Models sharded by FSDP2 (torch.distributed.fsdp.fully_shard) into an ordinary model convert can work on.

fully_shard turns each module it wraps into an FSDP<Class> (a subclass of FSDPModule and the module's class) whose
parameters are DTensor shards, all-gathered around each forward by hooks; deepcopy refuses it. convert needs whole
weights in plain modules: gathered() all-gathers them (unshard, a collective), copies the module tree with its
original classes, plain parameters and none of FSDP's hooks, and reshards the sharded model, which trains on as it
was. Every rank gets the same copy (and its observers are reduced across the ranks: sync_observers).
"""

from __future__ import annotations

import functools
from collections import OrderedDict

from torch import nn

from .calibration import sync_observers

# nn.Module's hook tables: a copy keeps the model's own hooks, drops FSDP's
_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks", "_state_dict_hooks",
          "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
_HOOK_FLAGS = ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
_FSDP_ATTRIBUTES = ("_is_fsdp_managed_module", "_fsdp_use_orig_params")


def _fsdp_module() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - a torch without FSDP2
        return None
    return FSDPModule


def sharded(model: nn.Module) -> bool:
    """Whether model holds a module FSDP2's fully_shard wrapped."""
    fsdp = _fsdp_module()
    return fsdp is not None and any(isinstance(m, fsdp) for m in model.modules())


def ordinary(caller: str, model: nn.Module, inplace: bool, process_group) -> tuple[nn.Module, bool]:
    """(the model a workflow works on, inplace): an FSDP2-sharded model gathered into an ordinary copy (its
    observers reduced across process_group, None: the default group), which the workflow may then change in place;
    any other as given. inplace=True is refused for a sharded model."""
    if not sharded(model):
        return model, inplace
    if inplace:
        raise ValueError(f"{caller}: a model sharded by FSDP (fully_shard) cannot be converted in place; "
                         f"{caller}(model) returns an ordinary model on every rank (call it on every rank: it "
                         f"gathers the weights)")
    return gathered(model, process_group), True


def gathered(model: nn.Module, process_group=None) -> nn.Module:
    """An ordinary copy of the FSDP2-sharded model: whole weights, the original module classes, no FSDP hooks, the
    observers reduced across the ranks of process_group (None: the default group). A collective: every rank calls
    it (each gets the same copy)."""
    fsdp = _fsdp_module()
    shards = [m for m in model.modules() if isinstance(m, fsdp)]
    for module in shards:
        module.unshard()
    try:
        copy = _plain(model, fsdp, {})
    finally:
        for module in shards:
            module.reshard()
    return sync_observers(copy, process_group)


def _plain(module: nn.Module, fsdp: type, memo: dict) -> nn.Module:
    """module and what it holds, copied (memo: id -> copy, so that shared modules and tied parameters stay shared)
    into its original classes with plain tensors."""
    if id(module) in memo:
        return memo[id(module)]
    cls = type(module)
    if isinstance(module, fsdp):  # FSDP<Class>(FSDPModule, Class): back to Class
        cls = next(base for base in cls.__bases__ if not issubclass(base, fsdp))
    copy = cls.__new__(cls)
    memo[id(module)] = copy
    state = {k: (v.copy() if isinstance(v, (dict, set, list)) else v) for k, v in module.__getstate__().items()
             if k not in _FSDP_ATTRIBUTES}
    state["_parameters"] = {name: None if p is None else _tensor(p, memo, parameter=True)
                            for name, p in module._parameters.items()}
    state["_buffers"] = {name: None if b is None else _tensor(b, memo) for name, b in module._buffers.items()}
    state["_modules"] = {name: None if m is None else _plain(m, fsdp, memo) for name, m in module._modules.items()}
    for table in _HOOKS:
        if table in state:
            state[table] = OrderedDict((k, h) for k, h in state[table].items() if not _from_fsdp(h))
    kept = {k for table in _HOOKS if table in state for k in state[table]}
    for table in _HOOK_FLAGS:
        if table in state:
            state[table] = {k: v for k, v in state[table].items() if k in kept}
    copy.__setstate__(state)
    return copy


def _tensor(t, memo: dict, parameter: bool = False):
    if id(t) not in memo:
        data = t.detach().clone()
        memo[id(t)] = nn.Parameter(data, requires_grad=t.requires_grad) if parameter else data
    return memo[id(t)]


def _from_fsdp(hook) -> bool:
    """Whether a hook is FSDP's (its state's bound method, or a partial of one)."""
    while isinstance(hook, functools.partial):
        hook = hook.func
    owner = getattr(hook, "__self__", None)
    where = type(owner).__module__ if owner is not None else getattr(hook, "__module__", "") or ""
    return where.startswith("torch.distributed")
