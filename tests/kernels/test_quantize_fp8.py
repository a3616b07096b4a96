"""kernels/quantize.py with float8_e4m3fn codes (quantize_rows(..., dtype=torch.float8_e4m3fn)), on the Triton
interpreter (CPU) or the GPU, against lowp_ops.reference.quantize_rows.

Bit-exact: codes byte for byte (util.assert_codes_equal: any NaN code equals any other), scales bitwise with NaN in
the same places. Kernel and reference compute x · (1/scale) with the same IEEE-rounded division and one float32
multiply, then round to the nearest e4m3 value, ties to even, saturating at ±448 (the kernel in float32 arithmetic,
kernels/epilogue.round_to_e4m3; the reference through torch's cast): nothing to tolerate.
"""

import math

import pytest
import torch

from lowp_ops import quant, reference
from lowp_ops.kernels import quantize_rows
from util import assert_codes_equal, assert_scales_equal, e4m3_grid, e4m3_rounding_cases

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
E4M3 = torch.float8_e4m3fn
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (1, 37), (13, 5), (13, 100), (67, 45)]

# the interpreter evaluates inf · 0 in numpy, which warns
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _static(x, scale):
    scale = torch.tensor([scale], device=DEVICE)
    q, returned = quantize_rows(x, scale=scale, dtype=E4M3)
    assert returned is scale
    q_ref, _ = reference.quantize_rows(x, scale=scale, dtype=E4M3)
    assert_codes_equal(q, q_ref)
    return q


def test_static_scale_one_rounds_as_stated():
    # the rounding rule itself, not only agreement with the reference
    cases = e4m3_rounding_cases()
    q = {name: _static(v.reshape(1, -1).to(DEVICE), 1.0).cpu().reshape(-1) for name, v in cases.items()}
    grid = e4m3_grid()
    up, down = torch.cat([grid[1:], -grid[1:]]), torch.cat([grid[:-1], -grid[:-1]])  # each midpoint's neighbours
    assert torch.equal(q["values"].float(), cases["values"])  # every value encodes as itself
    assert (q["midpoints"].view(torch.uint8) & 1).eq(0).all()  # ties to the even code
    assert torch.equal(q["midpoints"].float(), torch.where((up.to(E4M3).view(torch.uint8) & 1) == 0, up, down))
    assert torch.equal(q["above midpoints"].float(), up) and torch.equal(q["below midpoints"].float(), down)
    assert torch.equal(q["beyond 448"].float().abs(), torch.full((18,), 448.0))  # saturates, ±inf included
    assert q["nan"].float().isnan().all()
    assert q["to -0"].view(torch.uint8).eq(0x80).all()  # -0 keeps its sign bit


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_static_half_precision_inputs(dtype):
    # the same inputs rounded to float16 / bfloat16 first (overflows become ±inf, tiny values 0 or subnormals)
    x = torch.cat(list(e4m3_rounding_cases().values())).to(dtype)
    _static(x.reshape(1, -1).to(DEVICE), 1.0)
    _static(x[: 13 * 37].reshape(13, 37).to(DEVICE), 1.0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("scale", [2.0**-4, 0.0371, 5.3], ids=["2^-4", "0.0371", "5.3"])
@pytest.mark.parametrize("M, K", SHAPES, ids=str)
def test_static_scale_bit_exact(M, K, scale, dtype):
    # 2^-4: x · 16 exact, so the midpoints in row 0 stay ties; 0.0371 and 5.3: 1/scale inexact, x · (1/scale)
    # rounded in float32 before the e4m3 rounding (the same two roundings on both sides)
    x = torch.randn(M, K) * torch.logspace(-4, 3, K) * scale  # x / scale from below the subnormals to beyond 448
    mid = (e4m3_grid()[:-1] + e4m3_grid()[1:]) / 2
    x[0, : min(K, mid.numel())] = mid[:K] * scale
    _static(x.to(dtype).to(DEVICE), scale)


def _dynamic(x, block_k=None):
    q, scale = quantize_rows(x, min_scale=quant.MIN_SCALE, dtype=E4M3, block_k=block_k)
    q_ref, scale_ref = reference.quantize_rows(x, dtype=E4M3)
    assert_codes_equal(q, q_ref)
    assert_scales_equal(scale, scale_ref)
    return q, scale


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("M, K", SHAPES, ids=str)
def test_dynamic_per_token_bit_exact(M, K, dtype):
    # rows from 1 to 1e3 in magnitude, each spanning 10^5, so that its small values get subnormal codes (below
    # 2^-6 = amax / 448 · 448 / 2^6, about amax / 3e4)
    x = torch.randn(M, K) * torch.logspace(0, 3, M)[:, None] * torch.logspace(-5, 0, K)
    q, scale = _dynamic(x.to(dtype).to(DEVICE))
    assert (q.float().abs().amax(dim=1) == 448).all()  # every row reaches ±448 at its absmax


@pytest.mark.parametrize("block_k", [16, 32])
@pytest.mark.parametrize("M, K", [(13, 100), (67, 45)], ids=str)
def test_two_pass_path(M, K, block_k):
    # rows longer than one block: an absmax pass, then a quantize pass
    x = (torch.randn(M, K) * torch.logspace(-2, 2, M)[:, None]).to(DEVICE)
    q, scale = _dynamic(x.half(), block_k=block_k)
    assert_codes_equal(q, _dynamic(x.half())[0])  # and the one-pass path agrees


@pytest.mark.parametrize("block_k", [None, 16], ids=["one pass", "two passes"])
def test_non_finite_and_zero_rows(block_k):
    # a row holding NaN, +inf or -inf (in whichever K block) gets scale NaN and all-NaN codes; an all-zero row
    # scale MIN_SCALE and +0 codes; the other rows are untouched
    x = torch.randn(6, 45, device=DEVICE) * 3
    x[1, 3], x[2, 44], x[3, 20] = math.nan, math.inf, -math.inf
    x[4] = 0.0
    q, scale = _dynamic(x, block_k=block_k)
    assert scale[1:4].isnan().all() and q[1:4].float().isnan().all()
    assert scale[4].item() == quant.MIN_SCALE and q[4].view(torch.uint8).eq(0).all()
    assert scale[[0, 5]].isfinite().all() and q[[0, 5]].float().isfinite().all()


def test_empty_shapes():
    # M = 0: nothing to launch; K = 0: each empty row's range is widened to contain 0, so scale MIN_SCALE
    q, scale = _dynamic(torch.empty(0, 8, device=DEVICE))
    assert q.shape == (0, 8) and q.dtype == E4M3 and scale.shape == (0,)
    q, scale = _dynamic(torch.empty(3, 0, device=DEVICE))
    assert q.shape == (3, 0) and (scale == quant.MIN_SCALE).all()
    q = _static(torch.empty(0, 5, device=DEVICE), 0.5)
    assert q.shape == (0, 5)
