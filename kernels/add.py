"""INT8 residual add: two int8 tensors, each with its own per-tensor scale and zero point, added as the real values
they stand for and requantized with the output's, so an int8 hand-off runs through a ResNet-style skip connection.

    y = activation((a − za)·sa + (b − zb)·sb),  q = clamp(round_half_even(y · (1/so)) + zo, −128, 127)

in float32, in that order (the reference, lowp_ops/reference.py's int8_add, computes the same operations: codes out
match bit for bit where the compiler does not contract the multiply and add into an FMA, as the interpreter never
does; on a GPU a code at a rounding tie may differ by one). a and b are read as one flat run of codes in the same
dense layout (the launcher copies b to a's layout where they differ), so one program handles BLOCK codes whatever
the tensors' shape.
"""

import torch
import triton
import triton.language as tl

from .epilogue import apply_activation, quantize_values
from .launch import direct


def add_layout(a: torch.Tensor) -> torch.memory_format:
    """The output layout of int8_add: channels_last where a is a channels_last 4-D tensor (a conv's output), else
    contiguous."""
    if a.ndim == 4 and a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def in_one_layout(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a and b dense in add_layout(a), so that their codes line up as one flat run (b copied where it is not)."""
    layout = add_layout(a)
    return a.contiguous(memory_format=layout), b.contiguous(memory_format=layout)


@triton.jit
def _add_kernel(a_ptr, b_ptr, y_ptr, n, a_scale_ptr, b_scale_ptr, out_scale_ptr, a_zp_ptr, b_zp_ptr, out_zp_ptr,
                ACTIVATION: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0).to(tl.int32)
    b = tl.load(b_ptr + offs, mask=mask, other=0).to(tl.int32)
    if a_zp_ptr is not None:
        a = a - tl.load(a_zp_ptr)
    if b_zp_ptr is not None:
        b = b - tl.load(b_zp_ptr)
    y = a.to(tl.float32) * tl.load(a_scale_ptr) + b.to(tl.float32) * tl.load(b_scale_ptr)
    y = apply_activation(y, ACTIVATION)
    out_zp = 0.0
    if out_zp_ptr is not None:
        out_zp = tl.load(out_zp_ptr).to(tl.float32)
    q = quantize_values(y * tl.math.div_rn(1.0, tl.load(out_scale_ptr)), out_zp, -128, 127)
    tl.store(y_ptr + offs, q.to(tl.int8), mask=mask)


def int8_add(a, b, *, a_scale, b_scale, out_scale, a_zero_point=None, b_zero_point=None, out_zero_point=None,
             activation="none", wrap=direct):
    """Add two int8 tensors as the values they stand for and requantize; arguments assumed validated (lowp_ops.ops
    does that).

    a, b: int8, the same shape, any strides. a_scale, b_scale, out_scale: float32, one element each; the zero
    points int32, one element each, or None (0). activation: "none", "relu" or "relu6", on the sum before it is
    requantized. Returns int8 of a's shape, channels_last where a is (add_layout), else contiguous.
    """
    a, b = in_one_layout(a, b)
    y = torch.empty_like(a, memory_format=add_layout(a))
    n = a.numel()
    if n == 0:
        return y
    block = 1024
    wrap(_add_kernel)[(triton.cdiv(n, block),)](
        a_ptr=a, b_ptr=b, y_ptr=y, n=n, a_scale_ptr=a_scale, b_scale_ptr=b_scale, out_scale_ptr=out_scale,
        a_zp_ptr=a_zero_point, b_zp_ptr=b_zero_point, out_zp_ptr=out_zero_point, ACTIVATION=activation, BLOCK=block,
    )
    return y
