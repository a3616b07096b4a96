"""FP8 through the registry: Fp8DynamicConfig, its handler (linear_to_fp8_dynamic), lowp_ops.quantize and
quantize_dynamic(dtype=torch.float8_e4m3fn) with torch.ao's qconfig_spec, filter_fn, overrides, the report, the
error messages, checkpoints, torch.compile / torch.export."""

import pytest
import torch
from torch import nn

import lowp_ops
from lowp_ops import Fp8DynamicConfig, Fp16Config, Int8DynamicConfig, Int8StaticConfig, quant
from lowp_ops.nn import Fp8Linear, Fp16Linear, Int8Conv2d, Int8Linear
from lowp_ops.registry import handlers
from util import SmallNet, assert_bitwise_equal

FP8 = torch.float8_e4m3fn
# e4m3 weights and activations through two or three Linear layers (each about -28.9 dB of noise:
# tests/nn/test_fp8_linear.py); measured 26.5-34.6 dB on SmallNet (16 images) and 26.8-36.9 dB on _mlp (13 rows)
# over seeds 0-19. 24 leaves 2.5 dB.
SQNR_DB = 24.0


def _net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet().eval()


def _x(n=16) -> torch.Tensor:
    return torch.randn(n, 1, 12, 12)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU6(), nn.Linear(16, 4)).eval()


def test_quantize_converts_linear_layers_and_leaves_convs_float():
    net = _net()
    q = lowp_ops.quantize(net, Fp8DynamicConfig())
    assert type(q.fc1) is Fp8Linear and type(q.fc2) is Fp8Linear and q.fc1.qweight.dtype == FP8
    assert type(q.conv1) is nn.Conv2d and type(q.bn1) is nn.BatchNorm2d  # no FP8 conv: nothing folds into it
    assert q.lowp_report.swapped == {"fc1": "Fp8Linear by linear_to_fp8_dynamic",
                                     "fc2": "Fp8Linear by linear_to_fp8_dynamic"}
    assert q.lowp_report.skipped == {"conv1": "no lowp handler for Conv2d under Fp8DynamicConfig",
                                     "conv2": "no lowp handler for Conv2d under Fp8DynamicConfig"}
    assert q.fc1.activation == "relu" and q.fc2.activation == "none"  # the functional relu after fc1 is fused
    assert q.fc1.weight_scale.shape == (32,) and not q.fc1.static and q.fc1.out_dtype is None
    x = _x()
    assert quant.sqnr_db(net(x), q(x)) > SQNR_DB
    assert type(net.fc1) is nn.Linear  # the original is untouched


def test_relu_modules_are_fused_and_become_identity():
    model = _mlp()
    q = lowp_ops.quantize(model, Fp8DynamicConfig())
    assert [type(m).__name__ for m in q] == ["Fp8Linear", "Identity", "Fp8Linear", "Identity", "Fp8Linear"]
    assert [q[0].activation, q[2].activation, q[4].activation] == ["relu", "relu6", "none"]
    x = torch.randn(13, 8)
    assert quant.sqnr_db(model(x), q(x)) > SQNR_DB


def test_quantize_dynamic_with_dtype_float8_is_quantize_with_the_config():
    net, x = _net(), _x()
    q = lowp_ops.quantize_dynamic(net, dtype=FP8)
    assert type(q.fc1) is Fp8Linear and type(q.conv1) is nn.Conv2d
    assert q.lowp_report.skipped["conv1"] == "no lowp handler for Conv2d under Fp8DynamicConfig"
    assert_bitwise_equal(q(x), lowp_ops.quantize(net, Fp8DynamicConfig())(x))
    # the torch.ao call, layers by type: convs are not asked for, so they are "config None" rather than unsupported
    q = lowp_ops.quantize_dynamic(net, {nn.Linear}, dtype=FP8)
    assert type(q.fc2) is Fp8Linear
    assert q.lowp_report.skipped == {"conv1": "config None: left float", "conv2": "config None: left float"}
    assert_bitwise_equal(q(x), lowp_ops.quantize(net, Fp8DynamicConfig())(x))


def test_config_fields_reach_the_layers():
    net, x = _net(), _x(4)
    cfg = Fp8DynamicConfig(weight=quant.Fp8Spec(), out_dtype=torch.bfloat16, use_fast_accum=True)
    q = lowp_ops.quantize_dynamic(net, dtype=FP8, config=cfg)
    assert q.fc1.weight_scale.shape == (1,) and "per-tensor" in repr(q.fc1)
    assert q.fc1.out_dtype == torch.bfloat16 and q.fc1.use_fast_accum and q(x).dtype == torch.bfloat16
    assert Fp8DynamicConfig().weight == quant.Fp8Spec(granularity="per_channel", axis=0)


def test_qconfig_spec_sets_and_dicts():
    net = _net()
    q = lowp_ops.quantize_dynamic(net, {"fc1"}, dtype=FP8)
    assert type(q.fc1) is Fp8Linear and type(q.fc2) is nn.Linear
    bf16 = Fp8DynamicConfig(out_dtype=torch.bfloat16)
    # a dict mixes schemes applied at once: INT8 convs, FP8 Linear, a name beating a type
    q = lowp_ops.quantize_dynamic(net, {nn.Conv2d: Int8DynamicConfig(), nn.Linear: bf16, "fc2": Fp16Config()})
    assert type(q.conv1) is Int8Conv2d and type(q.fc1) is Fp8Linear and type(q.fc2) is Fp16Linear
    assert q.fc1.out_dtype == torch.bfloat16 and type(q.bn1) is nn.Identity  # folded into the INT8 conv
    assert q.lowp_report.swapped["fc1"] == "Fp8Linear by linear_to_fp8_dynamic"
    # config= is what set members get; overrides beat qconfig_spec
    q = lowp_ops.quantize_dynamic(net, {nn.Linear}, dtype=FP8, config=bf16, overrides={"fc2": None})
    assert q.fc1.out_dtype == torch.bfloat16 and type(q.fc2) is nn.Linear


def test_filter_fn_and_overrides():
    net = _net()
    q = lowp_ops.quantize(net, Fp8DynamicConfig(), filter_fn=lambda module, fqn: fqn != "fc2")
    assert type(q.fc1) is Fp8Linear and type(q.fc2) is nn.Linear and q.lowp_report.skipped["fc2"] == "filtered out"
    q = lowp_ops.quantize(net, Fp8DynamicConfig(), overrides={"conv*": Int8DynamicConfig(), "fc2": None})
    assert type(q.conv1) is Int8Conv2d and type(q.fc1) is Fp8Linear and type(q.fc2) is nn.Linear
    assert q.lowp_report.skipped["fc2"] == "config None: left float"
    q = lowp_ops.quantize_dynamic(net, overrides={"fc2": Fp8DynamicConfig()})  # INT8 with one FP8 layer
    assert type(q.fc1) is Int8Linear and type(q.fc2) is Fp8Linear and type(q.conv1) is Int8Conv2d


def test_handler_table():
    cfg = Fp8DynamicConfig()
    assert handlers.handler_for(nn.Linear(4, 4), cfg) is handlers.linear_to_fp8_dynamic
    assert handlers.handler_for(nn.Conv2d(1, 1, 1), cfg) is None
    # transformers' Conv1D joins once transformers is imported (handlers registers it lazily)
    assert [t for t in handlers.registered_types(Fp8DynamicConfig) if t.__name__ != "Conv1D"] == [nn.Linear]

    class Tuned(Fp8DynamicConfig):  # config types match along their bases
        pass

    assert handlers.handler_for(nn.Linear(4, 4), Tuned()) is handlers.linear_to_fp8_dynamic
    linear = handlers.linear_to_fp8_dynamic(nn.Linear(4, 4), cfg, lowp_ops.LayerContext(activation="relu6"))
    assert type(linear) is Fp8Linear and linear.activation == "relu6"


def test_a_converted_model_is_not_converted_again():
    q = lowp_ops.quantize_dynamic(_mlp(), dtype=FP8, overrides={"4": None})
    again = lowp_ops.quantize_dynamic(q)
    assert type(again[0]) is Fp8Linear and type(again[4]) is Int8Linear
    assert again.lowp_report.skipped["0"] == "already converted by lowp (Fp8Linear)"


# --------------------------------------------------------------------------------------------------- errors


def test_config_fields_are_checked_naming_the_config():
    with pytest.raises(ValueError, match="Fp8DynamicConfig: weight must be an e4m3 Fp8Spec per output channel "
                                         r"\(axis 0\) or per tensor, what the FP8 kernels take, got QuantSpec"):
        Fp8DynamicConfig(weight=quant.per_channel(axis=0))
    for spec in (quant.Fp8Spec(format="e5m2"), quant.Fp8Spec(granularity="per_channel", axis=1),
                 quant.Fp8Spec(granularity="per_group", group_size=32)):
        with pytest.raises(ValueError, match="Fp8DynamicConfig: weight must be an e4m3 Fp8Spec"):
            Fp8DynamicConfig(weight=spec)
    with pytest.raises(ValueError, match="Fp8DynamicConfig: out_dtype must be None, float16, bfloat16 or float32, "
                                         "got torch.float64"):
        Fp8DynamicConfig(out_dtype=torch.float64)
    with pytest.raises(TypeError, match="Fp8DynamicConfig: use_fast_accum must be a bool, got str 'yes'"):
        Fp8DynamicConfig(use_fast_accum="yes")
    with pytest.raises(TypeError):  # kw_only
        Fp8DynamicConfig(quant.Fp8Spec())


def test_quantize_dynamic_errors_name_the_fp8_spelling():
    with pytest.raises(ValueError, match=r"quantize_dynamic: dtype must be torch.qint8 \(Int8Linear / Int8Conv2d\), "
                                         r"torch.float16 \(Fp16Linear\) or torch.float8_e4m3fn \(Fp8Linear\), got "
                                         r"torch.float8_e5m2"):
        lowp_ops.quantize_dynamic(_net(), dtype=torch.float8_e5m2)
    with pytest.raises(ValueError, match=r"quantize_dynamic: config is Fp8DynamicConfig\(...\) but dtype is "
                                         r"torch.qint8; pass dtype=torch.float8_e4m3fn with it"):
        lowp_ops.quantize_dynamic(_net(), config=Fp8DynamicConfig())
    with pytest.raises(ValueError, match=r"quantize_dynamic: config is Int8DynamicConfig\(...\) but dtype is "
                                         r"torch.float8_e4m3fn; pass dtype=torch.qint8 with it"):
        lowp_ops.quantize_dynamic(_net(), dtype=FP8, config=Int8DynamicConfig())
    with pytest.raises(ValueError, match=r"quantize_dynamic: the model has no layer lowp can convert under "
                                         r"Fp8DynamicConfig \(supported: Linear(, Conv1D)?\); "
                                         r"it holds \['Conv2d', 'ReLU'\]"):
        lowp_ops.quantize_dynamic(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), dtype=FP8)
    with pytest.raises(TypeError, match=r"quantize_dynamic: qconfig_spec\[Linear\] is torch.ao's QConfig, which lowp "
                                        r"does not read; use lowp_ops.Fp8DynamicConfig\(\)"):
        from torch.ao.quantization import default_dynamic_qconfig

        lowp_ops.quantize_dynamic(_net(), {nn.Linear: default_dynamic_qconfig}, dtype=FP8)
    with pytest.raises(TypeError, match=r"qconfig_spec\['fc1'\] must be a lowp config \(Int8DynamicConfig, "
                                        r"Fp8DynamicConfig, Fp16Config\) or None, got str 'fp8'"):
        lowp_ops.quantize_dynamic(_net(), {"fc1": "fp8"}, dtype=FP8)


def test_other_workflows_point_the_config_to_its_own():
    with pytest.raises(TypeError, match=r"prepare: config must be a lowp_ops.Int8StaticConfig or None, got "
                                        r"Fp8DynamicConfig.*; Fp8DynamicConfig goes to lowp_ops.quantize_dynamic\("
                                        r"model, dtype=torch.float8_e4m3fn, config=config\) or lowp_ops.quantize"):
        lowp_ops.prepare(_net(), Fp8DynamicConfig())
    with pytest.raises(ValueError, match=r"prepare: overrides\['fc1'\] is an Fp8DynamicConfig but config is an "
                                         r"Int8StaticConfig; one call runs one workflow: configs applied at once "
                                         r"\(Int8DynamicConfig, Fp8DynamicConfig, Fp16Config\) mix"):
        lowp_ops.prepare(_net(), Int8StaticConfig(), overrides={"fc1": Fp8DynamicConfig()})
    with pytest.raises(TypeError, match=r"quantize: config must be a lowp config \(Int8DynamicConfig, "
                                        r"Int8StaticConfig, QATConfig, Fp16Config, Fp8DynamicConfig\), got str 'fp8'"):
        lowp_ops.quantize(_net(), "fp8")


# ------------------------------------------------------------------------------- checkpoints, compile, export


def test_checkpoint_round_trips_through_safetensors():
    safetensors = pytest.importorskip("safetensors.torch")
    q = lowp_ops.quantize_dynamic(_net(), dtype=FP8)
    state = safetensors.load(safetensors.save(q.state_dict()))
    assert state["fc1.qweight"].dtype == FP8 and state["fc1.weight_scale"].dtype == torch.float32
    assert state["conv1.weight"].dtype == torch.float32  # float convs save as they are
    torch.manual_seed(1)
    fresh = lowp_ops.quantize_dynamic(SmallNet().eval(), dtype=FP8)  # another model, converted the same way
    fresh.load_state_dict(state)
    x = _x(4)
    assert_bitwise_equal(fresh(x), q(x))
    with pytest.raises(ValueError, match="Int8Linear 'fc1': checkpoint 'fc1.qweight' has dtype float8_e4m3fn but this "
                                         "layer stores int8; it was not saved from a lowp INT8 layer"):
        lowp_ops.quantize_dynamic(_net(), {nn.Linear}).load_state_dict(state)
    with pytest.raises(ValueError, match="Fp8Linear 'fc1': checkpoint 'fc1.weight' has dtype float32 but this layer "
                                         r"stores float8_e4m3fn \(qweight\); a float model's state_dict "
                                         r".*lowp_ops.quantize_dynamic\(model, dtype=torch.float8_e4m3fn\), or "
                                         r"Fp8Linear.from_float\), not "
                                         "load_state_dict"):
        fresh.load_state_dict(_net().state_dict())


def test_converted_model_half_compile_and_export():
    q = lowp_ops.quantize_dynamic(_mlp(), dtype=FP8, example_inputs=torch.randn(2, 8))
    x = torch.randn(13, 8)
    torch._dynamo.reset()
    compiled = torch.compile(q, fullgraph=True)
    assert_bitwise_equal(compiled(x), q(x))  # the same ops on the same data: tests/nn/test_fp8_linear.py
    exported = torch.export.export(q, (x,))
    assert_bitwise_equal(exported.module()(x), q(x))
    assert "lowp.fp8_linear" in str(exported.graph)
    h = q.half()
    assert h[0].qweight.dtype == FP8 and h(x.half()).dtype == torch.float16
