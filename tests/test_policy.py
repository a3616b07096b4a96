"""lowp_ops.policy: layer_report measures on copies (the user's model comes back exactly as it was) and times INT8
and FP16 on the same input; the policy keeps lossy (or, timed, slow) layers in FP16 and apply_policy converts."""

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lowp_ops import policy, quant
from lowp_ops.nn import Fp16Linear, Int8Conv2d, Int8Linear


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(F.relu(self.conv(x)), 1)))


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(name, type(m), m.training) for name, m in model.named_modules()])


def _assert_unchanged(model, snapshot):
    state, modules = snapshot
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():  # bit for bit, dtype included: a .half().float() round trip changes the weights
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), k
    assert [(name, type(m), m.training) for name, m in model.named_modules()] == modules


def test_layer_report_and_policy_leave_the_model_as_it_was():
    torch.manual_seed(0)
    model = ConvNet()
    model.train()
    model.fc.eval()  # mixed flags come back as they were, not all set to model.training
    snapshot = _snapshot(model)
    stats = policy.layer_report(model, torch.randn(4, 3, 8, 8), time_layers=True)
    assert [s.fqn for s in stats] == ["conv", "fc"] and all(s.int8_ms > 0 and s.fp16_ms > 0 for s in stats)
    _assert_unchanged(model, snapshot)
    mixed = policy.apply_policy(model, policy.Policy.from_report(stats, min_sqnr_db=100))
    assert type(mixed.fc) is not nn.Linear
    _assert_unchanged(model, snapshot)


class _Casts(TorchFunctionMode):
    """Records the shape of every float32 tensor cast to float16 while it is active."""

    def __init__(self):
        super().__init__()
        self.sources = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        src = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if src is not None and src.dtype == torch.float32 and (
                name == "half" or (name == "to" and torch.float16 in (*args[1:], *kwargs.values()))):
            self.sources.append(tuple(src.shape))
        return func(*args, **kwargs)


def test_int8_and_fp16_are_timed_on_the_same_float16_input(monkeypatch):
    # neither timed call may pay for casting the float32 input: both get the float16 copy made outside the clock
    # (what the modules cast inside, such as a float32 accumulator to float16 output, is theirs to pay)
    sources = []

    def fake_time_ms(fn, reps=5):
        with _Casts() as mode:
            fn()
        sources.append(mode.sources)
        return 1.0

    monkeypatch.setattr(policy, "time_ms", fake_time_ms)
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    policy.layer_report(nn.Sequential(nn.Linear(16, 8)), x, time_layers=True)
    assert len(sources) == 2  # INT8, then FP16
    assert all(tuple(x.shape) not in casts for casts in sources), sources


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.fc1, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(self.conv2(F.relu(self.bn1(self.conv1(x)))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def test_layer_report_and_fp16_policy():
    torch.manual_seed(0)
    net = BNNet().eval()
    x = torch.randn(32, 1, 12, 12)
    stats = policy.layer_report(net, x, time_layers=False)
    assert [s.fqn for s in stats] == ["conv1", "conv2", "fc1", "fc2"]
    for s in stats:  # the uniform-noise model predicts the measured weight noise within a couple of dB
        assert abs(s.weight_sqnr_db - s.weight_predicted_sqnr_db) < 3 and s.output_sqnr_db > 20
    all_int8 = policy.Policy.from_report(stats, min_sqnr_db=0)
    assert all_int8.keep_fp16 == {}
    assert [type(m) for m in policy.apply_policy(net, all_int8).children()] == \
        [Int8Conv2d, nn.Identity, Int8Conv2d, Int8Linear, Int8Linear]
    strict = policy.Policy.from_report(stats, min_sqnr_db=100)
    assert set(strict.keep_fp16) == {"conv1", "conv2", "fc1", "fc2"}
    mixed = policy.apply_policy(net, strict)
    assert type(mixed.fc1) is Fp16Linear and type(mixed.conv1) is nn.Conv2d  # no FP16 conv: float stays
    assert type(mixed.bn1) is nn.BatchNorm2d  # and nothing was folded into it
    assert quant.sqnr_db(net(x), mixed(x).float()) > 40
    convs = nn.Sequential(nn.Conv2d(1, 2, 3))  # every layer a kept conv: a float copy, not an error
    kept = policy.apply_policy(convs, policy.Policy({"0": "lossy"}))
    assert kept is not convs and type(kept[0]) is nn.Conv2d
    timed = [policy.LayerStat("fc1", "Linear", 40, 40, 40, 40, 40, int8_ms=2.0, fp16_ms=1.0)]
    assert "slower than FP16" in policy.Policy.from_report(timed).keep_fp16["fc1"]
    assert "| fc1 | Linear |" in policy.format_report(stats, strict)
    assert strict.int8_filter(net.fc1, "fc1") is False and all_int8.int8_filter(net.fc1, "fc1") is True


def _outlier_linear(K: int, factor: float) -> tuple[nn.Module, torch.Tensor]:
    """A Linear whose input channel 5 is `factor` times the others and whose weight column 5 is divided by the same
    factor: the float output is that of the plain layer, as with SmoothQuant-style LLM activations."""
    torch.manual_seed(0)
    layer = nn.Linear(K, 96)
    x = torch.randn(64, K)
    with torch.no_grad():
        x[:, 5] *= factor
        layer.weight[:, 5] /= factor
    return nn.Sequential(layer), x


def test_report_shows_where_fp8_pays():
    # Measured with _outlier_linear (torch 2.13 CPU, K = 64 / 256 / 1024): with the x100 outlier channel per-token
    # INT8's step is set by the outlier, so its output lands at 14.7 / 13.1 / 14.0 dB while e4m3's relative grid
    # keeps 29.1 / 28.8 / 28.7 dB; on plain randn INT8 gives 43.2 / 42.1 / 41.2 dB and e4m3 29.1 / 28.9 / 28.8 dB
    # (its unit roundoff is 1/16: ~31.5 dB per operand, two operands). The bounds leave 2-3 dB to each.
    outlier, x = _outlier_linear(256, 100.0)
    (s,) = policy.layer_report(outlier, x, time_layers=False)
    assert s.output_sqnr_db < 16 and s.fp8_output_sqnr_db > 27, s
    assert s.fp8_output_sqnr_db - s.output_sqnr_db > 12, s
    # the input SQNR over the whole tensor is the outlier's: both formats look better than at the output
    assert s.fp8_input_sqnr_db > s.input_sqnr_db > s.output_sqnr_db, s
    plain, x = _outlier_linear(256, 1.0)
    (s,) = policy.layer_report(plain, x, time_layers=False)
    assert s.output_sqnr_db > 40 and 27 < s.fp8_output_sqnr_db < 31, s
    assert s.input_sqnr_db > 40 and 30.5 < s.fp8_input_sqnr_db < 32.5, s  # e4m3 on randn: ~31.5 dB (quant tests)
    report = policy.format_report([s])
    assert f"| {s.output_sqnr_db:.1f} | {s.fp8_input_sqnr_db:.1f} | {s.fp8_output_sqnr_db:.1f} | - | - | INT8 |" \
        in report, report


def test_conv_layers_have_no_fp8_numbers():
    torch.manual_seed(0)
    stats = policy.layer_report(ConvNet().eval(), torch.randn(4, 3, 8, 8), time_layers=False)
    conv, fc = stats
    assert conv.fp8_input_sqnr_db is None and conv.fp8_output_sqnr_db is None
    assert fc.fp8_output_sqnr_db > 27  # e4m3 on a ReLU'd input: 28.6 dB out (measured)
    conv_row = policy.format_report(stats).splitlines()[2]
    assert conv_row.startswith("| conv | Conv2d |") and conv_row.endswith("| - | - | - | - | INT8 |"), conv_row


def test_policy_sends_outlier_layers_to_fp8_when_asked():
    # the outlier layer of test_report_shows_where_fp8_pays: INT8 ~13 dB, FP8 ~29 dB at the output; at a 25 dB bound
    # FP8 rescues it (fp8=True) instead of FP16; the plain layer passes as INT8 either way
    outlier, x = _outlier_linear(256, 100.0)
    stats = policy.layer_report(outlier, x, time_layers=False)
    assert policy.Policy.from_report(stats, 25.0).keep_fp16.keys() == {"0"}
    chosen = policy.Policy.from_report(stats, 25.0, fp8=True)
    assert chosen.keep_fp16 == {} and chosen.use_fp8["0"].startswith("INT8 output SQNR 13.")
    converted = policy.apply_policy(outlier, chosen)
    assert type(converted[0]).__name__ == "Fp8Linear"
    assert quant.sqnr_db(outlier(x), converted(x)) > 27
    assert "| FP8: INT8 output SQNR" in policy.format_report(stats, chosen)
    # a bound FP8 misses too: FP16
    assert policy.Policy.from_report(stats, 35.0, fp8=True).keep_fp16.keys() == {"0"}
    plain, x = _outlier_linear(256, 1.0)
    stats = policy.layer_report(plain, x, time_layers=False)
    assert policy.Policy.from_report(stats, 25.0, fp8=True) == policy.Policy({}, {})
