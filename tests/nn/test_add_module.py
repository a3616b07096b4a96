"""lowp_ops.nn.Add and Int8Add (nn/add.py): the residual add static INT8 hands int8 through. Int8Add's int8 output is
the op's (torch.ops.lowp.int8_add) bit for bit on every backend and through its native shortcut; its float32 output
is the dequantized sum, computed as the reference computes it."""

import pickle

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import lowp_ops
from lowp_ops import reference
from lowp_ops.nn import Add, Int8Add
from util import assert_bitwise_equal, int8

_Q = dict(a_scale=0.021, b_scale=0.034, a_zero_point=3, b_zero_point=-7, output_scale=0.045, output_zero_point=-5)
_SHAPES = [(1, 8, 5, 7), (13, 3, 1, 1), (2, 67)]  # a conv's output, 1x1 images, a Linear's


def _add(activation="none", **q) -> Int8Add:
    return Int8Add(**{**_Q, **q}, activation=activation)


def _reference(m: Int8Add, a, b) -> torch.Tensor:
    return reference.int8_add(a, b, a_scale=m.a_scale, b_scale=m.b_scale, out_scale=m.output_scale,
                              a_zero_point=m.a_zero_point, b_zero_point=m.b_zero_point,
                              out_zero_point=m.output_zero_point, activation=m.activation)


@pytest.mark.parametrize("backend", ["native", "reference", "triton"])
@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
@pytest.mark.parametrize("shape", _SHAPES, ids=str)
def test_int8_output_is_the_op_bit_for_bit(shape, activation, backend):
    m = _add(activation)
    a, b = int8(*shape), int8(*shape)
    if len(shape) == 4:
        a = a.contiguous(memory_format=torch.channels_last)
    with lowp_ops.use_cpu_backend(backend), torch.inference_mode():
        y = m(a, b)
    assert_bitwise_equal(y, _reference(m, a, b))
    assert y.stride() == _reference(m, a, b).stride()  # a's layout, as int8_conv2d hands it on


def test_int8_output_through_the_op_where_a_mode_watches(monkeypatch):
    m, a, b = _add("relu"), int8(4, 9), int8(4, 9)
    fast = m(a, b)  # the native shortcut
    with FlopCounterMode(display=False):  # a dispatch mode must see the op: not the shortcut
        monkeypatch.setattr(m, "_checked", lambda *args: pytest.fail("the shortcut ran"))
        seen = m(a, b)
    assert_bitwise_equal(fast, seen)


def test_float_output_is_the_dequantized_sum():
    m = _add("relu", output_scale=None, output_zero_point=None)
    a, b = int8(3, 11), int8(3, 11)
    expected = torch.relu((a.float() - 3) * m.a_scale + (b.float() + 7) * m.b_scale)
    y = m(a, b)
    assert y.dtype == torch.float32 and torch.equal(y, expected)


def test_float_operands_quantize_their_sum():
    m = _add()
    a, b = torch.randn(5, 6), torch.randn(5, 6)
    expected = torch.clamp(torch.round((a + b) * (1 / m.output_scale)) - 5, -128, 127).to(torch.int8)
    assert_bitwise_equal(m(a, b), expected)


def test_a_buffer_written_in_place_is_read_at_the_next_call():
    m, a, b = _add(), int8(2, 40), int8(2, 40)
    before = m(a, b)
    m.output_scale.mul_(2)
    after = m(a, b)
    assert_bitwise_equal(after, _reference(m, a, b))
    assert not torch.equal(before, after)
    m.load_state_dict({**m.state_dict(), "a_scale": torch.tensor([0.5])})
    assert_bitwise_equal(m(a, b), _reference(m, a, b))


def test_copies_and_checkpoints_compute_the_same():
    m, a, b = _add("relu6"), int8(3, 33), int8(3, 33)
    m(a, b)  # keeps its scalars
    clone = pickle.loads(pickle.dumps(m))
    fresh = _add("relu6", a_scale=1.0)
    fresh.load_state_dict(m.state_dict())
    for other in (clone, fresh):
        assert_bitwise_equal(other(a, b), m(a, b))


def test_mixed_operands_are_refused():
    with pytest.raises(TypeError, match="Int8Add: a and b must both be int8 codes or both float"):
        _add()(int8(2, 3), torch.randn(2, 3))


def test_mismatched_shapes_are_refused_by_the_op():
    with pytest.raises(ValueError, match="int8_add.*'b'.*shape"):
        _add()(int8(2, 3), int8(3, 2))


@pytest.mark.parametrize("kwargs, match", [
    (dict(a_scale=None), "a_scale and b_scale are required"),
    (dict(a_scale=0.0), "'a_scale' must be a finite positive normal"),
    (dict(b_zero_point=200), "'b_zero_point' must be an integer in \\[-128, 127\\]"),
    (dict(output_scale=None), "output_zero_point needs output_scale"),
])
def test_bad_constructor_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _add(**kwargs)


def test_float_add_module():
    a, b = torch.tensor([1.0, -3.0, 7.0]), torch.tensor([1.0, 1.0, 1.0])
    assert Add()(a, b).tolist() == [2.0, -2.0, 8.0]
    assert Add("relu")(a, b).tolist() == [2.0, 0.0, 8.0]
    assert Add("relu6")(a, b).tolist() == [2.0, 0.0, 6.0]
    assert Add()(2, 3) == 5 and Add("relu")((1,), (2,)) == (1, 2)  # whatever + takes
    with pytest.raises(ValueError, match="Add: activation must be"):
        Add("gelu")


def test_int8_add_compiles_to_the_same_codes():
    m, a, b = _add("relu"), int8(2, 8, 3, 3), int8(2, 8, 3, 3)
    compiled = torch.compile(m, fullgraph=True)
    assert_bitwise_equal(compiled(a, b), m(a, b))


def test_made_in_inference_mode_casts_and_moves():
    """An Int8Add built or moved inside torch.inference_mode keeps normal tensors (its checks watch their versions);
    a float cast keeps the float32 scales and sets the dtype of a float output only."""
    a, b = int8(2, 9), int8(2, 9)
    with torch.inference_mode():
        m = _add("relu")
        inside = m(a, b)
        m.to("cpu")
    assert not any(t.is_inference() for t in m.buffers())
    assert_bitwise_equal(m(a, b), inside)
    m.half()
    assert m.a_scale.dtype == torch.float32 and m.a_zero_point.dtype == torch.int32
    assert_bitwise_equal(m(a, b), inside)  # int8 output: stays int8
    floats = _add("relu", output_scale=None, output_zero_point=None)
    expected = floats(a, b)
    assert floats.half()(a, b).dtype == torch.float16 and torch.equal(floats(a, b), expected.half())
    assert floats.float()(a, b).dtype == torch.float32
