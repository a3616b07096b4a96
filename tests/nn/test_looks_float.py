"""The quantized modules look like the float layer they replaced to code that inspects them (nn/_base.py): `weight`
is the dequantized float weight (the codes are `qweight`), so `x.to(layer.weight.dtype)` — transformers' ViT patch
embedding, T5's feed-forward — feeds float input; checkpoints saved with the codes under `weight` still load."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import lowp_ops
from lowp_ops import quant
from lowp_ops.nn import Fp8Linear, Int8Conv2d, Int8Linear
from util import assert_bitwise_equal

FP8 = torch.float8_e4m3fn
# 8-bit weights and activations on these randn-scale layers: INT8 measures 36-41 dB, FP8 27-30 dB
# (tests/nn/test_fp8_linear.py derives FP8's bound); the floors leave a few dB
INT8_SQNR_DB, FP8_SQNR_DB = 30.0, 25.0


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == FP8 else t


_LAYERS = {  # name -> (float layer, convert it)
    "Int8Linear": (lambda: nn.Linear(45, 37), Int8Linear.from_float),
    "Int8Linear-per-tensor": (lambda: nn.Linear(45, 37),
                              lambda f: Int8Linear.from_float(f, weight_spec=quant.per_tensor())),
    "Int8Conv2d": (lambda: nn.Conv2d(6, 8, 3), Int8Conv2d.from_float),
    "Fp8Linear": (lambda: nn.Linear(45, 37), Fp8Linear.from_float),
}


@pytest.mark.parametrize("name", list(_LAYERS))
def test_weight_is_the_dequantized_float_weight_and_is_not_stored(name):
    make, convert = _LAYERS[name]
    float_layer = make()
    m = convert(float_layer)
    w = m.weight
    assert w.dtype == torch.float32 and w.shape == float_layer.weight.shape and w.device == float_layer.weight.device
    scale = m.weight_scale.reshape(-1, *(1,) * (w.ndim - 1))
    assert_bitwise_equal(w, m.qweight.float() * scale)
    assert quant.sqnr_db(float_layer.weight.detach(), w) > (FP8_SQNR_DB if "Fp8" in name else INT8_SQNR_DB)
    # nothing float is stored: the state_dict and buffers hold the codes, and no parameter exists
    assert "weight" not in m.state_dict() and "weight" not in dict(m.named_buffers()) and not list(m.parameters())
    assert m.state_dict()["qweight"].dtype == (FP8 if "Fp8" in name else torch.int8)
    with pytest.raises(AttributeError):
        m.weight = w
    # its dtype is the layer's float compute dtype: what a cast makes of a float layer's weight
    assert m.half().weight.dtype == torch.float16 and m.float().weight.dtype == torch.float32
    assert convert(make()).to(torch.bfloat16).weight.dtype == torch.bfloat16


def test_weight_dtype_follows_out_dtype():
    assert Int8Linear(torch.randn(4, 8), out_dtype=torch.bfloat16).weight.dtype == torch.bfloat16
    assert Fp8Linear(torch.randn(4, 8), out_dtype=torch.float16).weight.dtype == torch.float16


def test_first_floating_point_buffer_is_float32():
    """transformers-style dtype probes walk buffers for the first floating-point tensor: not the e4m3 codes."""
    m = Fp8Linear.from_float(nn.Linear(8, 4), input_scale=0.1)
    assert next(b for b in m.buffers() if b.is_floating_point()).dtype == torch.float32
    assert list(m.state_dict()) == ["weight_scale", "qweight", "bias", "input_scale"]


# ------------------------------------------------------------------------- code that casts to weight.dtype


class _CastsToWeightDtype(nn.Module):
    """What transformers' ViT patch embedding does: the input cast to the layer's weight dtype before the call."""

    def __init__(self):
        super().__init__()
        self.proj, self.head = nn.Linear(32, 32), nn.Linear(32, 8)

    def forward(self, x):
        return self.head(torch.relu(self.proj(x.to(self.proj.weight.dtype))))


def _static(model, batches):
    prepared = lowp_ops.prepare(model)
    lowp_ops.calibrate(prepared, batches, progress=False)
    return lowp_ops.convert(prepared)


_WORKFLOWS = {
    "dynamic": (lambda m, batches: lowp_ops.quantize_dynamic(m), INT8_SQNR_DB),
    "static": (_static, INT8_SQNR_DB),
    "fp8": (lambda m, batches: lowp_ops.quantize_dynamic(m, dtype=FP8), FP8_SQNR_DB),
}


@pytest.mark.parametrize("workflow", list(_WORKFLOWS))
def test_input_cast_to_weight_dtype_stays_float(workflow):
    convert, floor = _WORKFLOWS[workflow]
    model = _CastsToWeightDtype().eval()
    batches = [torch.randn(16, 32) for _ in range(2)]
    q = convert(copy.deepcopy(model), batches)
    assert type(q.proj) in (Int8Linear, Fp8Linear)
    x = torch.randn(16, 32)
    with torch.no_grad():
        assert quant.sqnr_db(model(x), q(x)) > floor


# ----------------------------------------------------------------------------------------- transformers


def _vit():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    image_size=32, patch_size=8)
    return transformers.ViTModel(config).eval()


@pytest.mark.parametrize("workflow", ["dynamic", "static"])
def test_transformers_vit_patch_embedding_gets_float_input(workflow):
    """ViTModel casts pixel_values to projection.weight.dtype: int8 before (dynamic refused, static -2.7 dB)."""
    model = _vit()
    images = [torch.randn(2, 3, 32, 32) for _ in range(3)]
    if workflow == "dynamic":
        q = lowp_ops.quantize_dynamic(copy.deepcopy(model))
    else:
        q = _static(copy.deepcopy(model), images[:2])
    assert type(q.embeddings.patch_embeddings.projection) is Int8Conv2d
    with torch.no_grad():
        want, got = model(images[2]).last_hidden_state, q(images[2]).last_hidden_state
    assert got.dtype == want.dtype == torch.float32
    assert quant.sqnr_db(want, got) >= 20


def test_transformers_t5_fp8_feeds_float_to_wo():
    """T5DenseActDense casts its hidden states to wo.weight.dtype (unless int8): e4m3 codes before, refused."""
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    model = transformers.T5Model(config).eval()
    q = lowp_ops.quantize_dynamic(copy.deepcopy(model), dtype=FP8)
    assert type(q.encoder.block[0].layer[1].DenseReluDense.wo) is Fp8Linear
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        want = model(input_ids=ids, decoder_input_ids=ids).last_hidden_state
        got = q(input_ids=ids, decoder_input_ids=ids).last_hidden_state
    assert got.dtype == torch.float32 and quant.sqnr_db(want, got) >= 20


# ------------------------------------------------------------------- checkpoints from before `qweight`


def _old_format(state: dict) -> dict:
    """A state_dict as lowp saved it before the codes were called qweight: under `weight`, first."""
    return {("weight" if k == "qweight" else k): v for k, v in sorted(state.items(), key=lambda kv: kv[0] != "qweight")}


@pytest.mark.parametrize("name", list(_LAYERS))
def test_checkpoint_with_the_codes_under_weight_still_loads(name):
    make, convert = _LAYERS[name]
    saved, fresh = convert(make()), convert(make())
    x = torch.randn(2, 6, 5, 5) if "Conv" in name else torch.randn(3, 45)
    nn.Sequential(fresh).load_state_dict(_old_format(nn.Sequential(saved).state_dict()))  # strict: no key left over
    assert_bitwise_equal(_bits(fresh.qweight), _bits(saved.qweight))
    assert_bitwise_equal(fresh(x), saved(x))


@pytest.mark.parametrize("cls, words", [(Int8Linear, "int8"), (Fp8Linear, "float8_e4m3fn")])
def test_float_weight_in_a_checkpoint_is_refused(cls, words):
    float_model = nn.Sequential(nn.Linear(16, 8))
    q = nn.Sequential(cls.from_float(float_model[0]))
    before = q[0].qweight.clone()
    with pytest.raises(ValueError, match=rf"{cls.__name__} '0': checkpoint '0.weight' has dtype float32 but this "
                                         rf"layer stores {words} \(qweight\); a float model's state_dict cannot be "
                                         rf"loaded into a quantized one"):
        q.load_state_dict(float_model.state_dict(), strict=False)
    assert_bitwise_equal(_bits(q[0].qweight), _bits(before))


def test_codes_under_both_names_leave_weight_unexpected():
    m = Int8Linear.from_float(nn.Linear(16, 8))
    state = m.state_dict()
    state["weight"] = state["qweight"].clone()
    with pytest.raises(RuntimeError, match="Unexpected key\\(s\\) in state_dict: \"weight\""):
        m.load_state_dict(state)


@pytest.mark.parametrize("name", ["Int8Conv2d", "Fp8Linear"])
def test_module_pickled_with_the_codes_under_weight_still_loads(name):
    """A whole module pickled before the rename (its buffer called `weight`) unpickles with `qweight`."""
    make, convert = _LAYERS[name]
    m = convert(make())
    state = m.__getstate__()
    state["_buffers"] = _old_format(state["_buffers"])
    old = object.__new__(type(m))
    old.__setstate__(state)
    again = pickle.loads(pickle.dumps(old))
    buf = io.BytesIO()
    torch.save(again, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    x = torch.randn(2, 6, 5, 5) if "Conv" in name else torch.randn(3, 45)
    assert_bitwise_equal(again(x), m(x))


class _DenseActDense(nn.Module):
    """transformers' T5DenseActDense (dropout left out): casts the hidden states to wo.weight.dtype unless int8."""

    def __init__(self, wi, wo):
        super().__init__()
        self.wi, self.wo = wi, wo

    def forward(self, x):
        h = torch.relu(self.wi(x))
        if h.dtype != self.wo.weight.dtype and self.wo.weight.dtype != torch.int8:
            h = h.to(self.wo.weight.dtype)
        return self.wo(h)


def test_layer_fed_int8_codes_looks_int8_so_casts_leave_the_codes():
    """An int8 hand-off into a layer whose caller casts to its weight dtype: the converter marks the consumer
    int8_input, whose weight is then its int8 codes, and the cast is skipped as it was for int8 weights."""
    model = _DenseActDense(nn.Linear(32, 64), nn.Linear(64, 32)).eval()
    x = torch.randn(16, 32)
    with torch.no_grad():
        hidden = torch.relu(model.wi(x))
    x_scale, h_scale = x.abs().max().item() / 127, hidden.max().item() / 127
    wo = Int8Linear.from_float(model.wo, input_scale=h_scale)
    q = _DenseActDense(Int8Linear.from_float(model.wi, activation="relu", input_scale=x_scale, output_scale=h_scale),
                       wo)
    wo.int8_input = True
    assert wo.weight is wo.qweight and wo.weight.dtype == torch.int8
    with torch.no_grad():
        assert q.wi(x).dtype == torch.int8 and quant.sqnr_db(model(x), q(x)) > INT8_SQNR_DB
