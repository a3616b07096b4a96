"""INT8 max-pooling: int8 codes in, int8 codes out, so an int8 hand-off between two layers runs through a max-pool.

Max commutes with any non-decreasing map, so pooling the codes of a per-tensor affine quantization (scale > 0) gives
the codes of the pooled values: no scale or zero point is needed. One program takes BLOCK_P output pixels of one
image and BLOCK_C channels, and for each of the KH·KW taps (unrolled: the window is a constexpr) loads the
channels_last run of every pixel's input, padding (and the tails) read as -128, the smallest code, which never wins
over the window's one in-bounds tap (PyTorch's rule: padding at most half the dilated window, and with ceil_mode no
window starting past the padded input).
"""

import torch
import triton
import triton.language as tl

from .launch import direct


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of a max-pool along one dim, as torch.nn.functional.max_pool2d computes it (its
    pooling_output_shape): floor or ceil of the window count, a ceil window that would start in the right padding
    dropped."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


@triton.jit
def _max_pool_kernel(
    x_ptr, y_ptr, C, H, W, OW, P,
    stride_xn, stride_xc, stride_xh, stride_xw, stride_yp, stride_yc,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n = tl.program_id(2).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # output pixels of image n, row-major over (OH, OW)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok, c_ok = p < P, c < C
    h0, w0 = (p // OW) * SH - PH, (p % OW) * SW - PW
    x_img = x_ptr + n * stride_xn + c.to(tl.int64)[None, :] * stride_xc
    best = tl.full((BLOCK_P, BLOCK_C), -128, tl.int32)
    for i in tl.static_range(KH):
        for j in tl.static_range(KW):
            h, w = h0 + i * DH, w0 + j * DW
            inside = p_ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            offs = h.to(tl.int64) * stride_xh + w.to(tl.int64) * stride_xw
            v = tl.load(x_img + offs[:, None], mask=inside[:, None] & c_ok[None, :], other=-128)
            best = tl.maximum(best, v.to(tl.int32))
    # y: (N, C, OH, OW), channels_last (pixel stride C, channel stride 1) or contiguous (1 and P)
    y = y_ptr + n * P * C + p.to(tl.int64)[:, None] * stride_yp + c.to(tl.int64)[None, :] * stride_yc
    tl.store(y, best.to(tl.int8), mask=p_ok[:, None] & c_ok[None, :])


def int8_max_pool2d(x, *, kernel_size, stride, padding, dilation, ceil_mode=False, channels_last=True, wrap=direct):
    """Max-pool int8 codes; arguments assumed validated (lowp_ops.ops does that).

    x: (N, C, H, W) int8, any strides (channels_last reads each tap's channels contiguously). kernel_size, stride,
    padding, dilation: 2 ints each, as torch.nn.functional.max_pool2d takes them (padding at most half the dilated
    window). Returns (N, C, OH, OW) int8, channels_last (or contiguous: channels_last=False, the order a flatten
    reads), equal to max_pool2d of x's values.
    """
    N, C, H, W = x.shape
    OH, OW = (pool_output_size(s, k, st, p, d, ceil_mode)
              for s, k, st, p, d in zip((H, W), kernel_size, stride, padding, dilation, strict=True))
    y = torch.empty((N, C, OH, OW), dtype=torch.int8, device=x.device,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if y.numel() == 0:
        return y
    block_c = min(triton.next_power_of_2(C), 64)
    block_p = max(1, min(128, 4096 // block_c))
    grid = (triton.cdiv(OH * OW, block_p), triton.cdiv(C, block_c), N)
    wrap(_max_pool_kernel)[grid](
        x_ptr=x, y_ptr=y, C=C, H=H, W=W, OW=OW, P=OH * OW,
        stride_xn=x.stride(0), stride_xc=x.stride(1), stride_xh=x.stride(2), stride_xw=x.stride(3),
        stride_yp=y.stride(3), stride_yc=y.stride(1),
        SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1],
        KH=kernel_size[0], KW=kernel_size[1], BLOCK_P=block_p, BLOCK_C=block_c,
    )
    return y
