"""lowp_ops' configs, handlers and workflows: quantize (the entry point), quantize_dynamic, prepare -> calibrate ->
convert, prepare_qat -> convert, to_fp16 — folding, fusing, int8 hand-offs, reports, checkpoints, compile / export,
and the torch.ao-shaped calls (qconfig_spec, dtype, inplace)."""

import pytest
import torch
from torch import nn

import lowp_ops
from lowp_ops import Fp16Config, Int8DynamicConfig, Int8StaticConfig, QATConfig, quant
from lowp_ops.examples import ConvNet
from lowp_ops.nn import Fp16Linear, Int8Conv2d, Int8Linear, QATConv2d, QATLinear
from lowp_ops.registry import handlers
from util import SmallNet, assert_bitwise_equal, static_int8


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
    assert q.lowp_report.swapped["conv1"] == "Int8Conv2d by conv2d_to_int8_dynamic"  # the handler, by name
    assert isinstance(net.conv1, nn.Conv2d) and isinstance(net.bn1, nn.BatchNorm2d)  # the original is untouched
    x = _x()
    assert quant.sqnr_db(net(x), q(x)) > 25


def test_unknown_layers_are_reported_not_errors():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(16, 4), nn.LayerNorm(4))
    q = lowp_ops.quantize_dynamic(model)
    assert type(q[2]) is Int8Linear and type(q[0]) is nn.Embedding
    assert q.lowp_report.skipped == {"0": "no lowp handler for Embedding under Int8DynamicConfig",
                                     "3": "no lowp handler for LayerNorm under Int8DynamicConfig"}
    assert "2: Int8Linear by linear_to_int8_dynamic" in str(q.lowp_report)


def test_filter_fn_and_per_layer_overrides():
    net = _net()
    seen = []

    def filter_fn(module, fqn):  # torchao's order: the module, then its name
        seen.append((type(module), fqn))
        return fqn != "conv2"

    q = lowp_ops.quantize_dynamic(net, overrides={"fc*": None}, filter_fn=filter_fn)
    assert type(q.conv1) is Int8Conv2d and type(q.conv2) is nn.Conv2d and type(q.fc1) is nn.Linear
    assert q.lowp_report.skipped == {"conv2": "filtered out", "fc1": "config None: left float",
                                     "fc2": "config None: left float"}
    assert (nn.Conv2d, "conv2") in seen and all(fqn != "fc1" for _, fqn in seen)  # fc1 was out before the filter
    q = lowp_ops.quantize_dynamic(net, overrides={"fc2": Int8DynamicConfig(out_dtype=torch.bfloat16)})
    assert q.fc2.out_dtype == torch.bfloat16 and q.fc1.out_dtype is None


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 8)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))

    def forward(self, x):
        return self.body(self.head(x))


def test_the_most_specific_overrides_key_wins():
    bf16, f16 = Int8DynamicConfig(out_dtype=torch.bfloat16), Int8DynamicConfig(out_dtype=torch.float16)
    # "body" covers the modules inside it; "body.2", its own name, beats it; a pattern comes last
    q = lowp_ops.quantize_dynamic(Blocks(), overrides={"*": None, "body": bf16, "body.2": f16})
    assert type(q.head) is nn.Linear and q.body[0].out_dtype == torch.bfloat16 and q.body[2].out_dtype == torch.float16


def test_quantize_mixes_int8_and_fp16_and_prepares_static_and_qat():
    net = _net()
    mixed = lowp_ops.quantize(net, Int8DynamicConfig(), overrides={"fc2": Fp16Config(compute_dtype=torch.bfloat16)})
    assert type(mixed.fc1) is Int8Linear and type(mixed.fc2) is Fp16Linear and type(mixed.conv1) is Int8Conv2d
    assert mixed.fc2.compute_dtype == torch.bfloat16
    x = _x()
    assert quant.sqnr_db(net(x), mixed(x).float()) > 25
    prepared = lowp_ops.quantize(net, Int8StaticConfig())  # prepared, not converted: observers on float layers
    assert type(prepared.fc1) is nn.Linear and hasattr(prepared.fc1, "input_observer")
    lowp_ops.calibrate(prepared, [_x() for _ in range(2)], progress=False)
    assert type(lowp_ops.convert(prepared).fc1) is Int8Linear
    qat = lowp_ops.quantize(net, QATConfig())
    assert type(qat.fc1) is QATLinear
    with pytest.raises(ValueError, match="convert: layer 'conv1' saw no data; train it"):
        lowp_ops.convert(qat)
    qat(_x())
    assert type(lowp_ops.convert(qat.eval()).fc1) is Int8Linear


def test_inplace_is_honoured_by_every_workflow():
    net = _net()
    assert lowp_ops.quantize_dynamic(net, inplace=True) is net and type(net.fc1) is Int8Linear
    net = _net()
    assert lowp_ops.to_fp16(net, inplace=True) is net and type(net.fc1) is Fp16Linear
    net = _net()
    prepared = lowp_ops.prepare(net, inplace=True)
    assert prepared is net and hasattr(net.fc1, "input_observer")
    lowp_ops.calibrate(prepared, [_x()], progress=False)
    copied = lowp_ops.convert(prepared)
    assert type(copied.fc1) is Int8Linear and type(prepared.fc1) is nn.Linear  # convert copies by default
    assert lowp_ops.convert(prepared, inplace=True) is net and type(net.fc1) is Int8Linear
    net = _net()
    assert lowp_ops.prepare_qat(net, inplace=True) is net and type(net.fc1) is QATLinear
    net = _net()
    assert lowp_ops.quantize(net, Int8DynamicConfig(), inplace=True) is net and type(net.conv1) is Int8Conv2d


def test_register_a_user_module():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(8, 4)

        def forward(self, x):
            return 2 * self.inner(x)

    class Scale2(nn.Module):
        def forward(self, x):
            return 2 * x

    @lowp_ops.register(Scaled, Int8DynamicConfig)
    def scaled_to_int8_dynamic(module, config, context):
        assert isinstance(context, lowp_ops.LayerContext) and context.activation == "none"
        return nn.Sequential(handlers.linear_to_int8_dynamic(module.inner, config, context), Scale2())

    try:
        model = nn.Sequential(Scaled())
        q = lowp_ops.quantize_dynamic(model)
        x = torch.randn(3, 8)
        assert isinstance(q[0][0], Int8Linear) and quant.sqnr_db(model(x), q(x)) > 30
        assert q.lowp_report.swapped == {"0": "Sequential by scaled_to_int8_dynamic"}
        # a subclass computes as its base (converted by its handler) only while it keeps the base's forward
        same = type("Sub", (Scaled,), {"__init__": lambda self: Scaled.__init__(self)})
        assert handlers.handler_for(same(), Int8DynamicConfig()) is scaled_to_int8_dynamic
        other = type("Sub", (Scaled,), {"forward": lambda self, x: 3 * self.inner(x)})
        assert handlers.handler_for(other(), Int8DynamicConfig()) is None
    finally:
        del handlers._HANDLERS[Scaled, Int8DynamicConfig]


def _static(net, **kw):
    return static_int8(net, [_x() for _ in range(4)], Int8StaticConfig(**kw))


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile", "mse"])
def test_static_ptq_hands_int8_between_layers(observer):
    net = _net()
    q = _static(net, observer=observer)
    # conv1 -(bn, relu)-> conv2 -(max_pool, made a module by prepare)-> fc1 -(relu, dropout)-> fc2 stay int8
    for producer, consumer in ((q.conv1, q.conv2), (q.conv2, q.fc1), (q.fc1, q.fc2)):
        assert producer.output_scale is not None and torch.equal(producer.output_scale, consumer.input_scale)
    # prepare made the functional relus modules (registry/rewrite.py), fused into conv1 and fc1: no relu sits on the
    # hand-off, so its zero point need not be 0 and the relu'd values get the whole int8 range
    assert isinstance(q.lowp_relu_0, nn.Identity) and int(q.conv2.input_zero_point) == -128
    assert q.fc2.output_scale is None
    assert {"conv1 hands int8 to conv2", "conv2 hands int8 to fc1", "folded bn1 into conv1"} <= set(q.lowp_report.notes)
    x = _x()
    assert quant.sqnr_db(net(x), q(x)) > 20
    assert not q.training and not hasattr(q, "_lowp_prepared")


def test_prepare_folds_nothing_and_convert_folds_on_the_first_calibration_call():
    net = _net()
    prepared = lowp_ops.prepare(net)
    assert type(prepared.bn1) is nn.BatchNorm2d and prepared.conv1.weight.shape == net.conv1.weight.shape
    first = _x(8)
    lowp_ops.calibrate(prepared, [first, _x(4)], progress=False)
    args, kwargs = prepared._lowp_prepared.example
    assert torch.equal(args[0], first) and kwargs == {}  # the first call, not the last
    q = lowp_ops.convert(prepared)
    assert type(q.bn1) is nn.Identity and q.conv1.activation == "relu"
    assert not q._forward_pre_hooks and not q.fc1._forward_pre_hooks  # the calibration hooks are gone
    # calibrated unfolded, run folded: an observer sees its layer's input, which folding does not change
    assert quant.sqnr_db(net(first), q(first)) > 20


def test_static_without_chaining_and_per_tensor_weights():
    q = _static(_net(), chain_int8=False, weight=quant.per_tensor())
    assert all(m.output_scale is None for m in (q.conv1, q.conv2, q.fc1, q.fc2))
    assert q.fc1.weight_scale.numel() == 1 and "per-tensor" in repr(q.fc1)


def test_workflow_errors():
    # transformers' Conv1D joins the list once transformers is imported (handlers registers it lazily)
    with pytest.raises(ValueError, match=r"no layer lowp can convert under Int8DynamicConfig \(supported: Linear, "
                                         r"Conv2d(, Conv1D)?\)"):
        lowp_ops.quantize_dynamic(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)))
    with pytest.raises(ValueError, match="every convertible layer was filtered out or given config None"):
        lowp_ops.quantize_dynamic(_net(), filter_fn=lambda module, fqn: False)
    prepared = lowp_ops.prepare(_net())
    with pytest.raises(ValueError, match="layer 'conv1' saw no calibration data; run lowp_ops.calibrate"):
        lowp_ops.convert(prepared)
    with pytest.raises(ValueError, match="convert: the model was not prepared"):
        lowp_ops.convert(_net())
    with pytest.raises(ValueError, match="calibrate: the model was not prepared"):
        lowp_ops.calibrate(_net(), [_x()])
    with pytest.raises(ValueError, match="Int8StaticConfig: observer must be one of"):
        Int8StaticConfig(observer="kl")
    with pytest.raises(ValueError, match="Int8DynamicConfig: weight must be 8-bit signed symmetric"):
        Int8DynamicConfig(weight=quant.per_channel(axis=0, bits=4))
    with pytest.raises(ValueError, match="QATConfig: activation must be an 8-bit signed per-tensor QuantSpec"):
        QATConfig(activation=quant.per_token())


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
    assert q.lowp_report.swapped["0"] == "Int8Linear by qat_linear_to_int8" and q[2].activation == "relu"
    x = torch.randn(64, 20)
    expected, got = qat(x), q(x)
    # Same integers, scales, zero points and rounding rules; only float rounding differs: the int8 kernels'
    # epilogue (acc · sx · sw) vs the fake-quant float matmul, which can flip a requantization tie now and then.
    step = q[4].input_scale.item() * q[4].weight_scale.max().item() * 127 * 16
    assert (got - expected).abs().max() <= step
    assert (got - expected).abs().mean() <= 1e-4 * expected.abs().mean() + 1e-6


def test_qat_conv_folds_batchnorm_at_prepare_and_trains():
    net = _net()
    x = _x(2)
    qat = lowp_ops.prepare_qat(net, example_inputs=x)
    assert type(qat.conv1) is QATConv2d and type(qat.bn1) is nn.Identity  # training sees the folded weights
    assert qat._lowp_prepared.example == ((x,), {}) and not qat._forward_pre_hooks  # kept for convert: no recording
    qat.train()
    qat(_x()).sum().backward()
    assert qat.conv1.weight.grad is not None and qat.conv1.weight.grad.abs().sum() > 0


def test_to_fp16():
    net = _net()
    h = lowp_ops.to_fp16(net, torch.bfloat16)
    assert type(h.fc1) is Fp16Linear and h.fc1.compute_dtype == torch.bfloat16 and type(h.conv1) is nn.Conv2d
    assert h.fc1.activation == "relu" and type(h.bn1) is nn.BatchNorm2d  # no FP16 conv: nothing folds into it
    x = _x()
    assert h(x).dtype == torch.float32 and quant.sqnr_db(net(x), h(x)) > 25  # the input's dtype, like autocast
    h16 = lowp_ops.quantize(net, Fp16Config(out_dtype=torch.float16))
    assert h16.fc1.out_dtype == torch.float16 and h16(x).dtype == torch.float16
    with pytest.raises(ValueError, match=r"Fp16Config: out_dtype must be None, float16, bfloat16 or float32"):
        Fp16Config(out_dtype=torch.int8)


# ------------------------------------------------------------------------------------- torch.ao-shaped calls


def test_the_articles_call_runs_on_the_seed_convnet():
    torch.manual_seed(0)
    model_fp32 = ConvNet().eval()
    x = torch.randn(4, 1, 28, 28)
    model_int8 = lowp_ops.quantize_dynamic(model_fp32, {nn.Linear}, dtype=torch.qint8)  # as the article writes it
    assert type(model_int8.fc1) is Int8Linear and type(model_int8.fc2) is Int8Linear
    assert type(model_int8.conv1) is nn.Conv2d and type(model_int8.conv2) is nn.Conv2d  # as torch.ao: convs float
    assert model_int8.lowp_report.skipped == {"conv1": "config None: left float", "conv2": "config None: left float"}
    # log-probabilities: compare probabilities, whose error is what the int8 Linear layers add (~40 dB each)
    assert quant.sqnr_db(model_fp32(x).exp(), model_int8(x).exp()) > 30
    model_fp16 = lowp_ops.quantize_dynamic(model_fp32, {nn.Linear}, dtype=torch.float16)
    assert type(model_fp16.fc1) is Fp16Linear and model_fp16.fc1.compute_dtype == torch.float16
    assert type(model_fp16.conv1) is nn.Conv2d
    assert quant.sqnr_db(model_fp32(x).exp(), model_fp16(x).exp()) > 40


def test_qconfig_spec_forms():
    net = _net()
    by_name = lowp_ops.quantize_dynamic(net, {"fc1", nn.Conv2d})
    assert [type(by_name.get_submodule(n)) for n in ("conv1", "conv2", "fc1", "fc2")] == \
        [Int8Conv2d, Int8Conv2d, Int8Linear, nn.Linear]
    bf16 = Int8DynamicConfig(out_dtype=torch.bfloat16)
    q = lowp_ops.quantize_dynamic(net, {nn.Linear: bf16, "fc2": None, "conv1": Fp16Config()})
    assert q.fc1.out_dtype == torch.bfloat16 and type(q.fc2) is nn.Linear  # a name beats a type
    assert type(q.conv1) is nn.Conv2d
    assert q.lowp_report.skipped["conv1"] == "no lowp handler for Conv2d under Fp16Config"
    # a name covers the modules inside it (torch.ao's qconfig propagation) ...
    q = lowp_ops.quantize_dynamic(Blocks(), {"body": bf16})
    assert type(q.head) is nn.Linear and q.body[0].out_dtype == q.body[2].out_dtype == torch.bfloat16
    # ... and a module's own type beats what it inherits
    f16 = Int8DynamicConfig(out_dtype=torch.float16)
    q = lowp_ops.quantize_dynamic(Blocks(), {"body": bf16, nn.Linear: f16})
    assert q.head.out_dtype == q.body[0].out_dtype == torch.float16
    # config= is what set members get; overrides beat qconfig_spec
    q = lowp_ops.quantize_dynamic(Blocks(), {nn.Linear}, config=bf16, overrides={"body.2": None})
    assert q.head.out_dtype == torch.bfloat16 and type(q.body[2]) is nn.Linear


def test_torch_ao_arguments_are_refused_with_lowps_name_for_them():
    from torch.ao.quantization import default_dynamic_qconfig, float16_dynamic_qconfig

    with pytest.raises(TypeError, match=r"quantize_dynamic: qconfig_spec\[Linear\] is torch.ao's QConfig, which lowp "
                                        r"does not read; use lowp_ops.Int8DynamicConfig\(\)"):
        lowp_ops.quantize_dynamic(_net(), {nn.Linear: default_dynamic_qconfig})
    with pytest.raises(TypeError, match=r"qconfig_spec\['fc1'\] is torch.ao's QConfig.*use lowp_ops.Fp16Config\(\)"):
        lowp_ops.quantize_dynamic(_net(), {"fc1": float16_dynamic_qconfig}, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"quantize_dynamic: dtype must be torch.qint8 \(Int8Linear / Int8Conv2d\), "
                                         r"torch.float16 \(Fp16Linear\) or torch.float8_e4m3fn \(Fp8Linear\), got "
                                         r"torch.quint8"):
        lowp_ops.quantize_dynamic(_net(), dtype=torch.quint8)
    with pytest.raises(ValueError, match="quantize_dynamic: dtype must be .* got 'int8'"):
        lowp_ops.quantize_dynamic(_net(), dtype="int8")
    with pytest.raises(ValueError, match=r"quantize_dynamic: config is Fp16Config\(...\) but dtype is torch.qint8; "
                                         r"pass dtype=torch.float16"):
        lowp_ops.quantize_dynamic(_net(), config=Fp16Config())
    with pytest.raises(TypeError, match=r"prepare: config must be a lowp_ops.Int8StaticConfig or None, got bool True "
                                        r"\(torch.ao's second positional argument is inplace"):
        lowp_ops.prepare(_net(), True)
    # torch.ao's own model.qconfig is not read, and the report says so
    net = _net()
    net.qconfig = default_dynamic_qconfig
    assert any("model.qconfig (torch.ao's) is not read" in n for n in lowp_ops.quantize_dynamic(net).lowp_report.notes)


def test_dtype_float16_with_a_bfloat16_config():
    bf16 = Fp16Config(compute_dtype=torch.bfloat16)
    q = lowp_ops.quantize_dynamic(_net(), {nn.Linear}, dtype=torch.float16, config=bf16)
    assert q.fc1.compute_dtype == torch.bfloat16


# ------------------------------------------------------------------------------- checkpoints, compile, export


def test_checkpoint_round_trips_through_safetensors():
    safetensors = pytest.importorskip("safetensors.torch")
    q = _static(_net())
    blob = safetensors.save(q.state_dict())
    state = safetensors.load(blob)
    assert state["fc1.qweight"].dtype == torch.int8 and state["fc1.input_scale"].dtype == torch.float32
    torch.manual_seed(1)
    fresh = _static(SmallNet().eval())  # another model, converted the same way
    fresh.load_state_dict(state)
    x = _x()
    assert_bitwise_equal(fresh(x), q(x))
    dynamic = lowp_ops.quantize_dynamic(_net())
    with pytest.raises(ValueError, match="the checkpoint has 'input_scale' but this layer lacks it"):
        dynamic.load_state_dict(state)
    smaller = lowp_ops.quantize_dynamic(nn.Sequential(nn.Linear(8, 3)))
    with pytest.raises(ValueError, match=r"checkpoint qweight has shape \(4, 8\) but this layer's is \(3, 8\)"):
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
    assert h.fc1.qweight.dtype == torch.int8 and h.fc1.weight_scale.dtype == torch.float32
    assert h(x.half()).dtype == torch.float16
