"""torch.ops.lowp.int8_conv2d / quantize_channels_last: opcheck, float input quantized inside the op (dynamic per
tensor, static), and the errors they raise."""

import os

import pytest
import torch

import lowp_ops
from lowp_ops import quant
from util import assert_bitwise_equal

lowp = torch.ops.lowp
CL = torch.channels_last


def _int8(*shape, channels_last=True):
    t = torch.randint(-128, 128, shape, dtype=torch.int8)
    return t.contiguous(memory_format=CL) if channels_last and t.ndim == 4 else t


def _geo(stride=1, padding=1, dilation=1, groups=1):
    return [stride, stride], [padding, padding], [dilation, dilation], groups


@pytest.mark.filterwarnings("ignore:lowp int8_conv2d. no native CPU path:RuntimeWarning")  # traced: the reference
@pytest.mark.parametrize("case", ["int32", "float-zp", "requant", "depthwise", "dynamic", "dynamic-bf16", "static"])
def test_opcheck_int8_conv2d(case):
    x, w = _int8(2, 8, 7, 7), _int8(16, 4, 3, 3)
    if case.startswith(("dynamic", "static")):  # float x, quantized inside the op
        x = torch.randn(2, 8, 7, 7, dtype=torch.bfloat16 if case.endswith("bf16") else torch.float32)
    args, kwargs = (x, w, *_geo(groups=2)), {}
    if case != "int32":
        args += (None if case.startswith("dynamic") else torch.tensor([0.05]), torch.rand(16) * 0.01 + 1e-3,
                 torch.randn(16))
    if case == "static":
        args += (torch.tensor([-3], dtype=torch.int32),)
        kwargs = dict(activation="relu", out_dtype=torch.int8, out_scale=torch.tensor([0.5]))
    if case == "float-zp":
        args += (torch.tensor([3], dtype=torch.int32),)
        kwargs = dict(activation="relu", out_dtype=torch.float16)
    if case == "requant":
        kwargs = dict(activation="relu6", out_dtype=torch.int8, out_scale=torch.tensor([0.5]))
    if case == "depthwise":
        args = (x, _int8(8, 1, 3, 3), *_geo(stride=2, groups=8), torch.rand(2) + 0.01, torch.rand(8) + 0.01)
    torch.library.opcheck(lowp.int8_conv2d, args, kwargs)


def test_opcheck_quantize_channels_last():
    torch.library.opcheck(lowp.quantize_channels_last, (torch.randn(2, 3, 5, 7), torch.tensor([0.1]),
                                                         torch.tensor([-4], dtype=torch.int32)))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: lowp.int8_conv2d(_int8(1, 4, 5, 5, channels_last=False), _int8(4, 4, 3, 3), *_geo()), ValueError,
     r"lowp.int8_conv2d: argument 'x' must be channels_last \(NHWC in memory\)"),
    (lambda: lowp.int8_conv2d(torch.randn(1, 4, 5, 5).double(), _int8(4, 4, 3, 3), *_geo()), TypeError,
     r"argument 'x' must have dtype int8, float16, bfloat16 or float32, got float64"),
    (lambda: lowp.int8_conv2d(torch.randn(1, 4, 5, 5), _int8(4, 4, 3, 3), *_geo()), ValueError,
     r"lowp.int8_conv2d: argument 'weight_scale' is required for a float32 x"),
    (lambda: lowp.int8_conv2d(torch.randn(1, 4, 5, 5), _int8(4, 4, 3, 3), *_geo(), None, torch.rand(4) + 0.1,
                              x_zero_point=torch.tensor([1], dtype=torch.int32)), ValueError,
     r"argument 'x_zero_point' needs 'x_scale' \(static quantization\); dynamic quantization is symmetric"),
    (lambda: lowp.int8_conv2d(torch.randn(2, 4, 5, 5), _int8(4, 4, 3, 3), *_geo(), torch.rand(2) + 0.1,
                              torch.rand(4) + 0.1), ValueError,
     r"argument 'x_scale' must hold one element \(static per-tensor activation scale\), got shape \(2,\)"),
    (lambda: lowp.int8_conv2d(torch.randn(1, 4, 5, 5), _int8(4, 4, 3, 3), *_geo(), None, torch.rand(4) + 0.1,
                              out_dtype=torch.int32), TypeError,
     r"argument 'out_dtype' must be int8, float16, bfloat16 or float32, got torch.int32"),
    (lambda: lowp.int8_conv2d(_int8(1, 4, 5, 5), _int8(4, 4, 3, 3), *_geo(groups=3)), ValueError,
     r"'groups' must divide the input channels \(4\) and output channels \(4\), got 3"),
    (lambda: lowp.int8_conv2d(_int8(1, 4, 5, 5), _int8(4, 3, 3, 3), *_geo()), ValueError,
     r"argument 'weight' must be \(K, C / groups, R, S\) = \(4, 4, R, S\), got shape \(4, 3, 3, 3\)"),
    (lambda: lowp.int8_conv2d(_int8(1, 4, 5, 5), _int8(4, 4, 3, 3), [1], [0, 0], [1, 1], 1), ValueError,
     r"argument 'stride' must hold 2 ints"),
    (lambda: lowp.int8_conv2d(_int8(1, 4, 5, 5), _int8(4, 4, 3, 3), [0, 1], [0, 0], [1, 1], 1), ValueError,
     r"stride and dilation must be >= 1"),
    (lambda: lowp.int8_conv2d(_int8(1, 4, 2, 2), _int8(4, 4, 3, 3), *_geo(padding=0)), ValueError,
     r"does not fit the padded 2x2 input"),
    (lambda: lowp.int8_conv2d(_int8(1, 4, 5, 5), _int8(4, 4, 3, 3), *_geo(), torch.tensor([0.1]),
                              torch.rand(4) + 0.1, None, torch.tensor([1, 2], dtype=torch.int32)), ValueError,
     r"argument 'x_zero_point' must hold one element"),
    (lambda: lowp.int8_conv2d(_int8(2, 4, 5, 5), _int8(4, 4, 3, 3), *_geo(), torch.rand(3), torch.rand(4)),
     ValueError, r"argument 'x_scale' must hold one scale per image \(shape \(2,\), or one element\), got shape "
                 r"\(3,\)"),
    (lambda: lowp.int8_conv2d(_int8(1, 4, 5, 5), _int8(4, 4, 3, 3), *_geo(), torch.tensor([0.1]),
                              torch.rand(4) + 0.1, out_dtype=torch.int8), ValueError, r"needs 'out_scale'"),
    (lambda: lowp.quantize_channels_last(torch.randn(2, 3, 4), torch.tensor([0.1])), ValueError,
     r"lowp.quantize_channels_last: argument 'x' must be 4-D"),
], ids=lambda v: "" if callable(v) else None)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --------------------------------------------------------------------------------- float x, quantized inside

def _float_case(dtype=torch.float32):
    x = (torch.randn(2, 6, 9, 7) * 3).to(dtype)
    w = torch.randint(-127, 128, (4, 3, 3, 3), dtype=torch.int8).contiguous(memory_format=CL)
    return x, w, _geo(stride=2, groups=2), torch.rand(4) * 0.01 + 1e-3, torch.randn(4)


_interpreted = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs Triton's interpreter")
BACKENDS = ["reference", "native", pytest.param("triton", marks=_interpreted)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dynamic_float_x_is_the_per_tensor_recipe(dtype, backend):
    # bit for bit: the absmax scale (quant.choose_qparams, symmetric per tensor), quantize, int8 conv
    x, w, geometry, w_scale, bias = _float_case(dtype)
    amax = x.float().abs().max()
    scale = quant.choose_qparams(-amax, amax, quant.per_tensor())[0].reshape(1)
    with lowp_ops.use_cpu_backend(backend):
        y = lowp.int8_conv2d(x, w, *geometry, None, w_scale, bias, activation="relu")
        q = lowp.quantize_channels_last(x, scale)
        expected = lowp.int8_conv2d(q, w, *geometry, scale, w_scale, bias, activation="relu", out_dtype=dtype)
    assert y.dtype == dtype and y.is_contiguous(memory_format=CL)  # out_dtype defaults to x's, as int8_linear
    assert_bitwise_equal(y, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_float_x_is_quantize_then_conv(backend):
    x, w, geometry, w_scale, bias = _float_case()
    scale, zp = torch.tensor([0.04]), torch.tensor([-5], dtype=torch.int32)
    out = dict(out_dtype=torch.int8, out_scale=torch.tensor([0.3]), out_zero_point=torch.tensor([2], dtype=torch.int32))
    with lowp_ops.use_cpu_backend(backend):
        y = lowp.int8_conv2d(x.contiguous(memory_format=CL), w, *geometry, scale, w_scale, bias, zp, **out)
        q = lowp.quantize_channels_last(x, scale, zp)
        assert_bitwise_equal(y, lowp.int8_conv2d(q, w, *geometry, scale, w_scale, bias, zp, **out))


@pytest.mark.filterwarnings("ignore:lowp int8_conv2d. no native CPU path:RuntimeWarning")  # traced: the reference
def test_dynamic_float_x_compiles():
    x, w, geometry, w_scale, bias = _float_case()

    def f(x):
        return lowp.int8_conv2d(x, w, *geometry, None, w_scale, bias, activation="relu6")

    torch._dynamo.reset()
    assert_bitwise_equal(torch.compile(f, fullgraph=True, backend="aot_eager")(x), f(x))
