"""Int8Conv2d / Int8Linear as layers: BatchNorm folding, relu fusion, the op path through the interpreted kernels,
int8 chaining, state_dict, padding modes, torch.compile."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowp_ops
from lowp_ops import quant
from lowp_ops.nn import Int8Conv2d, Int8Linear
from util import assert_bitwise_equal, reference_path, trained_batchnorms

lowp = torch.ops.lowp
CL = torch.channels_last


def _conv_bn():
    conv = nn.Conv2d(5, 16, 3, padding=1)
    return conv, trained_batchnorms(nn.BatchNorm2d(16))


@pytest.mark.parametrize("static", [False, True])
def test_int8_conv2d_module_folds_bn_and_fuses_relu(static):
    conv, bn = _conv_bn()
    x = torch.randn(2, 5, 13, 13)
    ref = torch.relu(bn(conv(x)))
    kw = dict(input_scale=x.abs().max() / 127) if static else {}
    m = Int8Conv2d.from_float(conv, bn, activation="relu", **kw)
    y = m(x)
    assert y.shape == ref.shape and y.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
    assert quant.sqnr_db(ref, y) > 30  # 8-bit weights and activations through a 3x3x5 reduction: ~38-42 dB
    assert ("static" in repr(m)) == static and "activation=relu" in repr(m)


def test_module_op_path_through_kernels_matches_reference(kernels_on_cpu):
    conv, bn = _conv_bn()
    x = torch.randn(2, 5, 13, 13)
    m = Int8Conv2d.from_float(conv, bn, activation="relu", input_scale=0.03, input_zero_point=4,
                              output_scale=0.02, output_zero_point=-3)
    out = m(x)
    with reference_path():
        assert_bitwise_equal(out, m(x))


def test_int8_chain_between_modules():
    conv1, bn = _conv_bn()
    conv2 = nn.Conv2d(16, 8, 3, padding=1)
    x = torch.randn(2, 5, 13, 13)
    h_ref = torch.relu(bn(conv1(x)))
    m1 = Int8Conv2d.from_float(conv1, bn, activation="relu", input_scale=x.abs().max() / 127,
                               output_scale=h_ref.max() / 127)
    m2 = Int8Conv2d.from_float(conv2, input_scale=m1.output_scale)
    h = m1(x)
    assert h.dtype == torch.int8
    y = m2(h)
    assert quant.sqnr_db(conv2(h_ref), y) > 30


def test_state_dict_round_trip():
    conv, bn = _conv_bn()
    m = Int8Conv2d.from_float(conv, bn, input_scale=0.05, input_zero_point=2)
    fresh = Int8Conv2d.from_float(nn.Conv2d(5, 16, 3, padding=1), input_scale=0.1, input_zero_point=0)
    state = m.state_dict()
    assert state["qweight"].dtype == torch.int8 and state["weight_scale"].dtype == torch.float32
    assert "weight_sum" not in state  # derived from the weight, recomputed on load
    fresh.load_state_dict(state)
    x = torch.randn(1, 5, 7, 7)
    assert_bitwise_equal(fresh(x), m(x))
    assert torch.equal(fresh.weight_sum, m.weight_sum)


def test_padding_same_and_depthwise_module():
    dw = nn.Conv2d(8, 8, 3, padding="same", groups=8)
    m = Int8Conv2d.from_float(dw, activation="relu6")
    x = torch.randn(2, 8, 7, 13)
    assert quant.sqnr_db(F.relu6(dw(x)), m(x)) > 30
    with pytest.raises(ValueError, match="asymmetric padding"):
        Int8Conv2d.from_float(nn.Conv2d(3, 3, 2, padding="same"))
    with pytest.raises(ValueError, match="padding_mode 'reflect'"):
        Int8Conv2d.from_float(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))


def test_compile_fullgraph_int8_model():
    conv, bn = _conv_bn()
    model = nn.Sequential(Int8Conv2d.from_float(conv, bn, activation="relu"), nn.Flatten(),
                          Int8Linear.from_float(nn.Linear(16 * 7 * 7, 10)))
    x = torch.randn(2, 5, 7, 7)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("oblivious", [False, True], ids=["", "size-oblivious"])
@pytest.mark.parametrize("static", [False, True])
def test_compile_dynamic_one_graph_for_every_batch(static, oblivious):
    """torch.compile(dynamic=True) of a converted model: one graph for M = 2..64 (dynamo gives size 1 a graph of
    its own, as for any model), and for M = 1..64 with torch.fx.experimental._config.backed_size_oblivious; each
    call the eager model's output; the native launchers run inside it (ops/backends.py)."""
    with torch.fx.experimental._config.patch(backed_size_oblivious=oblivious):
        _one_graph_for_every_batch(static, (1,) * oblivious + (2, 3, 5, 9, 17, 64))


def _one_graph_for_every_batch(static: bool, batches: tuple[int, ...]) -> None:
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10)).eval()
    if static:
        prepared = lowp_ops.prepare(float_model)
        lowp_ops.calibrate(prepared, [torch.randn(32, 64)], progress=False)
        model = lowp_ops.convert(prepared)
    else:
        model = lowp_ops.quantize_dynamic(float_model)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, dynamic=True)
    with torch.no_grad():
        for m in batches:
            x = torch.randn(m, 64)
            assert_bitwise_equal(compiled(x), model(x))
    assert counters["stats"]["unique_graphs"] == 1


def test_int8_linear_module_static_and_int8_input():
    lin = nn.Linear(45, 37)
    x = torch.randn(13, 45)
    static = Int8Linear.from_float(lin, input_scale=x.abs().max() / 127, input_zero_point=0, activation="relu")
    assert quant.sqnr_db(torch.relu(lin(x)), static(x)) > 30
    q = lowp.quantize_per_tensor(x, static.input_scale, static.input_zero_point)
    assert_bitwise_equal(static(q), static(x))  # int8 input: the same numbers, quantized beforehand
    with pytest.raises(ValueError, match="an int8 input needs a static input_scale"):
        Int8Linear.from_float(lin)(q)
