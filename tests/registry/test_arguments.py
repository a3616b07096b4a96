"""The workflows' arguments: TypeErrors naming the workflow and the argument, the batch forms calibrate takes, and
quantize_dynamic refusing a static config rather than ignoring it."""

import pytest
import torch
from torch import nn

import lowp_ops
from lowp_ops import QuantConfig


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


WORKFLOWS = {"quantize_dynamic": lowp_ops.quantize_dynamic, "prepare": lowp_ops.prepare,
             "prepare_qat": lowp_ops.prepare_qat}


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_config_overrides_and_filter_are_type_checked(name):
    workflow = WORKFLOWS[name]
    with pytest.raises(TypeError, match=rf"{name}: config must be a lowp_ops.QuantConfig or None, got str 'int8' "
                                        rf"\(the workflow picks the scheme"):
        workflow(_model(), "int8")
    with pytest.raises(TypeError, match=rf"{name}: overrides\['0'\] must be a lowp_ops.QuantConfig, got str 'int8'"):
        workflow(_model(), overrides={"0": "int8"})
    with pytest.raises(TypeError, match=rf"{name}: overrides must be a dict of layer name or fnmatch pattern -> "
                                        rf"QuantConfig, got list"):
        workflow(_model(), overrides=[("0", QuantConfig())])
    with pytest.raises(TypeError, match=rf"{name}: overrides keys must be layer names"):
        workflow(_model(), overrides={0: QuantConfig()})
    with pytest.raises(TypeError, match=rf"{name}: filter must be a callable \(fqn, module\) -> bool or None, got str"):
        workflow(_model(), filter="0")
    with pytest.raises(TypeError, match=rf"{name}: model must be a torch.nn.Module, got OrderedDict"):
        workflow(_model().state_dict())


def test_other_entry_points_are_type_checked():
    with pytest.raises(TypeError, match=r"to_fp16: compute_dtype must be a torch.dtype \(float16 or bfloat16\), got "
                                        r"str 'fp16'"):
        lowp_ops.to_fp16(_model(), "fp16")
    with pytest.raises(ValueError, match=r"to_fp16: compute_dtype must be torch.float16 or torch.bfloat16, got "
                                         r"torch.float32"):
        lowp_ops.to_fp16(_model(), torch.float32)
    with pytest.raises(TypeError, match="to_fp16: filter must be a callable"):
        lowp_ops.to_fp16(_model(), filter=["0"])
    with pytest.raises(TypeError, match="convert: model must be a torch.nn.Module, got str"):
        lowp_ops.convert("model")
    with pytest.raises(TypeError, match=r"QuantConfig: skip must be a tuple of names or fnmatch patterns, got 'fc'"):
        QuantConfig(skip="fc")


def test_quantize_dynamic_refuses_a_static_config():
    with pytest.raises(ValueError, match=r"quantize_dynamic: config asks for static=True, .* use lowp_ops.prepare"):
        lowp_ops.quantize_dynamic(_model(), QuantConfig(static=True))
    with pytest.raises(ValueError, match=r"quantize_dynamic: overrides\['2'\] asks for static=True"):
        lowp_ops.quantize_dynamic(_model(), overrides={"2": QuantConfig(static=True)})


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
