"""Without CUDA the Triton kernels run on CPU tensors through the interpreter. TRITON_INTERPRET is read when
@triton.jit decorates a kernel, so it must be set before lowp_ops (and its kernels) is first imported."""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _fix_interpreter_bf16_dot():
    """triton 3.9's interpreter multiplies bfloat16 tl.dot operands as their raw uint16 bit patterns (it keeps
    bfloat16 data as uint16). Widen them to float32 first — exact, as the GPU's bf16 MMA is — so bfloat16 GEMMs can
    be tested on CPU. Test-only: the kernels themselves stay as they run on the GPU."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    create_dot = interpreter.InterpreterBuilder.create_dot

    def widen(h):
        if h.dtype.scalar != tl.bfloat16:
            return h
        return interpreter.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def fixed(self, a, b, d, *args, **kwargs):
        return create_dot(self, widen(a), widen(b), d, *args, **kwargs)

    interpreter.InterpreterBuilder.create_dot = fixed


if os.environ.get("TRITON_INTERPRET") == "1":
    _fix_interpreter_bf16_dot()

import lowp_ops  # noqa: E402,F401  (registers torch.ops.lowp.*)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def kernels_on_cpu():
    """Route CPU tensors through the interpreted Triton kernels instead of the reference (no-op on GPU runs,
    where tests use CUDA tensors)."""
    if HAS_CUDA:
        yield
        return
    with lowp_ops.use_cpu_backend("triton"):
        yield
