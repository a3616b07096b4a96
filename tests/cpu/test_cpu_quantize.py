"""lowp_ops/cpu/quantize.py against lowp_ops.reference: bit-exact (the same float32 operations, vectorized)."""

import math

import pytest
import torch

from lowp_ops import cpu, quant, reference
from util import assert_bitwise_equal

SHAPES = [(1, 1), (1, 37), (13, 2), (13, 100), (67, 45)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M, K", SHAPES, ids=str)
def test_per_token_bit_exact(M, K, dtype):
    x = (torch.randn(M, K) * torch.rand(M, 1) * 10).to(dtype)
    x[0] = 0.0  # an all-zero row: scale MIN_SCALE, q = 0
    q, scale = cpu.quantize_rows(x, min_scale=quant.MIN_SCALE)
    q_ref, scale_ref = reference.quantize_rows(x)
    assert_bitwise_equal(scale, scale_ref)
    assert_bitwise_equal(q, q_ref)


@pytest.mark.parametrize("zero_point", [None, -128, 5, 127])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("M, K", SHAPES, ids=str)
def test_static_bit_exact_ties_and_saturation(M, K, dtype, zero_point):
    scale = torch.tensor([0.25])
    x = torch.randint(-1200, 1200, (M, K)).to(dtype) / 8  # multiples of 1/8: many exact .5 ties after / 0.25
    zp = None if zero_point is None else torch.tensor([zero_point], dtype=torch.int32)
    q, _ = cpu.quantize_rows(x, scale=scale, zero_point=zp)
    assert_bitwise_equal(q, reference.quantize_rows(x, scale=scale, zero_point=zp)[0])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 70, 3, 3), (3, 1, 13, 1)])
def test_channels_last_bit_exact(shape, layout):
    x = (torch.randn(shape) * 4).contiguous(memory_format=layout)
    scale, zp = torch.tensor([0.0371]), torch.tensor([-5], dtype=torch.int32)
    q = cpu.quantize_channels_last(x, scale=scale, zero_point=zp)
    assert q.is_contiguous(memory_format=torch.channels_last)
    assert_bitwise_equal(q, reference.quantize_channels_last(x, scale=scale, zero_point=zp))


def test_non_finite_and_empty_rows():
    # per token: a row holding NaN or ±inf gets scale NaN and codes 0 (amin / amax alone would give inf for ±inf);
    # static: NaN -> the zero point, ±inf saturate; K = 0: scale MIN_SCALE (amin raises on an empty row)
    x = torch.randn(5, 9)
    x[1, 2], x[2, 0], x[3, 8] = math.nan, math.inf, -math.inf
    q, scale = cpu.quantize_rows(x, min_scale=quant.MIN_SCALE)
    assert scale.isnan().tolist() == [False, True, True, True, False] and not q[1:4].any()
    q_ref, scale_ref = reference.quantize_rows(x)
    assert_bitwise_equal(q, q_ref)
    torch.testing.assert_close(scale, scale_ref, rtol=0, atol=0, equal_nan=True)
    scale_t, zp = torch.tensor([0.1]), torch.tensor([-3], dtype=torch.int32)
    q, _ = cpu.quantize_rows(x, scale=scale_t, zero_point=zp)
    assert (q[1, 2], q[2, 0], q[3, 8]) == (-3, 127, -128)
    assert_bitwise_equal(q, reference.quantize_rows(x, scale=scale_t, zero_point=zp)[0])
    q, scale = cpu.quantize_rows(torch.empty(3, 0), min_scale=quant.MIN_SCALE)
    assert q.shape == (3, 0)
    assert_bitwise_equal(scale, reference.quantize_rows(torch.empty(3, 0))[1])
    assert (scale == quant.MIN_SCALE).all()


PER_TENSOR_CASES = {  # int8_conv2d's dynamic input: x -> (scale, bias)
    "gaussian": lambda: torch.randn(2, 3, 5, 7) * 3,
    "tiny": lambda: torch.randn(1, 4, 3, 3) * 1e-38,  # amax / 127 below MIN_SCALE: clamped
    "all zero": lambda: torch.zeros(2, 3, 4, 4),
    "empty batch": lambda: torch.empty(0, 3, 4, 4),
    "nan": lambda: torch.randn(2, 3, 5, 7).index_put_((torch.tensor([1]),) * 4, torch.tensor(math.nan)),
    "-inf": lambda: torch.randn(2, 3, 5, 7).index_put_((torch.tensor([0]),) * 4, torch.tensor(-math.inf)),
}


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "channels_last"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", PER_TENSOR_CASES)
def test_per_tensor_qparams_bit_exact(case, dtype, with_bias, layout):
    # the host arithmetic (Python floats) against the reference's tensor arithmetic, NaN-poisoned bias included;
    # channels_last: what a conv before hands on
    x = PER_TENSOR_CASES[case]().to(dtype).contiguous(memory_format=layout)
    bias = torch.randn(6) if with_bias else None
    scale, out_bias = cpu.per_tensor_qparams(x, bias=bias, channels=6)
    scale_ref, bias_ref = reference.per_tensor_qparams(x, bias=bias, channels=6)
    assert_bitwise_equal(scale, scale_ref)
    assert scale.shape == (1,) and scale.item() >= quant.MIN_SCALE and math.isfinite(scale.item())
    finite = bool(torch.isfinite(x).all())
    if finite and not with_bias:
        assert out_bias is None and bias_ref.eq(0).all()  # the reference's poison of a finite x is 0
    else:
        torch.testing.assert_close(out_bias, bias_ref, rtol=0, atol=0, equal_nan=True)
        assert out_bias.isnan().all() != finite


def test_reductions_read_a_channels_last_tensor_in_memory_order():
    """reference.in_memory_order: the (N, H, W, C) view of a channels_last x, on its storage, contiguous, so that
    torch.aminmax does not copy it to NCHW first (it does: 20 ms of a 30 ms dynamic conv, reference.py)."""
    x = torch.randn(2, 8, 5, 3).contiguous(memory_format=torch.channels_last)
    flat = reference.in_memory_order(x)
    assert flat.is_contiguous() and flat.data_ptr() == x.data_ptr() and flat.shape == (2, 5, 3, 8)
    plain = torch.randn(2, 8, 5, 3)
    assert reference.in_memory_order(plain) is plain
    sliced = plain[:, :, :, :2]  # neither layout: left as it is
    assert reference.in_memory_order(sliced) is sliced
