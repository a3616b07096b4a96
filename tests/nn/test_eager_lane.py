"""The modules' eager lane (lowp_ops.ops._common.Lane): a plain eager CPU call runs the op's body without
torch.library's dispatch and validates the module's constant arguments once per signature. Its output is the op's,
bit for bit; every call that something must see (autograd, tracing, dispatch modes) goes through the op; and no
change to the module's tensors escapes validation."""

import contextlib
import copy
import gc
import pickle
import weakref

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from lowp_ops import use_cpu_backend
from lowp_ops.cpu import gemm as cpu_gemm
from lowp_ops.cpu import native, support
from lowp_ops.nn import Fp8Linear, Int8Conv2d, Int8Linear
from lowp_ops.ops._common import TRUSTED, Lane
from lowp_ops.ops.conv import eager_int8_conv2d
from lowp_ops.ops.int8 import eager_int8_linear
from util import assert_bitwise_equal

_STATIC = {"input_scale": 0.03, "input_zero_point": -5}
_INT8_OUT = {**_STATIC, "output_scale": 0.05, "output_zero_point": 7}


def _linear(K=19, N=13, **kw) -> Int8Linear:
    torch.manual_seed(0)
    return Int8Linear.from_float(nn.Linear(K, N), **kw)


def _conv(**kw) -> Int8Conv2d:
    torch.manual_seed(0)
    return Int8Conv2d.from_float(nn.Conv2d(3, 5, 3, padding=1, stride=2), **kw)


def _ops_called(fn) -> list[str]:
    """Names of the torch.ops.lowp ops that fn() went through (the profiler watches without a dispatch mode)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({e.key for e in prof.key_averages() if e.key.startswith("lowp::")})


def _by_op(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) through torch.ops.lowp (a dispatch mode that passes every call on closes the lane)."""
    class Through(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Through():
        return module(x)


LINEARS = [({}, "dynamic"), (_STATIC, "static"), (_INT8_OUT, "static int8 out"),
           ({"activation": "relu"}, "relu")]


@pytest.mark.parametrize(("kw", "what"), LINEARS, ids=[w for _, w in LINEARS])
@pytest.mark.parametrize("M", [1, 13, 67])
def test_linear_lane_is_the_op(kw, what, M):
    layer = _linear(**kw)
    x = torch.randn(M, 19)
    assert _ops_called(lambda: layer(x)) == []
    assert_bitwise_equal(layer(x), _by_op(layer, x))
    assert _ops_called(lambda: _by_op(layer, x))  # the control: the op ran there


def test_linear_lane_on_int8_input_is_the_op():
    layer = _linear(**_STATIC)
    x = torch.randint(-128, 128, (13, 19), dtype=torch.int8)
    assert _ops_called(lambda: layer(x)) == []
    assert_bitwise_equal(layer(x), _by_op(layer, x))


@pytest.mark.parametrize("static", [False, True])
def test_fp8_linear_lane_is_the_op(static):
    torch.manual_seed(0)
    layer = Fp8Linear.from_float(nn.Linear(19, 13), **({"input_scale": 0.02} if static else {}))
    x = torch.randn(13, 19)
    assert _ops_called(lambda: layer(x)) == []
    assert_bitwise_equal(layer(x), _by_op(layer, x))
    if static:
        q = (x / 0.02).to(torch.float8_e4m3fn)
        assert_bitwise_equal(layer(q), _by_op(layer, q))


CONVS = [({}, "dynamic"), (_STATIC, "static"), (_INT8_OUT, "static int8 out"), ({"activation": "relu"}, "relu")]


@pytest.mark.parametrize(("kw", "what"), CONVS, ids=[w for _, w in CONVS])
@pytest.mark.parametrize("shape", [(1, 3, 7, 9), (3, 3, 13, 5)])
def test_conv_lane_is_the_op(kw, what, shape):
    layer = _conv(**kw)
    x = torch.randn(shape)
    assert _ops_called(lambda: layer(x)) == []
    assert_bitwise_equal(layer(x), _by_op(layer, x))


@pytest.mark.parametrize("make", [_linear, _conv])
def test_calls_that_must_see_the_op_go_through_it(make):
    layer = make(**_STATIC)
    x = torch.randn(2, 19) if isinstance(layer, Int8Linear) else torch.randn(2, 3, 6, 6)
    assert _ops_called(lambda: layer(x.requires_grad_())), "autograd must reach the op's inference-only backward"
    with pytest.raises(RuntimeError, match="inference-only"):
        layer(x).sum().backward()
    with torch.no_grad():
        assert _ops_called(lambda: layer(x)) == []  # no grad: nothing to say


def test_a_scale_written_in_place_is_validated_again():
    layer = _linear(**_STATIC)
    x = torch.randn(3, 19)
    layer(x)
    with torch.no_grad():
        layer.input_scale.fill_(float("nan"))  # the version counter moves: the lane checks again
    with pytest.raises(ValueError, match="int8_linear.*x_scale"):
        layer(x)


def test_a_replaced_buffer_is_validated_again():
    layer = _conv(**_STATIC)
    x = torch.randn(1, 3, 6, 6)
    layer(x)
    layer.input_zero_point = torch.tensor(300, dtype=torch.int32)  # a new tensor: a new identity
    with pytest.raises(ValueError, match="int8_conv2d.*x_zero_point"):
        layer(x)


def test_a_new_input_shape_is_validated_again():
    layer = _linear()
    layer(torch.randn(3, 19))
    with pytest.raises(ValueError, match="in_features=19"):
        layer(torch.randn(3, 18))
    x = torch.randn(3, 2, 19)  # a new shape passes the op's checks once, then runs the lane
    assert_bitwise_equal(layer(x), _by_op(layer, x))


@pytest.mark.parametrize("how", ["built", "moved", "loaded", "assigned"])
def test_a_module_made_in_inference_mode_keeps_normal_tensors_and_its_lane(how):
    """Inference tensors keep no version counter, so a lane could not see writes to them and would check them on
    every call: a module built, moved, loaded or given tensors inside torch.inference_mode holds normal copies
    (nn/_base.py, _normal), its calls take the lane, and an in-place write there is still seen."""
    with torch.inference_mode():
        layer = _linear(**_STATIC) if how == "built" else None
    if layer is None:
        layer = _linear(**_STATIC)
        with torch.inference_mode():
            if how == "moved":  # what .to(another device) does: a new copy of each tensor
                layer._apply(lambda t: t.clone())
            elif how == "loaded":
                layer.load_state_dict(_linear(**_STATIC).state_dict(), assign=True)
            else:
                layer.input_scale = torch.tensor([0.03])
    assert not any(t.is_inference() for t in layer.buffers())
    x = torch.randn(3, 19)
    with torch.inference_mode():
        layer(x)
        assert _ops_called(lambda: layer(x)) == []
        layer.input_scale.fill_(float("nan"))
        with pytest.raises(ValueError, match="x_scale"):
            layer(x)


def test_lanes_are_per_module():
    """Two modules of one shape keep their own validated signatures, and a dead module's entry goes with it."""
    a, b = _linear(**_STATIC), _linear()
    x = torch.randn(2, 19)
    a(x), b(x)
    assert a in eager_int8_linear._validated and b in eager_int8_linear._validated
    assert b not in eager_int8_conv2d._validated
    gc.collect()  # modules earlier tests left in reference cycles go first
    before = len(eager_int8_linear._validated)
    del a
    gc.collect()
    assert len(eager_int8_linear._validated) == before - 1 and b in eager_int8_linear._validated


def test_a_lane_keeps_no_tensor_alive():
    """After the module's buffers are replaced (.to(device), load_state_dict(assign=True), assignment), the lane
    holds only weak references to the old ones: their memory goes."""
    layer = _linear(**_STATIC)
    layer(torch.randn(2, 19))
    old = weakref.ref(layer.qweight)
    layer.qweight = layer.qweight.clone()
    gc.collect()
    assert old() is None
    x = torch.randn(2, 19)
    assert_bitwise_equal(layer(x), _by_op(layer, x))  # validated again with the new buffer


# ---------------------------------------------------------------------------------------------------- native plans
# Under the native CPU backend a module's first lane call leaves a C++ plan (native.cpp's Plan) that later calls run
# on x alone (ops/_common.py: run_plan). Its output is the Python route's and the reference's, bit for bit; a call it
# does not serve, or any change to the module since, goes back through the lane.

needs_native = pytest.mark.skipif(native.load() is None or support.missing() is not None,
                                  reason="no native CPU backend here (no C++ compiler, or no int8 dot products)")


def _trusted(layer: nn.Module):
    return layer.__dict__.get(TRUSTED)


@contextlib.contextmanager
def _no_lane(monkeypatch):
    """Inside: a call that reaches a lane (or the op) fails, so what runs is the plan."""
    def boom(*args, **kwargs):
        raise AssertionError("the call went through the lane, not the module's plan")

    with monkeypatch.context() as m:
        m.setattr(Lane, "__call__", boom)
        yield


def _served(layer: nn.Module, x: torch.Tensor, monkeypatch) -> torch.Tensor:
    """layer(x) twice: the first through the lane (it makes the plan), the second by the plan alone, equal to the
    first and to the reference backend's output, bit for bit."""
    first = layer(x)
    assert _trusted(layer), "no plan after the first call"
    with _no_lane(monkeypatch):
        y = layer(x)
    assert_bitwise_equal(y, first)
    with use_cpu_backend("reference"):
        assert_bitwise_equal(y, layer(x))
    return y


PLANNED_LINEARS = LINEARS + [({"activation": "relu6", **_INT8_OUT}, "relu6 int8 out")]


@needs_native
@pytest.mark.parametrize(("kw", "what"), PLANNED_LINEARS, ids=[w for _, w in PLANNED_LINEARS])
@pytest.mark.parametrize("shape", [(1, 19), (13, 19), (67, 19), (2, 7, 19)])
def test_linear_plan_is_the_op_and_the_reference(kw, what, shape, monkeypatch):
    _served(_linear(**kw), torch.randn(shape), monkeypatch)


@needs_native
def test_linear_plan_on_int8_input(monkeypatch):
    """A layer fed the int8 codes of the layer before (int8_mm's plan)."""
    _served(_linear(**_INT8_OUT), torch.randint(-128, 128, (13, 19), dtype=torch.int8), monkeypatch)


PLANNED_CONVS = CONVS + [({"activation": "relu6", **_INT8_OUT}, "relu6 int8 out")]


@needs_native
@pytest.mark.parametrize(("kw", "what"), PLANNED_CONVS, ids=[w for _, w in PLANNED_CONVS])
@pytest.mark.parametrize("shape", [(1, 3, 7, 9), (3, 3, 13, 5)])
def test_conv_plan_is_the_op_and_the_reference(kw, what, shape, monkeypatch):
    _served(_conv(**kw), torch.randn(shape), monkeypatch)


@needs_native
@pytest.mark.parametrize(("kw", "what"), PLANNED_CONVS, ids=[w for _, w in PLANNED_CONVS])
def test_conv_plan_with_many_taps_is_the_op_and_the_reference(kw, what, monkeypatch):
    """16 channels x 3x3 = 144 taps: the plan's im2col + _int_mm route (the convs above, 27 taps, run conv_direct)."""
    torch.manual_seed(0)
    layer = Int8Conv2d.from_float(nn.Conv2d(16, 6, 3, padding=1), **kw)
    _served(layer, torch.randn(2, 16, 7, 9), monkeypatch)


@needs_native
def test_conv_plan_on_int8_input_and_dilation(monkeypatch):
    torch.manual_seed(0)
    layer = Int8Conv2d.from_float(nn.Conv2d(4, 6, 3, padding=2, dilation=2), **_INT8_OUT)
    x = torch.randint(-128, 128, (2, 4, 9, 11), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    _served(layer, x, monkeypatch)
    _served(layer, torch.randint(-128, 128, (2, 4, 9, 11), dtype=torch.int8), monkeypatch)  # NCHW int8 too


@needs_native
def test_calls_a_plan_does_not_serve_take_the_lane(monkeypatch):
    """Each of these calls finds the plan, which declines it: the lane's output, the op's."""
    torch.manual_seed(0)
    monkeypatch.setattr(cpu_gemm, "_QLINEAR_MIN_WEIGHT", 2**21)  # N·K from which oneDNN's qlinear runs at M >= 2
    big = Int8Linear.from_float(nn.Linear(2048, 1024))
    big(torch.randn(1, 2048))
    assert _trusted(big)
    for x in (torch.randn(2, 2048), torch.randn(4, 2048).T.contiguous().T[:, :2048][:3]):
        assert_bitwise_equal(big(x), _by_op(big, x))
    conv = _conv(**_STATIC)
    conv(torch.randn(1, 3, 8, 8))
    x = torch.randn(3, 3, 64, 64)  # 3 x 32 x 32 output pixels: more than the GEMM route takes (oneDNN's)
    assert_bitwise_equal(conv(x), _by_op(conv, x))
    layer = _linear(**_STATIC)
    layer(torch.randn(3, 19))
    for x in (torch.randn(3, 19, dtype=torch.float16), torch.randn(19, 3).T, torch.randn(3, 19, dtype=torch.float64)):
        assert_bitwise_equal(layer(x), _by_op(layer, x))
    gelu = _linear(activation="gelu")
    gelu(torch.randn(3, 19))
    assert not _trusted(gelu)  # gelu is torch's, after the C++ pass: no plan


@needs_native
def test_a_plan_follows_every_change_to_its_module():
    layer = _linear(**_INT8_OUT)
    x = torch.randn(5, 19)
    layer(x), layer(x)

    def check():
        assert_bitwise_equal(layer(x), _by_op(layer, x))
        assert_bitwise_equal(layer(x), _by_op(layer, x))  # the second call: the plan made again

    with torch.no_grad():
        layer.input_scale.mul_(2)  # in place: the version moves
    check()
    layer.weight_scale.data = layer.weight_scale * 0.5  # .data: new memory, no version bump
    check()
    layer.activation = "relu"  # an attribute
    check()
    layer.output_scale = torch.tensor([0.5])  # a replaced buffer
    check()
    layer.double()  # float64 output: computed in float32, widened after the op
    assert layer(x).dtype == torch.int8  # int8 output stays int8
    layer.output_scale = layer.output_zero_point = None
    assert layer(x).dtype == torch.float64
    check()
    layer.float()
    check()
    assert _trusted(layer)


@needs_native
def test_modules_with_plans_copy_and_pickle():
    layer = _conv(**_STATIC)
    x = torch.randn(2, 3, 9, 9)
    y = layer(x)
    assert _trusted(layer)
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert _trusted(twin) is None
        assert_bitwise_equal(twin(x), y)
    assert_bitwise_equal(layer(x), y)


@needs_native
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_jit_trace_records_the_op():
    """torch.jit.trace records the aten and custom ops it sees: C++ plans (and lanes) stand aside while it runs."""
    layer = _linear(**_STATIC)
    x = torch.randn(3, 19)
    layer(x), layer(x)
    with torch.no_grad():
        traced = torch.jit.trace(layer, x)
    assert "lowp::int8_linear" in str(traced.graph)
    assert_bitwise_equal(traced(x), layer(x))


@needs_native
@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_a_trusted_plan_stands_aside_for_what_must_see_the_op():
    """native.cpp's Plan::plain: autograd, dispatch and torch-function modes, functorch's vmap reach the op even
    where the module's plan would serve x."""
    layer = _linear(**_STATIC)
    x = torch.randn(3, 19)
    y = layer(x)
    assert _trusted(layer)
    assert _ops_called(lambda: layer(x.clone().requires_grad_())), "autograd must reach the op"
    assert_bitwise_equal(_by_op(layer, x), y)
    seen = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Watch():
        assert_bitwise_equal(layer(x), y)
    assert torch.ops.lowp.int8_linear.default in seen
    xs = torch.randn(4, 3, 19)
    assert_bitwise_equal(torch.vmap(layer)(xs), torch.stack([layer(t) for t in xs]))
