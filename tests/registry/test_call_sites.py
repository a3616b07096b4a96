"""lowp_ops.registry with modules called at more than one place, and tied weights: fusion and int8 hand-offs
decided per call site (graph.py, alike from torch.export's graph and torch.fx's), one replacement in every slot a
module fills, tied weights kept tied."""

import pytest
import torch
from torch import nn

import lowp_ops
from lowp_ops import Int8DynamicConfig, Int8StaticConfig, quant
from lowp_ops.nn import Int8Linear, QATLinear
from lowp_ops.registry.graph import analyse
from util import assert_bitwise_equal, static_int8


class Loop(nn.Module):
    """The issue's model: one Linear applied three times."""

    def __init__(self):
        super().__init__()
        self.inp, self.lin, self.out = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        for _ in range(3):
            h = torch.relu(self.lin(h))
        return self.out(h)


class Twice(nn.Module):
    """lin(relu(lin(x))): the first call is followed by a relu, the second is not."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x):
        return self.lin(torch.relu(self.lin(x)))


def test_layer_in_a_loop_keeps_a_float_interface():
    torch.manual_seed(0)
    model = Loop().eval()
    data = [torch.randn(32, 8) for _ in range(4)]
    q = static_int8(model, data)
    # lin's calls read inp, lin and lin, and feed lin, lin and out: no single scale serves a hand-off
    assert all(q.get_submodule(n).output_scale is None for n in ("inp", "lin", "out"))
    assert q.lin.activation == "relu"  # every call of lin is followed by a relu: that fusion is sound
    assert any("lin is called at 3 places" in n and "output stays float" in n for n in q.lowp_report.notes)
    # with nothing to hand off, chaining changes nothing: bit for bit the chain_int8=False model
    x = torch.randn(64, 8)
    assert_bitwise_equal(q(x), static_int8(model, data, Int8StaticConfig(chain_int8=False))(x))
    assert quant.sqnr_db(model(x), q(x)) > 30  # was 6 dB when the calls were taken for one


def test_relu_after_only_one_call_is_not_fused():
    torch.manual_seed(0)
    model = Twice().eval()
    x = torch.randn(32, 16)
    dynamic = lowp_ops.quantize_dynamic(model)
    assert dynamic.lin.activation == "none" and "lin is called at 2 places" in str(dynamic.lowp_report)
    assert quant.sqnr_db(model(x), dynamic(x)) > 30  # fusing clipped the second call too
    static = static_int8(model, [torch.randn(32, 16) for _ in range(2)])
    assert static.lin.output_scale is None and static.lin.activation == "none"
    y = static(x)
    assert y.dtype == torch.float32 and quant.sqnr_db(model(x), y) > 30  # it returned int8 codes


@pytest.mark.parametrize("workflow", ["dynamic", "static"])
def test_one_module_in_two_slots_of_a_sequential(workflow):
    torch.manual_seed(0)
    lin = nn.Linear(16, 16)
    model = nn.Sequential(lin, nn.ReLU(), lin).eval()
    x = torch.randn(32, 16)
    q = (lowp_ops.quantize_dynamic(model) if workflow == "dynamic"
         else static_int8(model, [torch.randn(32, 16) for _ in range(2)]))
    assert type(q[0]) is Int8Linear and q[2] is q[0] and type(q[1]) is nn.ReLU
    assert q[0].activation == "none" and q[0].output_scale is None
    assert "0 is one module at 2 places (0, 2): converted once, the same Int8Linear fills each" in q.lowp_report.notes
    assert quant.sqnr_db(model(x), q(x)) > 30


def test_shared_relu_module_is_dropped_only_where_every_call_is_fused():
    torch.manual_seed(0)
    act = nn.ReLU()
    # act runs before a (nothing to fuse into) and after it: fused into a, but it must stay for the input
    model = nn.Sequential(act, nn.Linear(16, 16), act).eval()
    q = lowp_ops.quantize_dynamic(model)
    assert q[1].activation == "relu" and type(q[0]) is nn.ReLU and type(q[2]) is nn.ReLU
    x = torch.randn(32, 16)
    assert quant.sqnr_db(model(x), q(x)) > 30  # replacing act dropped the relu on the input as well
    # act after a and after b: every call fused, so it goes from both slots
    model = nn.Sequential(nn.Linear(16, 16), act, nn.Linear(16, 16), act).eval()
    q = lowp_ops.quantize_dynamic(model)
    assert [type(m) for m in q] == [Int8Linear, nn.Identity, Int8Linear, nn.Identity]
    assert q[0].activation == q[2].activation == "relu"


class TwoConvOneBN(nn.Module):
    """One BatchNorm after each of two convs, and (bn_on_input) on the input as well."""

    def __init__(self, bn_on_input):
        super().__init__()
        self.c1, self.c2, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.bn_on_input = bn_on_input

    def forward(self, x):
        if self.bn_on_input:
            x = self.bn(x)
        return self.bn(self.c2(torch.relu(self.bn(self.c1(x)))))


def test_shared_batchnorm_folds_only_when_every_call_follows_a_fold():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    for bn_on_input in (False, True):
        model = TwoConvOneBN(bn_on_input).eval()
        with torch.no_grad():
            model.bn.running_mean.uniform_(-0.5, 0.5)
            model.bn.running_var.uniform_(0.5, 2.0)
        q = lowp_ops.quantize_dynamic(model)
        folded = not bn_on_input  # the BatchNorm on the input follows no conv: folding it away would drop it
        assert (type(q.bn) is nn.Identity) == folded
        assert q.c1.activation == ("relu" if folded else "none")
        assert quant.sqnr_db(model(x), q(x)) > 25


class Untraceable(nn.Module):
    """Data-dependent control flow around an nn.Sequential holding one Linear twice: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        lin = nn.Linear(16, 16)
        self.seq = nn.Sequential(lin, nn.ReLU(), lin)

    def forward(self, x):
        return self.seq(x) if x.sum() > 0 else self.seq(-x)


def test_untraceable_sequential_with_a_module_in_two_slots():
    torch.manual_seed(0)
    model = Untraceable().eval()
    q = lowp_ops.quantize_dynamic(model)
    report = q.lowp_report
    assert any("could not be traced" in n for n in report.notes)
    # both slots hold the one replacement; the relu after slot 0 is not fused (slot 2 has none after it)
    assert type(q.seq[0]) is Int8Linear and q.seq[2] is q.seq[0] and type(q.seq[1]) is nn.ReLU
    assert q.seq[0].activation == "none"
    assert "seq.0 is called at 2 places, not all followed by the same BatchNorm / ReLU: nothing is folded or fused " \
           "into it" in report.notes
    assert "seq.0 is one module at 2 places (seq.0, seq.2): converted once, the same Int8Linear fills each" \
           in report.notes
    x = torch.randn(32, 16)
    assert quant.sqnr_db(model(x), q(x)) > 30
    # a module in one slot still folds and fuses as before
    model.seq = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Linear(16, 16), nn.ReLU())
    q = lowp_ops.quantize_dynamic(model.eval())
    assert q.seq[2].activation == "relu" and type(q.seq[3]) is nn.Identity and q.seq[0].activation == "none"


def test_names_of_one_module_must_agree_on_skip_and_config():
    lin = nn.Linear(8, 8)
    model = nn.Sequential(lin, nn.ReLU(), lin, nn.Linear(8, 4))
    q = lowp_ops.quantize_dynamic(model, overrides={"2": None})  # None for one name keeps the module float
    assert type(q[0]) is nn.Linear and q[2] is q[0] and type(q[3]) is Int8Linear
    assert q.lowp_report.skipped == {"0": "config None: left float (as 2, one of its names)"}
    q = lowp_ops.quantize_dynamic(model, filter_fn=lambda m, fqn: fqn != "2")
    assert q.lowp_report.skipped == {"0": "filtered out (as 2, one of its names)"} and q[2] is q[0]
    with pytest.raises(ValueError, match="quantize_dynamic: the module at 0, 2 is one module, converted once, but the "
                                         "overrides give"):
        lowp_ops.quantize_dynamic(model, overrides={"2": Int8DynamicConfig(out_dtype=torch.float16)})


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("workflow", ["dynamic", "static", "qat"])
def test_tied_weights_become_one_converted_weight(workflow):
    torch.manual_seed(0)
    model = Tied().eval()
    x = torch.randn(32, 16)
    if workflow == "dynamic":
        q = lowp_ops.quantize_dynamic(model)
    elif workflow == "static":
        q = static_int8(model, [torch.randn(32, 16) for _ in range(2)])
    else:
        qat = lowp_ops.prepare_qat(model)
        assert type(qat.a) is QATLinear and qat.a.weight is qat.b.weight  # one parameter to train, as before
        qat(x)
        q = lowp_ops.convert(qat.eval())
    assert q.a.qweight is q.b.qweight and q.a.weight_scale is q.b.weight_scale
    assert q.a.bias is not q.b.bias  # only the weight was tied
    assert "a, b share one weight, and still do after conversion" in q.lowp_report.notes
    assert sum(t.dtype == torch.int8 for t in q.state_dict().values()) == 2  # two keys ...
    assert len({t.data_ptr() for t in q.state_dict().values() if t.dtype == torch.int8}) == 1  # ... one storage
    assert quant.sqnr_db(model(x), q(x)) > 30


def test_weight_tied_to_a_float_module_is_reported():
    torch.manual_seed(0)
    emb, head = nn.Embedding(32, 16), nn.Linear(16, 32, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head, nn.Linear(32, 4))
    q = lowp_ops.quantize_dynamic(model)  # a tied head stays float by default, and says why
    assert type(q[1]) is nn.Linear and q[1].weight is q[0].weight and type(q[2]) is Int8Linear
    assert q.lowp_report.skipped["1"].startswith("its weight is tied to 0 (Embedding), which stays float")
    q = lowp_ops.quantize_dynamic(model, overrides={"1": Int8DynamicConfig()})  # named: converted anyway
    assert type(q[1]) is Int8Linear and type(q[0]) is nn.Embedding
    assert "1 shares its weight with 0.weight, which stays float: the converted copy is separate" \
        in q.lowp_report.notes


def _shared_relu_twice():
    act = nn.ReLU()
    return nn.Sequential(nn.Linear(16, 16), act, nn.Linear(16, 16), act)


def _shared_relu_around():
    act = nn.ReLU()
    return nn.Sequential(act, nn.Linear(16, 16), act)


def _one_linear_twice():
    lin = nn.Linear(16, 16)
    return nn.Sequential(lin, nn.ReLU(), lin)


@pytest.mark.parametrize("make, shape", [
    (Loop, (32, 8)), (Twice, (32, 16)), (_one_linear_twice, (32, 16)), (_shared_relu_twice, (32, 16)),
    (_shared_relu_around, (32, 16)), (lambda: TwoConvOneBN(False), (2, 4, 8, 8)),
    (lambda: TwoConvOneBN(True), (2, 4, 8, 8)), (Tied, (32, 16)),
], ids=["loop", "twice", "one-linear-twice", "shared-relu-twice", "shared-relu-around", "bn-after-convs",
        "bn-on-input-too", "tied"])
def test_export_and_fx_read_the_call_sites_alike(make, shape):
    """The workflow tests above read these models with torch.fx (no example_inputs); torch.export must find the
    same fusions, int8 edges and notes."""
    model = make().eval()
    layers = {name for name, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)}
    exported = analyse(model, layers, example=((torch.randn(shape),), {}))
    traced = analyse(model, layers)
    assert (exported.source, traced.source) == ("torch.export", "torch.fx")
    assert (exported.fusions, exported.fused_modules, exported.edges, exported.notes) == \
        (traced.fusions, traced.fused_modules, traced.edges, traced.notes)
