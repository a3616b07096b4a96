"""What every torch.ops.lowp registration shares: device dispatch and argument reshaping."""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor
from torch.library import wrap_triton

from .._validate import check_k_contiguous, check_tensor, fail


# Tests flip this under TRITON_INTERPRET=1 so that CPU tensors go through the (interpreted) Triton kernels instead
# of the reference: the ops' whole path (reshapes, epilogue flags, autograd) is then checked against the reference
# on a machine without a GPU. It must stay False for fake tensors (opcheck, torch.compile): kernels need data.
interpret_kernels_on_cpu = False


def dispatch(op: str, launcher, ref, *args, **kwargs):
    """CUDA -> the Triton launcher (through wrap_triton), CPU -> the reference (see interpret_kernels_on_cpu)."""
    device = args[0].device
    if device.type == "cuda":
        return launcher(*args, wrap=wrap_triton, **kwargs)
    if device.type == "cpu":
        return (launcher if interpret_kernels_on_cpu else ref)(*args, **kwargs)
    fail(op, f"tensors on {device} are not supported: use cuda (Triton kernels) or cpu (reference)")


def flat(t: Optional[Tensor]) -> Optional[Tensor]:
    """Per-row / per-column / per-tensor parameters as the contiguous 1-D vectors the kernels index."""
    return None if t is None else t.reshape(-1).contiguous()


def rows(x: Tensor) -> tuple[int, int]:
    """x (..., K) viewed as a matrix: (M, K) with M the product of the leading dims."""
    return math.prod(x.shape[:-1]), x.shape[-1]


def check_matrix_input(op: str, name: str, x: Tensor, dtypes) -> None:
    check_tensor(op, name, x, dtypes=dtypes)
    if x.ndim < 1:
        fail(op, f"argument '{name}' must have at least 1 dim (..., K), got a 0-d tensor")
    check_k_contiguous(op, name, x)
