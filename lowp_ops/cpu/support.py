"""What the native CPU paths share: whether this CPU can run them, the one-time fallback warning, the cache of
weights reordered for oneDNN ("prepacked"), and the int8 -> uint8 shift oneDNN's int8 primitives want."""

from __future__ import annotations

import functools
import platform
import threading
import warnings
from collections.abc import Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils.weak import WeakIdKeyDictionary

# Integer-dot-product instructions (VPDPBUSD and AMX tiles). Without them torch._int_mm falls back to naive loops
# (https://github.com/pytorch/pytorch/issues/136942) and oneDNN to slow reference kernels: the float64 reference
# is then the faster path.
_INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def missing() -> str | None:
    """Why the native int8 paths cannot run on this machine, or None when they can."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.onednn, "qconv2d_pointwise"):
        return "this torch build lacks oneDNN's int8 primitives"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the native int8 path targets x86-64 CPUs with VNNI, this is {platform.machine()}"
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return "/proc/cpuinfo is unreadable, so VNNI support is unknown"
    if not flags.intersection(_INT8_DOT_FLAGS):
        return "this CPU has no int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX)"
    return None


_warned: set[tuple[str, str]] = set()
_FAKE_MODE = torch._C._TorchDispatchModeKey.FAKE


def fall_back(op: str, reason: str) -> None:
    """Warn once per (op, reason) that an op runs the pure-torch reference instead of the native path."""
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        warnings.warn(f"lowp {op}: no native CPU path ({reason}); running the pure-torch reference, which is exact "
                      f"but several times slower", RuntimeWarning, stacklevel=4)


# Set while an eager Lane (lowp_ops/ops/_common.py) runs an op's body: the Lane has checked that nothing traces
# or intercepts the call (no compile, no dispatch mode, plain tensors), so the backends need not ask again.
plain_eager = threading.local()


def traced(*tensors: torch.Tensor) -> bool:
    """True while torch.compile, torch.export or opcheck trace an op: tensors hold no data to read or cache.
    (torch._guards.detect_fake_mode says the same at ~30 us a call; this costs ~1 us, which batch 1 notices, and
    nothing inside an eager Lane.)"""
    if getattr(plain_eager, "on", False):
        return False
    if torch._C._get_dispatch_mode(_FAKE_MODE) is not None or torch.compiler.is_compiling():
        return True
    return any(type(t) is not torch.Tensor and isinstance(t, FakeTensor) for t in tensors)  # plain ones first


_packs = WeakIdKeyDictionary()
_PACKS_PER_WEIGHT = 4  # e.g. a conv layer's packs for the batch sizes a model is served at


def packed(weight: torch.Tensor, key: tuple, pack: Callable[[], object]):
    """pack() for this weight and key, cached on the weight tensor (a module's buffer lives as long as the module;
    the last few keys are kept) and made again once the weight is written in place (its version counter moves) or
    its storage replaced. Inference tensors (made under torch.inference_mode) keep no version counter: their
    in-place writes go unseen, so write a new tensor instead."""
    stamp = (0 if weight.is_inference() else weight._version, weight.data_ptr())
    entry = _packs.get(weight)
    if entry is None or entry[0] != stamp:
        entry = _packs[weight] = (stamp, {})
    packs = entry[1]
    if key not in packs:
        if len(packs) >= _PACKS_PER_WEIGHT:
            del packs[next(iter(packs))]  # the oldest
        packs[key] = pack()
    return packs[key]


def as_uint8(q: torch.Tensor) -> torch.Tensor:
    """int8 q -> uint8 q + 128 (flip the sign bit), same layout: oneDNN's fast int8 kernels read unsigned
    activations (u8 x s8 dot products); a signed input reaches its reference kernels, measured ~4000x slower for a
    (256, 4096) x (4096, 4096) qlinear on the CI machine (2026-11-25). Zero points move by +128 with it."""
    return torch.bitwise_xor(q.view(torch.uint8), 0x80)


# float32 holds every integer of magnitude below 2^24 exactly: an accumulator oneDNN returns as float32 with unit
# scales is the exact int32 one when all its values stay below this (rounding is monotone, so a larger true value
# never rounds below it).
EXACT_FLOAT32_INT = 2.0**24


def exact_integers(y: torch.Tensor) -> bool:
    """Whether the float32 accumulator y holds exact integers (see EXACT_FLOAT32_INT)."""
    return y.numel() == 0 or max(-y.amin().item(), y.amax().item()) < EXACT_FLOAT32_INT
