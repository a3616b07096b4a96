"""A lowp module under torch.compile on the native CPU backend: its whole call is one graph op, lowp_cpu::module
(ops/_common.py, WholeCall), whose kernel is the module's eager call. The compiled output is eager's bit for bit,
strides included; the graph holds that op and none of the per-op ones; what the module promised while traced is
guarded (a cast recompiles), what it reads at run time is not (new weights need no recompile); copies get their own
handle; torch.export keeps the ops."""

import copy
import pickle

import pytest
import torch
from torch import nn
from torch._inductor.utils import run_and_get_code

from lowp_ops import use_cpu_backend
from lowp_ops.cpu import native, support
from lowp_ops.nn import Int8Conv2d, Int8Linear, Int8MaxPool2d
from lowp_ops.ops._common import _MODULE_OP, CALL
from util import assert_bitwise_equal

pytestmark = pytest.mark.skipif(not _MODULE_OP or native.load() is None or support.missing() is not None,
                                reason="whole calls need torch's opaque objects and the native CPU backend")

_STATIC = {"input_scale": 0.03, "input_zero_point": -5}
_INT8_OUT = {**_STATIC, "output_scale": 0.05, "output_zero_point": 7}
_OP = "torch.ops.lowp_cpu.module.default("


def _linear(**kw) -> Int8Linear:
    torch.manual_seed(0)
    return Int8Linear.from_float(nn.Linear(19, 13), **kw)


def _conv(**kw) -> Int8Conv2d:
    torch.manual_seed(0)
    return Int8Conv2d.from_float(nn.Conv2d(3, 5, 3, padding=1, stride=2), **kw)


def _compiled(module: nn.Module, x: torch.Tensor, calls: int, **kw):
    """torch.compile(module) run on x: (the compiled module, its output), checked against eager bit for bit (dtype,
    shape and strides) with `calls` whole-call ops and no per-op graph op in Inductor's code."""
    torch._dynamo.reset()
    fn = torch.compile(module, fullgraph=True, **kw)
    with torch.no_grad():
        eager = module(x)
        y, code = run_and_get_code(fn, x)
        assert_bitwise_equal(fn(x), eager)  # the second call: the module's plan, if it has one
    code = "\n".join(code)
    assert_bitwise_equal(y, eager)
    assert y.stride() == eager.stride()
    assert code.count(_OP) == calls, code
    assert "lowp_cpu.int8" not in code and "lowp_cpu.quantize" not in code
    return fn, y


LINEARS = [({}, "dynamic"), (_STATIC, "static"), (_INT8_OUT, "static int8 out"), ({"activation": "relu"}, "relu"),
           ({"activation": "gelu", **_STATIC}, "gelu")]


@pytest.mark.parametrize(("kw", "what"), LINEARS, ids=[w for _, w in LINEARS])
@pytest.mark.parametrize("shape", [(1, 19), (13, 19), (67, 19), (2, 7, 19)])
def test_linear_is_one_graph_op(kw, what, shape):
    _compiled(_linear(**kw), torch.randn(shape), calls=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_linear_keeps_the_input_dtype(dtype):
    _, y = _compiled(_linear(**_STATIC), torch.randn(5, 19, dtype=dtype), calls=1)
    assert y.dtype == dtype


def test_linear_on_int8_input():
    _compiled(_linear(**_STATIC), torch.randint(-128, 128, (13, 19), dtype=torch.int8), calls=1)


CONVS = [({}, "dynamic"), (_STATIC, "static"), (_INT8_OUT, "static int8 out"), ({"activation": "relu6"}, "relu6")]


@pytest.mark.parametrize(("kw", "what"), CONVS, ids=[w for _, w in CONVS])
@pytest.mark.parametrize("shape", [(1, 3, 7, 9), (3, 3, 13, 5), (3, 7, 9)])
def test_conv_is_one_graph_op(kw, what, shape):
    _compiled(_conv(**kw), torch.randn(shape), calls=1)


def test_conv_on_int8_input_in_nchw_order():
    _compiled(_conv(**_STATIC), torch.randint(-128, 128, (2, 3, 9, 8), dtype=torch.int8), calls=1)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(("shape", "ceil_mode"), [((2, 5, 9, 7), False), ((2, 5, 9, 7), True), ((5, 8, 8), False)])
def test_pool_is_one_graph_op(channels_last, shape, ceil_mode):
    x = torch.randint(-128, 128, shape, dtype=torch.int8)
    _compiled(Int8MaxPool2d(3, 2, padding=1, ceil_mode=ceil_mode, channels_last=channels_last), x, calls=1)


def test_pool_on_float_input_is_torchs():
    x = torch.randn(2, 5, 9, 7)
    _compiled(Int8MaxPool2d(2), x, calls=0)


def _chain() -> nn.Sequential:
    """conv (int8 out) -> relu -> pool (flatten's order) -> flatten -> linear: int8 handed on all the way."""
    torch.manual_seed(0)
    conv = Int8Conv2d.from_float(nn.Conv2d(3, 8, 3, padding=1), activation="relu", **_INT8_OUT)
    linear = Int8Linear.from_float(nn.Linear(8 * 4 * 4, 10), input_scale=0.05, input_zero_point=7)
    return nn.Sequential(conv, nn.ReLU(), Int8MaxPool2d(2, channels_last=False), nn.Flatten(), linear).eval()


@pytest.mark.parametrize("batch", [1, 3])
def test_a_chain_is_one_graph_op_a_module(batch):
    _compiled(_chain(), torch.randn(batch, 3, 8, 8), calls=3)


def test_dynamic_shapes_compile_once():
    model, frames = _chain(), []
    torch._dynamo.reset()

    def count(gm, example_inputs):
        frames.append(gm)
        return gm.forward

    fn = torch.compile(model, backend=count, dynamic=True, fullgraph=True)
    with torch.no_grad():
        for batch in (2, 5, 9, 17):  # not 3, the channels: Dynamo would give both one symbol
            x = torch.randn(batch, 3, 8, 8)
            assert_bitwise_equal(fn(x), model(x))
    assert len(frames) == 1


def test_new_weights_need_no_recompile_and_a_cast_recompiles():
    layer = _linear(**_STATIC)
    x = torch.randn(4, 19)
    fn, _ = _compiled(layer, x, calls=1)
    torch.manual_seed(1)
    layer.load_state_dict(Int8Linear.from_float(nn.Linear(19, 13), **_STATIC).state_dict())
    with torch.no_grad():
        assert_bitwise_equal(fn(x), layer(x))
        layer.half()
        y = fn(x)
    assert y.dtype == torch.float16
    assert_bitwise_equal(y, layer(x))


def test_another_backend_retraces():
    layer, x = _linear(**_STATIC), torch.randn(4, 19)
    fn, _ = _compiled(layer, x, calls=1)
    with torch.no_grad(), use_cpu_backend("reference"):
        assert_bitwise_equal(fn(x), layer(x))


@pytest.mark.parametrize("make", [_linear, _conv, lambda: Int8MaxPool2d(2)])
def test_a_copy_has_its_own_handle(make):
    module = make()
    for other in (copy.deepcopy(module), pickle.loads(pickle.dumps(module)), copy.copy(module)):
        assert other.__dict__[CALL].module() is other
    assert module.__dict__[CALL].module() is module


def test_export_keeps_the_ops():
    exported = torch.export.export(_chain(), (torch.randn(2, 3, 8, 8),))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "lowp_cpu.module.default" not in targets
    assert {"lowp.int8_conv2d.default", "lowp.int8_max_pool2d.default"} <= targets, targets
