"""lowp_ops.registry.plan: which layers a workflow converts. A layer lowp cannot represent stays float with its reason
while the rest converts (every workflow); layers whose weights their owner reads directly (nn.MultiheadAttention)
and weights tied to a float module stay float, said so; a layer name that matches nothing is an error."""

import pytest
import torch
from torch import nn

import lowp_ops
from lowp_ops import Fp16Config, Int8DynamicConfig, Int8StaticConfig, quant
from lowp_ops._validate import MAX_K, MAX_K_ZERO_POINT
from lowp_ops.nn import Fp8Linear, Fp16Linear, Int8Conv2d, Int8Linear, QATConv2d, QATLinear
from lowp_ops.registry.handlers import _HANDLERS, _REFUSALS, linear_to_int8_dynamic


class Unrepresentable(nn.Module):
    """Beside ordinary layers: convs Int8Conv2d cannot pad as they do, and a Linear whose K no int32 accumulator
    bounds (K = 140000 > MAX_K = 131071)."""

    def __init__(self):
        super().__init__()
        self.reflect = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
        self.same_even = nn.Conv2d(4, 4, 4, padding="same")  # total padding 3: asymmetric
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 8)
        self.wide = nn.Linear(140_000, 8)

    def forward(self, x, v):
        y = self.conv(torch.relu(self.same_even(torch.relu(self.reflect(x)))))
        return self.fc(torch.relu(y).flatten(1)) + self.wide(v)


def _batch(n=4):
    return {"x": torch.randn(n, 3, 8, 8), "v": torch.randn(n, 140_000)}


def _reason(report, fqn):
    return report.skipped.get(fqn, "")


@pytest.mark.parametrize("workflow", ["dynamic", "static", "qat", "fp8", "fp16"])
def test_a_layer_lowp_cannot_represent_stays_float_and_the_rest_converts(workflow):
    torch.manual_seed(0)
    model = Unrepresentable().eval()
    batch = _batch()
    if workflow == "dynamic":
        q = lowp_ops.quantize_dynamic(model)
    elif workflow == "static":
        q = lowp_ops.convert(lowp_ops.calibrate(lowp_ops.prepare(model), [_batch() for _ in range(2)],
                                                progress=False))
    elif workflow == "qat":
        qat = lowp_ops.prepare_qat(model)
        assert type(qat.conv) is QATConv2d and type(qat.fc) is QATLinear
        assert type(qat.reflect) is nn.Conv2d and type(qat.wide) is nn.Linear  # never trained as int8
        qat.train()
        qat(**_batch())
        q = lowp_ops.convert(qat.eval())
    elif workflow == "fp8":
        q = lowp_ops.quantize_dynamic(model, dtype=torch.float8_e4m3fn)
    else:
        q = lowp_ops.to_fp16(model)
    report = q.lowp_report
    if workflow in ("dynamic", "static", "qat"):
        assert type(q.conv) is Int8Conv2d and type(q.fc) is Int8Linear
        for fqn in ("reflect", "same_even", "wide"):
            assert type(getattr(q, fqn)) is type(getattr(model, fqn)), fqn  # left as it was
            assert torch.equal(getattr(q, fqn).weight, getattr(model, fqn).weight), fqn
        assert _reason(report, "reflect") == "cannot be INT8: Int8Conv2d: padding_mode 'reflect' is not supported, " \
                                             "only 'zeros'"
        assert "padding='same' with kernel (4, 4)" in _reason(report, "same_even")
        assert "K = in_features = 140000 can overflow the int32 accumulator" in _reason(report, "wide")
        assert f"at most {MAX_K if workflow == 'dynamic' else MAX_K_ZERO_POINT}" in _reason(report, "wide")
    else:  # FP8 and FP16 accumulate in float32: the wide Linear converts; no FP8 / FP16 conv exists
        assert type(q.wide) is (Fp8Linear if workflow == "fp8" else Fp16Linear)
        assert type(q.conv) is nn.Conv2d and "no lowp handler for Conv2d" in _reason(report, "reflect")
    with torch.no_grad():
        expected, out = model(**batch), q(**batch)
    assert out.dtype == expected.dtype and bool(torch.isfinite(out).all())
    assert quant.sqnr_db(expected, out) > (40 if workflow == "fp16" else 20)


@pytest.mark.parametrize("config, convert", [(Int8DynamicConfig(), True), (Int8StaticConfig(), False)])
def test_the_k_bound_is_the_ops_own_and_lower_with_a_zero_point(config, convert):
    """MAX_K_ZERO_POINT < K <= MAX_K: dynamic INT8 (no zero point) converts it, static INT8 (an input zero point)
    cannot, the bound the ops enforce (lowp_ops._validate.check_reduction_length)."""
    model = nn.Sequential(nn.Linear(MAX_K_ZERO_POINT + 1, 2), nn.Linear(2, 2))
    q = lowp_ops.quantize(model, config)
    if not convert:
        q = lowp_ops.convert(lowp_ops.calibrate(q, [torch.randn(2, MAX_K_ZERO_POINT + 1)], progress=False))
    assert (type(q[0]) is not nn.Linear) is convert
    if not convert:
        assert f"at most {MAX_K_ZERO_POINT} is supported" in q.lowp_report.skipped["0"]


def test_a_user_handler_may_refuse_with_a_reason():
    class Block(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.inner = nn.Linear(width, 4)

        def forward(self, x):
            return self.inner(x)

    def refuses(module, config):
        return "odd width: left float" if module.inner.in_features % 2 else None

    lowp_ops.register(Block, Int8DynamicConfig, refuses=refuses)(
        lambda module, config, context: linear_to_int8_dynamic(module.inner, config, context))
    try:
        model = nn.ModuleDict({"even": Block(8), "odd": Block(7)})
        model.forward = lambda x: model["even"](x)
        q = lowp_ops.quantize(model, Int8DynamicConfig())
        assert type(q["even"]) is Int8Linear and type(q["odd"]) is Block
        assert q.lowp_report.skipped == {"odd": "odd width: left float"}
        with pytest.raises(TypeError, match=r"register: refuses must be None or a callable \(module, config\) -> "
                                            r"str \| None, got str"):
            lowp_ops.register(Block, Int8DynamicConfig, refuses="odd")
    finally:
        _HANDLERS.pop((Block, Int8DynamicConfig))
        _REFUSALS.pop((Block, Int8DynamicConfig))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        return self.head(self.enc(x))


def test_multihead_attention_stays_float_with_its_reason():
    torch.manual_seed(0)
    model = Encoder().eval()
    q = lowp_ops.quantize_dynamic(model)
    report = q.lowp_report
    assert type(q.enc.linear1) is Int8Linear and type(q.head) is Int8Linear
    assert type(q.enc.self_attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert report.skipped["enc.self_attn.out_proj"] == (
        "nn.MultiheadAttention passes out_proj.weight to F.multi_head_attention_forward and never calls out_proj: "
        "converting it would change nothing; left float")
    assert report.skipped["enc.self_attn"].startswith("nn.MultiheadAttention runs its in-projection")
    x = torch.randn(2, 10, 32)
    assert quant.sqnr_db(model(x), q(x)) > 25


@pytest.mark.parametrize("workflow", ["dynamic", "qat", "fp16"])
def test_transformer_encoder_layer_calls_its_converted_linears(workflow, monkeypatch):
    # Its inference fast path would read linear1 / linear2's weights into one fused kernel, never calling lowp's
    torch.manual_seed(0)
    model, x = Encoder().eval(), torch.randn(2, 10, 32)
    convert = {"dynamic": lowp_ops.quantize_dynamic, "qat": lowp_ops.prepare_qat, "fp16": lowp_ops.to_fp16}[workflow]
    q = convert(model).eval()
    assert q.enc.activation_relu_or_gelu == 0 and model.enc.activation_relu_or_gelu == 1
    if workflow != "qat":  # a prepared model's report comes with convert
        assert "enc: nn.TransformerEncoderLayer's fast path is off" in " ".join(q.lowp_report.notes)
    calls = []
    kind = type(q.enc.linear1)
    monkeypatch.setattr(kind, "forward", lambda self, x, f=kind.forward: calls.append(self) or f(self, x))
    with torch.no_grad():
        assert quant.sqnr_db(model(x), q(x)) > 25
    assert q.enc.linear1 in calls and q.enc.linear2 in calls


def _tied():
    torch.manual_seed(0)
    emb, head = nn.Embedding(32, 16), nn.Linear(16, 32, bias=False)
    head.weight = emb.weight
    return nn.Sequential(emb, nn.Linear(16, 16), head)


def test_a_layer_tied_to_a_float_module_stays_float_unless_named():
    model = _tied()
    q = lowp_ops.quantize_dynamic(model)
    assert type(q[1]) is Int8Linear and type(q[2]) is nn.Linear and q[2].weight is q[0].weight  # still one tensor
    assert q.lowp_report.skipped["2"] == (
        "its weight is tied to 0 (Embedding), which stays float: converting it would add a separate copy (more "
        "memory) and untie them; left float (overrides={'2': config} converts it anyway)")
    assert type(lowp_ops.quantize_dynamic(model, {nn.Linear}, torch.qint8)[2]) is nn.Linear  # a type names no layer
    for named in (lowp_ops.quantize_dynamic(model, overrides={"2": Int8DynamicConfig()}),
                  lowp_ops.quantize_dynamic(model, {"1", "2"}),
                  lowp_ops.quantize(model, Fp16Config(), overrides={"2": Fp16Config()})):
        assert type(named[2]) in (Int8Linear, Fp16Linear) and "2" not in named.lowp_report.skipped
        assert "2 shares its weight with 0.weight, which stays float: the converted copy is separate" \
            in named.lowp_report.notes


@pytest.mark.parametrize("call, what", [
    (lambda m: lowp_ops.quantize_dynamic(m, overrides={"classifer": None}), "overrides key 'classifer'"),
    (lambda m: lowp_ops.quantize(m, Int8DynamicConfig(), overrides={"clasifier.*": None}), "overrides key "
                                                                                           "'clasifier.*'"),
    (lambda m: lowp_ops.quantize_dynamic(m, {"classifer"}), "qconfig_spec name 'classifer'"),
    (lambda m: lowp_ops.quantize_dynamic(m, {"classifer": None}), "qconfig_spec name 'classifer'"),
    (lambda m: lowp_ops.prepare(m, overrides={"clasifier": None}), "overrides key 'clasifier'"),
], ids=["overrides", "pattern", "spec-set", "spec-dict", "prepare"])
def test_a_name_that_matches_no_layer_is_an_error(call, what):
    """Silently ignored, a misspelt name would leave its layer converted: the error names it and the closest."""
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
    model.add_module("classifier", nn.Linear(8, 2))
    with pytest.raises(ValueError, match=rf"{what} matches no layer of the model; closest: 'classifier'"):
        call(model)
    # keys that match: a name, an enclosing module, a pattern; a type key that matches nothing is torch.ao's habit
    q = lowp_ops.quantize_dynamic(model, {nn.Linear, nn.Conv2d}, overrides={"features": None, "class*": None,
                                                                           "classifier": Int8DynamicConfig()})
    assert type(q.classifier) is Int8Linear and type(q.features[0]) is nn.Linear
