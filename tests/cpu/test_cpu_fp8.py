"""lowp_ops/cpu with float8_e4m3fn: quantize_rows(..., dtype=torch.float8_e4m3fn) and fp8_gemm, against
lowp_ops.reference.

quantize_rows: bit-exact, codes byte for byte (util.assert_codes_equal: any NaN code equals any other) and scales
bitwise with NaN in the same places: the same float32 operations (x · (1/scale), then torch's saturating
round-to-nearest-even cast), vectorized. fp8_gemm: a float32 matmul of the widened codes, within the bound a float32
accumulator summing in any order guarantees against the reference's exact sum (util.assert_fp8_gemm_close).
"""

import math

import pytest
import torch

from lowp_ops import cpu, quant, reference
from util import (
    assert_codes_equal,
    assert_fp8_gemm_close,
    assert_scales_equal,
    e4m3_codes,
    e4m3_rounding_cases,
)

E4M3 = torch.float8_e4m3fn
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (1, 37), (13, 2), (13, 100), (67, 45)]


def _static(x, scale):
    scale = torch.tensor([scale])
    q, returned = cpu.quantize_rows(x, scale=scale, dtype=E4M3)
    assert returned is scale and q.dtype == E4M3
    assert_codes_equal(q, reference.quantize_rows(x, scale=scale, dtype=E4M3)[0])
    return q


def _dynamic(x):
    q, scale = cpu.quantize_rows(x, min_scale=quant.MIN_SCALE, dtype=E4M3)
    q_ref, scale_ref = reference.quantize_rows(x, dtype=E4M3)
    assert_codes_equal(q, q_ref)
    assert_scales_equal(scale, scale_ref)
    return q, scale


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_static_every_rounding_case_bit_exact(dtype):
    x = torch.cat(list(e4m3_rounding_cases().values())).to(dtype)
    q = _static(x.reshape(1, -1), 1.0).reshape(-1).float()
    if dtype == torch.float32:  # the rule itself: e4m3 values encode as themselves, ±inf saturates, NaN stays
        on_grid = (x.abs() <= 448) & (x.clamp(-448, 448).to(E4M3).float() == x)
        assert on_grid.sum() >= 2 * 127 and torch.equal(q[on_grid], x[on_grid])  # 254 finite values (±0 included)
        assert q[x.abs() > 464].abs().eq(448).all() and q[x.isnan()].isnan().all()
    _static(x[: 13 * 37].reshape(13, 37), 1.0)


@pytest.mark.parametrize("scale", [2.0**-4, 0.0371], ids=["2^-4", "0.0371"])
@pytest.mark.parametrize("M, K", SHAPES, ids=str)
def test_static_scale_bit_exact(M, K, scale):
    _static(torch.randn(M, K) * torch.logspace(-4, 3, K) * scale, scale)  # x / scale from below 2^-9 to past 448
    _static(torch.randn(M, K).half() * 100, scale)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("M, K", SHAPES, ids=str)
def test_per_token_bit_exact(M, K, dtype):
    x = torch.randn(M, K) * torch.logspace(0, 3, M)[:, None] * torch.logspace(-5, 0, K)  # subnormal codes too
    q, _ = _dynamic(x.to(dtype))
    assert (q.float().abs().amax(dim=1) == 448).all()


def test_per_token_non_finite_zero_and_empty_rows():
    # a row holding NaN, +inf or -inf: scale NaN, codes all NaN; an all-zero row: scale MIN_SCALE, codes +0;
    # M = 0; K = 0: scale MIN_SCALE (torch.amin raises on an empty row; cpu.quantize_rows must not call it)
    x = torch.randn(6, 45) * 3
    x[1, 3], x[2, 44], x[3, 0] = math.nan, math.inf, -math.inf
    x[4] = 0.0
    q, scale = _dynamic(x)
    assert scale[1:4].isnan().all() and q[1:4].float().isnan().all()
    assert scale[4].item() == quant.MIN_SCALE and q[4].view(torch.uint8).eq(0).all()
    q, scale = _dynamic(torch.empty(0, 8))
    assert q.shape == (0, 8) and scale.shape == (0,)
    q, scale = _dynamic(torch.empty(3, 0))
    assert q.shape == (3, 0) and q.dtype == E4M3 and (scale == quant.MIN_SCALE).all()


# M = 1, 13, 67; K, N not multiples of 16; K = 1
MNK = [(1, 37, 45), (13, 45, 100), (67, 33, 19), (13, 7, 1)]


@pytest.mark.parametrize("per_tensor", [False, True], ids=["per row / column", "per tensor"])
@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("M, N, K", MNK, ids=str)
def test_fp8_gemm_within_the_float32_bound(M, N, K, out_dtype, activation, per_tensor):
    a, b = e4m3_codes(M, K), e4m3_codes(N, K)
    a_scale = torch.rand(1 if per_tensor else M) * 2.0**-9 + 2.0**-10  # outputs far inside float16's range
    b_scale = torch.rand(1 if per_tensor else N) * 2.0**-9 + 2.0**-10
    kw = dict(a_scale=a_scale, b_scale=b_scale, bias=torch.randn(N), activation=activation, out_dtype=out_dtype)
    out = cpu.fp8_gemm(a, b, **kw)
    assert out.dtype == out_dtype and out.shape == (M, N)
    assert_fp8_gemm_close(out, reference.fp8_gemm(a, b, **kw), a, b, a_scale, b_scale)


def test_fp8_gemm_nan_codes():
    # a NaN code gives NaN in exactly its row of a / its column of b, as a float matmul does
    a, b = e4m3_codes(13, 45), e4m3_codes(9, 45)
    a.view(torch.uint8)[4, 0] = 0xFF
    b.view(torch.uint8)[2, 44] = 0x7F
    one = torch.ones(1)
    out = cpu.fp8_gemm(a, b, a_scale=one, b_scale=one, activation="relu", out_dtype=torch.float16)
    nan = torch.zeros(13, 9, dtype=torch.bool)
    nan[4, :] = nan[:, 2] = True
    assert torch.equal(out.isnan(), nan)
    kw = dict(a_scale=one, b_scale=one, activation="relu", out_dtype=torch.float16)
    assert_fp8_gemm_close(out, reference.fp8_gemm(a, b, **kw), a, b, one, one)


def test_fp8_gemm_strides_and_empty_k():
    # strided rows and a zero-stride (expanded) weight; K = 0: the epilogue of an empty sum
    a, w = e4m3_codes(13, 60)[:, 5:50], e4m3_codes(1, 45).expand(9, 45)
    one = torch.ones(1)
    out = cpu.fp8_gemm(a, w, a_scale=one, b_scale=one)
    assert_fp8_gemm_close(out, reference.fp8_gemm(a, w, a_scale=one, b_scale=one), a, w, one, one)
    bias = torch.randn(9)
    out = cpu.fp8_gemm(a[:, :0], w[:, :0], a_scale=one, b_scale=one, bias=bias, activation="relu")
    assert torch.equal(out, torch.relu(bias).expand(13, 9))
