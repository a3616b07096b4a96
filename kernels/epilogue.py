"""Pieces shared by every lowp kernel family: rounding, quantization of float values, activations, the grouped
tile order, and the fused GEMM epilogue (accumulator -> dequantize, zero-point correction, bias, activation, output or
requantize). Both tiled kernels call gemm_epilogue: the GEMM (int8, fp8 and fp16/bf16 operands) and the INT8 conv
(implicit GEMM: rows = output pixels, columns = output channels, per-image scales indexed by a_rows). The quantize
kernel uses encode (quantize_values for int8, round_to_e4m3 for FP8).

Arithmetic follows lowp_ops/quant/qparams.py exactly (q = clamp(round_half_even(x * (1/scale)) + zp)), so the
pure-torch references reproduce the kernels bit for bit wherever the compiler does not contract a multiply and an
add into an FMA (the interpreter never does).
"""

import triton
import triton.language as tl

# 1.5 * 2^23: adding then subtracting it rounds a float32 of magnitude < 2^22 to the nearest integer, ties to
# even (IEEE round-to-nearest-even does the work). Used instead of libdevice.rint, which the interpreter lacks;
# callers clamp to the int8 range first, far inside 2^22.
_RNE_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def round_half_even(x):
    """x float32 with |x| < 2^22 -> nearest integer (ties to even), float32."""
    return (x + _RNE_MAGIC) - _RNE_MAGIC


@triton.jit
def quantize_values(v, zero_point, QMIN: tl.constexpr, QMAX: tl.constexpr):
    """v = x * (1/scale), float32 -> clamp(round(v) + zero_point, QMIN, QMAX) as float32 (exact integers).

    Non-finite v (lowp's non-finite rule): NaN encodes as the zero point (the code of 0.0: int8 has no NaN code),
    +inf as QMAX and -inf as QMIN. Clamping v to [QMIN - zp, QMAX - zp] before rounding is the same as clamping
    after (integer bounds, monotone rounding) and keeps |v| in the range where round_half_even is exact. Selects,
    not tl.minimum / tl.maximum: those drop a NaN operand (propagate_nan defaults to NONE), and which one they
    return is a lowering detail, not something to build the semantics on.
    """
    v = tl.where(v == v, v, 0.0)  # noqa: PLR0124 (NaN, the only value unequal to itself, -> 0)
    lo = QMIN - zero_point
    hi = QMAX - zero_point
    v = tl.where(v < lo, lo, v)
    v = tl.where(v > hi, hi, v)
    return round_half_even(v) + zero_point


@triton.jit
def round_to_e4m3(v):
    """v float32 -> the nearest e4m3 value (ties to even), saturated at ±448, as float32; NaN stays NaN, -0 stays -0.

    Rounded here in float32 arithmetic rather than left to the float32 -> float8 cast, because the interpreter's
    cast is wrong off the grid (triton 3.9: 1.0625 -> 1.125 where ties go to even 1.0, 1000 -> 256, a NaN -> 384)
    while sm_90's cvt.rn.satfinite is right: an exact e4m3 value converts exactly on both, so the kernels match
    lowp_ops.quant (torch's casts) bit for bit everywhere. The grid step around |v| in [2^e, 2^(e+1)) is 2^(e-3)
    (3 mantissa bits), and 2^-9 for every |v| below 2^-6 (the subnormals); |v| / step < 16 rounds exactly.
    """
    v = tl.where(v > 448.0, 448.0, v)  # selects, so NaN passes through (see quantize_values)
    v = tl.where(v < -448.0, -448.0, v)
    bits = v.to(tl.int32, bitcast=True)
    biased = (bits >> 23) & 0xFF  # the float32 exponent of v, + 127
    biased = tl.where(biased < 127 - 6, 127 - 6, biased)
    step = ((biased - 3) << 23).to(tl.float32, bitcast=True)  # 2^(e - 3)
    inv_step = ((257 - biased) << 23).to(tl.float32, bitcast=True)  # 2^(3 - e): both exact powers of two
    r = round_half_even(tl.abs(v) * inv_step) * step
    return tl.where(bits < 0, -r, r)  # the sign bit: a negative v rounding to zero gives -0, as torch's cast


@triton.jit
def encode(v, zero_point, QMIN: tl.constexpr, QMAX: tl.constexpr, FP8: tl.constexpr):
    """v = x * (1/scale), float32 -> the stored code: int8 (quantize_values, zero_point and [QMIN, QMAX]) or, FP8,
    float8e4nv (round_to_e4m3; zero_point, QMIN and QMAX unused). A NaN v gets e4m3's NaN code 0x7F written out:
    the interpreter's cast of NaN depends on its payload."""
    if FP8:
        r = round_to_e4m3(v)
        nan = tl.full(r.shape, 0x7F, tl.int8).to(tl.float8e4nv, bitcast=True)
        code = tl.where(r == r, r.to(tl.float8e4nv), nan)  # noqa: PLR0124 (NaN is the one value unequal to itself)
    else:
        code = quantize_values(v, zero_point, QMIN, QMAX).to(tl.int8)
    return code


@triton.jit
def apply_activation(y, ACTIVATION: tl.constexpr):
    """ACTIVATION: "none" | "relu" | "relu6" | "gelu" (erf form, as torch.nn.functional.gelu).

    NaN and ±inf propagate as in torch: relu(NaN) = relu6(NaN) = NaN (selects, since tl.maximum drops a NaN
    operand), relu6(+inf) = 6; gelu(+inf) = +inf, gelu(-inf) = -inf · 0 = NaN, as the formula gives in IEEE
    arithmetic and F.gelu in float64 (torch's vectorized float32 CPU kernel returns NaN for +inf; the reference
    corrects it).
    """
    if ACTIVATION == "relu":
        y = tl.where(y < 0.0, 0.0, y)
    elif ACTIVATION == "relu6":
        y = tl.where(y < 0.0, 0.0, y)
        y = tl.where(y > 6.0, 6.0, y)
    elif ACTIVATION == "gelu":
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    return y


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (pid_m, pid_n) in grouped order: GROUP_M row-tiles sweep the N tiles together, so the
    column tiles they share (a GEMM's B, a convolution's weights) stay in L2."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _float_epilogue(acc, offs_m, offs_n, M, N, a_rows,
                    a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, out_scale_ptr, out_zp_ptr,
                    OUTPUT: tl.constexpr, A_SCALE_PER_ROW: tl.constexpr, B_SCALE_PER_COL: tl.constexpr,
                    A_ZP_PER_ROW: tl.constexpr, ACTIVATION: tl.constexpr):
    mask_m = offs_m < M
    mask_n = offs_n < N
    if a_zp_ptr is not None:
        # Σ_k (a_q − za)·b_q = acc − za · Σ_k b_q[n, k]: exact in int32.
        if A_ZP_PER_ROW:
            za = tl.load(a_zp_ptr + a_rows, mask=mask_m, other=0)[:, None]
        else:
            za = tl.load(a_zp_ptr)
        acc = acc - za * tl.load(b_sum_ptr + offs_n, mask=mask_n, other=0)[None, :]
    y = acc.to(tl.float32)
    if a_scale_ptr is not None:
        if A_SCALE_PER_ROW:
            y = y * tl.load(a_scale_ptr + a_rows, mask=mask_m, other=0.0)[:, None]
        else:
            y = y * tl.load(a_scale_ptr)
    if b_scale_ptr is not None:
        if B_SCALE_PER_COL:
            y = y * tl.load(b_scale_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
        else:
            y = y * tl.load(b_scale_ptr)
    if bias_ptr is not None:
        y = y + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y = apply_activation(y, ACTIVATION)
    if OUTPUT == "int8":
        inv_scale = tl.math.div_rn(1.0, tl.load(out_scale_ptr))
        out_zp = 0.0
        if out_zp_ptr is not None:
            out_zp = tl.load(out_zp_ptr).to(tl.float32)
        y = quantize_values(y * inv_scale, out_zp, -128, 127)
    return y


@triton.jit
def gemm_epilogue(acc, offs_m, offs_n, M, N, a_rows,
                  a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, out_scale_ptr, out_zp_ptr,
                  OUTPUT: tl.constexpr, A_SCALE_PER_ROW: tl.constexpr, B_SCALE_PER_COL: tl.constexpr,
                  A_ZP_PER_ROW: tl.constexpr, ACTIVATION: tl.constexpr):
    """acc (BLOCK_M, BLOCK_N) = Σ_k a[m, k] · b[k, n], int32 (int8 operands) or float32 -> the tile to store.

    offs_m / offs_n: the tile's row and column indices, valid below M / N. a_rows: where each row's per-row
    a_scale / a_zero_point sits (offs_m for a GEMM; the image index for a convolution's per-image scale).
    OUTPUT "int32": acc unchanged (raw mode; every other argument ignored).
    OUTPUT "float": y = ((acc − za[m]·Σ_k b[k, n]) · sa[m]) · sb[n] + bias[n], then the activation; float32.
                    Scale pointers None: no scaling (the fp16/bf16 GEMM).
    OUTPUT "int8":  the same y requantized with the output scale / zero point, int8 range [-128, 127], as float32.
    Scale pointers are float32 (per row / per column, or one value); zero points and b_sum int32; pointers left
    as None are features switched off (bias_ptr None: no bias; a_zp_ptr None: symmetric activations;
    out_zp_ptr None: output zero point 0).
    """
    if OUTPUT == "int32":  # raw mode; an if/else because Triton compiles code after an early return
        y = acc
    else:
        y = _float_epilogue(acc, offs_m, offs_n, M, N, a_rows,
                            a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, out_scale_ptr, out_zp_ptr,
                            OUTPUT, A_SCALE_PER_ROW, B_SCALE_PER_COL, A_ZP_PER_ROW, ACTIVATION)
    return y
