"""Input validation for torch.ops.lowp: every message names the op, the argument, what was expected and what came.

TypeError for a wrong dtype, ValueError for everything else (shape, device, layout, values, sizes).

Value checks (scales finite and normal, int8 zero points in [-128, 127]) read the data, so they cannot run where
there is none: under torch.compile (tracing), on fake or meta tensors (opcheck, export) and during CUDA graph
capture they are skipped, and a compiled graph does not repeat them. On eager CPU tensors they run on every call,
so no edit goes unseen (~0.7 us per one-element tensor, ~2.7 us per (1024,) vector: one aminmax and two host reads;
this machine, 2 cores, torch 2.13). On eager CUDA tensors a read is a device sync, so a tensor that passed is
remembered until its version counter, data pointer or storage changes (in-place ops, `.data = ...`, `set_`); an
in-place edit through `.data` (`scale.data[0] = nan`) bumps none of them and is not seen on CUDA.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch

from .quant.qparams import MIN_SCALE

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ACTIVATIONS = ("none", "relu", "relu6", "gelu")
INT32_MAX = 2**31 - 1
# Largest reduction length K whose int32 accumulator cannot overflow. Symmetric int8: |a·b| <= (-128)·(-128) = 2^14,
# so K <= (2^31 - 1) // 2^14 = 131071 (K = 2^17 with all -128 operands sums to 2^31). With a zero point za in
# [-128, 127] the kernels compute Σ (a - za)·b as acc - za·Σ b in int32 and |a - za| <= 255, so
# K <= (2^31 - 1) // (255·128) = 65793; the raw acc and za·Σ b (each <= 2^14·K) fit on their own below that too.
MAX_K = INT32_MAX // (128 * 128)
MAX_K_ZERO_POINT = INT32_MAX // (255 * 128)
INT8_RANGE = (-128, 127)  # every int8 zero point (input, weight-side correction, output) is an int8 code
SCALE_RANGE = (MIN_SCALE, torch.finfo(torch.float32).max)  # finite, normal float32 (check_scale_values)


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


def check_shape(op: str, name: str, t: torch.Tensor, shapes, what: str, *, one: bool = True) -> None:
    """A per-row / per-column / per-tensor parameter: exactly one of `shapes` or (one=True) a single element of
    any shape. Shapes, not element counts: a (2, 2) scale is no per-column vector for N = 4."""
    if not ((one and t.numel() == 1) or tuple(t.shape) in [tuple(s) for s in shapes]):
        fail(op, f"argument '{name}' must hold {what}, got shape {tuple(t.shape)}")


def check_reduction_length(op: str, what: str, K: int, zero_point: str | None) -> None:
    """K: the int32 accumulator's reduction length; zero_point: the name of the zero-point argument given, if any
    (it lowers the bound from MAX_K to MAX_K_ZERO_POINT)."""
    bound = MAX_K if zero_point is None else MAX_K_ZERO_POINT
    if K > bound:
        with_zp = "" if zero_point is None else f" with '{zero_point}' (|q - zero_point| <= 255)"
        fail(op, f"{what} = {K} can overflow the int32 accumulator{with_zp}: at most {bound} is supported")


def check_activation(op: str, activation: str) -> None:
    if activation not in ACTIVATIONS:
        fail(op, f"argument 'activation' must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}")


# ------------------------------------------------------------------------------------------------ value checks

def _data_unreadable(t: torch.Tensor) -> bool:
    """True when t has no readable data now (tracing, fake/meta tensors, CUDA graph capture). Written for the
    per-call CPU path: attribute tests (~0.06 us each) before anything that builds objects (t.device, is_fake)."""
    if torch.compiler.is_compiling():
        return True
    if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:  # subclasses only: is_fake costs ~1.4 us
        from torch._subclasses.fake_tensor import is_fake

        if is_fake(t):
            return True
    if t.is_cpu:
        return False
    # no host sync is allowed while a CUDA graph is being captured
    return t.is_meta or (t.is_cuda and torch.cuda.is_current_stream_capturing())


class _Stamp(NamedTuple):
    """What identifies a tensor's data: in-place ops bump the version, `.data = ...` / `set_` change the pointer
    and the storage. Inference tensors have no version counter (None)."""
    ref: weakref.ref
    version: int | None
    data_ptr: int
    storage: weakref.ref


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors carry no version counter
        return None


def _matches(stamp: _Stamp | None, t: torch.Tensor) -> bool:
    return (stamp is not None and stamp.ref() is t and stamp.version == _version(t)
            and stamp.data_ptr == t.data_ptr() and stamp.storage() is t.untyped_storage())


def _remember(table: dict, key, t: torch.Tensor) -> None:
    def forget(ref, key=key):
        if table.get(key, (None,))[0] is ref:
            del table[key]

    table[key] = _Stamp(weakref.ref(t, forget), _version(t), t.data_ptr(), weakref.ref(t.untyped_storage()))


# id(t) -> stamp of a scale lowp computed itself (trust_scales): never checked while its data is unchanged
_trusted: dict[int, _Stamp] = {}
# (id(t), what) -> stamp of a CUDA tensor that passed a value check: a module's fixed scales pay the device sync
# once, not on every call. CPU tensors are checked on every call instead (cheap), so `.data` edits are seen there.
_passed_on_cuda: dict[tuple[int, str], _Stamp] = {}


def outside(t: torch.Tensor, lo, hi) -> torch.Tensor:
    """The values of t outside [lo, hi], NaN included, flattened (for messages; the modules' checks use it too)."""
    flat = t.detach().flatten()
    return flat[~((flat >= lo) & (flat <= hi))]


def _check_range(op: str, name: str, t: torch.Tensor | None, lo, hi, what: str) -> None:
    """Every value of t in [lo, hi] (NaN fails), or fail naming up to 4 offenders. Skipped where no data can be
    read (module docstring) and for tensors lowp marked with trust_scales."""
    if t is None or _data_unreadable(t) or t.numel() == 0 or (_trusted and _matches(_trusted.get(id(t)), t)):
        return
    cached = not t.is_cpu and _version(t) is not None  # CUDA; inference tensors have no version: checked each time
    if cached and _matches(_passed_on_cuda.get((id(t), what)), t):
        return
    if t.numel() == 1:
        ok = lo <= t.item() <= hi
    else:  # one reduction, two host reads; NaN propagates through aminmax and fails the comparison
        vmin, vmax = torch.aminmax(t.detach() if t.requires_grad else t)
        ok = lo <= vmin.item() and vmax.item() <= hi
    if not ok:
        values = outside(t, lo, hi)
        fail(op, f"argument '{name}' must hold {what}, got {values[:4].tolist()}{' ...' if values.numel() > 4 else ''}")
    if cached:
        _remember(_passed_on_cuda, (id(t), what), t)


def check_scale_values(op: str, name: str, t: torch.Tensor | None) -> None:
    """Scales must be finite, normal float32 (>= 2^-126 = quant.MIN_SCALE): the kernels multiply by 1/scale, which
    overflows to inf below 2^-128 (0 · inf = NaN: the kernel and the reference then disagree), and GPUs may flush
    subnormals to zero."""
    _check_range(op, name, t, *SCALE_RANGE, "finite, normal float32 scales (>= 2^-126)")


def check_zero_point_values(op: str, name: str, t: torch.Tensor | None) -> None:
    """int8 zero points lie in [-128, 127]: the kernels pad with the zero point as an int8 code and the int32
    accumulator bounds (MAX_K_ZERO_POINT) assume |q - zero_point| <= 255."""
    _check_range(op, name, t, *INT8_RANGE, f"int8 zero points in [{INT8_RANGE[0]}, {INT8_RANGE[1]}]")


def trust_scales(t: torch.Tensor) -> torch.Tensor:
    """Record a scale lowp computed itself (finite and normal by construction: a dynamic Int8Conv2d fed non-finite
    input keeps a finite scale and poisons its bias instead, README "Non-finite input and overflow") as exempt from
    the value check, so passing it to the next op costs no host read or device sync, until its data changes
    (version, data pointer or storage; an inference tensor has no version, so only the latter two). Returns t."""
    if not _data_unreadable(t):
        _remember(_trusted, id(t), t)
    return t
