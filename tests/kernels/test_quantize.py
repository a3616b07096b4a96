"""kernels/quantize.py on the Triton interpreter (CPU) or the GPU, against lowp_ops.reference: bit-exact."""

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
