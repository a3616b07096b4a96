"""Without CUDA the Triton kernels run on CPU tensors through the interpreter. TRITON_INTERPRET is read when
@triton.jit decorates a kernel, so it must be set before lowp_ops (and its kernels) is first imported."""

import os
import sys
from pathlib import Path

import pytest
import torch

# `python -m pytest` puts the repository root on sys.path, where kernels/ (shipped as lowp_ops.kernels) would shadow
# PyPI's `kernels`, which transformers imports: take the root off before any test imports transformers.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _fix_interpreter_dot():
    """Two operand types triton 3.9's interpreter multiplies wrongly in tl.dot, widened to float32 first — exactly,
    as the GPU's MMA takes them — so those GEMMs can be tested on CPU. Test-only: the kernels stay as they run on the
    GPU.
    bfloat16: the interpreter keeps bfloat16 data as uint16 and multiplies the raw bit patterns.
    float8_e4m3fn: its decoder has no NaN, so the NaN codes 0x7F / 0xFF read as ±480 (sm_90 and torch: NaN)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    create_dot = interpreter.InterpreterBuilder.create_dot

    def widen(h):
        if h.dtype.scalar == tl.bfloat16:
            return interpreter.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        if h.dtype.scalar == tl.float8e4nv:
            codes = h.data.view(np.uint8)
            values = interpreter._convert_float(h.data, tl.float8e4nv, tl.float16, None).view(np.float16)
            return interpreter.TensorHandle(np.where((codes & 0x7F) == 0x7F, np.float32(np.nan),
                                                     values.astype(np.float32)), tl.float32)
        return h

    def fixed(self, a, b, d, *args, **kwargs):
        return create_dot(self, widen(a), widen(b), d, *args, **kwargs)

    interpreter.InterpreterBuilder.create_dot = fixed


if os.environ.get("TRITON_INTERPRET") == "1":
    _fix_interpreter_dot()

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


@pytest.fixture(params=["reference", "native", "triton"])
def device(request):
    """Where a test's tensors go, with the backend selected: CPU tensors through the reference or the native CPU
    backend; "triton": the kernels (kernels_on_cpu: interpreted on CPU tensors, or CUDA tensors on a GPU)."""
    if request.param == "triton":
        request.getfixturevalue("kernels_on_cpu")
        yield "cuda" if HAS_CUDA else "cpu"
        return
    with lowp_ops.use_cpu_backend(request.param):
        yield "cpu"
