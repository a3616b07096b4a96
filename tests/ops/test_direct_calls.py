"""lowp_ops.int8_linear & co. (lowp_ops/ops/_common.py, direct): a plain eager call takes the op's lane — its
validation and body without torch.library's dispatch — and returns the op's output bit for bit, on awkward shapes,
with arguments given by position or keyword; it refuses what the op refuses, in the op's words; every call that must
see the op (autograd, tracing, an argument the op does not know) is the op's call; and nothing of a call outlives it."""

import gc
import weakref

import pytest
import torch

import lowp_ops
from lowp_ops import quant
from lowp_ops.ops import _common
from util import assert_bitwise_equal, int8

CL = torch.channels_last
_STATIC = {"x_scale": torch.tensor([0.03]), "x_zero_point": torch.tensor([-5], dtype=torch.int32)}
_INT8_OUT = {"out_scale": torch.tensor([0.05]), "out_zero_point": torch.tensor([7], dtype=torch.int32)}


def _ops_called(fn) -> list[str]:
    """Names of the torch.ops.lowp ops that fn() went through (the profiler watches without a dispatch mode)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({e.key for e in prof.key_averages() if e.key.startswith("lowp::")})


def _weight(N: int, K: int):
    torch.manual_seed(0)
    qw = quant.quantize_tensor(torch.randn(N, K), quant.per_channel(axis=0))
    return qw.qdata, qw.scale.reshape(-1), torch.randn(N)


def _same_as_the_op(name: str, *args, **kwargs) -> torch.Tensor:
    """The direct call's output, first and again (where a native plan kept for these tensors serves), is the op's."""
    y = getattr(lowp_ops, name)(*args, **kwargs)
    assert _ops_called(lambda: getattr(lowp_ops, name)(*args, **kwargs)) == []
    expected = getattr(torch.ops.lowp, name)(*args, **kwargs)
    assert_bitwise_equal(y, expected)
    assert_bitwise_equal(getattr(lowp_ops, name)(*args, **kwargs), expected)
    return y


LINEARS = [({}, "dynamic"), ({"activation": "relu"}, "relu"), ("static", "static"), ("int8 out", "static int8 out"),
           ({"activation": "gelu"}, "gelu")]


def _kw(kind, w_sum) -> dict:
    if kind == "static":
        return {**_STATIC, "weight_sum": w_sum}
    if kind == "int8 out":
        return {**_STATIC, "weight_sum": w_sum, **_INT8_OUT, "out_dtype": torch.int8}
    return kind


@pytest.mark.parametrize(("kind", "what"), LINEARS, ids=[w for _, w in LINEARS])
@pytest.mark.parametrize("M", [1, 13, 67])
def test_int8_linear(kind, what, M):
    w, ws, b = _weight(37, 45)
    x = torch.randn(M, 45)
    _same_as_the_op("int8_linear", x, w, ws, b, **_kw(kind, w.sum(1, dtype=torch.int32)))


def test_int8_linear_by_position_and_by_keyword():
    w, ws, b = _weight(13, 19)
    x = torch.randn(3, 19)
    by_position = _same_as_the_op("int8_linear", x, w, ws, b, None, None, None, "relu")
    assert_bitwise_equal(_same_as_the_op("int8_linear", x, weight=w, weight_scale=ws, bias=b, activation="relu"),
                         by_position)


@pytest.mark.parametrize("M", [1, 13, 67])
def test_int8_mm(M):
    a, (b, bs, bias) = int8(M, 45), _weight(37, 45)
    _same_as_the_op("int8_mm", a, b, torch.tensor([0.02]), bs, bias, activation="relu")
    _same_as_the_op("int8_mm", a, b, torch.tensor([0.02]), bs, bias, torch.tensor([3], dtype=torch.int32),
                    b.sum(1, dtype=torch.int32), out_dtype=torch.int8, **_INT8_OUT)


@pytest.mark.parametrize("shape", [(1, 5, 7, 9), (3, 5, 13, 5)])
def test_int8_conv2d(shape):
    torch.manual_seed(0)
    w = int8(4, 5, 3, 3, low=-127).contiguous(memory_format=CL)
    x = torch.randn(shape)
    args = (x, w, [2, 1], [1, 1], [1, 1], 1)
    _same_as_the_op("int8_conv2d", *args, weight_scale=torch.rand(4) * 0.01, bias=torch.randn(4), activation="relu")
    _same_as_the_op("int8_conv2d", *args, torch.tensor([0.03]), torch.rand(4) * 0.01, None,
                    torch.tensor([-5], dtype=torch.int32), w.sum((1, 2, 3), dtype=torch.int32), out_dtype=torch.int8,
                    **_INT8_OUT)


def test_bad_arguments_are_refused_in_the_ops_words():
    w, ws, b = _weight(13, 19)
    with pytest.raises(ValueError, match="int8_linear.*activation"):
        lowp_ops.int8_linear(torch.randn(3, 19), w, ws, b, activation="swish")
    with pytest.raises(ValueError, match="int8_linear.*x"):
        lowp_ops.int8_linear(torch.randn(3, 18), w, ws, b)
    # an argument the op does not know, or lacks: torch's own complaint about the op's call
    with pytest.raises(RuntimeError, match="Unknown keyword argument 'actvation' for operator 'lowp::int8_linear'"):
        lowp_ops.int8_linear(torch.randn(3, 19), w, ws, b, actvation="relu")
    with pytest.raises((TypeError, RuntimeError), match="weight_scale"):
        lowp_ops.int8_linear(torch.randn(3, 19), w)
    for call in (lowp_ops.int8_linear, torch.ops.lowp.int8_linear):  # one given twice: the op refuses it (torch 2.13
        with pytest.raises(RuntimeError):                             # asserts internally), the direct call with it
            call(torch.randn(3, 19), w, ws, b, bias=b)


def test_calls_that_must_see_the_op_go_through_it():
    w, ws, b = _weight(13, 19)
    x = torch.randn(3, 19, requires_grad=True)
    assert _ops_called(lambda: lowp_ops.int8_linear(x, w, ws, b)) == ["lowp::int8_linear"]
    compiled = torch.compile(lambda t: lowp_ops.int8_linear(t, w, ws, b), fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_bitwise_equal(compiled(x), torch.ops.lowp.int8_linear(x, w, ws, b))


def test_a_call_keeps_nothing_alive():
    w, ws, b = _weight(13, 19)
    for _ in range(2):  # the native plan route (M = 1): a plan made, kept, and run again
        lowp_ops.int8_linear(torch.randn(1, 19), w, ws, b)
    gone = [weakref.ref(t) for t in (w, ws, b)]
    del w, ws, b
    gc.collect()
    assert [ref() for ref in gone] == [None] * 3


@pytest.fixture
def lane_calls(monkeypatch) -> list:
    """The calls that reached an op's lane (lowp_ops/ops/_common.py, Lane): those a kept native plan did not
    serve."""
    calls, through = [], _common.Lane.__call__

    def counted(self, owner, *args):
        calls.append(args)
        return through(self, owner, *args)

    monkeypatch.setattr(_common.Lane, "__call__", counted)
    return calls


def test_a_plan_serves_the_same_tensors_again_and_nothing_else(lane_calls):
    w, ws, b = _weight(13, 19)
    x = torch.randn(1, 19)
    first = lowp_ops.int8_linear(x, w, ws, b)
    assert len(lane_calls) == 1
    assert_bitwise_equal(lowp_ops.int8_linear(torch.randn(1, 19).copy_(x), w, ws, b), first)  # another x: the plan
    assert len(lane_calls) == 1
    for other in (lambda: (w.clone(), ws, b), lambda: (w, ws, b.clone()), lambda: (w, ws, None)):
        args = (x, *other())
        assert_bitwise_equal(lowp_ops.int8_linear(*args), torch.ops.lowp.int8_linear(*args))
    assert len(lane_calls) == 4
    w[0, 0], ws[1], b[2] = 5, 0.5, 7.0  # in-place writes: the kept plan sees them (versions) and is made again
    for _ in range(2):
        assert_bitwise_equal(lowp_ops.int8_linear(x, w, ws, b), torch.ops.lowp.int8_linear(x, w, ws, b))
    assert len(lane_calls) == 5
    with lowp_ops.use_cpu_backend("reference"):  # no native plan there
        assert_bitwise_equal(lowp_ops.int8_linear(x, w, ws, b), torch.ops.lowp.int8_linear(x, w, ws, b))
    assert len(lane_calls) == 6
    square, one = _weight(19, 19)[0], ws[:1]
    for _ in range(2):
        lowp_ops.int8_linear(x, square, one, None)
    assert len(lane_calls) == 7
    square.data = square.t()  # its codes read transposed: the same data pointer, version and shape
    for call in (lowp_ops.int8_linear, torch.ops.lowp.int8_linear):
        with pytest.raises(ValueError, match="weight"):
            call(x, square, one, None)


def test_layers_called_in_turn_each_keep_a_plan(lane_calls):
    layers = [_weight(13, 19) for _ in range(3)]
    x = torch.randn(1, 19)
    outputs = [lowp_ops.int8_linear(x, *layer, activation="relu") for layer in layers]
    for layer, y in zip(layers, outputs, strict=True):
        assert_bitwise_equal(lowp_ops.int8_linear(x, *layer, activation="relu"), y)
    assert len(lane_calls) == 3
    w = int8(4, 5, 3, 3, low=-127).contiguous(memory_format=CL)
    conv = (torch.randn(1, 5, 7, 9), w, [1, 1], [1, 1], [1, 1], 1, None, torch.rand(4) * 0.01, torch.randn(4))
    for _ in range(2):
        assert_bitwise_equal(lowp_ops.int8_conv2d(*conv), torch.ops.lowp.int8_conv2d(*conv))
    assert len(lane_calls) == 4


@pytest.mark.parametrize("M", [1, 13])
def test_fp8_linear_and_mm(M):
    torch.manual_seed(0)
    qw = quant.quantize_tensor(torch.randn(37, 45), quant.Fp8Spec(granularity="per_channel", axis=0))
    w, ws = qw.qdata, qw.scale.reshape(-1)
    _same_as_the_op("fp8_linear", torch.randn(M, 45), w, ws, torch.randn(37), activation="relu")
    a = quant.quantize_tensor(torch.randn(M, 45), quant.Fp8Spec(granularity="per_token"))
    _same_as_the_op("fp8_mm", a.qdata, w, a.scale.reshape(-1), ws)
