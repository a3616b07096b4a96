"""torch.ops.lowp.int8_add (ops/add.py) and its backends (native CPU, the Triton kernel, the reference): the codes of
the requantized sum of the values, bit for bit across backends, on awkward shapes and layouts, at rounding ties and
saturation; the errors it raises; opcheck and compile."""

import pytest
import torch

import lowp_ops
from lowp_ops import cpu, kernels, reference
from lowp_ops.cpu import native
from util import assert_bitwise_equal

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CL = torch.channels_last


def _i8(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=g)


# a, b (b in another layout, or a strided view, where the case says so)
SHAPES = {
    "1-D 13": lambda: (_i8(13), _i8(13, seed=1)),
    "67x45": lambda: (_i8(67, 45), _i8(67, 45, seed=1)),
    "b a transposed view": lambda: (_i8(45, 67), _i8(67, 45, seed=1).t()),
    "4-D channels_last": lambda: (_i8(2, 5, 7, 9).contiguous(memory_format=CL),
                                  _i8(2, 5, 7, 9, seed=1).contiguous(memory_format=CL)),
    "4-D a channels_last, b NCHW": lambda: (_i8(2, 5, 7, 9).contiguous(memory_format=CL), _i8(2, 5, 7, 9, seed=1)),
    "4-D a NCHW, b channels_last": lambda: (_i8(3, 6, 5, 3), _i8(3, 6, 5, 3, seed=1).contiguous(memory_format=CL)),
    "4-D one channel": lambda: (_i8(2, 1, 5, 3).contiguous(memory_format=CL), _i8(2, 1, 5, 3, seed=1)),
    "4-D 1x1 image": lambda: (_i8(3, 70, 1, 1).contiguous(memory_format=CL), _i8(3, 70, 1, 1, seed=1)),
    "empty": lambda: (_i8(0, 5), _i8(0, 5, seed=1)),
}


def _qparams(kind: str) -> dict:
    s = lambda v: torch.tensor([v], dtype=torch.float32)  # noqa: E731
    z = lambda v: torch.tensor([v], dtype=torch.int32)  # noqa: E731
    return {
        "symmetric": dict(a_scale=s(0.031), b_scale=s(0.017), out_scale=s(0.045)),
        "affine": dict(a_scale=s(0.031), b_scale=s(0.017), out_scale=s(0.045), a_zero_point=z(-7),
                       b_zero_point=z(90), out_zero_point=z(-128)),
        # (a − za)·0.25 / 0.5 = (a − za) / 2: every odd difference is a tie, rounded to even
        "ties": dict(a_scale=s(0.25), b_scale=s(0.5), out_scale=s(0.5), a_zero_point=z(3)),
        "saturating": dict(a_scale=s(1.0), b_scale=s(1.0), out_scale=s(1e-3), out_zero_point=z(5)),
    }[kind]


KINDS = ["symmetric", "affine", "ties", "saturating"]


def _expected_values(a, b, q, activation):
    """The float64 sum of the values, its activation, and the output's grid: the codes q decode to it within half a
    step unless they saturate."""
    real = lambda t, s, z: (t.double() - (0 if z is None else z.item())) * s.item()  # noqa: E731
    y = real(a, q["a_scale"], q.get("a_zero_point")) + real(b, q["b_scale"], q.get("b_zero_point"))
    y = y.clamp(min=0) if activation != "none" else y
    return y.clamp(max=6) if activation == "relu6" else y


@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_op_requantizes_the_sum_of_the_values(shape, kind, activation):
    a, b = SHAPES[shape]()
    q = _qparams(kind)
    y = lowp_ops.int8_add(a, b, **q, activation=activation)
    assert y.dtype == torch.int8 and y.shape == a.shape
    assert y.is_contiguous(memory_format=kernels.add.add_layout(a))
    assert_bitwise_equal(y, reference.int8_add(a, b, **q, activation=activation))
    # the reference means what it says: round to the nearest code of the output grid, ties to even, saturating
    zo = 0 if q.get("out_zero_point") is None else q["out_zero_point"].item()
    exact = _expected_values(a, b, q, activation) / q["out_scale"].item()
    assert torch.equal(y.double() - zo, (exact.round() + zo).clamp(-128, 127) - zo)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_native_cpu_and_its_fallback(shape, kind, monkeypatch):
    a, b = SHAPES[shape]()
    q = _qparams(kind)
    for activation in ("none", "relu6"):
        expected = reference.int8_add(a, b, **q, activation=activation)
        if native.load() is not None:
            assert_bitwise_equal(cpu.int8_add(a, b, **q, activation=activation), expected)
        with monkeypatch.context() as m:
            m.setattr(native, "load", lambda: None)  # no compiler: the reference serves
            assert_bitwise_equal(cpu.int8_add(a, b, **q, activation=activation), expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_kernel(shape, kind):
    a, b = (t.to(DEVICE) for t in SHAPES[shape]())
    q = {k: v.to(DEVICE) for k, v in _qparams(kind).items()}
    for activation in ("none", "relu"):
        y, expected = (f(a, b, **q, activation=activation) for f in (kernels.int8_add, reference.int8_add))
        if DEVICE == "cpu":  # the interpreter: the reference's float32 operations, bit for bit
            assert_bitwise_equal(y, expected)
        else:  # a GPU compiler may fuse (a − za)·sa + … into an FMA: a code at a rounding tie may move by one
            assert y.dtype == expected.dtype and y.stride() == expected.stride()
            assert (y.int() - expected.int()).abs().max().item() <= 1 if y.numel() else True


_A, _S = torch.zeros(4, 3, dtype=torch.int8), torch.tensor([0.1])


@pytest.mark.parametrize("call, exc, match", [
    (lambda: lowp_ops.int8_add(_A.float(), _A, _S, _S, _S), TypeError,
     r"lowp.int8_add: argument 'a' must have dtype int8, got float32"),
    (lambda: lowp_ops.int8_add(_A, _A[:3], _S, _S, _S), ValueError,
     r"lowp.int8_add: argument 'b' must have a's shape \(4, 3\) \(no broadcasting\), got \(3, 3\)"),
    (lambda: lowp_ops.int8_add(_A, _A, _S, None, _S), TypeError, r"argument 'b_scale' must be a Tensor"),
    (lambda: lowp_ops.int8_add(_A, _A, _S, _S, torch.tensor([0.0])), ValueError, r"argument 'out_scale'"),
    (lambda: lowp_ops.int8_add(_A, _A, _S, _S, _S, out_zero_point=torch.tensor([200], dtype=torch.int32)),
     ValueError, r"argument 'out_zero_point'"),
    (lambda: lowp_ops.int8_add(_A, _A, _S, _S, _S, activation="gelu"), ValueError,
     r"argument 'activation' must be one of 'none', 'relu', 'relu6', got 'gelu'"),
])
def test_errors_name_the_op_and_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_opcheck_and_compile():
    a, b = SHAPES["4-D a channels_last, b NCHW"]()
    q = _qparams("affine")
    args = (a, b, q["a_scale"], q["b_scale"], q["out_scale"], q["a_zero_point"], q["b_zero_point"],
            q["out_zero_point"], "relu")
    torch.library.opcheck(torch.ops.lowp.int8_add, args)
    compiled = torch.compile(lambda x, y: torch.ops.lowp.int8_add(x, y, *args[2:]), fullgraph=True)
    expected = lowp_ops.int8_add(*args)
    y = compiled(a, b)
    assert_bitwise_equal(y, expected)
    assert y.is_contiguous(memory_format=CL)
