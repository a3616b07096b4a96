"""Which implementation runs an op: CUDA tensors -> the Triton kernels (lowp_ops.kernels, through wrap_triton);
CPU tensors -> the CPU backend chosen here:

    "native"     lowp_ops.cpu: oneDNN / torch._int_mm int8 arithmetic (the default; the fp16 ops have none and run
                 the reference); on a CPU without int8 dot products it falls back to the reference, with a warning
    "reference"  lowp_ops.reference: exact and slow, the oracle (tests, debugging)
    "triton"     the Triton kernels under the interpreter (TRITON_INTERPRET=1 before lowp_ops is imported): tests
                 of the kernels through the ops' whole path; it cannot trace (opcheck, torch.compile: no data)

The three are peer modules with the same launcher names and signatures. Choose with the environment variable
LOWP_CPU_BACKEND (read at import) or, for a block of code, `with lowp_ops.use_cpu_backend("reference"): ...`.
Selection happens when an op runs: under torch.compile the backend in force at tracing time is baked in.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor
from torch.library import custom_op, wrap_triton

from .. import cpu, kernels, reference
from .._validate import fail
from ..cpu.support import traced

_CPU_BACKENDS = {"native": cpu, "reference": reference, "triton": kernels}


def _checked(name: str) -> str:
    if name not in _CPU_BACKENDS:
        raise ValueError(f"lowp: CPU backend must be one of {', '.join(_CPU_BACKENDS)}, got {name!r}")
    if name == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("lowp: the 'triton' CPU backend runs the kernels under Triton's interpreter; set "
                         "TRITON_INTERPRET=1 before importing lowp_ops")
    return name


_cpu_backend = _checked(os.environ.get("LOWP_CPU_BACKEND", "native"))


def cpu_backend() -> str:
    """The CPU backend in force: "native", "reference" or "triton"."""
    return _cpu_backend


@contextlib.contextmanager
def use_cpu_backend(name: str):
    """Run CPU tensors through another backend inside the block (see the module docstring).

    >>> import torch, lowp_ops
    >>> a = torch.randint(-128, 128, (3, 5), dtype=torch.int8)
    >>> with lowp_ops.use_cpu_backend("reference"):
    ...     ref = lowp_ops.int8_mm(a, a)
    >>> torch.equal(lowp_ops.int8_mm(a, a), ref)
    True
    """
    global _cpu_backend
    saved, _cpu_backend = _cpu_backend, _checked(name)
    try:
        yield
    finally:
        _cpu_backend = saved


# ---------------------------------------------------------------------------- the native CPU launchers in graphs
# torch.compile and torch.export trace a triton_op's body with fake tensors, where the native CPU launchers have no
# data to work on (and oneDNN's prepack no fake kernel): traced as they are, they would put the reference's float64
# arithmetic in the graph. Wrapped as opaque custom ops (lowp_cpu::*, fake: the reference on fake tensors, which
# gives the same shapes, dtypes and layouts), the graph holds a call that runs the native launcher when the compiled
# model runs. No autograd: they sit inside the lowp ops, which have their own.


@custom_op("lowp_cpu::quantize_rows", mutates_args=())
def _quantize_rows(x: Tensor, scale: Tensor | None = None, zero_point: Tensor | None = None,
                   min_scale: float | None = None, dtype: torch.dtype = torch.int8) -> tuple[Tensor, Tensor]:
    q, s = cpu.quantize_rows(x, scale=scale, zero_point=zero_point, min_scale=min_scale, dtype=dtype)
    return q, (s.clone() if s is scale else s)  # a custom op's output may not be its input


@_quantize_rows.register_fake
def _(x, scale=None, zero_point=None, min_scale=None, dtype=torch.int8):
    q, s = reference.quantize_rows(x, scale=scale, zero_point=zero_point, min_scale=min_scale, dtype=dtype)
    return q, s.clone()


@custom_op("lowp_cpu::quantize_channels_last", mutates_args=())
def _quantize_channels_last(x: Tensor, scale: Tensor, zero_point: Tensor | None = None) -> Tensor:
    return cpu.quantize_channels_last(x, scale=scale, zero_point=zero_point)


_quantize_channels_last.register_fake(lambda x, scale, zero_point=None: reference.quantize_channels_last(
    x, scale=scale, zero_point=zero_point))


@custom_op("lowp_cpu::int8_gemm", mutates_args=())
def _int8_gemm(a: Tensor, b: Tensor, a_scale: Tensor | None = None, b_scale: Tensor | None = None,
               bias: Tensor | None = None, a_zero_point: Tensor | None = None, b_sum: Tensor | None = None,
               activation: str = "none", out_dtype: torch.dtype = torch.int32, out_scale: Tensor | None = None,
               out_zero_point: Tensor | None = None) -> Tensor:
    return cpu.int8_gemm(a, b, a_scale=a_scale, b_scale=b_scale, bias=bias, a_zero_point=a_zero_point, b_sum=b_sum,
                         activation=activation, out_dtype=out_dtype, out_scale=out_scale,
                         out_zero_point=out_zero_point)


_int8_gemm.register_fake(
    lambda a, b, a_scale=None, b_scale=None, bias=None, a_zero_point=None, b_sum=None, activation="none",
    out_dtype=torch.int32, out_scale=None, out_zero_point=None: reference.int8_gemm(
        a, b, a_scale=a_scale, b_scale=b_scale, bias=bias, a_zero_point=a_zero_point, b_sum=b_sum,
        activation=activation, out_dtype=out_dtype, out_scale=out_scale, out_zero_point=out_zero_point))


@custom_op("lowp_cpu::int8_conv2d", mutates_args=())
def _int8_conv2d(x: Tensor, w: Tensor, stride: list[int], padding: list[int], dilation: list[int], groups: int,
                 a_scale: Tensor | None = None, b_scale: Tensor | None = None, bias: Tensor | None = None,
                 a_zero_point: Tensor | None = None, b_sum: Tensor | None = None, activation: str = "none",
                 out_dtype: torch.dtype = torch.int32, out_scale: Tensor | None = None,
                 out_zero_point: Tensor | None = None) -> Tensor:
    return cpu.int8_conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups, a_scale=a_scale,
                           b_scale=b_scale, bias=bias, a_zero_point=a_zero_point, b_sum=b_sum, activation=activation,
                           out_dtype=out_dtype, out_scale=out_scale, out_zero_point=out_zero_point)


_int8_conv2d.register_fake(
    lambda x, w, stride, padding, dilation, groups, a_scale=None, b_scale=None, bias=None, a_zero_point=None,
    b_sum=None, activation="none", out_dtype=torch.int32, out_scale=None, out_zero_point=None: reference.int8_conv2d(
        x, w, stride=stride, padding=padding, dilation=dilation, groups=groups, a_scale=a_scale, b_scale=b_scale,
        bias=bias, a_zero_point=a_zero_point, b_sum=b_sum, activation=activation, out_dtype=out_dtype,
        out_scale=out_scale, out_zero_point=out_zero_point))

@custom_op("lowp_cpu::int8_max_pool2d", mutates_args=())
def _int8_max_pool2d(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int],
                     ceil_mode: bool = False) -> Tensor:
    return cpu.int8_max_pool2d(x, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                               ceil_mode=ceil_mode)


_int8_max_pool2d.register_fake(
    lambda x, kernel_size, stride, padding, dilation, ceil_mode=False: reference.int8_max_pool2d(
        x, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode))

# launcher -> its opaque op; the others (per_tensor_qparams, fp8_gemm) are plain torch ops when traced
_GRAPH_OPS = {"quantize_rows": _quantize_rows, "quantize_channels_last": _quantize_channels_last,
              "int8_gemm": _int8_gemm, "int8_conv2d": _int8_conv2d, "int8_max_pool2d": _int8_max_pool2d}


_LAUNCHERS = {backend: frozenset(backend.__all__) for backend in (kernels, *_CPU_BACKENDS.values())}


def dispatch(op: str, launcher: str, *args, **kwargs):
    """Run the launcher named `launcher` for the device of args[0]. A backend without it runs the reference's: the
    native CPU backend has no fp16 GEMM, and int8_conv2d's dynamic per-tensor scale (per_tensor_qparams) is plain
    torch arithmetic with a native CPU shortcut and no kernel."""
    device = args[0].device.type
    if device not in ("cuda", "cpu"):
        fail(op, f"tensors on {args[0].device} are not supported: use cuda (Triton kernels) or cpu")
    backend = kernels if device == "cuda" else _CPU_BACKENDS[_cpu_backend]
    if launcher not in _LAUNCHERS[backend]:  # (lowp_ops.cpu.gemm is a module, not a launcher: ask __all__)
        return getattr(reference, launcher)(*args, **kwargs)
    if device == "cuda":
        kwargs["wrap"] = wrap_triton  # torch.compile sees through the launch
    elif backend is cpu and launcher in _GRAPH_OPS and traced(args[0]):
        return _GRAPH_OPS[launcher](*args, **kwargs)
    return getattr(backend, launcher)(*args, **kwargs)
