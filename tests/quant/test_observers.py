"""lowp_ops.quant observers: calibration statistics -> (scale, zero_point), always through choose_qparams."""

import pytest
import torch

from lowp_ops import quant
from lowp_ops.quant import OBSERVERS, HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, PercentileObserver
from util import assert_bitwise_equal


def calibrate(obs, batches):
    for b in batches:
        obs(b)
    return obs.calculate_qparams()


def mse(x, qparams, spec):
    """Measured mean (x - fake_quantize(x))², float64."""
    return (quant.fake_quantize(x, *qparams, spec).double() - x.double()).pow(2).mean().item()


def bulk_and_outlier(outlier=100.0):
    """Four batches of N(0, 1) (100k values); the second also holds one huge value."""
    batches = list(torch.randn(100_000).chunk(4))
    batches[1] = torch.cat([batches[1], torch.tensor([outlier])])
    return batches


SPECS = {  # id -> spec, for the observers that take per-tensor specs
    "int8_sym": quant.per_tensor(8),
    "int4_sym": quant.per_tensor(4),
    "int8_affine": quant.per_tensor(8, symmetric=False),
    "int4_affine": quant.per_tensor(4, symmetric=False),
    "uint8_sym": quant.per_tensor(8, signed=False),
}


# ------------------------------------------------------------------------------------------- min / max

@pytest.mark.parametrize("spec, shape, cat_dim", [
    pytest.param(quant.per_tensor(8), (9, 13), 0, id="per_tensor_sym"),
    pytest.param(quant.per_tensor(4, symmetric=False), (9, 13), 0, id="per_tensor_affine"),
    pytest.param(quant.per_channel(0), (6, 11, 5), 1, id="per_channel_axis0_sym"),  # weight-like: (C, ...)
    pytest.param(quant.per_channel(1, symmetric=False), (4, 12, 5), 0, id="per_channel_axis1_affine"),
    pytest.param(quant.per_channel(-1, signed=False), (4, 3, 7), 0, id="per_channel_axis-1_unsigned"),
])
def test_minmax_is_choose_qparams_of_all_the_data(spec, shape, cat_dim):
    # batches with different spreads and offsets, so the running min and max come from different batches
    batches = [torch.randn(shape) * (k + 1) + (k - 1.5) for k in range(4)]
    scale, zp = calibrate(MinMaxObserver(spec), batches)
    expected = quant.choose_qparams(*quant.reduce_minmax(torch.cat(batches, cat_dim), spec), spec)
    assert_bitwise_equal(scale, expected[0])  # min / max are exact: no tolerance
    assert_bitwise_equal(zp, expected[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_any_float_dtype_is_read_as_float32(dtype):
    x = (torch.randn(64, 32) * 3).to(dtype)
    spec = quant.per_channel(0, symmetric=False)
    scale, zp = calibrate(MinMaxObserver(spec), [x])
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32 and scale.shape == (64,)
    expected = quant.choose_qparams(*quant.reduce_minmax(x.float(), spec), spec)
    assert_bitwise_equal(scale, expected[0])
    assert_bitwise_equal(zp, expected[1])


@pytest.mark.parametrize("spec", [quant.per_tensor(8, symmetric=False), quant.per_channel(1)],
                         ids=["per_tensor", "per_channel"])
def test_moving_average_follows_its_formula(spec):
    momentum = 0.1
    batches = [torch.randn(5, 8) * s + o for s, o in ((1.0, 0.0), (4.0, 1.0), (0.5, -2.0))]
    obs = MovingAverageMinMaxObserver(spec, momentum=momentum)
    scale, zp = calibrate(obs, batches)
    lo, hi = (t.double() for t in quant.reduce_minmax(batches[0], spec))
    for b in batches[1:]:
        b_lo, b_hi = (t.double() for t in quant.reduce_minmax(b, spec))
        lo, hi = (1 - momentum) * lo + momentum * b_lo, (1 - momentum) * hi + momentum * b_hi
    # float32 arithmetic: two updates of 3 roundings each, against a float64 oracle
    torch.testing.assert_close(obs.min_val.double(), lo, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(obs.max_val.double(), hi, rtol=1e-6, atol=1e-6)
    exp_scale, exp_zp = quant.choose_qparams(lo.float(), hi.float(), spec)
    torch.testing.assert_close(scale, exp_scale, rtol=1e-6, atol=0)
    assert (zp - exp_zp).abs().max() <= 1  # zero_point = round(lo / scale): a tie may flip by one


def test_moving_average_shrugs_off_one_outlier_batch():
    batches = bulk_and_outlier(outlier=100.0)
    mm = calibrate(MinMaxObserver(quant.per_tensor(8)), batches)[0]
    ma = calibrate(MovingAverageMinMaxObserver(quant.per_tensor(8), momentum=0.01), batches)[0]
    # the outlier batch moves the average by momentum · 96 ≈ 1, not to 100
    assert ma.item() * 127 < 6 and mm.item() * 127 == pytest.approx(100)


# ------------------------------------------------------------------------------------------ percentile

@pytest.mark.parametrize("spec_id", ["int8_sym", "int8_affine"])
def test_percentile_clips_a_single_outlier(spec_id):
    spec = SPECS[spec_id]
    batches = bulk_and_outlier(outlier=100.0)
    mm = calibrate(MinMaxObserver(spec), batches)
    pc = calibrate(PercentileObserver(spec), batches)
    assert pc[0] < mm[0] / 10  # 99.99th percentile of |N(0, 1)| ≈ 3.9, against the outlier's 100
    bulk = torch.cat(batches[:1] + [batches[1][:-1]] + batches[2:])
    gain = quant.sqnr_db(bulk, quant.fake_quantize(bulk, *pc, spec)) - \
        quant.sqnr_db(bulk, quant.fake_quantize(bulk, *mm, spec))
    assert gain > 20  # the step shrinks ~25x: 20·log10(25) ≈ 28 dB, less a little clipping of the tail


@pytest.mark.parametrize("spec_id, expected_lo, expected_hi", [
    ("int8_sym", -0.99, 0.99),  # 99th percentile of |U(-1, 1)|
    ("int8_affine", -0.98, 0.98),  # 1st and 99th percentiles of U(-1, 1)
])
def test_percentile_reads_the_quantile_off_the_histogram(spec_id, expected_lo, expected_hi):
    spec = SPECS[spec_id]
    x = torch.rand(200_000) * 2 - 1
    scale, zp = calibrate(PercentileObserver(spec, percentile=99.0), x.chunk(3))
    exp_scale, exp_zp = quant.choose_qparams(torch.tensor(expected_lo), torch.tensor(expected_hi), spec)
    # sampling error of a 99th percentile from 200k values ≈ 2e-4, histogram grid 2 / 2048 ≈ 1e-3: 0.3 %
    assert scale.item() == pytest.approx(exp_scale.item(), rel=3e-3)
    assert abs(int(zp) - int(exp_zp)) <= 1


@pytest.mark.parametrize("spec_id", ["int8_sym", "int4_affine"])
def test_percentile_100_is_minmax(spec_id):
    spec = SPECS[spec_id]
    batches = bulk_and_outlier(outlier=7.0)
    mm = calibrate(MinMaxObserver(spec), batches)
    pc = calibrate(PercentileObserver(spec, percentile=100.0), batches)
    torch.testing.assert_close(pc[0], mm[0], rtol=1e-6, atol=0)  # hi = lo + (hi - lo) in float64
    assert_bitwise_equal(pc[1], mm[1])


# ------------------------------------------------------------------------------------------------- MSE

@pytest.mark.parametrize("spec_id, data, max_ratio", [
    # Laplace(0, 1): the MSE-optimal clip is ~9.9 (8 bits) / ~5 (4 bits) against a sample max of ~12
    # (Banner et al., "ACIQ", 2018); measured ratios with seed 0: 0.85, 0.28, 0.85, 0.30.
    ("int8_sym", "laplace", 0.9),
    ("int4_sym", "laplace", 0.5),
    ("int8_affine", "laplace", 0.9),
    ("int4_affine", "laplace", 0.5),
    # Student's t with 3 degrees of freedom: heavier tails still (sample max ~110); measured 0.51, 0.71
    ("int8_sym", "student_t", 0.7),
    ("int8_affine", "student_t", 0.85),
    # one value at 100 among 100k N(0, 1): clipping it to the bulk would cost (100 - 4)² / 100k ≈ 0.09 per
    # value, 7x MinMax's whole rounding noise, so the MSE-optimal range stays near it (percentile clips it).
    # Only "no loss" is required; measured 0.66, 0.88
    ("int8_sym", "lone_outlier", 1.0),
    ("int8_affine", "lone_outlier", 1.0),
])
def test_mse_beats_minmax_on_heavy_tails(spec_id, data, max_ratio):
    spec = SPECS[spec_id]
    if data == "laplace":
        batches = list(torch.distributions.Laplace(0.0, 1.0).sample((200_000,)).chunk(4))
    elif data == "student_t":
        batches = list(torch.distributions.StudentT(3.0).sample((200_000,)).chunk(4))
    else:
        batches = bulk_and_outlier(outlier=100.0)
    x = torch.cat(batches)
    ours = mse(x, calibrate(HistogramObserver(spec), batches), spec)
    theirs = mse(x, calibrate(MinMaxObserver(spec), batches), spec)
    assert ours < max_ratio * theirs


@pytest.mark.parametrize("spec_id", list(SPECS))
def test_mse_is_no_worse_than_minmax_on_uniform_data(spec_id):
    # nothing to clip: the search may trim a fraction of a step off the ends (the model says that pays),
    # which must not cost more than 2 % of MinMax's error
    spec = SPECS[spec_id]
    batches = list((torch.rand(200_000) * 4 - 1).chunk(4))
    x = torch.cat(batches)
    ours = mse(x, calibrate(HistogramObserver(spec), batches), spec)
    theirs = mse(x, calibrate(MinMaxObserver(spec), batches), spec)
    assert ours <= 1.02 * theirs


@pytest.mark.parametrize("spec_id", ["int8_sym", "int4_affine"])
def test_mse_estimate_matches_the_measured_error(spec_id):
    # the histogram's estimate is what the search minimizes; on data without exact zeros the Δ²/12 model holds
    # (measured: within 1 %), so 3 % leaves room for the bin-center approximation
    spec = SPECS[spec_id]
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    obs = HistogramObserver(spec)
    qparams = calibrate(obs, [x])
    lo, hi = obs._clip_range()
    estimate = obs._expected_sq_error(lo.reshape(1), hi.reshape(1)).item() / x.numel()
    assert estimate == pytest.approx(mse(x, qparams, spec), rel=0.03)


def test_rebinning_keeps_every_count_and_the_shape():
    # every batch widens the range (both ends move), so the histogram is re-binned five times
    batches = [torch.randn(20_000) * 2.0**k + k for k in range(6)]
    x = torch.cat(batches)
    obs, direct = HistogramObserver(quant.per_tensor(8)), HistogramObserver(quant.per_tensor(8))
    calibrate(obs, batches)
    calibrate(direct, [x])  # the same data binned once, in the final range
    assert obs.min_val.item() == x.min().item() and obs.max_val.item() == x.max().item()
    # re-binning splits counts into float32 fractions: totals agree to float32 rounding
    assert obs.histogram.sum().item() == pytest.approx(x.numel(), rel=1e-6)
    # mass moves by less than a bin: the CDFs differ by a tenth of the fullest bin's share at most (measured:
    # 2e-4 against 0.016); a count misplaced by one bin would show the whole 0.016
    ks = (obs.histogram.double().cumsum(0) - direct.histogram.double().cumsum(0)).abs().max() / x.numel()
    assert ks < 0.1 * direct.histogram.max() / x.numel()
    bin_width = (x.max() - x.min()).item() / obs.bins
    centers, counts = obs._centers_and_counts()
    assert abs((centers * counts).sum() / counts.sum() - x.double().mean()) < bin_width / 10


# -------------------------------------------------------------------------------------- every observer

@pytest.mark.parametrize("name", list(OBSERVERS))
def test_no_data_raises(name):
    obs = OBSERVERS[name](quant.per_tensor(8))
    obs(torch.empty(0, 4))  # an empty batch is not data
    assert not obs.has_data
    with pytest.raises(ValueError, match="saw no data"):
        obs.calculate_qparams()
    obs(torch.randn(3))
    assert obs.has_data


@pytest.mark.parametrize("spec", [quant.per_token(), quant.per_group(16)], ids=["per_token", "per_group"])
@pytest.mark.parametrize("name", list(OBSERVERS))
def test_per_token_and_per_group_are_rejected(name, spec):
    cls = OBSERVERS[name]
    with pytest.raises(ValueError, match=f"{cls.__name__}: granularity '{spec.granularity.value}'"):
        cls(spec)


@pytest.mark.parametrize("cls", [HistogramObserver, PercentileObserver], ids=lambda c: c.__name__)
def test_histograms_are_per_tensor_only(cls):
    with pytest.raises(ValueError, match=f"{cls.__name__}: granularity 'per_channel'"):
        cls(quant.per_channel(0))


def test_bad_arguments_and_inconsistent_batches_are_rejected():
    with pytest.raises(ValueError, match="momentum"):
        MovingAverageMinMaxObserver(quant.per_tensor(), momentum=0.0)
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(quant.per_tensor(), percentile=101)
    with pytest.raises(ValueError, match="bins"):
        HistogramObserver(quant.per_tensor(), bins=1)
    obs = MinMaxObserver(quant.per_channel(1))
    obs(torch.randn(4, 8))
    with pytest.raises(ValueError, match="has 9 channels along axis 1, earlier batches had 8"):
        obs(torch.randn(4, 9))
    with pytest.raises(ValueError, match="axis 1 is out of range"):
        obs(torch.randn(8))


@pytest.mark.parametrize("spec_id", ["int8_sym", "int4_affine", "uint8_sym"])
@pytest.mark.parametrize("name", list(OBSERVERS))
def test_constant_data_gives_a_valid_scale(name, spec_id):
    spec = SPECS[spec_id]
    zeros = calibrate(OBSERVERS[name](spec), [torch.zeros(100), torch.zeros(3, 5)])
    assert zeros[0].item() == quant.MIN_SCALE  # positive and finite; 1 / scale = 2^126 is finite too
    assert not quant.fake_quantize(torch.zeros(10), *zeros, spec).any()
    # a constant is its own best range: every observer agrees with MinMax
    const = [torch.full((100,), 3.25), torch.full((7,), 3.25)]
    expected = calibrate(MinMaxObserver(spec), const)
    got = calibrate(OBSERVERS[name](spec), const)
    assert_bitwise_equal(got[0], expected[0])
    assert_bitwise_equal(got[1], expected[1])


NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


@pytest.mark.parametrize("value", list(NONFINITE))
@pytest.mark.parametrize("name", list(OBSERVERS))
def test_nonfinite_batches_are_counted_never_scales(name, value):
    # lowp's rule: NaN / inf never become a scale. The batch is counted and left out, with a warning; the range and
    # the qparams are those of the finite batches, bit for bit; convert refuses the layer (test_registry_convert).
    spec = quant.per_tensor(8, symmetric=False)
    good = [torch.randn(64) * 2, torch.randn(64) + 1]
    bad = torch.randn(64)
    bad[5] = NONFINITE[value]
    obs, clean = OBSERVERS[name](spec), OBSERVERS[name](spec)
    with pytest.warns(UserWarning, match=f"{type(obs).__name__}: a batch holding NaN or inf was left out"):
        qparams = calibrate(obs, [good[0], bad, good[1]])
    expected = calibrate(clean, good)
    assert int(obs.nonfinite_batches) == 1 and int(clean.nonfinite_batches) == 0
    assert_bitwise_equal(qparams[0], expected[0])
    assert_bitwise_equal(qparams[1], expected[1])
    assert torch.isfinite(qparams[0]).all()
    # the count is state: it survives state_dict, and a checkpoint from before it existed loads as "none seen"
    fresh = OBSERVERS[name](spec)
    fresh.load_state_dict(obs.state_dict())
    assert int(fresh.nonfinite_batches) == 1
    legacy = {k: v for k, v in clean.state_dict().items() if k != "nonfinite_batches"}
    fresh.load_state_dict(legacy)
    assert int(fresh.nonfinite_batches) == 0 and fresh.has_data


def test_only_nonfinite_batches_is_no_data():
    obs = MinMaxObserver(quant.per_channel(0))
    with pytest.warns(UserWarning, match="left out"):
        obs(torch.tensor([[1.0, float("nan")], [2.0, 3.0]]))
    assert not obs.has_data
    with pytest.raises(ValueError, match=r"MinMaxObserver: calculate_qparams saw only batches holding NaN or inf "
                                         r"\(1\)"):
        obs.calculate_qparams()


ROUND_TRIP = [
    pytest.param("minmax", quant.per_channel(1, symmetric=False), id="minmax_per_channel"),
    pytest.param("moving_average", quant.per_tensor(8), id="moving_average"),
    pytest.param("percentile", quant.per_tensor(8, symmetric=False), id="percentile"),
    pytest.param("mse", quant.per_tensor(4), id="mse"),
]


@pytest.mark.parametrize("name, spec", ROUND_TRIP)
def test_state_dict_round_trip_keeps_qparams(name, spec):
    batches = [torch.randn(16, 8) * (k + 1) for k in range(3)]
    obs = OBSERVERS[name](spec)
    scale, zp = calibrate(obs, batches)
    fresh = OBSERVERS[name](spec)  # min_val / max_val still (0,): loading adopts the saved shape
    fresh.load_state_dict(obs.state_dict())
    assert fresh.has_data
    assert_bitwise_equal(fresh.calculate_qparams()[0], scale)
    assert_bitwise_equal(fresh.calculate_qparams()[1], zp)
    # and the loaded state keeps calibrating like the original
    more = torch.randn(16, 8) * 5
    obs(more), fresh(more)
    assert_bitwise_equal(fresh.calculate_qparams()[0], obs.calculate_qparams()[0])
    # an uncalibrated state loads too, and means "no data"
    obs.load_state_dict(OBSERVERS[name](spec).state_dict())
    assert not obs.has_data


@pytest.mark.parametrize("name, spec", ROUND_TRIP)
def test_module_to_float64_keeps_qparams(name, spec):
    # Module.to(dtype) casts floating buffers (min_val, max_val, histogram); float32 -> float64 is exact and
    # qparams are computed from the state as float32 / float64, so nothing may change
    obs = OBSERVERS[name](spec)
    scale, zp = calibrate(obs, [torch.randn(16, 8) * (k + 1) for k in range(3)])
    obs.to(torch.float64)
    assert obs.min_val.dtype == torch.float64
    assert_bitwise_equal(obs.calculate_qparams()[0], scale)
    assert_bitwise_equal(obs.calculate_qparams()[1], zp)


@pytest.mark.parametrize("name", list(OBSERVERS))
def test_forward_returns_its_input_and_keeps_no_graph(name):
    obs = OBSERVERS[name](quant.per_tensor(8))
    x = torch.randn(8, 4, requires_grad=True)
    y = obs(x)
    assert y is x
    y.sum().backward()  # the observer is transparent to autograd
    assert torch.equal(x.grad, torch.ones_like(x))
    assert all(not b.requires_grad and b.grad_fn is None for b in obs.buffers())
    fresh = OBSERVERS[name](quant.per_tensor(8))
    with torch.no_grad():
        z = x * 3
        assert fresh(z) is z and fresh.has_data  # records under no_grad as well


@pytest.mark.parametrize("name", ["minmax", "moving_average", "mse"])
def test_a_fresh_per_tensor_state_has_the_calibrated_shapes(name):
    """torch.distributed.checkpoint loads a checkpoint into the tensors of a fresh model's state_dict, in place:
    a per-tensor observer's min_val / max_val are () from the start (+inf / -inf: no data)."""
    obs, fresh = OBSERVERS[name](quant.per_tensor(8)), OBSERVERS[name](quant.per_tensor(8))
    assert fresh.min_val.shape == () and fresh.max_val.shape == () and not fresh.has_data
    scale, _ = calibrate(obs, [torch.randn(16, 8)])
    target = fresh.state_dict()
    for key, value in obs.state_dict().items():
        assert target[key].shape == value.shape
        target[key].copy_(value)  # as dcp.load does
    fresh.load_state_dict(target)  # as set_state_dict does
    assert fresh.has_data
    assert_bitwise_equal(fresh.calculate_qparams()[0], scale)
    fresh.load_state_dict(OBSERVERS[name](quant.per_tensor(8)).state_dict())
    assert not fresh.has_data
