"""torch.ops.lowp.int8_max_pool2d (ops/pool.py), its backends (native CPU, the Triton kernel, the reference) and
Int8MaxPool2d: equal, code for code, to torch's max-pool of the values, on awkward shapes and every window rule;
the errors it raises; opcheck and compile."""

import pytest
import torch
import torch.nn.functional as F

import lowp_ops
from lowp_ops import cpu, kernels, reference
from lowp_ops.cpu import native
from lowp_ops.nn import Int8MaxPool2d
from util import assert_bitwise_equal

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CL = torch.channels_last

# (N, C, H, W), kernel, stride, padding, dilation, ceil_mode
CASES = {
    "2x2": ((2, 5, 8, 8), (2, 2), (2, 2), (0, 0), (1, 1), False),
    "3x3 s2 p1 odd": ((1, 13, 7, 9), (3, 3), (2, 2), (1, 1), (1, 1), False),
    "ceil_mode": ((3, 3, 7, 5), (2, 2), (2, 2), (0, 0), (1, 1), True),
    "ceil p1": ((1, 67, 9, 9), (3, 3), (2, 2), (1, 1), (1, 1), True),
    "3x2 dilated": ((2, 70, 13, 11), (3, 2), (1, 2), (1, 1), (2, 1), False),
    "window = input": ((1, 130, 5, 5), (5, 5), (1, 1), (0, 0), (1, 1), False),
    "1x1 image": ((2, 3, 1, 1), (1, 1), (1, 1), (0, 0), (1, 1), False),
}


def _case(name, channels_last=True):
    shape, *window = CASES[name]
    x = torch.randint(-128, 128, shape, dtype=torch.int8)
    x.view(-1)[:: 7] = -128  # the smallest code, which padding reads as: it must still win where it is the max
    x = x.contiguous(memory_format=CL) if channels_last else x
    return x, dict(zip(("kernel_size", "stride", "padding", "dilation", "ceil_mode"), window, strict=True))


def _torch_pool(x, kw):
    return F.max_pool2d(x.float(), kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"], kw["ceil_mode"])


OUT = pytest.mark.parametrize("out", ["out channels_last", "out contiguous"])


def _out(out: str) -> dict:
    return {"channels_last": out == "out channels_last"}


@OUT
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("name", CASES)
def test_op_is_torch_max_pool_of_the_values(name, layout, out):
    x, kw = _case(name, layout == "channels_last")
    y = lowp_ops.int8_max_pool2d(x, **kw, **_out(out))
    assert y.dtype == torch.int8 and y.is_contiguous(memory_format=CL if _out(out)["channels_last"] else
                                                     torch.contiguous_format)
    assert_bitwise_equal(y.float(), _torch_pool(x, kw))
    assert_bitwise_equal(y, reference.int8_max_pool2d(x, **kw, **_out(out)))


@OUT
@pytest.mark.parametrize("name", CASES)
def test_native_cpu_and_its_fallback(name, out, monkeypatch):
    x, kw = _case(name)
    kw.update(_out(out))
    expected = reference.int8_max_pool2d(x, **kw)
    if native.load() is not None:
        assert_bitwise_equal(cpu.int8_max_pool2d(x, **kw), expected)
    monkeypatch.setattr(native, "load", lambda: None)  # no compiler: the reference serves
    assert_bitwise_equal(cpu.int8_max_pool2d(x, **kw), expected)


@OUT
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("name", CASES)
def test_triton_kernel(name, layout, out):
    x, kw = _case(name, layout == "channels_last")
    x, kw = x.to(DEVICE), {**kw, **_out(out)}
    assert_bitwise_equal(kernels.int8_max_pool2d(x, **kw), reference.int8_max_pool2d(x, **kw))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: lowp_ops.int8_max_pool2d(torch.zeros(1, 2, 4, 4), [2, 2], [2, 2], [0, 0], [1, 1]), TypeError,
     r"lowp.int8_max_pool2d: argument 'x' must have dtype int8, got float32"),
    (lambda: lowp_ops.int8_max_pool2d(torch.zeros(2, 4, 4, dtype=torch.int8), [2, 2], [2, 2], [0, 0], [1, 1]),
     ValueError, r"argument 'x' must be 4-D"),
    (lambda: lowp_ops.int8_max_pool2d(torch.zeros(1, 2, 4, 4, dtype=torch.int8), [2, 2], [2, 2], [2, 0], [1, 1]),
     ValueError, r"argument 'padding' \[2, 0\] must be at most half of kernel_size"),
    (lambda: lowp_ops.int8_max_pool2d(torch.zeros(1, 2, 4, 4, dtype=torch.int8), [2], [2, 2], [0, 0], [1, 1]),
     ValueError, r"argument 'kernel_size' must hold 2 ints"),
    (lambda: lowp_ops.int8_max_pool2d(torch.zeros(1, 2, 4, 4, dtype=torch.int8), [2, 2], [0, 2], [0, 0], [1, 1]),
     ValueError, r"stride and dilation must be >= 1"),
    (lambda: lowp_ops.int8_max_pool2d(torch.zeros(1, 2, 2, 4, dtype=torch.int8), [3, 3], [1, 1], [0, 0], [1, 1]),
     ValueError, r"does not fit the 2x4 input: output would be 0x2"),
])
def test_errors_name_the_op_and_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_opcheck_and_compile():
    x, kw = _case("ceil p1")
    args = (x, list(kw["kernel_size"]), list(kw["stride"]), list(kw["padding"]), list(kw["dilation"]), True)
    for channels_last in (True, False):
        torch.library.opcheck(torch.ops.lowp.int8_max_pool2d, (*args, channels_last))
        compiled = torch.compile(lambda t, c=channels_last: torch.ops.lowp.int8_max_pool2d(t, *args[1:], c),
                                 fullgraph=True)
        assert_bitwise_equal(compiled(x), lowp_ops.int8_max_pool2d(*args, channels_last))


def test_int8_max_pool2d_module():
    pool = Int8MaxPool2d(3, 2, 1, ceil_mode=True)
    x, _ = _case("3x3 s2 p1 odd")
    expected = F.max_pool2d(x.float(), 3, 2, 1, ceil_mode=True)
    assert_bitwise_equal(pool(x).float(), expected)
    assert_bitwise_equal(pool(x[0]).float(), expected[0])  # unbatched, as nn.MaxPool2d takes it
    f = torch.randn(2, 3, 9, 9)
    assert_bitwise_equal(pool(f), F.max_pool2d(f, 3, 2, 1, ceil_mode=True))  # float: nn.MaxPool2d's own
    rows = Int8MaxPool2d(3, 2, 1, ceil_mode=True, channels_last=False)  # for a flatten: the codes in its order
    assert rows(x).is_contiguous() and torch.equal(rows(x), pool(x))
    twin = Int8MaxPool2d.from_float(torch.nn.MaxPool2d(2))
    assert repr(twin) == repr(torch.nn.MaxPool2d(2)).replace("Max", "Int8Max")
    assert repr(Int8MaxPool2d.from_float(torch.nn.MaxPool2d(2), channels_last=False)).endswith(
        ", int8 output contiguous)")
    with pytest.raises(ValueError, match="returning indices"):
        Int8MaxPool2d.from_float(torch.nn.MaxPool2d(2, return_indices=True))


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "rows"])
@pytest.mark.parametrize("name", CASES)
def test_module_native_shortcut_is_the_op(name, channels_last):
    """Int8MaxPool2d's eager CPU call skips the op's dispatch and runs its checks once per input size and window:
    the op's codes and layout all the same, a changed window or input size checked again."""
    x, kw = _case(name)
    pool = Int8MaxPool2d(kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"], kw["ceil_mode"],
                         channels_last=channels_last)
    for _ in range(2):  # the second call: checks kept
        y = pool(x)
        expected = torch.ops.lowp.int8_max_pool2d(x, *map(list, (kw["kernel_size"], kw["stride"], kw["padding"],
                                                                   kw["dilation"])), kw["ceil_mode"], channels_last)
        assert_bitwise_equal(y, expected)
        assert y.stride() == expected.stride()
    pool.kernel_size, pool.stride, pool.padding = 1, 1, 0  # a new window: checked and sized again
    assert_bitwise_equal(pool(x), x.contiguous(memory_format=torch.channels_last if channels_last else
                                               torch.contiguous_format))
    with pytest.raises(ValueError, match="int8_max_pool2d"):
        pool.padding = 1  # padding above half the 1x1 kernel
        pool(x)
