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

from torch.library import wrap_triton

from .. import cpu, kernels, reference
from .._validate import fail
from ..cpu.support import plain_eager

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
    if device == "cuda" and not getattr(plain_eager, "on", False):
        # torch.compile and export see through the launch; a module's eager lane (ops/_common.py, Lane) launches
        # the kernel itself: wrap_triton(kernel)[grid] costs ~65 us there (CI machine, torch 2.13), where the op's
        # own path, which turns wrapping off in eager, pays nothing for it
        kwargs["wrap"] = wrap_triton
    return getattr(backend, launcher)(*args, **kwargs)
