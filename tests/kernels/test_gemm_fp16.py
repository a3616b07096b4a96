"""kernels/gemm.py with float16 / bfloat16 operands on the Triton interpreter (CPU) or the GPU: every layout the
training ops use, against a float64 reference, within the error bound of float32 accumulation (util.py)."""

import pytest
import torch

from lowp_ops import reference
from lowp_ops.kernels import gemm
from util import assert_float_gemm_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MNK = [(1, 1, 1), (1, 37, 45), (13, 45, 100), (67, 33, 64), (16, 17, 19)]


def _operands(M, N, K, dtype, layout):
    """a (M, K) and b (K, N) as the views each training GEMM passes."""
    if layout == "A·B":  # dx = dy · W
        a, b = torch.randn(M, K), torch.randn(K, N)
    elif layout == "A·Bᵀ":  # y = x · Wᵀ
        a, b = torch.randn(M, K), torch.randn(N, K).T
    else:  # "Aᵀ·B": dW = dyᵀ · x
        a, b = torch.randn(K, M).T, torch.randn(K, N)
    return a.to(DEVICE, dtype), b.to(DEVICE, dtype)


@pytest.mark.parametrize("layout", ["A·B", "A·Bᵀ", "Aᵀ·B"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M, N, K", MNK, ids=lambda v: str(v))
def test_layouts(M, N, K, dtype, layout):
    a, b = _operands(M, N, K, dtype, layout)
    out = gemm(a, b, out_dtype=dtype)
    assert out.dtype == dtype and out.shape == (M, N)
    assert_float_gemm_close(out, a.double() @ b.double(), a, b)


@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_epilogue(out_dtype, activation):
    a, b = _operands(67, 45, 100, torch.float16, "A·Bᵀ")
    bias = torch.randn(45, device=DEVICE)
    out = gemm(a, b, bias=bias, activation=activation, out_dtype=out_dtype)
    ref = reference.activation(a.double() @ b.double() + bias.double(), activation)
    assert_float_gemm_close(out, ref, a, b)


@pytest.mark.parametrize("config", [None, dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=2, num_warps=4,
                                               num_stages=2)])
def test_accumulate_into_float32(config):
    a, b = _operands(13, 45, 64, torch.bfloat16, "Aᵀ·B")
    c0 = torch.randn(13, 45, device=DEVICE)
    c = c0.clone()
    returned = gemm(a, b, accumulate_into=c, config=config)
    assert returned is c
    gemm(a, b, accumulate_into=c, config=config)
    assert_float_gemm_close(c - c0, 2 * (a.double() @ b.double()), a, 2 * b.float())


def test_matches_reference_gemm_and_empty():
    a, b = _operands(13, 45, 100, torch.float16, "A·B")
    assert_float_gemm_close(gemm(a, b, out_dtype=torch.float32), reference.gemm(a, b, out_dtype=torch.float64),
                            a, b)
    assert gemm(a[:0], b, out_dtype=torch.float16).shape == (0, 45)
