"""Pure-torch references: the oracle every fast path (the Triton kernels, the native CPU backend lowp_ops.cpu) is
tested against, and the CPU path when selected (lowp_ops.use_cpu_backend("reference")) or when no native one
exists. Each function takes the same (already validated, 2-D) arguments as its kernel launcher in lowp_ops.kernels
and follows the kernel's arithmetic step for step, so integer outputs match bit for bit. They run on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import quant
from .kernels.add import add_layout
from .kernels.conv import conv_output_size
from .quant import Fp8Spec, Granularity, QuantSpec

__all__ = ["activation", "conv_epilogue", "fp8_gemm", "gemm", "gemm_epilogue", "int8_add", "int8_conv2d", "int8_gemm",
           "int8_max_pool2d", "per_tensor_qparams", "quantize_channels_last", "quantize_rows"]

# The activation specs the kernels implement.
INT8_PER_TOKEN = QuantSpec(bits=8, symmetric=True, granularity=Granularity.PER_TOKEN)  # dynamic, [-127, 127]
INT8_AFFINE = QuantSpec(bits=8, symmetric=False)  # static per-tensor and requantized outputs, [-128, 127]
INT8_PER_TENSOR = QuantSpec(bits=8, symmetric=True)  # int8_conv2d's dynamic input: one scale per call, [-127, 127]
E4M3_PER_TOKEN = Fp8Spec(granularity=Granularity.PER_TOKEN)  # dynamic, scale = amax / 448
E4M3_PER_TENSOR = Fp8Spec()  # static
# (dynamic, static) spec of each code dtype
ROW_SPECS = {torch.int8: (INT8_PER_TOKEN, INT8_AFFINE), torch.float8_e4m3fn: (E4M3_PER_TOKEN, E4M3_PER_TENSOR)}


def quantize_rows(x: torch.Tensor, *, scale: torch.Tensor | None = None, zero_point: torch.Tensor | None = None,
                  min_scale: float = quant.MIN_SCALE,
                  dtype: torch.dtype = torch.int8) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) float -> (q (M, K) int8 or float8_e4m3fn, scale float32). Dynamic per-row when scale is None
    (scale (M,), never below min_scale), else static per-tensor with scale (1,) and, int8 only, zero_point (1,) or
    None. See kernels/quantize.py.

    Non-finite x: a dynamic row holding NaN or ±inf gets scale NaN (choose_qparams poisons the scale as the
    kernel's Σ x·0 does) and int8 codes 0 / e4m3 codes NaN; static int8 codes are the zero point for NaN, 127 for
    +inf, -128 for -inf; static e4m3 keeps NaN and saturates ±inf to ±448. K = 0: scale min_scale (the range of no
    values is widened to contain 0, like every range)."""
    dynamic_spec, static_spec = ROW_SPECS[dtype]
    if scale is None:
        scale, zp = quant.choose_qparams(*quant.reduce_minmax(x, dynamic_spec), dynamic_spec, min_scale=min_scale)
        return quant.quantize(x, scale, zp, dynamic_spec), scale
    zp = zero_point.reshape(()) if zero_point is not None else torch.zeros((), dtype=torch.int32)
    return quant.quantize(x, scale.reshape(()), zp.to(x.device), static_spec), scale


def in_memory_order(x: torch.Tensor) -> torch.Tensor:
    """x, or a view of it that is contiguous where x is a channels_last 4-D tensor (its (N, H, W, C) view), for
    reductions over all its elements: torch.aminmax copies a non-contiguous input to NCHW first (20 ms of a 30 ms
    dynamic 1x1 conv on (16, 256, 56, 56) float32 channels_last, CI machine, 2026-12-06)."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1)
    return x


def activation(y: torch.Tensor, name: str) -> torch.Tensor:
    """NaN and ±inf propagate as torch's ops give them: relu(NaN) = relu6(NaN) = NaN, relu6(+inf) = 6,
    gelu(-inf) = NaN, gelu(+inf) = +inf."""
    if name == "relu":
        return torch.relu(y)
    if name == "relu6":
        return torch.clamp(y, 0.0, 6.0)
    if name == "gelu":
        # F.gelu's vectorized float32 CPU kernel returns NaN for +inf (torch 2.13), where its scalar tail, CUDA,
        # float64 and the kernels' formula 0.5·y·(1 + erf(y/√2)) give +inf
        return F.gelu(y).masked_fill_(y == math.inf, math.inf)
    return y


_activation = activation  # under another name, for functions whose `activation` argument names the activation


def _per_row(p: torch.Tensor) -> torch.Tensor:
    return p.reshape(-1, 1) if p.numel() != 1 else p.reshape(())


def _per_col(p: torch.Tensor) -> torch.Tensor:
    return p.reshape(1, -1) if p.numel() != 1 else p.reshape(())


def gemm_epilogue(acc: torch.Tensor, *, a_scale=None, b_scale=None, bias=None, a_zero_point=None, b_sum=None,
                  activation_name="none", out_dtype=torch.int32, out_scale=None, out_zero_point=None):
    """acc (M, N), int32 or float -> the output of kernels/epilogue.py's gemm_epilogue, in the same order of
    float32 operations (float64 accumulators stay float64: the gradcheck path). A float acc is consumed: scales and
    bias are applied to it in place (callers pass a fresh accumulator; in place saves an allocation per step, which
    batch-1 inference on the CPU notices)."""
    if out_dtype == torch.int32:
        return acc
    if a_zero_point is not None:
        acc = acc - _per_row(a_zero_point) * _per_col(b_sum)
    y = acc.float() if not acc.is_floating_point() else acc
    if a_scale is not None:
        y = y.mul_(_per_row(a_scale))
    if b_scale is not None:
        y = y.mul_(_per_col(b_scale))
    if bias is not None:
        y = y.add_(bias.to(y.dtype))
    y = activation(y, activation_name)
    if out_dtype == torch.int8:  # INT8_AFFINE's quantize (lowp_ops.quant.affine), per tensor, written out
        y = torch.mul(y, 1.0 / out_scale.reshape(())).nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)
        y = y.round_()  # NaN -> the zero point, ±inf -> 127 / -128 (clamped below), as the kernels
        if out_zero_point is not None:
            y = y.add_(out_zero_point.reshape(()))
        return y.clamp_(INT8_AFFINE.qmin, INT8_AFFINE.qmax).to(torch.int8)
    return y.to(out_dtype)


def gemm(a: torch.Tensor, b: torch.Tensor, *, activation="none", out_dtype=None, accumulate_into=None,
         fast_accum=False, **epilogue) -> torch.Tensor:
    """a (M, K), b (K, N) -> epilogue(a · b) (M, N); keyword arguments as kernels.gemm (fast_accum changes nothing
    here: it names a GPU accumulation mode).

    int8 operands: the product is taken in float64, exact here (|acc| <= 128·128·K < 2^53) and available on
    every device (CUDA has no integer matmul), then cast to the int32 accumulator. float8_e4m3fn operands: also
    exact in float64 (fp8_gemm), then rounded once to the float32 accumulator. Other float operands accumulate in
    float32 (float64 for float64 inputs), as the kernel's Tensor Core accumulator does, in another order.
    """
    if a.dtype == torch.int8:
        acc = (a.double() @ b.double()).to(torch.int32)
    elif a.dtype == torch.float8_e4m3fn:
        acc = (a.double() @ b.double()).float()
    else:
        acc_dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        acc = a.to(acc_dtype) @ b.to(acc_dtype)
    if accumulate_into is not None:
        y = gemm_epilogue(acc, activation_name=activation, out_dtype=torch.float32, **epilogue)
        return accumulate_into.add_(y)
    return gemm_epilogue(acc, activation_name=activation, out_dtype=out_dtype, **epilogue)


def int8_gemm(a: torch.Tensor, b: torch.Tensor, *, out_dtype=torch.int32, **kwargs) -> torch.Tensor:
    """a int8 (M, K), b int8 (N, K) -> epilogue(a · bᵀ) (M, N); keyword arguments as kernels.int8_gemm."""
    return gemm(a, b.T, out_dtype=out_dtype, **kwargs)


def fp8_gemm(a: torch.Tensor, b: torch.Tensor, *, out_dtype=torch.float32, **kwargs) -> torch.Tensor:
    """a float8_e4m3fn (M, K), b float8_e4m3fn (N, K) -> epilogue(a · bᵀ) (M, N); keyword arguments as
    kernels.fp8_gemm.

    The accumulator is exact, then rounded once to float32: an e4m3 value is a multiple of 2^-9 below 2^9 in
    magnitude with at most 4 significant bits, so each product is a multiple of 2^-18 with at most 8 significant
    bits below 2^18, and any sum of up to 2^16 of them is a multiple of 2^-18 below 2^34, 52 bits: exact in
    float64 (for larger K the float64 sum's error is still far below the float32 rounding). A float32 accumulator
    summing K terms in any order is within (K − 1) · 2^-24 · Σ_k |a_k · b_k| of it (first order): the bound the
    kernels and the CPU backend are tested against.
    """
    return gemm(a, b.T, out_dtype=out_dtype, **kwargs)


def quantize_channels_last(x: torch.Tensor, *, scale: torch.Tensor,
                           zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """x (N, C, H, W) float -> int8 (N, C, H, W) channels_last, static per-tensor; see kernels/quantize.py."""
    q, _ = quantize_rows(x, scale=scale, zero_point=zero_point)
    return q.contiguous(memory_format=torch.channels_last)


def per_tensor_qparams(x: torch.Tensor, *, bias: torch.Tensor | None,
                       channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """int8_conv2d's dynamic input quantization: x (N, C, H, W) float -> (scale float32 (1,), the bias to use).

    scale = max(max |x| / 127, min_scale) (quant.choose_qparams, symmetric per tensor) and bias unchanged, for
    finite x. One scale serves the whole call, so a NaN or ±inf anywhere in x poisons every output, without another
    pass over x: the scale stays finite (MIN_SCALE, as if amax were 0) and the bias (`channels` values, made when
    bias is None) becomes NaN, so every float output is NaN and every requantized one the output zero point (NaN's
    code). No host read: this is the CUDA and torch.compile path. An empty x has range 0: scale MIN_SCALE.
    """
    zero = x.new_zeros((), dtype=torch.float32)
    lo, hi = torch.aminmax(in_memory_order(x.detach())) if x.numel() else (zero, zero)
    amax = torch.maximum(-lo, hi).float()  # NaN if x holds a NaN (aminmax propagates it), inf if an inf
    finite = torch.isfinite(amax)
    # torch.where, not amax · 0: torch.compile folds x · 0 to 0, NaN or not
    poison = torch.where(finite, zero, math.nan)
    amax = torch.where(finite, amax, zero)
    scale = quant.choose_qparams(-amax, amax, INT8_PER_TENSOR)[0].reshape(1)
    return scale, poison.expand(channels) if bias is None else bias + poison


def int8_conv2d(x: torch.Tensor, w: torch.Tensor, *, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                a_scale=None, a_zero_point=None, b_sum=None, activation="none", out_dtype=torch.int32,
                **epilogue) -> torch.Tensor:
    """x int8 (N, C, H, W), w int8 (K, C/groups, R, S) -> (N, K, OH, OW) channels_last; keyword arguments as
    kernels.int8_conv2d.

    The convolution runs in float64 on x − zero_point (exact: every partial sum is an integer below 2^53), with
    zero padding — the kernel pads with the zero point and subtracts za·Σw, the same integers. Then the GEMM
    epilogue on the (pixels, channels) matrix, a per-image a_scale repeated over each image's pixels.
    """
    if x.shape[1] == 0 or w.shape[0] == 0:
        # an empty sum is 0: F.conv2d raises for zero output channels and, for zero input channels, returns zero
        # output channels (torch 2.13); the kernel returns epilogue(0)
        oh, ow = (conv_output_size(x.shape[d + 2], w.shape[d + 2], stride[d], padding[d], dilation[d])
                  for d in (0, 1))
        acc = torch.empty((x.shape[0], w.shape[0], oh, ow), dtype=torch.int32, device=x.device,
                          memory_format=torch.channels_last).zero_()
    else:
        xz = x.double()
        if a_zero_point is not None:
            xz = xz - a_zero_point.double().reshape(())
        acc = F.conv2d(xz, w.double(), stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                       groups=groups).to(torch.int32)
    return conv_epilogue(acc, a_scale=a_scale, activation=activation, out_dtype=out_dtype, **epilogue)


def conv_epilogue(acc: torch.Tensor, *, a_scale=None, activation="none", out_dtype=torch.int32,
                  **epilogue) -> torch.Tensor:
    """acc (N, K, OH, OW), the zero point already subtracted -> the GEMM epilogue on the (pixels, channels) matrix,
    a per-image a_scale repeated over each image's pixels; (N, K, OH, OW) channels_last."""
    n, k, oh, ow = acc.shape
    if a_scale is not None and a_scale.numel() != 1:
        a_scale = a_scale.reshape(-1).repeat_interleave(oh * ow)
    y = gemm_epilogue(acc.permute(0, 2, 3, 1).reshape(n * oh * ow, k), a_scale=a_scale, activation_name=activation,
                      out_dtype=out_dtype, **epilogue)
    # already channels_last (no copy) unless a dim is 0, when the reshapes leave strides channels_last rejects
    return y.reshape(n, oh, ow, k).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def int8_max_pool2d(x: torch.Tensor, *, kernel_size, stride, padding, dilation, ceil_mode=False,
                    channels_last=True) -> torch.Tensor:
    """x int8 (N, C, H, W) -> (N, C, OH, OW) int8, channels_last or contiguous; arguments as
    kernels.int8_max_pool2d. torch's float max-pool on the codes (exact: float32 holds every int8 value), back to
    int8."""
    y = F.max_pool2d(x.float(), tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), ceil_mode)
    return y.to(torch.int8).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def int8_add(a: torch.Tensor, b: torch.Tensor, *, a_scale, b_scale, out_scale, a_zero_point=None, b_zero_point=None,
             out_zero_point=None, activation="none") -> torch.Tensor:
    """a, b int8 (same shape) -> int8 of a's shape and layout (kernels.add_layout); arguments as kernels.int8_add.
    The kernel's float32 operations in its order: (a − za)·sa + (b − zb)·sb, the activation, then INT8_AFFINE's
    quantize with the output scale and zero point."""
    def real(q, scale, zero_point):
        q = q.to(torch.int32)
        return (q if zero_point is None else q - zero_point.reshape(())).float() * scale.reshape(())

    y = _activation(real(a, a_scale, a_zero_point) + real(b, b_scale, b_zero_point), activation)
    y = torch.mul(y, 1.0 / out_scale.reshape(())).round_()
    if out_zero_point is not None:
        y = y.add_(out_zero_point.reshape(()))
    return y.clamp_(INT8_AFFINE.qmin, INT8_AFFINE.qmax).to(torch.int8).contiguous(memory_format=add_layout(a))
