"""lowp_ops.convert: what it checks of calibration (non-finite and degenerate ranges), how it meets the model
analysis (the recorded example, the calibration hooks gone first, the notes), and what the converted model does
under .train() (Dropout between int8 layers)."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowp_ops
from lowp_ops import Int8StaticConfig, quant
from lowp_ops.registry import graph
from util import assert_bitwise_equal, static_int8


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4)).eval()


def _prepared(batches, **kw):
    prepared = lowp_ops.prepare(_mlp(), Int8StaticConfig(**kw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the observers' own warning about NaN batches (test_observers)
        lowp_ops.calibrate(prepared, batches, progress=False)
    return prepared


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("observer", ["minmax", "mse"])
def test_convert_refuses_nonfinite_calibration_naming_the_layer(value, observer):
    bad = torch.randn(16, 8)
    bad[3, 1] = value
    prepared = _prepared([torch.randn(16, 8), bad, bad.clone(), torch.randn(16, 8)], observer=observer)
    # layer 0's output on those batches is non-finite too, so layer 3 saw them as well: both are named
    with pytest.raises(ValueError, match=r"convert: NaN or inf reached the input of layer '0' in 2 observed inputs, "
                                         r"'3' in 2 observed inputs; a scale cannot be made of them"):
        lowp_ops.convert(prepared)
    # what the message offers: accept the finite batches' range, and the layers convert with finite scales
    for layer in (prepared[0], prepared[3]):
        layer.input_observer.nonfinite_batches.zero_()
    q = lowp_ops.convert(prepared)
    assert torch.isfinite(q[0].input_scale).all() and torch.isfinite(q(torch.randn(4, 8))).all()


def test_convert_refuses_a_layer_that_saw_only_nonfinite_inputs():
    bad = torch.full((16, 8), float("nan"))
    with pytest.raises(ValueError, match=r"convert: NaN or inf reached the input of layer '0' in 1 observed input, "
                                         r"'3' in 1 observed input;"):
        lowp_ops.convert(_prepared([bad]))


@pytest.mark.parametrize("constant", [0.0, 1.5])
def test_convert_warns_about_a_single_valued_calibration_range(constant):
    prepared = _prepared([torch.full((16, 8), constant)] * 2)
    with pytest.warns(UserWarning, match=rf"convert: layer '0' saw a single input value in calibration \(range "
                                         rf"\[{constant:g}, {constant:g}\]\)") as record:
        lowp_ops.convert(prepared)
    assert record[0].filename == __file__  # pointed at the call of convert
    # only layer 0 saw one value (layer 3 sees relu(W x + b), which varies across output features)
    assert [str(w.message).split("'")[1] for w in record if "single input value" in str(w.message)] == ["0"]


def test_convert_is_quiet_on_ordinary_calibration():
    prepared = _prepared([torch.randn(16, 8) for _ in range(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lowp_ops.convert(prepared)


def test_the_analysis_runs_on_the_first_call_without_the_calibration_hooks(monkeypatch):
    real, seen = graph.analyse, []

    def analyse(model, layers, *, example=None, leaves=()):
        # what torch.export does: run the forward on the example; no observer may see it, and nothing records it
        assert not any(hasattr(model.get_submodule(fqn), "input_observer") for fqn in layers)
        assert not model._forward_pre_hooks and not any(m._forward_pre_hooks for m in model.modules())
        model(*example[0], **example[1])
        seen.append(example)
        return real(model, layers, example=example, leaves=leaves)

    monkeypatch.setattr(graph, "analyse", analyse)
    first = torch.randn(16, 8)
    prepared = _prepared([first, torch.randn(16, 8)])
    observer = prepared[0].input_observer
    lo, hi = observer.min_val.clone(), observer.max_val.clone()
    q = lowp_ops.convert(prepared)
    assert seen[0][0][0] is not first and torch.equal(seen[0][0][0], first)  # a detached copy of the first batch
    assert torch.equal(prepared[0].input_observer.min_val, lo) and torch.equal(observer.max_val, hi)
    assert q[0].output_scale is not None


def test_prepare_with_example_inputs_records_no_call():
    x = torch.randn(4, 8)
    prepared = lowp_ops.prepare(_mlp(), example_inputs={"input": x})
    assert prepared._lowp_prepared.example == ((), {"input": x}) and not prepared._forward_pre_hooks
    lowp_ops.calibrate(prepared, [torch.randn(16, 8)], progress=False)
    assert prepared._lowp_prepared.example == ((), {"input": x})


def test_analysis_notes_reach_the_report(monkeypatch):
    for source, suggests in (("torch.export", False), ("torch.fx", True)):
        monkeypatch.setattr(graph, "analyse", lambda model, layers, source=source, **kw: graph.Analysis(
            source, notes=["fc is called at 2 places"]))
        q = lowp_ops.convert(_prepared([torch.randn(16, 8)]))
        assert "fc is called at 2 places" in q.lowp_report.notes
        assert any("read with torch.fx, not torch.export" in n for n in q.lowp_report.notes) == suggests
        dynamic = lowp_ops.quantize_dynamic(_mlp())
        assert any("give quantize_dynamic example_inputs=" in n for n in dynamic.lowp_report.notes) == suggests


def test_train_mode_does_not_break_int8_dropout_edges():
    q = lowp_ops.convert(_prepared([torch.randn(16, 8) for _ in range(2)]))
    assert q[0].output_scale is not None and type(q[2]) is nn.Identity  # int8 passes where the Dropout was
    assert any(n.startswith("2 -> Identity: int8 codes pass it") for n in q.lowp_report.notes)
    x = torch.randn(32, 8)
    expected = q(x)
    q.train()
    assert_bitwise_equal(q(x), expected)  # was: "result type Float can't be cast to the desired output type Char"


class FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.b(F.dropout(torch.relu(self.a(x)), 0.5, training=self.training))


def test_functional_dropout_ends_the_int8_hand_off():
    torch.manual_seed(0)
    model = FunctionalDropout().eval()
    q = static_int8(model, [torch.randn(16, 8) for _ in range(2)])
    # F.dropout reads self.training at run time, so convert cannot pin it: a float edge, which dropout can scale
    assert q.a.output_scale is None
    q.train()
    y = q(torch.randn(32, 8))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert quant.sqnr_db(model(torch.ones(4, 8)), q.eval()(torch.ones(4, 8))) > 30
