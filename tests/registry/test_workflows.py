"""lowp_ops' registry and workflows: quantize_dynamic, prepare -> calibrate -> convert, prepare_qat -> convert,
to_fp16 — folding, fusing, int8 hand-offs, reports, checkpoints, compile / export, and their errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowp_ops
from lowp_ops import QuantConfig, quant
from lowp_ops.nn import Fp16Linear, Int8Conv2d, Int8Linear, QATConv2d, QATLinear
from lowp_ops.registry import core
from util import assert_bitwise_equal


class SmallNet(nn.Module):
    """The seed ConvNet's shape at toy size: conv-bn-relu, conv, pool, flatten, fc-relu-dropout-fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.conv2(x), 2)
        x = torch.flatten(x, 1)
        return self.fc2(self.drop(F.relu(self.fc1(x))))


def _net():
    torch.manual_seed(0)
    net = SmallNet().eval()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.3, 0.3)
        net.bn1.running_var.uniform_(0.5, 2.0)
    return net


def _x(n=16):
    return torch.randn(n, 1, 12, 12)


def test_quantize_dynamic_folds_fuses_and_tracks_float():
    net = _net()
    q = lowp_ops.quantize_dynamic(net)
    assert type(q.conv1) is Int8Conv2d and type(q.fc2) is Int8Linear and type(q.bn1) is nn.Identity
    assert q.conv1.activation == "relu" and q.fc1.activation == "relu"
    assert "folded bn1 into conv1" in q.lowp_report.notes
    assert isinstance(net.conv1, nn.Conv2d) and isinstance(net.bn1, nn.BatchNorm2d)  # the original is untouched
    x = _x()
    assert quant.sqnr_db(net(x), q(x)) > 25


def test_unknown_layers_are_reported_not_errors():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(16, 4), nn.LayerNorm(4))
    q = lowp_ops.quantize_dynamic(model)
    assert type(q[2]) is Int8Linear and type(q[0]) is nn.Embedding
    assert "no lowp replacement for Embedding" in q.lowp_report.skipped["0"]
    assert "no lowp replacement for LayerNorm" in q.lowp_report.skipped["3"]
    assert "2: Int8Linear (int8_dynamic)" in str(q.lowp_report)


def test_filter_skip_and_per_layer_overrides():
    net = _net()
    q = lowp_ops.quantize_dynamic(net, QuantConfig(skip=("fc*",)), filter=lambda fqn, m: fqn != "conv2")
    assert type(q.conv1) is Int8Conv2d and type(q.conv2) is nn.Conv2d and type(q.fc1) is nn.Linear
    assert q.lowp_report.skipped == {"conv2": "filtered out", "fc1": "skipped by config", "fc2": "skipped by config"}
    q = lowp_ops.quantize_dynamic(net, overrides={"fc2": QuantConfig(out_dtype=torch.bfloat16)})
    assert q.fc2.out_dtype == torch.bfloat16 and q.fc1.out_dtype is None


def test_register_a_user_module():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(8, 4)

        def forward(self, x):
            return 2 * self.inner(x)

    @lowp_ops.register(Scaled, scheme="int8_dynamic")
    def _(module, config, **context):
        return nn.Sequential(Int8Linear.from_float(module.inner), Scale2())

    class Scale2(nn.Module):
        def forward(self, x):
            return 2 * x

    try:
        model = nn.Sequential(Scaled())
        q = lowp_ops.quantize_dynamic(model)
        x = torch.randn(3, 8)
        assert isinstance(q[0][0], Int8Linear) and quant.sqnr_db(model(x), q(x)) > 30
    finally:
        del core._REGISTRY["int8_dynamic"][Scaled]
    with pytest.raises(ValueError, match="scheme must be one of"):
        lowp_ops.register(nn.Linear, scheme="int4")


def _static(net, observer="minmax", **kw):
    prepared = lowp_ops.prepare(net, QuantConfig(static=True, observer=observer, **kw))
    lowp_ops.calibrate(prepared, [_x() for _ in range(4)], progress=False)
    return lowp_ops.convert(prepared)


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile", "mse"])
def test_static_ptq_hands_int8_between_layers(observer):
    net = _net()
    q = _static(net, observer)
    # conv1 -(relu)-> conv2 and fc1 -(relu, dropout)-> fc2 stay int8; max_pool ends the hand-off before fc1
    assert q.conv1.output_scale is not None and torch.equal(q.conv1.output_scale, q.conv2.input_scale)
    assert q.fc1.output_scale is not None and torch.equal(q.fc1.output_scale, q.fc2.input_scale)
    assert int(q.conv2.input_zero_point) == 0  # a relu sits between: codes must keep 0 at 0
    assert q.conv2.output_scale is None and q.fc2.output_scale is None
    assert "conv1 hands int8 to conv2" in q.lowp_report.notes
    x = _x()
    assert quant.sqnr_db(net(x), q(x)) > 20
    assert not q.training and not hasattr(q, "_lowp_prepared")


def test_static_without_chaining_and_per_tensor_weights():
    q = _static(_net(), chain_int8=False, weight=quant.per_tensor())
    assert all(m.output_scale is None for m in (q.conv1, q.conv2, q.fc1, q.fc2))
    assert q.fc1.weight_scale.numel() == 1 and "per-tensor" in repr(q.fc1)


def test_workflow_errors():
    with pytest.raises(ValueError, match="no layer lowp can convert under 'int8_dynamic'"):
        lowp_ops.quantize_dynamic(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)))
    prepared = lowp_ops.prepare(_net())
    with pytest.raises(ValueError, match="layer 'conv1' saw no calibration data; run lowp_ops.calibrate"):
        lowp_ops.convert(prepared)
    with pytest.raises(ValueError, match="convert: the model was not prepared"):
        lowp_ops.convert(_net())
    with pytest.raises(ValueError, match="calibrate: the model was not prepared"):
        lowp_ops.calibrate(_net(), [_x()])
    with pytest.raises(ValueError, match="observer must be one of"):
        QuantConfig(observer="kl")
    with pytest.raises(ValueError, match="weight spec must be 8-bit signed symmetric"):
        QuantConfig(weight=quant.per_channel(axis=0, bits=4))


def test_qat_converted_model_matches_fake_quant_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5))
    qat = lowp_ops.prepare_qat(model)
    assert type(qat[0]) is QATLinear and qat[2].activation == "relu" and type(qat[3]) is nn.Identity
    opt = torch.optim.SGD(qat.parameters(), lr=0.05)
    for _ in range(20):
        x = torch.randn(32, 20)
        loss = (qat(x) - x[:, :5]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    qat.eval()
    q = lowp_ops.convert(qat)
    assert q[0].output_scale is not None  # 0 -> 2 through flatten: int8 hand-off with the trained scales
    x = torch.randn(64, 20)
    expected, got = qat(x), q(x)
    # Same integers, scales, zero points and rounding rules; only float rounding differs: the int8 kernels'
    # epilogue (acc · sx · sw) vs the fake-quant float matmul, which can flip a requantization tie now and then.
    step = q[4].input_scale.item() * q[4].weight_scale.max().item() * 127 * 16
    assert (got - expected).abs().max() <= step
    assert (got - expected).abs().mean() <= 1e-4 * expected.abs().mean() + 1e-6


def test_qat_conv_folds_batchnorm_and_trains():
    net = _net()
    qat = lowp_ops.prepare_qat(net)
    assert type(qat.conv1) is QATConv2d and type(qat.bn1) is nn.Identity
    qat.train()
    qat(_x()).sum().backward()
    assert qat.conv1.weight.grad is not None and qat.conv1.weight.grad.abs().sum() > 0


def test_to_fp16():
    net = _net()
    h = lowp_ops.to_fp16(net, torch.bfloat16)
    assert type(h.fc1) is Fp16Linear and h.fc1.compute_dtype == torch.bfloat16 and type(h.conv1) is nn.Conv2d
    x = _x()
    assert quant.sqnr_db(net(x), h(x).float()) > 25


def test_checkpoint_round_trips_through_safetensors():
    safetensors = pytest.importorskip("safetensors.torch")
    q = _static(_net())
    blob = safetensors.save(q.state_dict())
    state = safetensors.load(blob)
    assert state["fc1.weight"].dtype == torch.int8 and state["fc1.input_scale"].dtype == torch.float32
    torch.manual_seed(1)
    fresh = _static(SmallNet().eval())  # another model, converted the same way
    fresh.load_state_dict(state)
    x = _x()
    assert_bitwise_equal(fresh(x), q(x))
    dynamic = lowp_ops.quantize_dynamic(_net())
    with pytest.raises(ValueError, match="the checkpoint has 'input_scale' but this layer lacks it"):
        dynamic.load_state_dict(state)
    smaller = lowp_ops.quantize_dynamic(nn.Sequential(nn.Linear(8, 3)))
    with pytest.raises(ValueError, match=r"checkpoint weight has shape \(4, 8\) but this layer's is \(3, 8\)"):
        smaller.load_state_dict(lowp_ops.quantize_dynamic(nn.Sequential(nn.Linear(8, 4))).state_dict())


def test_converted_model_half_repr_compile_and_export():
    q = _static(_net())
    assert "input=static int8" in repr(q.fc1) and "output=int8" in repr(q.conv1)
    x = _x(4)
    torch._dynamo.reset()
    compiled = torch.compile(q, fullgraph=True)
    torch.testing.assert_close(compiled(x), q(x), rtol=1e-5, atol=1e-5)
    exported = torch.export.export(q, (x,))
    torch.testing.assert_close(exported.module()(x), q(x), rtol=1e-5, atol=1e-5)
    assert "lowp.int8_conv2d" in str(exported.graph)
    h = lowp_ops.quantize_dynamic(_net()).half()
    assert h.fc1.weight.dtype == torch.int8 and h.fc1.weight_scale.dtype == torch.float32
    assert h(x.half()).dtype == torch.float16


def test_layer_report_and_fp16_policy():
    from lowp_ops.registry.policy import LayerStat, Policy, apply_policy, format_report, layer_report

    net = _net()
    stats = layer_report(net, _x(32), time_layers=False)
    assert [s.fqn for s in stats] == ["conv1", "conv2", "fc1", "fc2"]
    for s in stats:  # the uniform-noise model predicts the measured weight noise within a couple of dB
        assert abs(s.weight_sqnr_db - s.weight_predicted_sqnr_db) < 3 and s.output_sqnr_db > 20
    all_int8 = Policy.from_report(stats, min_sqnr_db=0)
    assert all_int8.keep_fp16 == {}
    strict = Policy.from_report(stats, min_sqnr_db=100)
    assert set(strict.keep_fp16) == {"conv1", "conv2", "fc1", "fc2"}
    mixed = apply_policy(net, strict)
    assert type(mixed.fc1) is Fp16Linear and type(mixed.conv1) is nn.Conv2d  # no FP16 conv kernel: float stays
    timed = [LayerStat("fc1", "Linear", 40, 40, 40, 40, 40, int8_ms=2.0, fp16_ms=1.0)]
    assert "slower than FP16" in Policy.from_report(timed).keep_fp16["fc1"]
    assert "| fc1 | Linear |" in format_report(stats, strict)
