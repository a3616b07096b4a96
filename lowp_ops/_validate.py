"""Input validation for torch.ops.lowp: every message names the op, the argument, what was expected and what came.

TypeError for a wrong dtype, ValueError for everything else (shape, device, layout, values, sizes).

Value checks (scales finite and normal, int8 zero points in [-128, 127]) read the data, so they cannot run where
there is none: under torch.compile (tracing), on fake or meta tensors (opcheck, export) and during CUDA graph
capture they are skipped, and a compiled graph does not repeat them. On eager CPU tensors they run on every call,
so no edit goes unseen (~0.7 us per one-element tensor, ~2.7 us per (1024,) vector: one aminmax and two host reads;
2-core dev machine, torch 2.13). On eager CUDA tensors a read is a device sync, so a tensor that passed is
remembered until its version counter, data pointer or storage changes (in-place ops, `.data = ...`, `set_`); an
in-place edit through `.data` (`scale.data[0] = nan`) bumps none of them and is not seen on CUDA.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils.weak import WeakIdKeyDictionary

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
# Every zero point (input, weight-side correction, output) is an int8 code: the kernels pad with it, and
# MAX_K_ZERO_POINT assumes |q - zero_point| <= 255.
INT8_RANGE = (-128, 127)
# Scales are finite, normal float32 (>= 2^-126 = quant.MIN_SCALE): the kernels multiply by 1/scale, which overflows
# to inf below 2^-128 (0 · inf = NaN: the kernel and the reference then disagree), and GPUs may flush subnormals.
SCALE_RANGE = (MIN_SCALE, torch.finfo(torch.float32).max)
_SCALES = (*SCALE_RANGE, "finite, normal float32 scales (>= 2^-126)")
_ZERO_POINTS = (*INT8_RANGE, "int8 zero points in [-128, 127]")


def fail(op: str, message: str, exc=ValueError):
    raise exc(f"lowp.{op}: {message}")


def dtype_names(dtypes) -> str:
    """(torch.int8, torch.float16, torch.float32) -> "int8, float16 or float32"."""
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return " or ".join(filter(None, (", ".join(names[:-1]), names[-1])))


def check_tensor(op: str, name: str, t, dtypes, *, ndim: int | None = None, like=None) -> None:
    """Type, dtype and rank of argument `name`; like: (name, tensor) of the argument whose device it must share."""
    if not isinstance(t, torch.Tensor):
        fail(op, f"argument '{name}' must be a Tensor, got {type(t).__name__}", TypeError)
    if t.dtype not in dtypes:
        fail(op, f"argument '{name}' must have dtype {dtype_names(dtypes)}, got {dtype_names([t.dtype])}", TypeError)
    if ndim is not None and t.ndim != ndim:
        fail(op, f"argument '{name}' must be {ndim}-D, got shape {tuple(t.shape)}")
    if like is not None and t.device != like[1].device:
        fail(op, f"argument '{name}' is on {t.device} but '{like[0]}' is on {like[1].device}: all tensors must be on "
                 f"one device")


def check_param(op: str, name: str, t, like, dtypes, shapes, what: str, *, one: bool = True) -> None:
    """An optional parameter (None passes) of `dtypes` on like's device: shaped as one of `shapes` or, with one=True,
    a single element of any shape. Shapes, not element counts: a (2, 2) scale is no per-column vector for N = 4."""
    if t is None:
        return
    check_tensor(op, name, t, dtypes, like=like)
    if not ((one and t.numel() == 1) or any(tuple(t.shape) == tuple(s) for s in shapes)):
        allowed = " or ".join(dict.fromkeys(str(tuple(s)) for s in shapes)) + (", or one element" if one else "")
        what = f"{what} (shape {allowed})" if shapes else f"one element ({what})"
        fail(op, f"argument '{name}' must hold {what}, got shape {tuple(t.shape)}")


def check_scale(op: str, name: str, t, like, shapes=(), what: str = "a per-tensor scale", *,
                required: bool = False) -> None:
    """float32, shaped as check_param says, values finite and normal. required: None is refused too — a schema's
    `Tensor` (not `Tensor?`) argument, which torch's dispatcher still lets None through for (torch 2.13), and which
    the launchers would read as "no scale" (an unscaled result) or "dynamic"."""
    if required and t is None:
        fail(op, f"argument '{name}' must be a Tensor, got NoneType", TypeError)
    check_param(op, name, t, like, (torch.float32,), shapes, what)
    _check_values(op, name, t, *_SCALES)


def check_zero_point(op: str, name: str, t, like, shapes=(), what: str = "a per-tensor zero point") -> None:
    """int32, shaped as check_param says, values int8 codes."""
    check_param(op, name, t, like, (torch.int32,), shapes, what)
    _check_values(op, name, t, *_ZERO_POINTS)


def fp8_supported(device: torch.device) -> bool:
    """Whether float8_e4m3fn arithmetic runs on device: CPUs (in float32, lowp_ops.cpu) and CUDA GPUs of sm_89
    (Ada) or newer, which have FP8 Tensor Cores and conversions (Triton's float8e4nv)."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)


def check_k_contiguous(op: str, name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        fail(op, f"argument '{name}' must be contiguous along its last dim (stride 1), got strides "
                 f"{tuple(t.stride())}; call .contiguous() first")


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

def outside(t: torch.Tensor, lo, hi) -> torch.Tensor:
    """The values of t outside [lo, hi], NaN included, flattened (for messages; the modules' checks use it too)."""
    flat = t.detach().flatten()
    return flat[~((flat >= lo) & (flat <= hi))]


def _unreadable(t: torch.Tensor) -> bool:
    """True when t has no readable data now (tracing, fake/meta tensors, CUDA graph capture). Attribute tests first
    (~0.06 us each): this runs on every eager CPU call."""
    if torch.compiler.is_compiling():
        return True
    if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:  # subclasses only: is_fake costs ~1.4 us
        from torch._subclasses.fake_tensor import is_fake

        if is_fake(t):
            return True
    return t.is_meta or (t.is_cuda and torch.cuda.is_current_stream_capturing())  # no host sync while capturing


def _stamp(t: torch.Tensor) -> tuple:
    """What identifies t's data: in-place ops bump the version, `.data = ...` / `set_` change the pointer and the
    storage. Stamps compare equal while all three are unchanged (a weakref equals another while both referents
    live and are the same object; a dead one equals nothing new)."""
    return t._version, t.data_ptr(), weakref.ref(t.untyped_storage())


# CUDA tensor -> its stamp when it last passed a value check: a module's fixed scales pay the device sync once
_passed_on_cuda = WeakIdKeyDictionary()


def _check_values(op: str, name: str, t: torch.Tensor | None, lo, hi, what: str) -> None:
    """Every value of t in [lo, hi] (NaN fails), or fail naming up to 4 offenders; where and how often: module
    docstring. Inference tensors keep no version counter, so on CUDA they are checked on every call."""
    if t is None or t.numel() == 0 or _unreadable(t):
        return
    remember = t.is_cuda and not t.is_inference()
    if remember and _passed_on_cuda.get(t) == _stamp(t):
        return
    if t.numel() == 1:
        ok = lo <= t.item() <= hi
    else:  # one reduction, two host reads; NaN propagates through aminmax and fails the comparison
        vmin, vmax = torch.aminmax(t.detach())
        ok = lo <= vmin.item() and vmax.item() <= hi
    if not ok:
        bad = outside(t, lo, hi)
        fail(op, f"argument '{name}' must hold {what}, got {bad[:4].tolist()}{' ...' if bad.numel() > 4 else ''}")
    if remember:
        _passed_on_cuda[t] = _stamp(t)
