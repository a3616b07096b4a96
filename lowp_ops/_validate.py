"""Input validation for torch.ops.lowp: every message names the op, the argument, what was expected and what came.

TypeError for a wrong dtype, ValueError for everything else (shape, device, layout, values).
"""

from __future__ import annotations

import weakref

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ACTIVATIONS = ("none", "relu", "relu6", "gelu")
# Largest K whose int32 accumulator cannot overflow: |Σ_k a·b| <= 128·128·K < 2^31.
MAX_K = 2**17


def _names(dtypes) -> str:
    return " or ".join(str(d).removeprefix("torch.") for d in dtypes)


def fail(op: str, message: str, exc=ValueError):
    raise exc(f"lowp.{op}: {message}")


def check_tensor(op: str, name: str, t, *, dtypes=None, ndim=None, device=None, device_of: str = "") -> None:
    """Type, dtype, rank and device of one argument."""
    if not isinstance(t, torch.Tensor):
        fail(op, f"argument '{name}' must be a Tensor, got {type(t).__name__}", TypeError)
    if dtypes is not None and t.dtype not in dtypes:
        fail(op, f"argument '{name}' must have dtype {_names(dtypes)}, got {str(t.dtype).removeprefix('torch.')}",
             TypeError)
    if ndim is not None and t.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        fail(op, f"argument '{name}' must be {ndim}-D, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        fail(op, f"argument '{name}' is on {t.device} but '{device_of}' is on {device}: "
                 f"all tensors must be on one device")


def check_k_contiguous(op: str, name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        fail(op, f"argument '{name}' must be contiguous along its last dim (stride 1), got strides "
                 f"{tuple(t.stride())}; call .contiguous() first")


def check_numel(op: str, name: str, t: torch.Tensor, allowed: tuple[int, ...], what: str) -> None:
    """A per-row / per-column / per-tensor parameter: at most 1-D (or the rows' own shape) with numel in allowed."""
    if t.numel() not in allowed:
        fail(op, f"argument '{name}' must hold {what}, got shape {tuple(t.shape)}")


def check_activation(op: str, activation: str) -> None:
    if activation not in ACTIVATIONS:
        fail(op, f"argument 'activation' must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}")


def _data_unreadable(t: torch.Tensor) -> bool:
    """True when t has no readable data now (tracing, fake/meta tensors, CUDA graph capture)."""
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(t) or t.device.type == "meta":
        return True
    # no host sync is allowed while a CUDA graph is being captured
    return t.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


# id(tensor) -> (weakref, version) of scale tensors already seen finite: the check costs a device sync, so a
# module's fixed scales pay it once (and again only after an in-place change), not on every call.
_finite_seen: dict[int, tuple[weakref.ref, int]] = {}


def check_scale_values(op: str, name: str, t: torch.Tensor | None) -> None:
    """Scales must be finite and positive. Skipped while tracing (there is no data to read)."""
    if t is None or torch.compiler.is_compiling():
        return
    try:
        version = t._version
    except RuntimeError:  # inference tensors carry no version counter: check every time
        version = None
    key = id(t)
    seen = _finite_seen.get(key)
    if version is not None and seen is not None and seen[0]() is t and seen[1] == version:
        return  # the steady state of a module's fixed scales: no device sync
    if _data_unreadable(t):
        return
    bad = ~(torch.isfinite(t) & (t > 0))
    if bool(bad.any()):
        values = t.detach().flatten()[bad.flatten()]
        fail(op, f"argument '{name}' must hold finite, positive scales, got {values[:4].tolist()}"
                 f"{' ...' if values.numel() > 4 else ''}")
    if version is not None:
        trust_scales(t)


def trust_scales(t: torch.Tensor) -> torch.Tensor:
    """Record a scale lowp computed itself (finite and >= MIN_SCALE by construction) as checked, so passing it on
    to the next op costs no device sync. Returns t."""
    if torch.compiler.is_compiling() or _data_unreadable(t):
        return t
    try:
        version = t._version
    except RuntimeError:
        return t
    key = id(t)

    def forget(ref, key=key):
        if _finite_seen.get(key, (None,))[0] is ref:
            del _finite_seen[key]

    _finite_seen[key] = (weakref.ref(t, forget), version)
    return t
