"""Without CUDA the Triton kernels run on CPU tensors through the interpreter. TRITON_INTERPRET is read when
@triton.jit decorates a kernel, so it must be set before lowp_ops (and its kernels) is first imported."""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import lowp_ops  # noqa: E402,F401  (registers torch.ops.lowp.*)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
