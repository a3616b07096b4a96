"""lowp::int8_conv2d and lowp::quantize_channels_last: INT8 convolution (implicit GEMM) with the fused
dequantize / requantize epilogue, and the float NCHW -> int8 NHWC input quantization."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.library import triton_op

from .._validate import FLOAT_DTYPES, check_numel, check_tensor, fail
from ..kernels.conv import conv_output_size
from .backends import dispatch
from ._common import check_epilogue, check_int8_output, check_static_qparams, flat

_CHANNELS_LAST_HINT = "call .contiguous(memory_format=torch.channels_last) first"


def _check_pair(op: str, name: str, value) -> tuple[int, int]:
    if len(value) != 2:
        fail(op, f"argument '{name}' must hold 2 ints (height, width), got {list(value)}")
    return int(value[0]), int(value[1])


def _check_int8_conv2d(x, weight, stride, padding, dilation, groups, x_scale, weight_scale, bias, x_zero_point,
                       weight_sum, activation, out_dtype, out_scale, out_zero_point) -> torch.dtype:
    """Validate; returns the output dtype (None resolved)."""
    op = "int8_conv2d"
    check_tensor(op, "x", x, dtypes=(torch.int8,), ndim=4)
    check_tensor(op, "weight", weight, dtypes=(torch.int8,), ndim=4, device=x.device, device_of="x")
    for name, t in (("x", x), ("weight", weight)):
        if not t.is_contiguous(memory_format=torch.channels_last):
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
    OH, OW = conv_output_size(H, R, sh, ph, dh), conv_output_size(W, S, sw, pw, dw)
    if OH < 1 or OW < 1:
        fail(op, f"the {R}x{S} kernel (dilation {list(dilation)}) does not fit the padded {H}x{W} input: "
                 f"output would be {OH}x{OW}")
    out_dtype = check_int8_output(op, out_dtype, {"x_scale": x_scale, "weight_scale": weight_scale},
                                  {"bias": bias, "x_zero_point": x_zero_point, "weight_sum": weight_sum,
                                   "out_scale": out_scale, "out_zero_point": out_zero_point}, activation)
    if out_dtype == torch.int32:
        return out_dtype
    if x_zero_point is not None:
        check_tensor(op, "x_zero_point", x_zero_point, dtypes=(torch.int32,), device=x.device, device_of="x")
        check_numel(op, "x_zero_point", x_zero_point, (1,), "one element (per-tensor zero point: padding reads it)")
    check_epilogue(op, x, N, K, a_scale=x_scale, b_scale=weight_scale, bias=bias, a_zero_point=x_zero_point,
                   b_sum=weight_sum, activation=activation, out_dtype=out_dtype, out_scale=out_scale,
                   out_zero_point=out_zero_point,
                   names={"a": "x", "b": "weight", "a_scale": "x_scale", "b_scale": "weight_scale",
                          "a_zero_point": "x_zero_point", "b_sum": "weight_sum", "row": "image"})
    return out_dtype


@triton_op("lowp::int8_conv2d", mutates_args={})
def int8_conv2d(x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                groups: int, x_scale: Optional[Tensor] = None, weight_scale: Optional[Tensor] = None,
                bias: Optional[Tensor] = None, x_zero_point: Optional[Tensor] = None,
                weight_sum: Optional[Tensor] = None, activation: str = "none",
                out_dtype: Optional[torch.dtype] = None, out_scale: Optional[Tensor] = None,
                out_zero_point: Optional[Tensor] = None) -> Tensor:
    """INT8 2-D convolution (implicit GEMM, int32 accumulation) with the fused epilogue of int8_mm.

    x: (N, C, H, W) int8 and weight: (K, C / groups, R, S) int8 (symmetric, per output channel), both
    channels_last. stride / padding / dilation: 2 ints each; groups divides C and K (groups = C: depthwise).
    out_dtype int32 (the default without scales): the raw accumulator. Otherwise x_scale (float32, one, or one
    per image) and weight_scale (float32, (K,) or one) are required and
        y = ((acc − x_zero_point · Σ weight[k]) · x_scale) · weight_scale[k] + bias[k], then activation
    ("none" | "relu" | "relu6" | "gelu"), returned as float16 / bfloat16 / float32 (default float32) or, with
    out_dtype int8, requantized with out_scale / out_zero_point — the next INT8 conv reads it directly.
    x_zero_point: int32, one element (padding reads it, i.e. pads with real zeros); weight_sum: int32 (K,),
    computed when omitted. Returns (N, K, OH, OW), channels_last.
    """
    out_dtype = _check_int8_conv2d(x, weight, stride, padding, dilation, groups, x_scale, weight_scale, bias,
                                   x_zero_point, weight_sum, activation, out_dtype, out_scale, out_zero_point)
    if x_zero_point is not None and weight_sum is None:
        weight_sum = weight.sum(dim=(1, 2, 3), dtype=torch.int32)
    return dispatch("int8_conv2d", "int8_conv2d", x, weight, stride=list(stride), padding=list(padding),
                    dilation=list(dilation), groups=groups, a_scale=flat(x_scale),
                    b_scale=flat(weight_scale), bias=flat(bias), a_zero_point=flat(x_zero_point),
                    b_sum=flat(weight_sum), activation=activation, out_dtype=out_dtype, out_scale=flat(out_scale),
                    out_zero_point=flat(out_zero_point))


@int8_conv2d.register_fake
def _(x, weight, stride, padding, dilation, groups, x_scale=None, weight_scale=None, bias=None, x_zero_point=None,
      weight_sum=None, activation="none", out_dtype=None, out_scale=None, out_zero_point=None):
    out_dtype = _check_int8_conv2d(x, weight, stride, padding, dilation, groups, x_scale, weight_scale, bias,
                                   x_zero_point, weight_sum, activation, out_dtype, out_scale, out_zero_point)
    N, _, H, W = x.shape
    K, _, R, S = weight.shape
    OH = conv_output_size(H, R, stride[0], padding[0], dilation[0])
    OW = conv_output_size(W, S, stride[1], padding[1], dilation[1])
    return torch.empty((N, K, OH, OW), dtype=out_dtype, device=x.device, memory_format=torch.channels_last)


def _check_quantize_channels_last(x, scale, zero_point) -> None:
    check_tensor("quantize_channels_last", "x", x, dtypes=FLOAT_DTYPES, ndim=4)
    check_static_qparams("quantize_channels_last", x, scale, zero_point)


@triton_op("lowp::quantize_channels_last", mutates_args={})
def quantize_channels_last(x: Tensor, scale: Tensor, zero_point: Optional[Tensor] = None) -> Tensor:
    """Static affine int8 quantization fused with the layout change convolutions want.

    x: (N, C, H, W) float16 / bfloat16 / float32, any memory format (NCHW is read coalesced); scale: float32, one
    element; zero_point: int32, one element (None: 0). Returns (N, C, H, W) int8, channels_last,
    clamp(round_half_even(x * (1 / scale)) + zero_point, -128, 127).
    """
    _check_quantize_channels_last(x, scale, zero_point)
    return dispatch("quantize_channels_last", "quantize_channels_last", x, scale=flat(scale),
                    zero_point=flat(zero_point))


@quantize_channels_last.register_fake
def _(x, scale, zero_point=None):
    _check_quantize_channels_last(x, scale, zero_point)
    return torch.empty(x.shape, dtype=torch.int8, device=x.device, memory_format=torch.channels_last)
