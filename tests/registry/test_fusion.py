"""Fusion that keeps models right: an in-place relu shared between a fused and an unfused call site (torchvision's
BasicBlock) keeps autograd valid, timm's BatchNormAct2d is folded with its activation, and every BatchNorm left
unfolded is named in the report with the reason."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo_models import BasicBlock  # torchvision's: one nn.ReLU(inplace=True) after bn1 and after the residual add

import lowp_ops
from lowp_ops import quant
from lowp_ops.registry.graph import Fusion, Int8Edge, analyse
from util import static_int8, trained_batchnorms

# int8 against float on these random-weight models (BatchNorm statistics randomised so that folding matters): 45 to
# 62 dB measured (seed 0). 20 dB is the bound for INT8 on random-weight models.
_MIN_SQNR_DB = 20
# a converted model against its own QAT model: the same integers and scales, only float rounding between them
# (147 dB measured on TimmNet)
_QAT_MIN_SQNR_DB = 40


def _qat_step(model: nn.Module, x: torch.Tensor, **kw) -> nn.Module:
    """prepare_qat, one SGD step with backward, eval mode."""
    qat = lowp_ops.prepare_qat(model, **kw).train()
    opt = torch.optim.SGD(qat.parameters(), lr=0.01)
    qat(x).square().mean().backward()
    opt.step()
    return qat.eval()


# ------------------------------------------------------------------ an in-place relu shared by two call sites


def _block() -> nn.Module:
    torch.manual_seed(0)
    return trained_batchnorms(BasicBlock(8))


@pytest.mark.parametrize("example", [False, True], ids=["fx", "export"])
def test_basic_block_qat_trains_and_converts(example):
    model, x = _block(), torch.randn(2, 8, 8, 8)
    qat = _qat_step(model, x, example_inputs=x if example else None)  # the backward raised "output 0 of Relu"
    assert qat.conv1.activation == "relu" and type(qat.relu) is nn.ReLU and not qat.relu.inplace
    assert "relu runs out of place from now on: in place it would overwrite the output of the layers it is fused " \
           "into, which their backward needs" in qat._lowp_prepared.report.notes
    assert model.relu.inplace  # the user's model is not touched (prepare_qat copied it)
    q = lowp_ops.convert(qat)
    with torch.no_grad():
        assert quant.sqnr_db(qat(x), q(x)) >= _QAT_MIN_SQNR_DB


@pytest.mark.parametrize("workflow", ["dynamic", "static"])
def test_basic_block_converts_right(workflow):
    model, x = _block(), torch.randn(2, 8, 8, 8)
    q = (lowp_ops.quantize_dynamic(model, example_inputs=x) if workflow == "dynamic"
         else static_int8(model, [torch.randn(2, 8, 8, 8) for _ in range(4)], example_inputs=x))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules()) and q.conv1.activation == "relu"
    if workflow == "dynamic":
        assert not q.relu.inplace
    else:  # static prepare made the residual add a module: both calls of relu are fused (into conv1, into the add)
        assert type(q.relu) is nn.Identity and q.lowp_add_0.activation == "relu"
    assert quant.sqnr_db(model(x.clone()), q(x)) >= _MIN_SQNR_DB


class InplaceFunctional(nn.Module):
    """conv -> bn -> F.relu(inplace=True) -> conv: the in-place relu is code, which conversion cannot change."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.bn1(self.conv1(x)), inplace=True))


@pytest.mark.parametrize("example", [False, True], ids=["fx", "export"])
def test_inplace_functional_relu_is_not_fused(example):
    """Fused, the relu that stays would rewrite the fused relu's saved output in place: it is left to run alone
    (the BatchNorm is still folded, and int8 still passes the relu)."""
    torch.manual_seed(0)
    model, x = trained_batchnorms(InplaceFunctional()), torch.randn(2, 8, 8, 8)
    found = analyse(model, {"conv1", "conv2"}, example=((x,), {}) if example else None)
    assert found.fusions == [Fusion("conv1", "bn1", "none")]
    assert found.edges == {"conv1": Int8Edge("conv2", True, set())}
    qat = _qat_step(model, x)
    q = lowp_ops.convert(qat)
    with torch.no_grad():
        assert quant.sqnr_db(qat(x), q(x)) >= _QAT_MIN_SQNR_DB


# --------------------------------------------------------------------------------- timm's BatchNormAct2d


class BatchNormAct2d(nn.BatchNorm2d):
    """A replica of timm.layers.norm_act.BatchNormAct2d (timm is not installed here): a BatchNorm2d whose forward
    normalises (its own copy of BatchNorm2d.forward), then runs self.drop, then self.act."""

    def __init__(self, num_features, act_layer=nn.ReLU, apply_act=True, drop_layer=None):
        super().__init__(num_features)
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        self.act = act_layer(inplace=True) if apply_act else nn.Identity()

    def forward(self, x):
        assert x.ndim == 4, f"expected 4D input (got {x.ndim}D input)"
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bn_training = True if self.training else (self.running_mean is None) and (self.running_var is None)
        x = F.batch_norm(x, self.running_mean if not self.training or self.track_running_stats else None,
                         self.running_var if not self.training or self.track_running_stats else None,
                         self.weight, self.bias, bn_training, factor, self.eps)
        x = self.drop(x)
        return self.act(x)


class TimmNet(nn.Module):
    """conv -> BNAct(SiLU) -> depthwise conv -> BNAct(ReLU) -> conv -> BNAct(no act) -> ReLU6 -> conv -> BNAct(ReLU
    after a Dropout), as timm's EfficientNet / ResNet blocks build them."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), BatchNormAct2d(8, nn.SiLU)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), BatchNormAct2d(8, nn.ReLU)
        self.pw, self.bn3, self.act3 = nn.Conv2d(8, 8, 1), BatchNormAct2d(8, apply_act=False), nn.ReLU6()
        self.last, self.bn4 = nn.Conv2d(8, 8, 1), BatchNormAct2d(8, nn.ReLU, drop_layer=nn.Dropout)

    def forward(self, x):
        x = self.bn2(self.dw(self.bn1(self.stem(x))))
        return self.bn4(self.last(self.act3(self.bn3(self.pw(x)))))


def _timm() -> nn.Module:
    torch.manual_seed(0)
    return trained_batchnorms(TimmNet())


_LAYERS = {"stem", "dw", "pw", "last"}


@pytest.mark.parametrize("example", [False, True], ids=["fx", "export"])
def test_batchnorm_act_is_folded_with_its_activation(example):
    x = torch.randn(2, 3, 16, 16)
    found = analyse(_timm(), _LAYERS, example=((x,), {}) if example else None)
    assert found.source == ("torch.export" if example else "torch.fx")
    # a relu inside is fused; SiLU, and an act after a Dropout, stay after the folded conv; an act-less one lets
    # the ReLU6 after it fuse
    assert found.fusions == [Fusion("dw", "bn2", "relu"), Fusion("last", "bn4", "none"), Fusion("pw", "bn3", "relu6"),
                             Fusion("stem", "bn1", "none")]
    assert found.fused_modules == ["act3"]
    # dw -> bn2 (folded, relu fused: nothing left) -> pw -> bn3, act3 (both gone) -> last: int8 may flow
    assert found.edges == {"dw": Int8Edge("pw", False, set()), "pw": Int8Edge("last", False, set())}
    assert found.notes == []


def test_batchnorm_act_in_an_untraceable_sequential():
    """Without a graph, nn.Sequential order: the ReLU after a BatchNormAct2d holding a SiLU is not fused into the
    conv before both (that would apply it before the SiLU)."""

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8, nn.SiLU), nn.ReLU(), nn.Conv2d(8, 8, 3),
                                     BatchNormAct2d(8, nn.ReLU))

        def forward(self, x):
            return self.seq(x) if x.sum() > 0 else self.seq(-x)

    torch.manual_seed(0)
    model = trained_batchnorms(Untraceable())
    found = analyse(model, {"seq.0", "seq.3"})
    assert found.source == "nn.Sequential"
    assert found.fusions == [Fusion("seq.0", "seq.1", "none"), Fusion("seq.3", "seq.4", "relu")]
    assert found.fused_modules == []
    x = torch.randn(2, 3, 12, 12)
    q = lowp_ops.quantize_dynamic(model)
    assert type(q.seq[1]) is nn.SiLU and type(q.seq[2]) is nn.ReLU and type(q.seq[4]) is nn.Identity
    assert quant.sqnr_db(model(x), q(x)) >= _MIN_SQNR_DB


@pytest.mark.parametrize("workflow", ["dynamic", "static", "qat"])
def test_batchnorm_act_workflows(workflow):
    model, x = _timm(), torch.randn(2, 3, 16, 16)
    if workflow == "dynamic":
        q = lowp_ops.quantize_dynamic(model, example_inputs=x)
    elif workflow == "static":
        q = static_int8(model, [torch.randn(2, 3, 16, 16) for _ in range(4)], example_inputs=x)
    else:
        qat = _qat_step(model, x, example_inputs=x)
        q = lowp_ops.convert(qat)
        with torch.no_grad():
            assert quant.sqnr_db(qat(x), q(x)) >= _QAT_MIN_SQNR_DB
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())  # 4 of 4 folded (was 0)
    assert [type(q.get_submodule(n)) for n in ("bn1", "bn2", "bn3", "act3")] == [nn.SiLU, nn.Identity, nn.Identity,
                                                                                 nn.Identity]
    assert [type(m) for m in q.bn4] == [nn.Dropout, nn.ReLU]  # what ran after its normalisation, in order
    assert (q.dw.activation, q.pw.activation, q.stem.activation) == ("relu", "relu6", "none")
    notes = q.lowp_report.notes
    assert {f"folded bn{i} into {c}" for i, c in enumerate(["stem", "dw", "pw", "last"], 1)} <= set(notes)
    assert "bn1: its SiLU stays, after the conv it is folded into" in notes
    assert not any("is not folded" in n for n in notes)
    with torch.no_grad():
        assert quant.sqnr_db(model(x), q(x)) >= _MIN_SQNR_DB


# ---------------------------------------------------------------------------- BatchNorms left as they were


class Unfoldable(nn.Module):
    """Four BatchNorms lowp cannot fold, each for its own reason."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)  # c1's output is read twice
        self.bn2 = nn.BatchNorm2d(4)  # after an op
        self.c3, self.bn3 = nn.Conv2d(4, 4, 3, padding=1), BatchNormAct2d(4, nn.SiLU)  # c3 is left float
        self.bn4 = nn.BatchNorm1d(4)  # not a BatchNorm2d

    def forward(self, x):
        y = self.c1(x)
        z = self.bn3(self.c3(self.bn2(self.bn1(y) * 2) + y))
        return self.bn4(z.mean((2, 3)))


@pytest.mark.parametrize("example", [False, True], ids=["fx", "export"])
def test_every_batchnorm_left_unfolded_is_reported(example):
    torch.manual_seed(0)
    model, x = trained_batchnorms(Unfoldable()), torch.randn(2, 3, 8, 8)
    q = lowp_ops.quantize_dynamic(model, filter_fn=lambda m, fqn: fqn != "c3", example_inputs=x if example else None)
    assert [type(q.get_submodule(f"bn{i}")) for i in range(1, 5)] == [nn.BatchNorm2d, nn.BatchNorm2d, BatchNormAct2d,
                                                                       nn.BatchNorm1d]
    unfolded = [n for n in q.lowp_report.notes if "is not folded" in n]
    assert unfolded == ["bn1 (BatchNorm2d) is not folded: the output of c1, the Conv2d before it, is read by more "
                        "than it",
                        "bn2 (BatchNorm2d) is not folded: it runs where it does not read a Conv2d's output",
                        "bn3 (BatchNormAct2d) is not folded: c3, the Conv2d before it, is not converted",
                        "bn4 (BatchNorm1d) is not folded: lowp folds a BatchNorm2d into the Conv2d before it, no other "
                        "BatchNorm"]
    assert quant.sqnr_db(model(x), q(x)) >= _MIN_SQNR_DB
