"""lowp::int8_conv2d and lowp::quantize_channels_last: INT8 convolution (implicit GEMM) with the fused
dequantize / requantize epilogue, on int8 input or on float input it quantizes itself (dynamically per tensor, or
with a static scale), and the float NCHW -> int8 NHWC input quantization."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.library import triton_op

from .._validate import (
    FLOAT_DTYPES,
    INT32_MAX,
    check_reduction_length,
    check_scale,
    check_tensor,
    check_zero_point,
    dtype_names,
    fail,
)
from ..kernels.conv import conv_output_size
from ._common import (
    Lane,
    check_epilogue,
    check_int8_output,
    check_out_dtype,
    check_static_qparams,
    check_zero_point_sums,
    flat,
    in_graphs,
)
from .backends import dispatch
from .int8 import inference_only

_CHANNELS_LAST_HINT = "call .contiguous(memory_format=torch.channels_last) first"
# kernels/conv.py computes input coordinates ih = oh·stride − pad + r·dilation in int32: they and their partial sums
# lie in [−pad, H + 2·pad), so the padded extent H + 2·pad must fit int32.
_MAX_PADDED_EXTENT = INT32_MAX
# ... and output pixel indices offs_m = pid_m·BLOCK_M + arange(BLOCK_M) in int32, which run up to one tile past
# N·OH·OW; Triton caps a block at 2^20 elements (TRITON_MAX_TENSOR_NUMEL), so no tile overruns by more.
_MAX_OUTPUT_PIXELS = 2**31 - 2**20


def _check_pair(op: str, name: str, value) -> tuple[int, int]:
    if len(value) != 2:
        fail(op, f"argument '{name}' must hold 2 ints (height, width), got {list(value)}")
    return int(value[0]), int(value[1])


def _check_geometry(op: str, x: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> None:
    """Layouts, groups and the int32 bounds of the kernels' index arithmetic, before anything is allocated."""
    for name, t in (("x", x), ("weight", weight)):
        if t.dtype == torch.int8 and not t.is_contiguous(memory_format=torch.channels_last):
            fail(op, f"argument '{name}' must be channels_last (NHWC in memory), got strides {tuple(t.stride())}; "
                     f"{_CHANNELS_LAST_HINT}")
    sh, sw = _check_pair(op, "stride", stride)
    ph, pw = _check_pair(op, "padding", padding)
    dh, dw = _check_pair(op, "dilation", dilation)
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        fail(op, f"stride and dilation must be >= 1 and padding >= 0, got stride {list(stride)}, padding "
                 f"{list(padding)}, dilation {list(dilation)}")
    N, C, H, W = x.shape
    K, C_g, R, S = weight.shape
    if groups < 1 or C % groups or K % groups:
        fail(op, f"argument 'groups' must divide the input channels ({C}) and output channels ({K}), got {groups}")
    if C_g * groups != C:
        fail(op, f"argument 'weight' must be (K, C / groups, R, S) = ({K}, {C // groups}, R, S), got shape "
                 f"{tuple(weight.shape)}")
    if max(H + 2 * ph, W + 2 * pw) > _MAX_PADDED_EXTENT:
        fail(op, f"argument 'padding' {list(padding)} pads the {H}x{W} input to {H + 2 * ph}x{W + 2 * pw}, over "
                 f"2^31 - 1 along a side: the kernels compute input coordinates in int32")
    OH, OW = conv_output_size(H, R, sh, ph, dh), conv_output_size(W, S, sw, pw, dw)
    if OH < 1 or OW < 1:
        fail(op, f"the {R}x{S} kernel (dilation {list(dilation)}) does not fit the padded {H}x{W} input: "
                 f"output would be {OH}x{OW}")
    if N * OH * OW > _MAX_OUTPUT_PIXELS:  # padding=10**6 asked for 1.7 PB
        fail(op, f"arguments 'stride' {list(stride)}, 'padding' {list(padding)}, 'dilation' {list(dilation)} give "
                 f"N·OH·OW = {N}·{OH}·{OW} = {N * OH * OW} output pixels for x of shape {tuple(x.shape)}; at most "
                 f"2^31 - 2^20 = {_MAX_OUTPUT_PIXELS}: the kernels index output pixels in int32")


def _check_int8_conv2d(x, weight, stride, padding, dilation, groups, x_scale, weight_scale, bias, x_zero_point,
                       weight_sum, activation, out_dtype, out_scale, out_zero_point) -> torch.dtype:
    """Validate; returns the output dtype (None resolved)."""
    op, like = "int8_conv2d", ("x", x)
    check_tensor(op, "x", x, (torch.int8,) + FLOAT_DTYPES, ndim=4)
    check_tensor(op, "weight", weight, (torch.int8,), ndim=4, like=like)
    _check_geometry(op, x, weight, stride, padding, dilation, groups)
    K, C_g, R, S = weight.shape
    check_reduction_length(op, "the reduction length C/groups·R·S", C_g * R * S,
                           None if x_zero_point is None else "x_zero_point")
    if x.dtype == torch.int8:
        out_dtype = check_int8_output(op, out_dtype, {"x_scale": x_scale, "weight_scale": weight_scale},
                                      {"bias": bias, "x_zero_point": x_zero_point, "weight_sum": weight_sum,
                                       "out_scale": out_scale, "out_zero_point": out_zero_point}, activation)
        if out_dtype == torch.int32:
            return out_dtype
        x_scales = ([(x.shape[0],)], "one scale per image")
    else:  # quantized here: dynamically without x_scale, else statically with x_scale / x_zero_point
        out_dtype = check_out_dtype(op, x.dtype if out_dtype is None else out_dtype, (torch.int8,) + FLOAT_DTYPES)
        if weight_scale is None:
            fail(op, f"argument 'weight_scale' is required for a {dtype_names([x.dtype])} x")
        if x_zero_point is not None and x_scale is None:
            fail(op, "argument 'x_zero_point' needs 'x_scale' (static quantization); dynamic quantization is "
                     "symmetric")
        x_scales = ((), "static per-tensor activation scale")
    check_scale(op, "x_scale", x_scale, like, *x_scales)
    check_scale(op, "weight_scale", weight_scale, like, [(K,)], "one scale per output channel")
    check_zero_point(op, "x_zero_point", x_zero_point, like, what="per-tensor zero point: padding reads it")
    check_zero_point_sums(op, "weight_sum", weight_sum, "x_zero_point", x_zero_point, like, K)
    check_epilogue(op, like, K, bias, activation, out_dtype, out_scale, out_zero_point)
    return out_dtype


@triton_op("lowp::int8_conv2d", mutates_args={})
def int8_conv2d(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                groups: int, x_scale: Tensor | None = None, weight_scale: Tensor | None = None,
                bias: Tensor | None = None, x_zero_point: Tensor | None = None,
                weight_sum: Tensor | None = None, activation: str = "none",
                out_dtype: torch.dtype | None = None, out_scale: Tensor | None = None,
                out_zero_point: Tensor | None = None) -> Tensor:
    """INT8 2-D convolution (implicit GEMM, int32 accumulation) with the fused epilogue of int8_mm.

    x: (N, C, H, W), one of
      float16 / bfloat16 / float32, any memory format: quantized to int8 here (fused with the NCHW -> NHWC change),
        dynamically when x_scale is None — one symmetric scale for the whole call, max(max |x| / 127, 2^-126) —
        else statically with x_scale (float32, one element) and x_zero_point (int32, one element, or None);
      int8, channels_last, already quantized: x_scale float32 (N,) = one per image, or one element.
    weight: (K, C / groups, R, S) int8 (symmetric, per output channel), channels_last; weight_scale: float32 (K,) or
    one element. stride / padding / dilation: 2 ints each; groups divides C and K (groups = C: depthwise).
    Int8 x without scales, out_dtype int32 (its default): the raw accumulator. Otherwise (weight_scale required,
    x_scale too for int8 x)
        y = ((acc − x_zero_point · Σ weight[k]) · x_scale) · weight_scale[k] + bias[k], then activation
    ("none" | "relu" | "relu6" | "gelu"), returned as float16 / bfloat16 / float32 (default: x.dtype for float x,
    float32 for int8 x) or, with out_dtype int8, requantized with out_scale (float32) / out_zero_point (int32), one
    element each — the next INT8 conv reads it directly. x_zero_point: padding reads it, i.e. pads with real zeros;
    weight_sum: int32 (K,), computed when omitted; bias: (K,) float. Returns (N, K, OH, OW), channels_last.
    Bounds: scales finite and normal (>= 2^-126), zero points in [-128, 127]; reduction length C/groups·R·S
    <= 131071, <= 65793 with x_zero_point (int32 accumulator, see int8_mm); H + 2·padding and W + 2·padding
    <= 2^31 - 1 and N·OH·OW <= 2^31 - 2^20 (int32 indices in the kernel), refused before anything is allocated.
    Values are checked on eager calls only (not under torch.compile or on fake tensors).
    NaN / inf: README section "Non-finite input and overflow"; dynamic quantization has one scale for the call, so
    a NaN or ±inf anywhere in x makes every float output NaN and every int8 output the output zero point.

    >>> x = torch.randn(2, 3, 8, 8)
    >>> w = torch.randint(-127, 128, (4, 3, 3, 3), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    >>> torch.ops.lowp.int8_conv2d(x, w, [1, 1], [1, 1], [1, 1], 1, weight_scale=torch.full((4,), 0.01)).shape
    torch.Size([2, 4, 8, 8])
    """
    out_dtype = _check_int8_conv2d(x, weight, stride, padding, dilation, groups, x_scale, weight_scale, bias,
                                   x_zero_point, weight_sum, activation, out_dtype, out_scale, out_zero_point)
    return _int8_conv2d(x, weight, stride, padding, dilation, groups, x_scale, weight_scale, bias, x_zero_point,
                        weight_sum, activation, out_dtype, out_scale, out_zero_point)


def _int8_conv2d(x, weight, stride, padding, dilation, groups, x_scale, weight_scale, bias, x_zero_point, weight_sum,
                 activation, out_dtype, out_scale, out_zero_point) -> Tensor:
    """int8_conv2d after validation, out_dtype resolved (the op, and its Lane)."""
    if x.dtype != torch.int8:
        if x_scale is None:  # a NaN / inf in x keeps the scale finite and poisons the bias instead (reference.py)
            x_scale, bias = dispatch("int8_conv2d", "per_tensor_qparams", x, bias=bias, channels=weight.shape[0])
        x = dispatch("int8_conv2d", "quantize_channels_last", x, scale=flat(x_scale), zero_point=flat(x_zero_point))
    if x_zero_point is not None and weight_sum is None:
        weight_sum = weight.sum(dim=(1, 2, 3), dtype=torch.int32)
    out = dispatch("int8_conv2d", "int8_conv2d", x, weight, stride=list(stride), padding=list(padding),
                   dilation=list(dilation), groups=groups, a_scale=flat(x_scale),
                   b_scale=flat(weight_scale), bias=flat(bias), a_zero_point=flat(x_zero_point),
                   b_sum=flat(weight_sum), activation=activation, out_dtype=out_dtype, out_scale=flat(out_scale),
                   out_zero_point=flat(out_zero_point))
    # not a view (the CPU's GEMM path returns its (pixels, channels) matrix permuted): in-place ops after it stay
    # legal with grad on, as after int8_mm
    return out.detach()


@int8_conv2d.register_fake
def _int8_conv2d_fake(x, weight, stride, padding, dilation, groups, x_scale=None, weight_scale=None, bias=None,
                      x_zero_point=None, weight_sum=None, activation="none", out_dtype=None, out_scale=None,
                      out_zero_point=None):
    out_dtype = _check_int8_conv2d(x, weight, stride, padding, dilation, groups, x_scale, weight_scale, bias,
                                   x_zero_point, weight_sum, activation, out_dtype, out_scale, out_zero_point)
    N, _, H, W = x.shape
    K, _, R, S = weight.shape
    OH = conv_output_size(H, R, stride[0], padding[0], dilation[0])
    OW = conv_output_size(W, S, stride[1], padding[1], dilation[1])
    return torch.empty((N, K, OH, OW), dtype=out_dtype, device=x.device, memory_format=torch.channels_last)


inference_only(int8_conv2d, "Int8Conv2d")
_int8_conv2d = in_graphs(int8_conv2d, _int8_conv2d, _int8_conv2d_fake, plan=2)
eager_int8_conv2d = Lane(int8_conv2d, _check_int8_conv2d, _int8_conv2d, plan=2)


def _check_quantize_channels_last(x, scale, zero_point) -> None:
    check_tensor("quantize_channels_last", "x", x, FLOAT_DTYPES, ndim=4)
    check_static_qparams("quantize_channels_last", x, scale, zero_point)


@triton_op("lowp::quantize_channels_last", mutates_args={})
def quantize_channels_last(x: Tensor, scale: Tensor, zero_point: Tensor | None = None) -> Tensor:
    """Static affine int8 quantization fused with the layout change convolutions want.

    x: (N, C, H, W) float16 / bfloat16 / float32, any memory format (NCHW is read coalesced); scale: float32, one
    element, finite and normal (>= 2^-126); zero_point: int32, one element in [-128, 127] (None: 0). Returns
    (N, C, H, W) int8, channels_last, clamp(round_half_even(x * (1 / scale)) + zero_point, -128, 127).
    Values are checked on eager calls only (not under torch.compile or on fake tensors).
    NaN / inf in x: README section "Non-finite input and overflow".
    """
    _check_quantize_channels_last(x, scale, zero_point)
    return _quantize_channels_last(x, scale, zero_point)


def _quantize_channels_last(x, scale, zero_point) -> Tensor:
    """quantize_channels_last after validation."""
    return dispatch("quantize_channels_last", "quantize_channels_last", x, scale=flat(scale),
                    zero_point=flat(zero_point))


@quantize_channels_last.register_fake
def _quantize_channels_last_fake(x, scale, zero_point=None):
    _check_quantize_channels_last(x, scale, zero_point)
    return torch.empty(x.shape, dtype=torch.int8, device=x.device, memory_format=torch.channels_last)


_quantize_channels_last = in_graphs(quantize_channels_last, _quantize_channels_last, _quantize_channels_last_fake)
