"""Activation quantization: float -> int8 or float8_e4m3fn in one launch, row-wise or with a layout change.

The kernel quantizes a batch of (M, K) tiles with any strides, so one kernel serves both launchers:
    quantize_rows(x)            x (M, K) float, K-contiguous -> int8 / e4m3 (M, K)          (linear layers)
    quantize_channels_last(x)   x (N, C, H, W) float, NCHW   -> int8 (N, C, H, W) channels_last (conv layers:
                                the NCHW -> NHWC transpose happens in the same pass, viewed as (N, H·W, C))
Dynamic (symmetric absmax, one scale per row — "per token"; rows only), QMAX 127 (int8) or 448 (e4m3):
    scale[m] = max(max_k |x[m, k]| / QMAX, min_scale),  q = encode(x · (1/scale))
Static (given per-tensor scale; int8 also a zero point):  q = encode(x · (1/scale))
encode (kernels/epilogue.py): int8 q = clamp(round_half_even(v) + zero_point, QMIN, QMAX); e4m3 q = v rounded to
the nearest e4m3 value, ties to even, saturated at ±448. Both match lowp_ops.quant bit for bit (same divisions,
IEEE-rounded through div_rn). Non-finite input (lowp's rule): a dynamic row holding NaN or ±inf gets scale NaN and
all-zero int8 codes (all-NaN e4m3 codes); static int8 encodes NaN as the zero point, +inf as QMAX, -inf as QMIN,
static e4m3 keeps NaN and saturates ±inf to ±448. An empty row (K = 0) gets scale min_scale.

Memory-bound: each program owns BLOCK_M rows; when a row fits one block (K ≤ BLOCK_K) it is read once and
kept in registers, otherwise the absmax pass and the quantize pass each stream it (the second read mostly hits L2).
"""

import torch
import triton
import triton.language as tl

from .epilogue import encode
from .launch import direct

# The most elements one program holds per block. _launch gives blocks over 2048 elements 8 warps and the rest 4, so a
# thread holds at most 16 values (16 float32 registers). Not yet tuned on a GPU.
_BLOCK_ELEMS = 4096


@triton.jit
def _quantize_kernel(
    x_ptr, q_ptr, scale_ptr, zp_ptr,
    M, K, stride_xb, stride_xm, stride_xk, stride_qb, stride_qm, stride_qk, min_scale,
    QMIN: tl.constexpr, QMAX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, DYNAMIC: tl.constexpr, SINGLE_PASS: tl.constexpr,
):
    batch = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows[:, None] < M
    cols = tl.arange(0, BLOCK_K)[None, :]
    x_rows = x_ptr + batch * stride_xb + rows.to(tl.int64)[:, None] * stride_xm
    q_rows = q_ptr + batch * stride_qb + rows.to(tl.int64)[:, None] * stride_qm

    if SINGLE_PASS:
        x = tl.load(x_rows + cols * stride_xk, mask=row_mask & (cols < K), other=0.0).to(tl.float32)
    if DYNAMIC:
        # poison: Σ_k x·0 is 0 for a finite row and NaN for a row holding NaN or ±inf (0·inf = NaN); added to the
        # scale it makes that NaN. tl.max cannot tell: it drops NaN operands (max.f32 on the GPU, the interpreter
        # too), and its NaN behaviour is not something to build on.
        if SINGLE_PASS:
            amax = tl.max(tl.abs(x), axis=1)
            poison = tl.sum(x * 0.0, axis=1)
        else:
            amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
            poison = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                xk = tl.load(x_rows + (k0 + cols) * stride_xk, mask=row_mask & (k0 + cols < K), other=0.0)
                xk = xk.to(tl.float32)
                block_amax = tl.max(tl.abs(xk), axis=1)
                amax = tl.where(block_amax > amax, block_amax, amax)
                poison += tl.sum(xk * 0.0, axis=1)
        scale = tl.math.div_rn(amax, QMAX * 1.0)
        scale = tl.where(scale < min_scale, min_scale, scale) + poison  # + 0 is exact: finite rows keep their scale
        tl.store(scale_ptr + batch * M + rows, scale, mask=rows < M)
        inv_scale = tl.math.div_rn(1.0, scale)[:, None]
        zero_point = 0.0
    else:
        inv_scale = tl.math.div_rn(1.0, tl.load(scale_ptr))
        zero_point = 0.0
        if zp_ptr is not None:
            zero_point = tl.load(zp_ptr).to(tl.float32)

    FP8: tl.constexpr = q_ptr.dtype.element_ty == tl.float8e4nv
    if SINGLE_PASS:
        q = encode(x * inv_scale, zero_point, QMIN, QMAX, FP8)
        tl.store(q_rows + cols * stride_qk, q, mask=row_mask & (cols < K))
    else:
        for k0 in range(0, K, BLOCK_K):
            mask = row_mask & (k0 + cols < K)
            xk = tl.load(x_rows + (k0 + cols) * stride_xk, mask=mask, other=0.0).to(tl.float32)
            q = encode(xk * inv_scale, zero_point, QMIN, QMAX, FP8)
            tl.store(q_rows + (k0 + cols) * stride_qk, q, mask=mask)


# (QMIN, QMAX) of each code dtype, dynamic and static. Symmetric int8 is narrow-range (quant/spec.py); e4m3's
# largest finite value is 448 and its QMIN is unused (encode saturates at ±448).
_RANGES = {torch.int8: ((-127, 127), (-128, 127)), torch.float8_e4m3fn: ((-448, 448), (-448, 448))}


def quantize_rows(x, *, scale=None, zero_point=None, min_scale=None, dtype=torch.int8, block_k=None, wrap=direct):
    """Quantize a float matrix to int8 or float8_e4m3fn; arguments are assumed validated (lowp_ops.ops does that).

    x: (M, K) float16 / bfloat16 / float32 with x.stride(1) == 1. dtype: torch.int8 or torch.float8_e4m3fn.
    scale None (dynamic): returns (q (M, K), scale float32 (M,)), symmetric: int8 in [-127, 127], e4m3 with
    scale = amax / 448; scales never go below min_scale (required: lowp_ops.quant.MIN_SCALE).
    scale float32 (1,) (static), zero_point int32 (1,) or None (int8 only): returns (q, scale), int8 in
    [-128, 127] or e4m3 saturated at ±448.
    block_k: override the K block (tests use it to force the two-pass path).
    """
    M, K = x.shape
    q = torch.empty((M, K), dtype=dtype, device=x.device)
    dynamic = scale is None
    qmin, qmax = _RANGES[dtype][0 if dynamic else 1]
    if dynamic:
        scale = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0:
        return q, scale
    block_k = block_k or min(triton.next_power_of_2(max(K, 1)), _BLOCK_ELEMS)
    block_m = max(1, min(triton.next_power_of_2(M), _BLOCK_ELEMS // block_k))
    _launch(x.unsqueeze(0), q.unsqueeze(0), scale, zero_point, min_scale, qmin, qmax, block_m, block_k, dynamic, wrap)
    return q, scale


def _launch(x, q, scale, zero_point, min_scale, qmin, qmax, block_m, block_k, dynamic, wrap):
    """x, q: (B, M, K) views of the input and output (any strides)."""
    B, M, K = x.shape
    grid = (triton.cdiv(M, block_m), B)
    wrap(_quantize_kernel)[grid](
        x_ptr=x, q_ptr=q, scale_ptr=scale, zp_ptr=zero_point, M=M, K=K,
        stride_xb=x.stride(0), stride_xm=x.stride(1), stride_xk=x.stride(2),
        stride_qb=q.stride(0), stride_qm=q.stride(1), stride_qk=q.stride(2), min_scale=min_scale,
        QMIN=qmin, QMAX=qmax, BLOCK_M=block_m, BLOCK_K=block_k, DYNAMIC=dynamic, SINGLE_PASS=K <= block_k,
        num_warps=4 if block_m * block_k <= 2048 else 8,
    )


def quantize_channels_last(x, *, scale, zero_point=None, wrap=direct):
    """Static per-tensor quantization fused with the NCHW -> NHWC layout change; assumed validated.

    x: (N, C, H, W) float16 / bfloat16 / float32, any strides (NCHW-contiguous is the case this is for);
    scale float32 (1,), zero_point int32 (1,) or None. Returns q: (N, C, H, W) int8 in channels_last memory
    format, q = clamp(round_half_even(x · (1/scale)) + zero_point, -128, 127).
    """
    N, C, H, W = x.shape
    q = torch.empty((N, C, H, W), dtype=torch.int8, device=x.device, memory_format=torch.channels_last)
    if q.numel() == 0:
        return q
    # (N, H·W, C) views: rows are pixels, columns channels; a 64 x 64 tile reads runs of 64 pixels (NCHW) and
    # writes runs of 64 channels (NHWC), the transpose going through shared memory in between.
    xv = x.permute(0, 2, 3, 1).reshape(N, H * W, C)  # a view for NCHW and NHWC inputs alike
    qv = q.permute(0, 2, 3, 1).view(N, H * W, C)
    block_k = min(triton.next_power_of_2(C), 64)
    _launch(xv, qv, scale, zero_point, None, -128, 127, 64, block_k, False, wrap)
    return q
