"""lowp_ops.nn.Fp16Linear in a model: its output dtype (the input's, like the float layer; or out_dtype), in-place
ops after it under autograd, the cast rule it shares with the quantized modules, and transformers' Llama through
lowp_ops.to_fp16 (its attention and generate() mix no float16 into a float32 model). The op's numerics:
tests/ops/test_fp16_ops.py."""

import copy

import pytest
import torch
from torch import nn

import lowp_ops
from lowp_ops import quant
from lowp_ops.nn import Fp16Linear
from util import assert_bitwise_equal, rel_rms_error

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _layer(**kw) -> tuple[nn.Linear, Fp16Linear]:
    ref = nn.Linear(45, 37)
    return ref, Fp16Linear.from_linear(ref, **kw)


@pytest.mark.parametrize("compute_dtype", [torch.float16, torch.bfloat16])
def test_output_has_the_input_dtype_unless_out_dtype_is_given(compute_dtype):
    ref, m = _layer(compute_dtype=compute_dtype)
    x = torch.randn(3, 5, 45)
    for dtype in FLOAT_DTYPES:
        assert m(x.to(dtype)).dtype == dtype
    # one GEMM, rounded once: to the input's dtype from the float32 accumulator
    y32 = m(x)
    assert_bitwise_equal(m(x.to(compute_dtype)), m(x.to(compute_dtype).float()).to(compute_dtype))
    assert rel_rms_error(y32, ref(x)) < (2e-2 if compute_dtype == torch.bfloat16 else 3e-3)
    fixed = Fp16Linear.from_linear(ref, compute_dtype=compute_dtype, out_dtype=torch.float16)
    assert all(fixed(x.to(dtype)).dtype == torch.float16 for dtype in FLOAT_DTYPES)
    assert "output=float16" in repr(fixed) and "output=input dtype" in repr(m)
    with pytest.raises(TypeError, match="Fp16Linear: out_dtype must be None .* got torch.int8"):
        Fp16Linear(4, 4, out_dtype=torch.int8)


def test_casts_set_the_output_and_compute_dtype_and_keep_the_master_weights():
    _, m = _layer()
    x = torch.randn(4, 45)
    y32, y16 = m(x), m(x.half())
    m.half()
    assert m.weight.dtype == m.bias.dtype == torch.float32  # the float32 masters stay
    assert m(x).dtype == torch.float16 and m.compute_dtype == torch.float16
    m.to(torch.bfloat16)  # a 16-bit cast picks the compute dtype: no float16 rounding of a bfloat16 model
    assert m.compute_dtype == torch.bfloat16 and m(x).dtype == torch.bfloat16
    m.double()  # float64 out, computed in the dtype the layer was built with
    assert m.compute_dtype == torch.float16 and m(x).dtype == torch.float64
    assert_bitwise_equal(m(x), y32.double())
    m.float()  # back to exactly the layer as built
    assert_bitwise_equal(m(x), y32)
    assert_bitwise_equal(m(x.half()), y16)
    with pytest.warns(UserWarning), pytest.raises(TypeError, match="Fp16Linear: cannot cast to torch.complex64"):
        m.to(torch.complex64)


@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("inplace", [nn.SiLU, nn.Hardswish, nn.ReLU, lambda inplace: nn.Dropout(0.2, inplace)],
                         ids=["silu", "hardswish", "relu", "dropout"])
def test_in_place_activation_after_the_layer_backpropagates(inplace, activation):
    """MobileNetV3's classifier: Linear -> Hardswish(inplace=True) -> Dropout(inplace=True) -> Linear."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), inplace(inplace=True), nn.Linear(32, 8))
    m = nn.Sequential(Fp16Linear.from_linear(model[0], activation=activation), model[1],
                      Fp16Linear.from_linear(model[2])).train()
    x = torch.randn(2, 5, 16, requires_grad=True)
    m(x).sum().backward()
    assert x.grad.shape == x.shape and m[0].weight.grad.isfinite().all() and m[0].weight.grad.abs().sum() > 0


def test_to_fp16_model_with_in_place_activations_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Hardswish(inplace=True), nn.Dropout(0.2, inplace=True),
                          nn.Linear(32, 8), nn.SiLU(inplace=True))
    h = lowp_ops.to_fp16(model).train()
    assert type(h[0]) is Fp16Linear and type(h[3]) is Fp16Linear
    y = h(torch.randn(4, 16))
    assert y.dtype == torch.float32
    y.sum().backward()
    assert h[0].weight.grad.dtype == torch.float32 and h[0].weight.grad.abs().sum() > 0


def test_transformers_llama_to_fp16_forward_and_generate():
    """Llama's attention met float32 queries and float16 values ("query float ... value Half") before."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=4, intermediate_size=64, vocab_size=64)
    model = transformers.LlamaForCausalLM(config).eval()
    h = lowp_ops.to_fp16(copy.deepcopy(model))
    assert type(h.model.layers[0].self_attn.q_proj) is Fp16Linear
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        want, got = model(ids).logits, h(ids).logits
        out = h.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                         pad_token_id=0)
    assert got.dtype == want.dtype == torch.float32
    assert quant.sqnr_db(want, got) >= 40
    assert out.shape == (2, 10)
