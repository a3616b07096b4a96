"""lowp_ops.quant: the quantization math, checked against torch's own fake-quantize bit for bit."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowp_ops import quant
from lowp_ops.quant import Granularity, QuantSpec
from util import assert_bitwise_equal

# ------------------------------------------------------------------------------------------------- specs

@pytest.mark.parametrize("spec, qmin, qmax, dtype", [
    (QuantSpec(bits=8), -127, 127, torch.int8),
    (QuantSpec(bits=8, symmetric=False), -128, 127, torch.int8),
    (QuantSpec(bits=8, symmetric=False, signed=False), 0, 255, torch.uint8),
    (QuantSpec(bits=4), -7, 7, torch.int8),
    (QuantSpec(bits=2, symmetric=False), -2, 1, torch.int8),
])
def test_spec_ranges(spec, qmin, qmax, dtype):
    assert (spec.qmin, spec.qmax, spec.storage_dtype) == (qmin, qmax, dtype)


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=1), "bits must be an int in 2..8"),
    (dict(bits=9), "bits must be an int in 2..8"),
    (dict(granularity="per_channel"), "needs an axis"),
    (dict(granularity="per_group"), "positive int group_size"),
    (dict(axis=0), "axis is only meaningful per channel"),
    (dict(group_size=32), "group_size is only meaningful per group"),
])
def test_spec_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantSpec(**kwargs)


# ------------------------------------------------------------------------ bit-identical to torch's fake-quant

@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quantize_per_tensor_matches_torch(bits, symmetric):
    spec = QuantSpec(bits=bits, symmetric=symmetric)
    x = torch.randn(37, 53) * 3
    scale, zp = quant.choose_qparams(*quant.reduce_minmax(x, spec), spec)
    ours = quant.fake_quantize(x, scale, zp, spec)
    theirs = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zp), spec.qmin, spec.qmax)
    assert_bitwise_equal(ours, theirs)
    # and with a scale that puts many inputs exactly on rounding ties
    ties = torch.arange(-40, 40) * 0.25
    s = torch.tensor(0.5)
    z = torch.tensor(0 if symmetric else -1, dtype=torch.int32)
    assert_bitwise_equal(quant.fake_quantize(ties, s, z, spec),
                         torch.fake_quantize_per_tensor_affine(ties, 0.5, int(z), spec.qmin, spec.qmax))


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quantize_per_channel_matches_torch(axis, symmetric):
    spec = QuantSpec(bits=8, symmetric=symmetric, granularity=Granularity.PER_CHANNEL, axis=axis)
    x = torch.randn(6, 17, 5) * torch.rand(6, 17, 1) * 4
    scale, zp = quant.choose_qparams(*quant.reduce_minmax(x, spec), spec)
    ours = quant.fake_quantize(x, scale, zp, spec)
    theirs = torch.fake_quantize_per_channel_affine(x, scale, zp, axis % x.ndim, spec.qmin, spec.qmax)
    assert_bitwise_equal(ours, theirs)


def test_fake_quantize_gradient_matches_torch():
    spec = QuantSpec(bits=8, symmetric=False)
    x = (torch.randn(1000) * 4).requires_grad_()
    x_torch = x.detach().clone().requires_grad_()
    scale, zp = torch.tensor(0.01), torch.tensor(5, dtype=torch.int32)  # clips most of x: both gradient cases
    quant.fake_quantize(x, scale, zp, spec).sum().backward()
    torch.fake_quantize_per_tensor_affine(x_torch, 0.01, 5, spec.qmin, spec.qmax).sum().backward()
    assert_bitwise_equal(x.grad, x_torch.grad)
    assert 0 < int(x.grad.sum()) < x.numel()


def test_round_half_to_even():
    spec = QuantSpec(bits=8, symmetric=False)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5])
    q = quant.quantize(x, torch.tensor(1.0), torch.tensor(0, dtype=torch.int32), spec)
    assert q.tolist() == [0, 2, 2, 0, -2, -2, 4]


# ------------------------------------------------------------------------------------------- qparams

def test_the_article_formula_is_the_affine_grid():
    # q = round((x - min) / (max - min) * (2^n - 1)), the formula of the article lowp grew from (model acceleration
    # and low-precision computing), for a range containing 0 with an integer offset
    spec = QuantSpec(bits=8, symmetric=False, signed=False)
    x = torch.linspace(-1.0, 3.0, 1001)
    qt = quant.quantize_tensor(x, spec)
    assert qt.scale.item() == pytest.approx(4.0 / 255, rel=1e-6)
    article_q = torch.round((x - x.min()) / (x.max() - x.min()) * 255)
    assert (qt.qdata.float() - article_q).abs().max() <= 1  # the offset min/scale is rounded to an integer


@pytest.mark.parametrize("spec", [QuantSpec(bits=8), QuantSpec(bits=8, symmetric=False),
                                  QuantSpec(bits=4, symmetric=False, signed=False)])
@pytest.mark.parametrize("value", [0.0, 3.25, -1e-3, 1e30])
def test_degenerate_ranges_give_valid_scales(spec, value):
    x = torch.full((4, 8), value)
    qt = quant.quantize_tensor(x, spec)
    assert torch.isfinite(qt.scale).all() and (qt.scale >= quant.MIN_SCALE).all()
    x_hat = qt.dequantize()
    assert torch.isfinite(x_hat).all()
    if value == 0.0:
        assert qt.scale.item() == quant.MIN_SCALE and not x_hat.any()
    else:
        # a constant is an endpoint of its own range: exact up to float rounding of scale arithmetic
        assert x_hat.sub(value).abs().max() <= abs(value) * 1e-6 or (value < 0 and not spec.signed)


def test_zero_is_exact():
    for spec in (QuantSpec(bits=8, symmetric=False), QuantSpec(bits=3, symmetric=False, signed=False)):
        x = torch.cat([torch.rand(100) * 5 + 0.3, torch.zeros(3)])  # min > 0: range widened to 0
        qt = quant.quantize_tensor(x, spec)
        assert (qt.dequantize()[-3:] == 0).all()


def test_per_token_and_per_group_shapes():
    x = torch.randn(2, 3, 64)
    assert quant.quantize_tensor(x, quant.per_token()).scale.shape == (2, 3)
    qt = quant.quantize_tensor(x, quant.per_group(16))
    assert qt.scale.shape == (2, 3, 4) and qt.qdata.shape == x.shape
    with pytest.raises(ValueError, match="multiple of it"):
        quant.quantize_tensor(torch.randn(3, 10), quant.per_group(4))


_specs = st.builds(
    lambda bits, signed, symmetric, gran, axis, group: QuantSpec(
        bits, signed, symmetric, gran,
        axis=axis if gran == Granularity.PER_CHANNEL else None,
        group_size=group if gran == Granularity.PER_GROUP else None),
    st.integers(2, 8), st.booleans(), st.booleans(), st.sampled_from(list(Granularity)),
    st.integers(-2, 1), st.sampled_from([1, 2, 4, 8]))


@settings(max_examples=60, deadline=None)
@given(spec=_specs, seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3), shift=st.floats(-2, 2))
def test_round_trip_error_is_at_most_half_a_step(spec, seed, scale, shift):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(5, 6, 8, generator=g) + shift) * scale
    qt = quant.quantize_tensor(x, spec)
    assert qt.qdata.dtype == spec.storage_dtype
    assert int(qt.qdata.min()) >= spec.qmin and int(qt.qdata.max()) <= spec.qmax
    from lowp_ops.quant.qparams import as_groups, expand_param
    err = as_groups((qt.dequantize() - x).abs(), spec)
    step = expand_param(qt.scale, err, spec)
    if spec.signed or not spec.symmetric:  # unsigned symmetric clips negatives by design
        assert (err <= step * 0.5 * (1 + 1e-5) + 1e-30).all()
    # quantizing what we dequantized gives the same integers back
    again = quant.quantize(qt.dequantize(), qt.scale, qt.zero_point, spec)
    assert_bitwise_equal(again, qt.qdata)


# -------------------------------------------------------------------------------------- error analysis

def test_uniform_noise_variance_is_the_article_formula():
    assert quant.uniform_noise_variance(-1.0, 3.0, 8) == pytest.approx(16 / (12 * 255**2))
    spec = QuantSpec(bits=8, symmetric=False, signed=False)
    x = torch.rand(200_000) * 4 - 1
    e = quant.quantization_error(x, spec)
    formula = quant.uniform_noise_variance(x.min().item(), x.max().item(), 8)
    assert e.predicted_var == pytest.approx(formula, rel=1e-5)


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_measured_noise_matches_uniform_model(bits):
    # uniform data fills every quantization bin evenly, where the Δ²/12 model is accurate: within 5 %
    x = torch.rand(400_000, dtype=torch.float64).float() * 6 - 2
    e = quant.quantization_error(x, QuantSpec(bits=bits, symmetric=False))
    assert e.measured_var == pytest.approx(e.predicted_var, rel=0.05)
    assert e.sqnr_db == pytest.approx(e.predicted_sqnr_db, abs=0.25)


def test_each_bit_buys_six_db():
    x = torch.randn(64, 4096)
    s = [quant.quantization_error(x, quant.per_channel(0, bits)).sqnr_db for bits in (6, 7, 8)]
    assert s[1] - s[0] == pytest.approx(6.02, abs=0.4) and s[2] - s[1] == pytest.approx(6.02, abs=0.4)
    assert s[2] > 35


def test_sqnr_edges():
    x = torch.randn(10)
    assert quant.sqnr_db(x, x) == math.inf
    assert quant.sqnr_db(x, x + 0.1 * x) == pytest.approx(20.0, abs=1e-4)  # x + 0.1x rounds in float32


# ------------------------------------------------------------------------ non-finite values, empty groups

NAN, INF = math.nan, math.inf


def test_non_finite_values_quantize_to_the_zero_point_or_saturate():
    # lowp's rule, the kernels' too: NaN -> the zero point (the code of 0.0), +inf -> qmax, -inf -> qmin
    x = torch.tensor([[NAN, INF, -INF, 0.5], [0.5, NAN, INF, -INF]])
    spec = QuantSpec(bits=8, symmetric=False)
    q = quant.quantize(x, torch.tensor(0.1), torch.tensor(3, dtype=torch.int32), spec)
    assert q.tolist() == [[3, 127, -128, 8], [8, 3, 127, -128]]
    per_row = QuantSpec(bits=8, symmetric=False, granularity=Granularity.PER_CHANNEL, axis=0)
    q = quant.quantize(x, torch.tensor([0.1, 0.25]), torch.tensor([3, -7], dtype=torch.int32), per_row)
    assert q.tolist() == [[3, 127, -128, 8], [-5, -7, 127, -128]]
    unsigned = QuantSpec(bits=4, symmetric=False, signed=False)
    assert quant.quantize(x[0], torch.tensor(0.1), torch.tensor(2), unsigned).tolist() == [2, 15, 0, 7]


@pytest.mark.parametrize("spec", [QuantSpec(bits=8), QuantSpec(bits=8, symmetric=False),
                                  QuantSpec(bits=4, symmetric=False, signed=False)])
def test_non_finite_ranges_give_a_nan_scale(spec):
    lo = torch.tensor([NAN, -INF, 0.0, -1.0, -1.0])
    hi = torch.tensor([1.0, 1.0, INF, NAN, 3.0])
    scale, zero_point = quant.choose_qparams(lo, hi, spec)
    assert scale.isnan().tolist() == [True, True, True, True, False]
    assert zero_point[:4].tolist() == [min(max(0, spec.qmin), spec.qmax)] * 4  # defined, in range
    finite_scale, finite_zp = quant.choose_qparams(lo[4:], hi[4:], spec)  # the finite range is untouched
    assert_bitwise_equal(scale[4:], finite_scale)
    assert_bitwise_equal(zero_point[4:], finite_zp)


def test_per_token_rows_with_non_finite_values():
    x = torch.randn(4, 16)
    x[1, 3], x[2, 0] = NAN, -INF
    qt = quant.quantize_tensor(x, quant.per_token())
    assert qt.scale.isnan().tolist() == [False, True, True, False] and not qt.qdata[1:3].any()
    assert qt.dequantize()[1:3].isnan().all() and torch.isfinite(qt.dequantize()[[0, 3]]).all()
    rest = quant.quantize_tensor(x[[0, 3]], quant.per_token())
    assert_bitwise_equal(qt.qdata[[0, 3]], rest.qdata)
    assert_bitwise_equal(qt.scale[[0, 3]], rest.scale)


def test_empty_groups_get_the_min_scale():
    # an empty range is widened to contain 0 like every range (torch.amin would raise on it)
    qt = quant.quantize_tensor(torch.empty(3, 0), quant.per_token())
    assert qt.qdata.shape == (3, 0) and qt.scale.tolist() == [quant.MIN_SCALE] * 3
    lo, hi = quant.reduce_minmax(torch.empty(0, 5), quant.per_tensor())
    assert lo.shape == () and lo.item() == 0.0 and hi.item() == 0.0
    lo, hi = quant.reduce_minmax(torch.empty(2, 0, 5), quant.per_channel(axis=0))
    assert lo.tolist() == [0.0, 0.0] and hi.tolist() == [0.0, 0.0]


def test_fake_quantize_of_non_finite_values():
    # forward: dequantize(quantize(x)) as the int8 path computes it (NaN -> 0, ±inf saturate); backward: zero
    # outside the range, NaN included (torch.fake_quantize_*'s gradient)
    spec = QuantSpec(bits=8, symmetric=False)
    x = torch.tensor([NAN, INF, -INF, 0.5], requires_grad=True)
    scale, zp = torch.tensor(0.1), torch.tensor(3, dtype=torch.int32)
    y = quant.fake_quantize(x, scale, zp, spec)
    assert_bitwise_equal(y.detach(), (torch.tensor([3.0, 127.0, -128.0, 8.0]) - 3) * scale)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 1.0]
