"""INT8 conv2d as an implicit GEMM (no im2col buffer), with the GEMM's fused epilogue (kernels/epilogue.py).

Names follow the conv convention throughout (G groups):
    x:   (N, C, H, W) int8, channels_last (NHWC in memory)
    w:   (K, C/G, R, S) int8, channels_last (KRSC in memory: each output channel's taps are C-contiguous)
    out: (N, K, OH, OW) channels_last — int32, float16 / bfloat16 / float32 (dequantized) or int8 (requantized)

GEMM view, per group g (program_id(1)), in the kernel's argument names:
    rows       M = N·OH·OW output pixels
    columns    COLS = K_G = K/G output channels of the group (depthwise: all K, as one group)
    reduction  over (r, s, c): R·S taps x C_G = C/G input channels; BLOCK_K tiles C_G, and EVEN_K says it divides it
One pipelined loop runs over every (tap, channel block), so a 3x3 layer with 64 channels still streams 9 reduction
steps. Both operand tiles are channel-contiguous: contiguous along the reduction, the layout int8 wgmma wants.
Padding with an activation zero point za: a tap outside the image must add (za − za)·w = 0 once the epilogue has
subtracted za·Σ w. The tiles read 0 there, not za: a masked load with a zero fill stays an asynchronous copy into
shared memory, where a non-zero fill sends every A tile through registers and selects and back (sm_90, triton 3.9:
295 instead of 161 SASS instructions per reduction step of a 128x128x64 tile). One correction, the accumulator's
start value, adds za · Σ_{taps outside} Σ_c w back: a GEMM of (pixels x taps, 0/1) by (taps x channels, per-tap
weight sums) on the tensor cores (_outside_sums). Depthwise layers (one input channel per group) take a constexpr
variant: channels across all groups on the column axis and an elementwise multiply-accumulate, since a dot product
over one channel would leave the tensor cores 16-32x idle; their taps load straight into registers, so they read za
directly.
"""

import torch
import triton
import triton.language as tl
from torch.utils.weak import WeakIdKeyDictionary

from .epilogue import gemm_epilogue, grouped_tile
from .launch import TiledKernel, direct, fake, output_kind
from .tuning import gemm_configs, m_bucket, make_gemm_pruner

# (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps). Not yet tuned on a GPU: ResNet-50 layers have 64-512
# output channels and 64-512 input channels per tap. Depthwise rows (BLOCK_K unused) close the table: with
# C_G = 1 the pruner keeps only tiles with BLOCK_K <= 32.
_CONV_TABLE = [
    (128, 128, 64, 4, 8),
    (128, 64, 64, 4, 4),
    (256, 128, 64, 3, 8),
    (128, 128, 128, 3, 8),
    (64, 128, 128, 4, 4),
    (64, 64, 64, 4, 4),
    (128, 64, 32, 2, 4),
    (64, 128, 32, 2, 4),
]


@triton.jit
def _inside(ih, iw, H, W):
    """Whether input coordinates fall inside the H x W image: one unsigned compare a side (a negative coordinate
    wraps past H, W)."""
    return (ih.to(tl.uint32, bitcast=True) < H) & (iw.to(tl.uint32, bitcast=True) < W)


@triton.jit
def _outside_sums(ih0, iw0, H, W, R, S, dil_h, dil_w, tap_sum_ptr, cols,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUM_PARTS: tl.constexpr):
    """For each output pixel (row) and output channel (column): Σ over the taps (r, s) that fall outside the image of
    tap_sum[col, r, s] = Σ_c w[col, c, r, s]; (BLOCK_M, BLOCK_N) int32, exact modulo 2^32.

    ih0 / iw0 (BLOCK_M,): the input coordinates of tap (0, 0); tap_sum: int32 (K, R, S), contiguous; cols: the
    tile's output channels (clamped in range). A GEMM on the tensor cores, 16 taps at a time: the 0/1 outside
    matrix times the tap sums, float16 operands and float32 accumulation, with each sum split into 11-bit parts
    (float16 holds every integer up to 2^11 exactly; the parts' sums stay below 2^24, exact in float32). Two parts
    cover |sum| <= 2^22 (C/groups <= 32768), three the rest."""
    TAPS: tl.constexpr = 16  # the K depth of a float16 wgmma
    taps_all = R * S
    out = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for p in tl.static_range(SUM_PARTS):  # one part at a time: a single float32 tile live beside the accumulator
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for t0 in tl.range(0, taps_all, TAPS, num_stages=1):  # mostly one block: nothing to pipeline
            taps = t0 + tl.arange(0, TAPS)
            ih = ih0[:, None] + ((taps // S) * dil_h)[None, :]
            iw = iw0[:, None] + ((taps % S) * dil_w)[None, :]
            outside = ~_inside(ih, iw, H, W) & (taps < taps_all)[None, :]
            sums = tl.load(tap_sum_ptr + cols[None, :] * taps_all + taps[:, None], mask=(taps < taps_all)[:, None],
                           other=0)
            digits = sums >> (11 * p)  # arithmetic shift: the top part keeps the sign
            if p < SUM_PARTS - 1:
                digits = digits & 2047
            part = tl.dot(outside.to(tl.float16), digits.to(tl.float16), part)
        out += part.to(tl.int32) << (11 * p)
    return out


@triton.jit(do_not_specialize=["m_bucket"])  # m_bucket keys the autotuner only (gemm.py)
def _conv2d_kernel(
    a_ptr, w_ptr, c_ptr,
    a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, out_scale_ptr, out_zp_ptr, tap_sum_ptr,
    M, COLS, C_G, m_bucket,  # the GEMM view (module docstring); m_bucket only keys the autotuner
    H, W, OH, OW, R, S, K_G,  # K_G = K/G: output channels per group (depthwise: the channel multiplier)
    stride_an, stride_ah, stride_aw, stride_wk, stride_wr, stride_ws, stride_cm,
    conv_sh, conv_sw, pad_h, pad_w, dil_h, dil_w,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, DEPTHWISE: tl.constexpr, SUM_PARTS: tl.constexpr,
    OUTPUT: tl.constexpr, A_SCALE_PER_ROW: tl.constexpr, B_SCALE_PER_COL: tl.constexpr, ACTIVATION: tl.constexpr,
):
    g = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, COLS, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_K)  # input channels within a block
    pix = offs_m % M  # tail rows re-read the last pixel; the store is masked
    img = pix // (OH * OW)
    ih0 = ((pix % (OH * OW)) // OW) * conv_sh - pad_h  # input coordinates of tap (0, 0)
    iw0 = (pix % OW) * conv_sw - pad_w
    cols = g * COLS + offs_n % COLS  # global output channel (clamped for loads)
    a_img = a_ptr + img.to(tl.int64) * stride_an + g * C_G  # the group's first input channel
    w_cols = w_ptr + cols.to(tl.int64) * stride_wk  # a step adds the tap's offset, the same for every column
    pad = 0
    if DEPTHWISE and a_zp_ptr is not None:
        pad = tl.load(a_zp_ptr).to(tl.int8)

    if SUM_PARTS > 0:  # zero-point padding reads 0 (module docstring): start from za · Σ_{taps outside} Σ_c w, made
        # before the loop so that its float32 tiles are dead by then (after it, they spilled 4-warp tiles)
        za = tl.load(a_zp_ptr)
        acc = za * _outside_sums(ih0, iw0, H, W, R, S, dil_h, dil_w, tap_sum_ptr, cols, BLOCK_M, BLOCK_N, SUM_PARTS)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    # the walk over (tap r, s; channel block c0) advances by carries, not by dividing the step index: two runtime
    # divisions per step were a quarter of the loop's instructions
    r = 0
    s = 0
    c0 = 0
    for _ in range(0, R * S * tl.cdiv(C_G, BLOCK_K)):
        ih = ih0 + r * dil_h
        iw = iw0 + s * dil_w
        inside = _inside(ih, iw, H, W)
        a_pix = a_img + ih.to(tl.int64) * stride_ah + iw.to(tl.int64) * stride_aw
        w_tap = w_cols + (r.to(tl.int64) * stride_wr + s.to(tl.int64) * stride_ws)
        if DEPTHWISE:  # input channel of output channel k is k // K_G; one tap, no channel reduction
            a = tl.load(a_pix[:, None] + (cols // K_G)[None, :], mask=inside[:, None], other=pad)
            b = tl.load(w_tap)
            acc += a.to(tl.int32) * b.to(tl.int32)[None, :]
        else:
            a_ptrs = a_pix[:, None] + (c0 + offs_c)[None, :]
            b_ptrs = w_tap[None, :] + (c0 + offs_c)[:, None]
            if EVEN_K:
                a = tl.load(a_ptrs, mask=inside[:, None], other=0)
                b = tl.load(b_ptrs)
            else:
                c_ok = c0 + offs_c < C_G
                a = tl.load(a_ptrs, mask=inside[:, None] & c_ok[None, :], other=0)
                b = tl.load(b_ptrs, mask=c_ok[:, None], other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        c0 += BLOCK_K
        next_tap = c0 >= C_G
        c0 = tl.where(next_tap, 0, c0)
        s += next_tap.to(tl.int32)
        next_row = s == S
        s = tl.where(next_row, 0, s)
        r += next_row.to(tl.int32)

    # columns are global output channels; the bound (g + 1)·COLS keeps the epilogue's masks inside this group
    cols_out = g * COLS + offs_n
    y = gemm_epilogue(acc, offs_m, cols_out, M, g * COLS + COLS, img,
                      a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, out_scale_ptr, out_zp_ptr,
                      OUTPUT, A_SCALE_PER_ROW, B_SCALE_PER_COL, False, ACTIVATION)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + cols_out[None, :]
    tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < COLS))


_CONV = TiledKernel(_conv2d_kernel, reduction="C_G")
_conv2d_tuned = _CONV.autotuned(
    gemm_configs(_CONV_TABLE),
    # + every tensor's dtype; OUTPUT: the pruner
    key=["m_bucket", "COLS", "C_G", "R", "S", "DEPTHWISE", "SUM_PARTS", "OUTPUT"],
    prune=make_gemm_pruner(m_bucket_arg="m_bucket", n_arg="COLS", k_arg="C_G", operand_arg="a_ptr",
                           register_heavy=lambda args: args["OUTPUT"] == "int8"),  # the requant epilogue
)


_TAP_SUMS = WeakIdKeyDictionary()  # weight -> (its version, its per-tap sums)


def _tap_sums(w: torch.Tensor) -> torch.Tensor:
    """int32 (K, R, S) = Σ_c w[k, c, r, s], what the padding correction reads; kept per weight tensor until it is
    written in place, so that a layer's call does not launch the reduction again (traced calls always do)."""
    if fake(w):
        return w.sum(dim=1, dtype=torch.int32)
    version, sums = _TAP_SUMS.get(w, (None, None))
    if version != w._version:
        sums = w.sum(dim=1, dtype=torch.int32)
        _TAP_SUMS[w] = (w._version, sums)
    return sums


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output height (or width) of a convolution along one side: torch.nn.Conv2d's formula."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def int8_conv2d(x, w, *, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, a_scale=None, b_scale=None,
                bias=None, a_zero_point=None, b_sum=None, activation="none", out_dtype=torch.int32,
                out_scale=None, out_zero_point=None, config=None, wrap=direct):
    """Launch the INT8 conv; arguments are assumed validated (lowp_ops.ops does that). Returns out.

    x: (N, C, H, W) int8 channels_last; w: (K, C/groups, R, S) int8 channels_last.
    a_scale: float32 (1,) or (N,) (one per image); b_scale: float32 (K,) or (1,); bias (K,) float;
    a_zero_point: int32 (1,) with b_sum int32 (K,) = Σ_{c,r,s} w[k]; out_scale / out_zero_point (1,) for int8
    output; activation "none" | "relu" | "relu6" | "gelu". out: (N, K, OH, OW) out_dtype, channels_last.
    config and wrap as for kernels.gemm. With a zero point and padding, the per-tap weight sums the padding
    correction reads are computed here, once per weight tensor (and again after an in-place write).
    """
    N, C, H, W = x.shape
    K, C_G, R, S = w.shape
    OH = conv_output_size(H, R, stride[0], padding[0], dilation[0])
    OW = conv_output_size(W, S, stride[1], padding[1], dilation[1])
    out = torch.empty((N, K, OH, OW), dtype=out_dtype, device=x.device, memory_format=torch.channels_last)
    M = N * OH * OW
    if out.numel() == 0:
        return out
    depthwise = C_G == 1 and groups > 1
    K_G = K // groups
    cols, n_groups = (K, 1) if depthwise else (K_G, groups)
    tap_sum, sum_parts = None, 0
    if a_zero_point is not None and not depthwise and max(padding) > 0:  # _outside_sums: 11-bit parts of sums
        tap_sum, sum_parts = _tap_sums(w), 2 if 128 * C_G <= 2**22 else 3  # within ±128·C/G
    args = dict(
        a_ptr=x, w_ptr=w, c_ptr=out, a_scale_ptr=a_scale, b_scale_ptr=b_scale, bias_ptr=bias,
        a_zp_ptr=a_zero_point, b_sum_ptr=b_sum, out_scale_ptr=out_scale, out_zp_ptr=out_zero_point,
        tap_sum_ptr=tap_sum, M=M, COLS=cols, C_G=C_G, m_bucket=m_bucket(M), H=H, W=W, OH=OH, OW=OW, R=R, S=S, K_G=K_G,
        stride_an=x.stride(0), stride_ah=x.stride(2), stride_aw=x.stride(3),
        stride_wk=w.stride(0), stride_wr=w.stride(2), stride_ws=w.stride(3), stride_cm=K,
        conv_sh=stride[0], conv_sw=stride[1], pad_h=padding[0], pad_w=padding[1], dil_h=dilation[0],
        dil_w=dilation[1], DEPTHWISE=depthwise, SUM_PARTS=sum_parts, OUTPUT=output_kind(out_dtype),
        A_SCALE_PER_ROW=a_scale is not None and a_scale.numel() != 1,
        B_SCALE_PER_COL=b_scale is not None and b_scale.numel() != 1, ACTIVATION=activation,
    )

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(cols, meta["BLOCK_N"]), n_groups)

    _CONV.launch(_conv2d_tuned, grid, args, device=x.device, config=config, wrap=wrap)
    return out
