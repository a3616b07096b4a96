"""transformers' own layers and conventions: GPT-2's Conv1D converted under every config (registered lazily, lowp never
imports transformers), a tied lm_head left float by default, and save_pretrained refusing a model lowp converted
(from_pretrained would rebuild it float)."""

import io
import subprocess
import sys

import pytest
import torch

import lowp_ops
from lowp_ops import Fp16Config, Int8DynamicConfig, quant
from lowp_ops.nn import Fp8Linear, Fp16Linear, Int8Linear

transformers = pytest.importorskip("transformers")

# GPT-2's matmuls per block: attention's c_attn (q, k, v) and c_proj, the MLP's c_fc and c_proj; and the lm_head
_BLOCK = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def _gpt2(tied: bool):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32,
                                     tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def _ids(n=2, t=12):
    return torch.randint(0, 64, (n, t), generator=torch.Generator().manual_seed(1))


_MATMULS = [f"transformer.h.{i}.{name}" for i in range(2) for name in _BLOCK]


@pytest.mark.parametrize("workflow, made, handler, bound", [
    ("dynamic", Int8Linear, "conv1d_to_int8_dynamic", 20),
    ("static", Int8Linear, "conv1d_to_int8_static", 20),
    ("qat", Int8Linear, "qat_linear_to_int8", 20),
    ("fp8", Fp8Linear, "conv1d_to_fp8_dynamic", 20),
    ("fp16", Fp16Linear, "conv1d_to_fp16", 40),
])
def test_gpt2_conv1d_is_converted_under_every_config(workflow, made, handler, bound):
    model, ids = _gpt2(tied=False), _ids()
    if workflow == "dynamic":
        q = lowp_ops.quantize_dynamic(model)
    elif workflow == "static":
        q = lowp_ops.convert(lowp_ops.calibrate(lowp_ops.prepare(model), [_ids(4)], progress=False))
    elif workflow == "qat":
        qat = lowp_ops.prepare_qat(model)
        assert type(qat.get_submodule(_MATMULS[0])).__name__ == "QATLinear"
        qat.train()
        qat(_ids(4))
        q = lowp_ops.convert(qat.eval())
    elif workflow == "fp8":
        q = lowp_ops.quantize_dynamic(model, dtype=torch.float8_e4m3fn)
    else:
        q = lowp_ops.to_fp16(model)
    swapped = q.lowp_report.swapped
    assert set(swapped) == {*_MATMULS, "lm_head"}  # all 9 matmuls
    for fqn in _MATMULS:
        assert type(q.get_submodule(fqn)) is made and swapped[fqn] == f"{made.__name__} by {handler}", fqn
    with torch.no_grad():
        expected, out = model(ids).logits, q(ids).logits
    assert out.dtype == expected.dtype
    assert quant.sqnr_db(expected, out) > bound
    generated = q.generate(ids[:, :4], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 8)


def test_conv1d_computes_as_the_linear_of_its_transposed_weight():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = Conv1D(24, 40)  # nf = 24 out, nx = 40 in: weight (40, 24)
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
    model = torch.nn.Sequential(layer)
    x = torch.randn(3, 5, 40)
    q = lowp_ops.quantize(model, Int8DynamicConfig())
    assert (q[0].in_features, q[0].out_features) == (40, 24)
    assert quant.sqnr_db(model(x), q(x)) > 35  # a transposed weight read as it is would be noise
    assert torch.equal(model[0].weight, layer.weight) and type(model[0]) is Conv1D  # the original is untouched


def test_lowp_does_not_import_transformers():
    code = "import sys, lowp_ops; assert 'transformers' not in sys.modules, 'imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def _llama(tied: bool):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                      max_position_embeddings=32, tie_word_embeddings=tied, bos_token_id=0,
                                      eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("make, embedding", [(_gpt2, "transformer.wte"), (_llama, "model.embed_tokens")],
                         ids=["gpt2", "llama"])
def test_a_tied_lm_head_stays_float_and_tied_by_default(make, embedding):
    model, ids = make(tied=True), _ids()
    assert model.lm_head.weight is model.get_submodule(embedding).weight
    q = lowp_ops.quantize_dynamic(model)
    assert type(q.lm_head) is torch.nn.Linear and q.lm_head.weight is q.get_submodule(embedding).weight
    assert q.lowp_report.skipped["lm_head"].startswith(f"its weight is tied to {embedding} (Embedding), which stays "
                                                       f"float: converting it would add a separate copy")
    assert len(q.lowp_report.swapped) >= 8
    with torch.no_grad():
        assert quant.sqnr_db(model(ids).logits, q(ids).logits) > 20
    assert q.generate(ids[:, :4], max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (2, 7)
    named = lowp_ops.quantize_dynamic(model, overrides={"lm_head": Int8DynamicConfig()})  # the user's choice
    assert type(named.lm_head) is Int8Linear


@pytest.mark.parametrize("workflow", ["dynamic", "prepared", "fp16"])
def test_save_pretrained_of_a_lowp_model_refuses(tmp_path, workflow):
    """from_pretrained rebuilds the float architecture: lowp's int8 / e4m3 tensors would be read as float weights or
    left at random init. The model still saves whole."""
    model = _llama(tied=False)
    q = {"dynamic": lambda: lowp_ops.quantize_dynamic(model),
         "prepared": lambda: lowp_ops.prepare_qat(model),
         "fp16": lambda: lowp_ops.quantize(model, Fp16Config())}[workflow]()
    with pytest.raises(ValueError, match=r"LlamaForCausalLM.save_pretrained: this model was prepared or converted by "
                                         r"lowp; transformers' from_pretrained would rebuild the float architecture"):
        q.save_pretrained(tmp_path / "converted")
    assert not (tmp_path / "converted").exists()
    model.save_pretrained(tmp_path / "float")  # the float model is untouched
    assert (tmp_path / "float").exists()
    buffer = io.BytesIO()
    torch.save(q, buffer)  # whole: the refusal pickles
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, q(ids).logits)
    with pytest.raises(ValueError, match="save_pretrained: this model was prepared or converted by lowp"):
        loaded.save_pretrained(tmp_path / "loaded")
