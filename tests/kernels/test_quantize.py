"""kernels/quantize.py on the Triton interpreter (CPU) or the GPU, against lowp_ops.reference: bit-exact."""

import math

import pytest
import torch

from lowp_ops import quant, reference
from lowp_ops.kernels import quantize_rows
from util import assert_bitwise_equal

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 1), (1, 37), (13, 5), (13, 100), (67, 45)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M, K", SHAPES, ids=lambda v: str(v))
def test_dynamic_per_row_bit_exact(M, K, dtype):
    x = (torch.randn(M, K) * torch.rand(M, 1) * 10).to(dtype).to(DEVICE)
    q, scale = quantize_rows(x, min_scale=quant.MIN_SCALE)
    q_ref, scale_ref = reference.quantize_rows(x)
    assert_bitwise_equal(scale, scale_ref)
    assert_bitwise_equal(q, q_ref)
    assert int(q.abs().max()) == 127  # every row reaches its absmax


@pytest.mark.parametrize("block_k", [16, 32])
def test_two_pass_path_for_long_rows(block_k):
    # rows longer than one block: an absmax pass, then a quantize pass
    x = torch.randn(13, 100, device=DEVICE).half()
    q, scale = quantize_rows(x, block_k=block_k, min_scale=quant.MIN_SCALE)
    q_ref, scale_ref = reference.quantize_rows(x)
    assert_bitwise_equal(scale, scale_ref)
    assert_bitwise_equal(q, q_ref)


def test_zero_rows_and_row_stride():
    big = torch.randn(13, 64, device=DEVICE)
    big[3] = 0.0
    x = big[:, :45]  # rows 64 apart: the kernel takes the row stride
    q, scale = quantize_rows(x, min_scale=quant.MIN_SCALE)
    assert scale[3].item() == quant.MIN_SCALE and not q[3].any()
    q_ref, scale_ref = reference.quantize_rows(x)
    assert_bitwise_equal(q, q_ref)
    assert_bitwise_equal(scale, scale_ref)


@pytest.mark.parametrize("zero_point", [None, -7, 100])
@pytest.mark.parametrize("M, K", SHAPES, ids=lambda v: str(v))
def test_static_per_tensor_bit_exact(M, K, zero_point):
    x = (torch.randn(M, K) * 3).to(DEVICE)
    # ties on purpose: scale 2^-4 makes every x = n/32 an exact half-step
    x[0, : (K + 1) // 2] = torch.arange((K + 1) // 2, dtype=torch.float32) / 32 - 1.0
    scale = torch.tensor([2.0**-4], device=DEVICE)
    zp = None if zero_point is None else torch.tensor([zero_point], dtype=torch.int32, device=DEVICE)
    q, _ = quantize_rows(x, scale=scale, zero_point=zp)
    q_ref, _ = reference.quantize_rows(x, scale=scale, zero_point=zp)
    assert_bitwise_equal(q, q_ref)
    # the same integer grid as torch.fake_quantize_per_tensor_affine, clipping included
    z = zero_point or 0
    fq = torch.fake_quantize_per_tensor_affine(x.cpu(), 2.0**-4, z, -128, 127)
    assert_bitwise_equal((q.cpu().float() - z) * 2.0**-4, fq)


def test_empty_input():
    q, scale = quantize_rows(torch.empty(0, 8, device=DEVICE))
    assert q.shape == (0, 8) and scale.shape == (0,)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf · 0
@pytest.mark.parametrize("block_k", [None, 16], ids=["one pass", "two passes"])
def test_non_finite_rows_get_a_nan_scale(block_k):
    # tl.max drops NaN (interpreter and GPU): the kernel's Σ x·0 term must still poison the row's scale, in
    # whichever K block the value sits
    x = torch.randn(5, 40, device=DEVICE)
    x[1, 3], x[2, 39], x[3, 20] = math.nan, math.inf, -math.inf
    q, scale = quantize_rows(x, block_k=block_k, min_scale=quant.MIN_SCALE)
    assert scale.isnan().tolist() == [False, True, True, True, False] and not q[1:4].any()
    q_ref, scale_ref = reference.quantize_rows(x)
    assert_bitwise_equal(q, q_ref)
    torch.testing.assert_close(scale, scale_ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_static_non_finite_codes():
    x = torch.tensor([[math.nan, math.inf, -math.inf, 1.0, 1e30, -1e30]], device=DEVICE)
    scale, zp = torch.tensor([0.1], device=DEVICE), torch.tensor([5], dtype=torch.int32, device=DEVICE)
    q, _ = quantize_rows(x, scale=scale, zero_point=zp)
    assert q.tolist() == [[5, 127, -128, 15, 127, -128]]  # NaN -> the zero point, ±inf saturate
    assert_bitwise_equal(q, reference.quantize_rows(x, scale=scale, zero_point=zp)[0])


def test_empty_rows_get_the_min_scale():
    q, scale = quantize_rows(torch.empty(3, 0, device=DEVICE), min_scale=quant.MIN_SCALE)
    assert q.shape == (3, 0)
    assert_bitwise_equal(scale, reference.quantize_rows(torch.empty(3, 0, device=DEVICE))[1])
    assert (scale == quant.MIN_SCALE).all()
