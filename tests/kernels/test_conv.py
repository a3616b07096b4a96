"""kernels/conv.py (implicit-GEMM INT8 conv) and the NCHW -> NHWC quantize, on the Triton interpreter (CPU) or the
GPU, against lowp_ops.reference: int32 and int8 outputs bit-exact, float outputs exact (same float32 operations)
except bfloat16 on the interpreter (truncates instead of rounding: one bf16 ulp)."""

import pytest
import torch

from lowp_ops import reference
from lowp_ops.kernels import int8_conv2d, quantize_channels_last
from util import CONV_GEOMETRIES as GEOMETRIES
from util import assert_bitwise_equal, assert_requant_equal

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CL = torch.channels_last

CONFIGS = {"default": None,
           "32x32x32": dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=2)}


def _tensors(N, C, H, W, K, R, S, groups):
    x = torch.randint(-128, 128, (N, C, H, W), dtype=torch.int8).to(DEVICE).contiguous(memory_format=CL)
    w = torch.randint(-127, 128, (K, C // groups, R, S), dtype=torch.int8).to(DEVICE).contiguous(memory_format=CL)
    return x, w


def _geometry_kwargs(stride, padding, dilation, groups):
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", GEOMETRIES)
def test_int32_output_bit_exact(name, config):
    N, C, H, W, K, R, S, *geo = GEOMETRIES[name]
    x, w = _tensors(N, C, H, W, K, R, S, geo[3])
    out = int8_conv2d(x, w, **_geometry_kwargs(*geo), config=CONFIGS[config])
    assert out.is_contiguous(memory_format=CL)
    assert_bitwise_equal(out, reference.int8_conv2d(x, w, **_geometry_kwargs(*geo)))


def _epilogue_case(name, per_image, zero_point):
    N, C, H, W, K, R, S, *geo = GEOMETRIES[name]
    x, w = _tensors(N, C, H, W, K, R, S, geo[3])
    kw = dict(_geometry_kwargs(*geo), a_scale=(torch.rand(N if per_image else 1) * 0.05 + 0.01).to(DEVICE),
              b_scale=(torch.rand(K) * 0.01 + 1e-3).to(DEVICE), bias=torch.randn(K).to(DEVICE))
    if zero_point:
        kw["a_zero_point"] = torch.tensor([-13], dtype=torch.int32, device=DEVICE)
        kw["b_sum"] = w.int().sum(dim=(1, 2, 3)).int()
    return x, w, kw


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_image, zero_point", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("name", ["3x3 pad1 13x13", "grouped", "depthwise x2 strided", "3x2 strided dilated"])
def test_float_output(name, per_image, zero_point, out_dtype):
    x, w, kw = _epilogue_case(name, per_image, zero_point)
    kw.update(activation="relu6", out_dtype=out_dtype)
    out, ref = int8_conv2d(x, w, **kw), reference.int8_conv2d(x, w, **kw)
    if DEVICE == "cpu" and out_dtype != torch.bfloat16:
        assert_bitwise_equal(out, ref)
    else:  # bf16 truncation (interpreter) or FMA contraction (GPU): at most one ulp of the output dtype
        torch.testing.assert_close(out, ref, rtol=2 * torch.finfo(out_dtype).eps, atol=1e-5)


@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
@pytest.mark.parametrize("name", ["3x3 pad1 13x13", "depthwise", "5x5 pad2 stride2"])
def test_requantized_int8_output_bit_exact(name, activation):
    x, w, kw = _epilogue_case(name, per_image=False, zero_point=True)
    y = reference.int8_conv2d(x, w, activation=activation, out_dtype=torch.float32, **kw)
    kw.update(activation=activation, out_dtype=torch.int8, out_scale=(y.abs().amax() / 90).reshape(1),
              out_zero_point=torch.tensor([7], dtype=torch.int32, device=DEVICE))
    out, ref = int8_conv2d(x, w, **kw), reference.int8_conv2d(x, w, **kw)
    assert_requant_equal(out, ref)


# Padding with a zero point reads 0 and adds za · Σ_{taps outside} w back after the loop (kernels/conv.py): every
# geometry, a 7x7 kernel (49 taps: four 16-tap blocks of the correction), both tile configs. Unit scales keep
# y = acc − za·Σ w an exact integer in float32, so the comparison is of the integers themselves.
_PADDED = {**GEOMETRIES, "7x7 pad3 stride2": (1, 3, 9, 9, 5, 7, 7, (2, 2), (3, 3), (1, 1), 1)}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("zero_point", [-128, -13, 127])
@pytest.mark.parametrize("name", _PADDED)
def test_zero_point_padding_exact(name, zero_point, config):
    N, C, H, W, K, R, S, *geo = _PADDED[name]
    x, w = _tensors(N, C, H, W, K, R, S, geo[3])
    kw = dict(_geometry_kwargs(*geo), a_scale=torch.ones(1, device=DEVICE), b_scale=torch.ones(K, device=DEVICE),
              a_zero_point=torch.tensor([zero_point], dtype=torch.int32, device=DEVICE),
              b_sum=w.int().sum(dim=(1, 2, 3)).int(), out_dtype=torch.float32)
    assert_bitwise_equal(int8_conv2d(x, w, **kw, config=CONFIGS[config]), reference.int8_conv2d(x, w, **kw))


def test_zero_point_padding_wide_tap_sums():
    # 32769 channels of -128: each tap's weight sum is -4194432 < -2^22, past what two 11-bit float16 parts hold
    # exactly (the third part's case)
    C, K = 32769, 3
    x = torch.randint(-128, 128, (1, C, 1, 2), dtype=torch.int8).to(DEVICE).contiguous(memory_format=CL)
    w = torch.full((K, C, 1, 1), -128, dtype=torch.int8, device=DEVICE).contiguous(memory_format=CL)
    w[1] = 127
    kw = dict(stride=(1, 1), padding=(1, 0), dilation=(1, 1), groups=1, a_scale=torch.ones(1, device=DEVICE),
              b_scale=torch.ones(K, device=DEVICE), a_zero_point=torch.tensor([-77], dtype=torch.int32, device=DEVICE),
              b_sum=w.int().sum(dim=(1, 2, 3)).int(), out_dtype=torch.float32)
    config = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=1024, GROUP_M=1, num_warps=4, num_stages=1)
    assert_bitwise_equal(int8_conv2d(x, w, **kw, config=config), reference.int8_conv2d(x, w, **kw))


def test_int8_chain_conv_relu_conv():
    # conv -> relu -> conv with int8 between the layers: the first requantizes, the second reads it directly
    x, w1 = _tensors(2, 5, 13, 13, 16, 3, 3, 1)
    _, w2 = _tensors(1, 16, 1, 1, 8, 3, 3, 1)
    kw = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    s1 = torch.tensor([0.05], device=DEVICE)
    h_scale = torch.tensor([0.5], device=DEVICE)
    first = dict(kw, a_scale=s1, b_scale=torch.full((16,), 2e-3, device=DEVICE), activation="relu",
                 out_dtype=torch.int8, out_scale=h_scale)
    h = int8_conv2d(x, w1, **first)
    assert h.dtype == torch.int8 and int(h.min()) >= 0
    second = dict(kw, a_scale=h_scale, b_scale=torch.full((8,), 1e-2, device=DEVICE), out_dtype=torch.float32)
    y = int8_conv2d(h, w2, **second)
    h_ref = reference.int8_conv2d(x, w1, **first)
    assert_bitwise_equal(h, h_ref)
    assert_bitwise_equal(y, reference.int8_conv2d(h_ref, w2, **second)) if DEVICE == "cpu" else \
        torch.testing.assert_close(y, reference.int8_conv2d(h_ref, w2, **second))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 70, 3, 3), (3, 1, 13, 1)])
def test_quantize_nchw_to_nhwc_bit_exact(shape, dtype):
    x = (torch.randn(shape) * 4).to(DEVICE, dtype)
    scale = torch.tensor([0.03], device=DEVICE)
    zp = torch.tensor([-5], dtype=torch.int32, device=DEVICE)
    q = quantize_channels_last(x, scale=scale, zero_point=zp)
    assert q.is_contiguous(memory_format=CL)
    assert_bitwise_equal(q, reference.quantize_channels_last(x, scale=scale, zero_point=zp))
    # channels_last input takes the same path
    assert_bitwise_equal(quantize_channels_last(x.contiguous(memory_format=CL), scale=scale, zero_point=zp), q)


def test_tap_sums_follow_in_place_weight_writes():
    # the padding correction's per-tap weight sums are kept per weight tensor (kernels/conv.py): an in-place write
    # to the weight must not leave the old sums in use
    N, C, H, W, K, R, S, *geo = GEOMETRIES["3x3 pad1 13x13"]
    x, w = _tensors(N, C, H, W, K, R, S, geo[3])
    zp = torch.tensor([-20], dtype=torch.int32, device=DEVICE)
    for _ in range(2):
        kw = dict(_geometry_kwargs(*geo), a_scale=torch.ones(1, device=DEVICE), b_scale=torch.ones(K, device=DEVICE),
                  a_zero_point=zp, b_sum=w.int().sum(dim=(1, 2, 3)).int(), out_dtype=torch.float32)
        assert_bitwise_equal(int8_conv2d(x, w, **kw), reference.int8_conv2d(x, w, **kw))
        w.mul_(-1).clamp_(-127, 127)
