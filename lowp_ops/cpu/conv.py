"""int8_conv2d on the CPU: a first layer's few taps directly (_conv_direct, native.cpp's conv_direct: per output pixel,
its taps times the weight), small convolutions as one int8 GEMM over their patches (_conv_as_gemm), both bit-exact
with the reference; others through oneDNN's int8 convolution (torch.ops.onednn.qconv2d_pointwise) on the prepacked
weight.

The epilogue runs inside oneDNN when it can express it — one scale per tensor for x, per-channel weight scales, a
finite bias, none / relu / relu6, float32 or requantized int8 output — so the output is written once. oneDNN orders
the float operations its own way: float outputs agree with the reference to float32 rounding, int8 outputs within
1 LSB where a value sits at a rounding tie (tests/cpu/test_cpu_conv.py holds both bounds). Otherwise (a scale per
image, gelu, a NaN or ±inf in the bias or x's scale, the raw int32 output) oneDNN returns the exact accumulator (unit
scales, float32, checked below 2^24) and lowp_ops.reference's epilogue finishes it, bit-exact with the reference.
A traced call (torch.compile, export) runs the reference here; ops/_common.py keeps traced calls from coming here
(its lowp_cpu::int8_conv2d runs the op's body, and this launcher, when the graph runs).

conv2 of lowp_ops.examples.ConvNet (32 -> 64 channels, 3x3, 26x26 input, batch 256) on the CI machine (AMD EPYC,
avx512_vnni, 2 threads, torch 2.13, 2026-11-25): FP32 channels_last 47 ms; fused int8 output + relu 8.6 ms; float32
output 22 ms (the output write dominates).
"""

from __future__ import annotations

import math

import torch

from .. import reference
from . import gemm, native, support
from .support import as_uint8, exact_integers, fall_back, packed, traced

# lowp activation -> oneDNN post-op (name, scalars); gelu is not a qconv2d post-op in torch 2.13.
_POST_OPS = {"none": ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0])}


def _qconv(xu, x_scale, zero_point, weight, w_scale, w_zero_point, bias, geometry, out_scale, out_zero_point,
           out_dtype, activation):
    attr, scalars = _POST_OPS[activation]
    return torch.ops.onednn.qconv2d_pointwise(xu, x_scale, zero_point + 128, weight, w_scale, w_zero_point, bias,
                                              *geometry, out_scale, out_zero_point, out_dtype, attr, scalars, None)


def _finite(a_scale: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether x's one scale and the bias (K values) are finite. oneDNN's relu and hardtanh post-ops turn NaN into 0
    and its int8 output turns NaN into -128, where lowp propagates NaN and encodes it as the output zero point (a
    NaN-poisoned bias is how a dynamic layer marks a non-finite input): such calls take the exact accumulator and
    the reference's epilogue. A sum is finite when its terms are (an overflowing sum of finite terms only costs the
    fused path): ~2 us, where torch.isfinite(...).all() on both costs ~30 (2-core dev machine, torch 2.13), a
    large share of a batch-1 conv."""
    return math.isfinite(a_scale.item()) and (bias is None or math.isfinite(bias.sum(dtype=torch.float32).item()))


# Small convolutions run as one int8 GEMM over their patches (native im2col, torch._int_mm, native.cpp's epilogue):
# oneDNN's qconv2d_pointwise costs ~40 us a call whatever the size (primitive set-up inside the op), more than the
# whole convolution at batch 1. Where the two cross goes with the output pixels N·OH·OW (the GEMM's rows), us per call
# on the CI machine (AMD EPYC, avx512_vnni, 2 threads, torch 2.13, 2026-12-06; int8 out + relu; GEMM / oneDNN,
# medians of 5 interleaved runs, the machine busy):
#     ConvNet conv1 (1 -> 32, 3x3, 28x28):  b1 (676 px) 61 / 106, b2 75 / 110, b4 (2704 px) 122 / 120, b8 156 / 135
#     ConvNet conv2 (32 -> 64, 3x3, 26x26): b1 (576 px) 75 / 140, b2 119 / 166, b4 (2304 px) 209 / 225, b8 385 / 333
_GEMM_MAX_PIXELS = 2048


def _output_hw(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation) -> tuple[int, int]:
    return tuple(reference.conv_output_size(x.shape[d + 2], w.shape[d + 2], stride[d], padding[d], dilation[d])
                 for d in (0, 1))


def _conv_as_gemm(x, w, oh, ow, stride, padding, dilation, a_zero_point, b_sum, epilogue) -> torch.Tensor:
    """int8_conv2d (groups 1) as a GEMM: the patches of x (padded with its zero point, which the epilogue's
    zero_point · Σw term cancels, as the kernels do) times the (K, R·S·C) weight, exact int32, then the GEMM
    epilogue on the (pixels, channels) matrix, which is the NHWC output."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    zp = 0 if a_zero_point is None else int(a_zero_point.item())
    cpp = native.load()
    if cpp is not None:
        patches = cpp.im2col(x, R, S, *stride, *padding, *dilation, zp)
    else:
        nhwc = x.permute(0, 2, 3, 1)  # a view: x is channels_last
        if any(padding):
            nhwc = torch.nn.functional.pad(nhwc, (0, 0, padding[1], padding[1], padding[0], padding[0]), value=zp)
        n_, h_, w_, c_ = nhwc.stride()
        (sh, sw), (dh, dw) = stride, dilation
        patches = nhwc.as_strided((N, oh, ow, R, S, C), (n_, h_ * sh, w_ * sw, h_ * dh, w_ * dw, c_))
    acc = gemm.int_mm(patches.reshape(N * oh * ow, R * S * C), w.permute(0, 2, 3, 1).reshape(K, R * S * C))
    a_scale = epilogue.pop("a_scale")
    if a_scale is not None and a_scale.numel() != 1:  # one per image, repeated over its pixels
        a_scale = a_scale.reshape(-1).repeat_interleave(oh * ow)
    activation, out_dtype = epilogue.pop("activation"), epilogue["out_dtype"]
    if a_zero_point is not None and b_sum is None:
        b_sum = w.sum(dim=(1, 2, 3), dtype=torch.int32)
    y = acc if out_dtype == torch.int32 else gemm.fused_epilogue(
        acc, a_scale=a_scale, a_zero_point=a_zero_point, b_sum=b_sum, activation_name=activation, **epilogue)
    return y.reshape(N, oh, ow, K).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def _direct_route(cpp, pixels: int, taps: int, channels: int) -> bool:
    """Whether a convolution (groups 1) of `pixels` outputs, `taps` = C·R·S, runs native.cpp's conv_direct (its
    direct_route: few taps and little work, where it beats both the GEMM route and oneDNN); the Plans of eager
    modules ask the same rule in C++."""
    return cpp.direct_route(pixels, taps, channels)


def _conv_direct(cpp, x, w, oh, ow, stride, padding, dilation, a_zero_point, b_sum, epilogue) -> torch.Tensor:
    """int8_conv2d (groups 1, few taps: native.cpp's direct_route) through native.cpp's conv_direct: each output
    pixel's taps times the weight as floats (exact integers), then the GEMM epilogue; bit-exact with the reference."""
    N, K = x.shape[0], w.shape[0]
    table = packed(w, ("direct",), lambda: cpp.direct_weight(w))
    zp = 0 if a_zero_point is None else int(a_zero_point.item())
    if a_zero_point is not None and b_sum is None:
        b_sum = w.sum(dim=(1, 2, 3), dtype=torch.int32)
    activation, out_dtype = epilogue["activation"], epilogue["out_dtype"]
    y = cpp.conv_direct(x, table, K, *w.shape[2:], *stride, *padding, *dilation, zp,
                        *gemm.native_epilogue(out_dtype=out_dtype, a_scale=epilogue["a_scale"],
                                              b_scale=epilogue["b_scale"], bias=epilogue["bias"],
                                              a_zero_point=a_zero_point, b_sum=b_sum, activation_name=activation,
                                              out_scale=epilogue["out_scale"],
                                              out_zero_point=epilogue["out_zero_point"]))
    y = gemm.native_finish(y, activation, out_dtype)
    return y.reshape(N, oh, ow, K).permute(0, 3, 1, 2)


def int8_conv2d(x: torch.Tensor, w: torch.Tensor, *, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                a_scale=None, b_scale=None, bias=None, a_zero_point=None, b_sum=None, activation="none",
                out_dtype=torch.int32, out_scale=None, out_zero_point=None) -> torch.Tensor:
    """x int8 (N, C, H, W), w int8 (K, C/groups, R, S), both channels_last -> (N, K, OH, OW) channels_last;
    keyword arguments as kernels.int8_conv2d."""
    epilogue = dict(a_scale=a_scale, b_scale=b_scale, bias=bias, activation=activation, out_dtype=out_dtype,
                    out_scale=out_scale, out_zero_point=out_zero_point)
    geometry = (list(stride), list(padding), list(dilation), groups)
    if support.missing() or traced(x, w) or x.numel() == 0 or w.numel() == 0:
        if support.missing():
            fall_back("int8_conv2d", support.missing())
        elif traced(x, w):
            fall_back("int8_conv2d", "traced by torch.compile / export: onednn.qconv_prepack has no fake kernel in "
                                     "torch 2.13, so the graph holds the reference convolution")
        return reference.int8_conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups,
                                     a_zero_point=a_zero_point, b_sum=b_sum, **epilogue)
    K = w.shape[0]
    oh, ow = _output_hw(x, w, stride, padding, dilation)
    pixels, taps = x.shape[0] * oh * ow, w[0].numel()
    cpp = native.load()
    if (groups == 1 and cpp is not None and out_dtype != torch.int32 and gemm.native_finishes(activation, out_dtype)
            and _direct_route(cpp, pixels, taps, K)):
        return _conv_direct(cpp, x, w, oh, ow, stride, padding, dilation, a_zero_point, b_sum, epilogue)
    if groups == 1 and pixels <= _GEMM_MAX_PIXELS:
        return _conv_as_gemm(x, w, oh, ow, stride, padding, dilation, a_zero_point, b_sum, epilogue)
    # packed for this input shape: oneDNN then picks the weight layout for it (ConvNet conv2 at batch 1:
    # 0.057 ms vs 0.078 ms packed without a shape; batch 256: 8.7 vs 9.3 ms; CI machine, 2026-11-25)
    weight, ones, zeros = packed(w, ("qconv", *map(tuple, geometry[:3]), groups, tuple(x.shape)), lambda: (
        torch.ops.onednn.qconv_prepack(w, torch.ones(K), 1.0, 0, *geometry, list(x.shape)), torch.ones(K),
        torch.zeros(K, dtype=torch.int64)))
    xu = as_uint8(x)
    zp = 0 if a_zero_point is None else int(a_zero_point.item())
    if out_dtype != torch.int32 and a_scale.numel() == 1 and activation in _POST_OPS and _finite(a_scale, bias):
        requant = out_dtype == torch.int8
        out_zp = int(out_zero_point.item()) if requant and out_zero_point is not None else 0
        w_scale = b_scale if b_scale.numel() == K else b_scale.expand(K).contiguous()  # oneDNN wants one per channel
        y = _qconv(xu, a_scale.item(), zp, weight, w_scale, zeros,
                   None if bias is None else bias.float(), geometry, out_scale.item() if requant else 1.0, out_zp,
                   torch.int8 if requant else torch.float32, activation)
        return y.to(out_dtype)
    acc = _qconv(xu, 1.0, zp, weight, ones, zeros, None, geometry, 1.0, 0, torch.float32, "none")
    if not exact_integers(acc):
        fall_back("int8_conv2d", "an accumulator reaches 2^24, beyond what oneDNN's float32 output holds exactly")
        return reference.int8_conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups,
                                     a_zero_point=a_zero_point, b_sum=b_sum, **epilogue)
    if out_dtype == torch.int32:
        return acc.to(torch.int32)
    return reference.conv_epilogue(acc, **epilogue)  # the zero point is already subtracted
