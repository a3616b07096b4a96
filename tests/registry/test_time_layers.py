"""time_layers=True (lowp_ops/registry/timing.py): a layer slower converted than float on this machine stays float,
with both times in lowp_report, and the rest of the model converts as if that layer had been named float. The
decisions are tested on given timings (the machine's own are noise here); one test times for real."""

import pytest
import torch
from torch import nn

import lowp_ops
from lowp_ops.nn import Int8Conv2d, Int8Linear
from lowp_ops.registry import timing
from util import assert_bitwise_equal


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc1 = nn.Linear(8 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(torch.relu(self.conv(x)), 1))))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return _Net().eval()


X = torch.randn(2, 3, 8, 8)


# each layer of _Net by its float weight's shape, which the converted twin and the float one share
_NAMES = {tuple(m.weight.shape): name for name, m in _net().named_children()}


@pytest.fixture
def timings(monkeypatch):
    """Layer name -> (converted, float) µs a call, as median_us reports them; layers not named: converted wins.
    "whole": (every layer converted, the slower ones float) for the whole-model check; not named: the latter wins."""
    given: dict[str, tuple[float, float]] = {}
    timed = []

    def median_us(converted, original, q_in, f_in):
        if not hasattr(original, "weight"):  # two whole models (timing.whole_model_faster)
            timed.append("whole")
            return given.get("whole", (2.0, 1.0))
        timed.append(_NAMES[tuple(original.weight.shape)])
        return given.get(timed[-1], (1.0, 2.0))

    monkeypatch.setattr(timing, "median_us", median_us)
    return given, timed


def test_quantize_dynamic_keeps_the_slower_layers_float(timings):
    given, timed = timings
    given["fc2"] = (40.0, 6.0)
    model = _net()
    q = lowp_ops.quantize_dynamic(model, example_inputs=X, time_layers=True)
    assert sorted(timed) == ["conv", "fc1", "fc2", "whole"]
    assert type(q.fc2) is nn.Linear and isinstance(q.fc1, Int8Linear) and isinstance(q.conv, Int8Conv2d)
    reason = q.lowp_report.skipped["fc2"]
    assert "slower than float" in reason and "40.0 us" in reason and "6.0 us" in reason
    expected = lowp_ops.quantize_dynamic(model, overrides={"fc2": None})
    with torch.no_grad():
        assert_bitwise_equal(q(X), expected(X))


def test_convert_keeps_the_slower_layers_float_and_hands_off_around_them(timings):
    given, _ = timings
    given["fc1"] = (50.0, 20.0)  # the middle layer: conv no longer hands int8 to it
    data = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    prepared = lowp_ops.prepare(_net())
    lowp_ops.calibrate(prepared, data, progress=False)
    q = lowp_ops.convert(prepared, time_layers=True, example_inputs=X)
    assert type(q.fc1) is nn.Linear and "slower than float" in q.lowp_report.skipped["fc1"]
    assert isinstance(q.conv, Int8Conv2d) and isinstance(q.fc2, Int8Linear)
    assert q.conv.output_scale is None  # its reader is float now: no int8 hand-off
    named = lowp_ops.prepare(_net(), overrides={"fc1": None})  # what the user would get naming it
    lowp_ops.calibrate(named, data, progress=False)
    with torch.no_grad():
        assert_bitwise_equal(q(X), lowp_ops.convert(named)(X))
    assert isinstance(lowp_ops.convert(prepared).fc1, Int8Linear)  # the prepared model is untouched


def test_a_model_faster_whole_keeps_every_layer_converted(timings):
    """fc1 loses alone, but the model with it converted runs faster whole (it hands int8 on, its reader skips a
    quantization): every layer converts, and the report says why."""
    given, timed = timings
    given.update(fc1=(50.0, 20.0), whole=(100.0, 130.0))
    data = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    prepared = lowp_ops.prepare(_net())
    lowp_ops.calibrate(prepared, data, progress=False)
    q = lowp_ops.convert(prepared, time_layers=True, example_inputs=X)
    assert isinstance(q.fc1, Int8Linear) and not q.lowp_report.skipped and timed.count("whole") == 1
    assert any("faster whole (100.0 us a call)" in n and "130.0 us" in n for n in q.lowp_report.notes)
    with torch.no_grad():
        assert_bitwise_equal(q(X), lowp_ops.convert(prepared)(X))
    in_place = lowp_ops.prepare(_net())
    lowp_ops.calibrate(in_place, data, progress=False)
    assert lowp_ops.convert(in_place, inplace=True, time_layers=True, example_inputs=X) is in_place
    assert isinstance(in_place.fc1, Int8Linear) and any("faster whole" in n for n in in_place.lowp_report.notes)
    given.update(conv=(9.0, 1.0), fc2=(9.0, 1.0))  # all three lose alone; converted whole still wins
    d = lowp_ops.quantize_dynamic(_net(), example_inputs=X, time_layers=True)
    assert len(d.lowp_report.swapped) == 3 and not d.lowp_report.skipped
    assert any("kept every layer converted" in n for n in d.lowp_report.notes)


def test_every_layer_faster_converts_everything(timings):
    q = lowp_ops.quantize(_net(), lowp_ops.Int8DynamicConfig(), example_inputs=X, time_layers=True)
    assert not q.lowp_report.skipped and len(q.lowp_report.swapped) == 3


@pytest.mark.parametrize("call", [
    lambda m: lowp_ops.quantize_dynamic(m, time_layers=True),
    lambda m: lowp_ops.quantize(m, lowp_ops.Int8StaticConfig(), example_inputs=X, time_layers=True),
], ids=["no example", "static at quantize"])
def test_time_layers_needs_what_it_times(call):
    with pytest.raises(ValueError, match="time_layers"):
        call(_net())


def test_convert_time_layers_refuses_qat_and_a_lone_example():
    qat = lowp_ops.prepare_qat(_net())
    qat(X)
    with pytest.raises(ValueError, match="convert: time_layers .* QAT"):
        lowp_ops.convert(qat, time_layers=True)
    with pytest.raises(ValueError, match="convert: example_inputs is the call time_layers"):
        lowp_ops.convert(qat, example_inputs=X)


def test_time_layers_for_real():
    """On this machine's own timings: whichever way each layer goes, the model is whole and says why."""
    model = _net()
    q = lowp_ops.quantize_dynamic(model, example_inputs=X[:1], time_layers=True)
    report = q.lowp_report
    assert set(report.swapped) | set(report.skipped) == {"conv", "fc1", "fc2"}
    assert all("slower than float" in report.skipped[n] for n in report.skipped)
    with torch.no_grad():
        assert q(X).shape == (2, 10)


def test_when_no_layer_pays_the_model_stays_float_and_says_why(timings):
    given, _ = timings
    given.update(conv=(9.0, 1.0), fc1=(9.0, 1.0), fc2=(9.0, 1.0))
    model = _net()
    q = lowp_ops.quantize_dynamic(model, example_inputs=X, time_layers=True)
    assert not q.lowp_report.swapped and set(q.lowp_report.skipped) == {"conv", "fc1", "fc2"}
    prepared = lowp_ops.prepare(_net())
    lowp_ops.calibrate(prepared, [X], progress=False)
    s = lowp_ops.convert(prepared, time_layers=True)  # timed on the calibration call
    assert not s.lowp_report.swapped and "slower than float" in s.lowp_report.skipped["fc1"]
    assert not any(hasattr(m, "input_observer") for m in s.modules())
    with torch.no_grad():
        assert_bitwise_equal(q(X), model(X))
        assert_bitwise_equal(s(X), model(X))
