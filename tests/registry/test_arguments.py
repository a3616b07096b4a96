"""The workflows' arguments: TypeErrors naming the workflow and the argument, the batch forms calibrate takes,
quantize_dynamic refusing a static config rather than ignoring it, torch.ao's positional forms, and a model
converted in training mode."""

import warnings

import pytest
import torch
from torch import nn

import lowp_ops
from lowp_ops import Fp16Config, Int8DynamicConfig, Int8StaticConfig, LayerContext, QATConfig, quant
from lowp_ops.nn import Int8Linear


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


_DYNAMIC = Int8DynamicConfig()
# workflow name -> (call(model, **kw), the config type it takes)
WORKFLOWS = {
    "quantize": (lambda model, **kw: lowp_ops.quantize(model, kw.pop("config", _DYNAMIC), **kw), None),
    "quantize_dynamic": (lowp_ops.quantize_dynamic, Int8DynamicConfig),
    "prepare": (lowp_ops.prepare, Int8StaticConfig),
    "prepare_qat": (lowp_ops.prepare_qat, QATConfig),
    "to_fp16": (lowp_ops.to_fp16, None),
}


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_arguments_are_type_checked_naming_the_workflow(name):
    workflow, config_type = WORKFLOWS[name]
    if config_type is not None:
        with pytest.raises(TypeError, match=rf"{name}: config must be a lowp_ops.{config_type.__name__} or None, got "
                                            rf"str 'int8' \(schemes are config types now"):
            workflow(_model(), config="int8")
    with pytest.raises(TypeError, match=rf"{name}: overrides\['0'\] must be a lowp config .* or None, got str 'int8'"):
        workflow(_model(), overrides={"0": "int8"})
    with pytest.raises(TypeError, match=rf"{name}: overrides must be a dict of layer name or fnmatch pattern -> lowp "
                                        rf"config or None, got list"):
        workflow(_model(), overrides=[("0", None)])
    with pytest.raises(TypeError, match=rf"{name}: overrides keys must be layer names"):
        workflow(_model(), overrides={0: None})
    with pytest.raises(TypeError, match=rf"{name}: filter_fn must be a callable \(module, fqn\) -> bool or None, got "
                                        rf"str"):
        workflow(_model(), filter_fn="0")
    with pytest.raises(TypeError, match=rf"{name}: model must be a torch.nn.Module, got OrderedDict"):
        workflow(_model().state_dict())
    with pytest.raises(TypeError, match=rf"{name}: inplace must be a bool, got str 'yes'"):
        workflow(_model(), inplace="yes")
    with pytest.raises(TypeError, match=rf"{name}: example_inputs must be a tensor, a tuple of positional arguments "
                                        rf"or a dict of keyword arguments \(str keys\) for one call of the model, got "
                                        rf"list"):
        workflow(_model(), example_inputs=[torch.randn(2, 8)])


def test_configs_of_two_workflows_do_not_mix():
    with pytest.raises(ValueError, match=r"prepare: overrides\['0'\] is an Int8DynamicConfig but config is an "
                                         r"Int8StaticConfig; one call runs one workflow"):
        lowp_ops.prepare(_model(), overrides={"0": Int8DynamicConfig()})
    with pytest.raises(ValueError, match=r"quantize: overrides\['2'\] is a QATConfig but config is an "
                                         r"Int8DynamicConfig"):
        lowp_ops.quantize(_model(), Int8DynamicConfig(), overrides={"2": QATConfig()})
    with pytest.raises(TypeError, match=r"prepare_qat: config must be a lowp_ops.QATConfig or None, got "
                                        r"Int8StaticConfig.*; Int8StaticConfig goes to lowp_ops.prepare"):
        lowp_ops.prepare_qat(_model(), Int8StaticConfig())


def test_other_entry_points_are_type_checked():
    with pytest.raises(TypeError, match=r"quantize: config must be a lowp config \(Int8DynamicConfig, "
                                        r"Int8StaticConfig, QATConfig, Fp16Config, Fp8DynamicConfig\), got str "
                                        r"'int8_dynamic'"):
        lowp_ops.quantize(_model(), "int8_dynamic")
    with pytest.raises(TypeError, match=r"to_fp16: compute_dtype must be a torch.dtype \(float16 or bfloat16\), got "
                                        r"str 'fp16'"):
        lowp_ops.to_fp16(_model(), "fp16")
    with pytest.raises(ValueError, match=r"to_fp16: compute_dtype must be torch.float16 or torch.bfloat16, got "
                                         r"torch.float32"):
        lowp_ops.to_fp16(_model(), torch.float32)
    with pytest.raises(ValueError, match=r"Fp16Config: compute_dtype must be torch.float16 or torch.bfloat16"):
        Fp16Config(compute_dtype=torch.float32)
    with pytest.raises(TypeError, match="convert: model must be a torch.nn.Module, got str"):
        lowp_ops.convert("model")
    with pytest.raises(TypeError, match="convert: inplace must be a bool, got int 1"):
        lowp_ops.convert(_model(), inplace=1)
    with pytest.raises(TypeError, match="Int8StaticConfig: chain_int8 must be a bool, got str"):
        Int8StaticConfig(chain_int8="yes")
    with pytest.raises(ValueError, match="Int8DynamicConfig: out_dtype must be None, float16, bfloat16 or float32"):
        Int8DynamicConfig(out_dtype=torch.int8)
    with pytest.raises(ValueError, match="LayerContext: activation must be one of"):
        LayerContext(activation="tanh")
    with pytest.raises(TypeError, match=r"register: config_type must be a lowp config class .* got 'int8_dynamic' "
                                        r"\(schemes are config types now"):
        lowp_ops.register(nn.Linear, "int8_dynamic")
    with pytest.raises(TypeError, match="register: module_type must be an nn.Module subclass, got 3"):
        lowp_ops.register(3, Int8DynamicConfig)
    with pytest.raises(TypeError, match=r"quantize_dynamic: qconfig_spec is torch.ao's set or dict of layers; pass a "
                                        r"lowp config as config=Int8DynamicConfig\(...\)"):
        lowp_ops.quantize_dynamic(_model(), Int8DynamicConfig())
    with pytest.raises(TypeError, match="quantize_dynamic: qconfig_spec must be None, a set of module types / layer "
                                        "names, or a dict of those to lowp configs, got list"):
        lowp_ops.quantize_dynamic(_model(), [nn.Linear])
    with pytest.raises(TypeError, match="quantize_dynamic: qconfig_spec keys must be nn.Module types or layer names "
                                        r"\(str\), got int 0"):
        lowp_ops.quantize_dynamic(_model(), {0})
    with pytest.raises(ValueError, match="quantize_dynamic: config does nothing with a dict qconfig_spec"):
        lowp_ops.quantize_dynamic(_model(), {nn.Linear: None}, config=Int8DynamicConfig())


def test_quantize_dynamic_refuses_a_static_config():
    with pytest.raises(ValueError, match=r"quantize_dynamic: config is Int8StaticConfig\(...\), whose activation "
                                         r"scales come from calibration, .* use lowp_ops.prepare"):
        lowp_ops.quantize_dynamic(_model(), config=Int8StaticConfig())
    with pytest.raises(ValueError, match=r"quantize_dynamic: qconfig_spec\[Linear\] is QATConfig\(...\), which "
                                         r"quantize_dynamic does not run; use lowp_ops.prepare_qat"):
        lowp_ops.quantize_dynamic(_model(), {nn.Linear: QATConfig()})
    with pytest.raises(ValueError, match=r"quantize_dynamic: overrides\['2'\] is an Int8StaticConfig but config is an "
                                         r"Int8DynamicConfig"):
        lowp_ops.quantize_dynamic(_model(), overrides={"2": Int8StaticConfig()})


def test_example_inputs_forms_reach_the_analysis(monkeypatch):
    from lowp_ops.registry import graph

    seen = []

    def analyse(model, layers, *, example=None, leaves=()):
        seen.append((example, leaves))
        return graph.Analysis("torch.export")

    monkeypatch.setattr(graph, "analyse", analyse)
    x = torch.randn(2, 8)
    for given, expected in ((x, ((x,), {})), ((x,), ((x,), {})), ({"input": x}, ((), {"input": x})),
                            (None, None)):
        lowp_ops.quantize_dynamic(_model(), example_inputs=given)
        example, leaves = seen.pop()
        assert example == expected  # holding x itself: tuples and dicts compare items by identity first
        assert nn.Linear in leaves and lowp_ops.nn.Int8Linear in leaves  # converted types and lowp's stay whole


class KeywordModel(nn.Module):
    """A tokenizer-style forward: model(input_ids=..., attention_mask=...)."""

    def __init__(self):
        super().__init__()
        self.emb, self.proj = nn.Embedding(32, 8), nn.Linear(8, 4)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return self.proj(h)


def test_calibrate_takes_tensors_tuples_and_dicts():
    ids = torch.randint(0, 32, (2, 5))
    batches = [{"input_ids": ids, "attention_mask": torch.ones(2, 5)},  # model(**batch)
               ({"input_ids": ids}, torch.zeros(2)),  # (inputs, labels) with keyword inputs
               {"input_ids": ids, "attention_mask": None}]  # non-tensor values pass as they are
    prepared = lowp_ops.prepare(KeywordModel())
    lowp_ops.calibrate(prepared, batches, progress=False)
    observer = prepared.proj.input_observer
    h = prepared.emb(ids)
    assert observer.min_val.item() == h.min().item() and observer.max_val.item() == h.max().item()

    class Input(nn.Module):  # forward(input): a {"input": x} batch
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 4)

        def forward(self, input):
            return self.lin(input)

    x = torch.randn(4, 8)
    for batch in (x, (x, torch.zeros(4)), [x], {"input": x}):
        prepared = lowp_ops.prepare(Input())
        lowp_ops.calibrate(prepared, [batch], progress=False)
        assert prepared.lin.input_observer.min_val.item() == x.min().item()


@pytest.mark.parametrize("batch, described", [
    pytest.param("some text", "a str", id="str"),
    pytest.param(3, "an int", id="int"),
    pytest.param((), "an empty tuple", id="empty tuple"),
    pytest.param(["a", "b"], r"a list of \[str, str\]", id="list of str"),
    pytest.param({0: torch.randn(4, 8)}, "a dict", id="dict with int keys"),
])
def test_calibrate_rejects_other_batches_naming_them(batch, described):
    prepared = lowp_ops.prepare(_model())
    with pytest.raises(TypeError, match=rf"calibrate: batch 1 is {described}; a batch must be a tensor, a dict of "
                                        rf"keyword arguments"):
        lowp_ops.calibrate(prepared, [torch.randn(4, 8), batch], progress=False)


def test_calibrate_rejects_a_single_batch_as_data():
    prepared = lowp_ops.prepare(_model())
    with pytest.raises(TypeError, match=r"calibrate: data must be an iterable of batches .* got Tensor; to calibrate "
                                        r"on one batch, pass \[batch\]"):
        lowp_ops.calibrate(prepared, torch.randn(4, 8), progress=False)
    with pytest.raises(TypeError, match=r"got dict; to calibrate on one batch, pass \[batch\]"):
        lowp_ops.calibrate(prepared, {"input": torch.randn(4, 8)}, progress=False)
    with pytest.raises(TypeError, match="calibrate: max_batches must be None or an int >= 0, got -1"):
        lowp_ops.calibrate(prepared, [torch.randn(4, 8)], max_batches=-1, progress=False)


def test_torch_ao_positional_forms():
    """torch.ao's quantize_dynamic(model, qconfig_spec, dtype, mapping, inplace) and convert(module, mapping,
    inplace), positionally; a mapping (torch.ao's module table) is refused, not ignored."""
    model = _model()
    q = lowp_ops.quantize_dynamic(model, {nn.Linear}, torch.qint8, None, True)
    assert q is model and type(model[0]) is Int8Linear  # inplace=True, positionally
    prepared = lowp_ops.prepare(_model())
    lowp_ops.calibrate(prepared, [torch.randn(8, 8)], progress=False)
    q = lowp_ops.convert(prepared, None, True)
    assert q is prepared and type(prepared[2]) is Int8Linear and not hasattr(prepared, "_lowp_prepared")
    with pytest.raises(TypeError, match=r"quantize_dynamic: mapping \(torch.ao's float -> quantized module table\) "
                                        r"must be None, got dict; lowp's handlers pick each layer's replacement: add "
                                        r"one with @lowp_ops.register"):
        lowp_ops.quantize_dynamic(_model(), {nn.Linear}, torch.qint8, {nn.Linear: nn.Linear})
    prepared = lowp_ops.prepare(_model())
    lowp_ops.calibrate(prepared, [torch.randn(8, 8)], progress=False)
    with pytest.raises(TypeError, match=r"convert: mapping \(torch.ao's float -> quantized module table\) must be "
                                        r"None, got dict"):
        lowp_ops.convert(prepared, {nn.Linear: nn.Linear})
    assert hasattr(prepared, "_lowp_prepared")  # refused before anything was done


def _conv_bn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


def test_quantize_dynamic_in_training_mode_says_batchnorm_folded_with_running_statistics():
    model = _conv_bn().train()
    with pytest.warns(UserWarning, match=r"quantize_dynamic: the model is in training mode, but BatchNorm 1 was "
                                         r"folded with running statistics .* computes as model.eval\(\) does") as seen:
        q = lowp_ops.quantize_dynamic(model)
    assert seen[0].filename == __file__  # points at the user's call
    assert any(n.startswith("quantize_dynamic: the model is in training mode") for n in q.lowp_report.notes)
    x = torch.randn(4, 3, 8, 8)
    assert quant.sqnr_db(model.eval()(x), q(x)) > 25  # what eval mode computes
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*training mode")
        q = lowp_ops.quantize_dynamic(_conv_bn().eval())
    assert not any("training mode" in n for n in q.lowp_report.notes)
