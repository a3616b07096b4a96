"""torch.ops.lowp.int8_conv2d / quantize_channels_last: opcheck and the errors they raise."""

import pytest
import torch

lowp = torch.ops.lowp
CL = torch.channels_last


def _int8(*shape, channels_last=True):
    t = torch.randint(-128, 128, shape, dtype=torch.int8)
    return t.contiguous(memory_format=CL) if channels_last and t.ndim == 4 else t


def _geo(stride=1, padding=1, dilation=1, groups=1):
    return [stride, stride], [padding, padding], [dilation, dilation], groups


@pytest.mark.parametrize("case", ["int32", "float-zp", "requant", "depthwise"])
def test_opcheck_int8_conv2d(case):
    x, w = _int8(2, 8, 7, 7), _int8(16, 4, 3, 3)
    args, kwargs = (x, w, *_geo(groups=2)), {}
    if case != "int32":
        args += (torch.tensor([0.05]), torch.rand(16) * 0.01 + 1e-3, torch.randn(16))
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
    (lambda: lowp.int8_conv2d(torch.randn(1, 4, 5, 5), _int8(4, 4, 3, 3), *_geo()), TypeError,
     r"argument 'x' must have dtype int8, got float32"),
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
     ValueError, r"argument 'x_scale' must hold one scale per image \(M=2: .* got shape \(3,\)"),
    (lambda: lowp.int8_conv2d(_int8(1, 4, 5, 5), _int8(4, 4, 3, 3), *_geo(), torch.tensor([0.1]),
                              torch.rand(4) + 0.1, out_dtype=torch.int8), ValueError, r"needs 'out_scale'"),
    (lambda: lowp.quantize_channels_last(torch.randn(2, 3, 4), torch.tensor([0.1])), ValueError,
     r"lowp.quantize_channels_last: argument 'x' must be 4-D"),
], ids=lambda v: "" if callable(v) else None)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
