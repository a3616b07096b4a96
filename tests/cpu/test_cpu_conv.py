"""lowp_ops/cpu/conv.py against lowp_ops.reference, on the kernels' conv geometries, along both of its paths (every
test runs three times): oneDNN's qconv2d, the GEMM over patches it takes for small convolutions (bit-exact: torch's
exact int32 product and the reference's epilogue, in C++), and the direct convolution of a layer with few taps
(bit-exact: exact float32 sums of integers, the same epilogue).

Tolerances: int32 outputs bit-exact. Epilogues oneDNN cannot express (a scale per image, gelu) run the
reference's float32 operations on oneDNN's exact accumulator: bit-exact. Fused epilogues run inside oneDNN in its
own order of float32 operations; float outputs are held to 4 float32 ulp of the largest output (the reference's
three roundings against oneDNN's), and requantized int8 to 1 LSB on at most 0.1 % of the elements, where a value
sits at a rounding tie (measured: bit-exact on 2.7 M outputs of conv2's shape in lowp_ops.examples.ConvNet, CI
machine).
"""

import math
import warnings

import pytest
import torch

from lowp_ops import cpu, reference
from lowp_ops.cpu import support
from lowp_ops.cpu.support import traced
from util import CONV_GEOMETRIES, assert_bitwise_equal, assert_onednn_close

pytestmark = pytest.mark.skipif(support.missing() is not None, reason=f"no native CPU path: {support.missing()}")
CL = torch.channels_last


@pytest.fixture(autouse=True, params=["onednn", "gemm", "direct"])
def path(request, monkeypatch):
    """Which path the convolutions below take: the routes' bounds set to route every one of them (direct: each with
    few enough taps, the others through the GEMM)."""
    monkeypatch.setattr(cpu.conv, "_GEMM_MAX_PIXELS", -1 if request.param == "onednn" else 2**62)
    direct = request.param == "direct"
    monkeypatch.setattr(cpu.conv, "_direct_route", lambda cpp, pixels, taps, k: direct and
                        taps <= cpp.DIRECT_MAX_TAPS)
    return request.param


def _case(name, *, per_image=False, zero_point=True):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = CONV_GEOMETRIES[name]
    x = torch.randint(-128, 128, (N, C, H, W), dtype=torch.int8).contiguous(memory_format=CL)
    w = torch.randint(-127, 128, (K, C // groups, R, S), dtype=torch.int8).contiguous(memory_format=CL)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    epilogue = dict(a_scale=torch.rand(N if per_image else 1) * 0.05 + 0.01, b_scale=torch.rand(K) * 0.01 + 1e-3,
                    bias=torch.randn(K))
    if zero_point:  # padding must read the zero point (a real 0), not the integer 0
        epilogue.update(a_zero_point=torch.tensor([-13], dtype=torch.int32), b_sum=w.sum(dim=(1, 2, 3),
                                                                                            dtype=torch.int32))
    return x, w, kw, epilogue


@pytest.mark.parametrize("name", CONV_GEOMETRIES)
def test_int32_output_bit_exact(name):
    x, w, kw, _ = _case(name)
    out = cpu.int8_conv2d(x, w, **kw)
    assert out.is_contiguous(memory_format=CL)
    assert_bitwise_equal(out, reference.int8_conv2d(x, w, **kw))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
@pytest.mark.parametrize("name", CONV_GEOMETRIES)
def test_fused_epilogue(name, activation, out_dtype, path):
    x, w, kw, epilogue = _case(name)
    kw.update(epilogue, activation=activation, out_dtype=out_dtype)
    if out_dtype == torch.int8:
        y = reference.int8_conv2d(x, w, **dict(kw, out_dtype=torch.float32))
        kw.update(out_scale=(y.abs().amax() / 90).reshape(1), out_zero_point=torch.tensor([7], dtype=torch.int32))
    out, expected = cpu.int8_conv2d(x, w, **kw), reference.int8_conv2d(x, w, **kw)
    assert out.is_contiguous(memory_format=CL)
    if path != "onednn" and kw["groups"] == 1:
        assert_bitwise_equal(out, expected)
    else:
        assert_onednn_close(out, expected)


@pytest.mark.parametrize("per_image, activation", [(True, "relu"), (False, "gelu"), (True, "gelu")])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("name", ["3x3 pad1 13x13", "depthwise x2 strided", "3x2 strided dilated", "grouped"])
def test_unfused_epilogue_bit_exact(name, out_dtype, per_image, activation):
    x, w, kw, epilogue = _case(name, per_image=per_image)
    kw.update(epilogue, activation=activation, out_dtype=out_dtype)
    if out_dtype == torch.int8:
        kw.update(out_scale=torch.tensor([0.05]), out_zero_point=torch.tensor([-3], dtype=torch.int32))
    out = cpu.int8_conv2d(x, w, **kw)
    assert out.is_contiguous(memory_format=CL)
    assert_bitwise_equal(out, reference.int8_conv2d(x, w, **kw))


def test_accumulator_beyond_float32_falls_back_with_one_warning(monkeypatch, path):
    # 128 · 128 · (C·R·S = 1152) > 2^24: oneDNN's float32 output cannot hold the raw int32 accumulator exactly; the
    # GEMM path's int32 one can
    monkeypatch.setattr(support, "_warned", set())  # said once per process: earlier tests may have said it
    x = torch.full((1, 128, 5, 5), -128, dtype=torch.int8).contiguous(memory_format=CL)
    w = torch.full((4, 128, 3, 3), -128, dtype=torch.int8).contiguous(memory_format=CL)
    kw = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = cpu.int8_conv2d(x, w, **kw)
    said = [str(w.message) for w in caught if "2^24" in str(w.message)]
    assert len(said) == (path == "onednn"), said
    assert (out == 128 * 128 * 1152).all()


def test_prepacked_weight_follows_in_place_writes():
    x, w, kw, _ = _case("3x3 pad1 13x13")
    cpu.int8_conv2d(x, w, **kw)
    w.mul_(-1)
    assert_bitwise_equal(cpu.int8_conv2d(x, w, **kw), reference.int8_conv2d(x, w, **kw))
    kw["padding"] = (0, 0)  # new geometry, same weight: packed again
    assert_bitwise_equal(cpu.int8_conv2d(x, w, **kw), reference.int8_conv2d(x, w, **kw))


def test_compiled_conv_runs_the_native_launcher(monkeypatch, path):
    """torch.compile traces the op's body with fake tensors; the graph holds lowp_cpu::int8_conv2d (ops/_common.py),
    which runs this launcher when the compiled function runs: no reference fallback, the eager op's output."""
    monkeypatch.setattr(support, "_warned", set())
    torch._dynamo.reset()  # trace again: the other path's run of this test compiled the same graph
    x, w, kw, epilogue = _case("3x3 pad1 13x13")
    geometry = (kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    args = (x, w, *geometry, epilogue["a_scale"], epilogue["b_scale"], epilogue["bias"], epilogue["a_zero_point"])
    calls = []
    launcher = cpu.int8_conv2d
    monkeypatch.setattr(cpu, "int8_conv2d", lambda *a, **k: calls.append(traced(a[0])) or launcher(*a, **k))

    def conv(*args):
        return torch.ops.lowp.int8_conv2d(*args, activation="relu")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no native CPU path" fallback
        out = torch.compile(conv, backend="aot_eager", fullgraph=True)(*args)
    assert calls and not any(calls), "the compiled graph must call the launcher on real tensors"
    assert_bitwise_equal(out, conv(*args))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.int8])
def test_fused_epilogue_with_a_per_tensor_weight_scale(out_dtype):
    x, w, kw, epilogue = _case("grouped")
    kw.update(epilogue, b_scale=torch.tensor([4e-3]), activation="relu", out_dtype=out_dtype)
    if out_dtype == torch.int8:
        kw.update(out_scale=torch.tensor([0.05]), out_zero_point=torch.tensor([-3], dtype=torch.int32))
    assert_onednn_close(cpu.int8_conv2d(x, w, **kw), reference.int8_conv2d(x, w, **kw))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.int8])
@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
def test_non_finite_bias_bypasses_the_fused_epilogue(activation, out_dtype):
    # oneDNN's relu / hardtanh post-ops turn NaN into 0 and its int8 output turns NaN into -128, where lowp keeps NaN
    # and encodes it as the output zero point: such calls take the reference epilogue, bit-exact
    x, w, kw, epilogue = _case("grouped", zero_point=False)
    epilogue["bias"][[0, 5]] = math.nan
    epilogue["bias"][[3, 4]] = torch.tensor([math.inf, -math.inf])
    kw.update(epilogue, activation=activation, out_dtype=out_dtype)
    if out_dtype == torch.int8:
        kw.update(out_scale=torch.tensor([0.05]), out_zero_point=torch.tensor([-3], dtype=torch.int32))
    out = cpu.int8_conv2d(x, w, **kw)
    assert out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, reference.int8_conv2d(x, w, **kw), rtol=0, atol=0, equal_nan=True)
    nan_channels = out[:, [0, 5]]
    assert (nan_channels == -3).all() if out_dtype == torch.int8 else nan_channels.isnan().all()
