"""lowp_ops/cpu/native.cpp against lowp_ops.reference, bit for bit: per-row and per-tensor quantization and the int8
GEMM epilogue on awkward shapes (vector tails), non-finite values, signed zeros and rounding ties; and the torch-op
path that serves where the C++ cannot be built."""

import math
import shutil
import warnings

import pytest
import torch

from lowp_ops import cpu, quant, reference
from lowp_ops.cpu import native
from util import assert_bitwise_equal

NAN, INF = math.nan, math.inf
SHAPES = [(1, 1), (1, 64), (13, 19), (67, 45), (3, 300)]


@pytest.fixture(scope="module")
def cpp():
    module = native.load()
    if module is None:
        pytest.skip("the C++ CPU kernels cannot be built here (native.load() warned why)")
    return module


def _awkward(M, K) -> torch.Tensor:
    """Gaussian rows of mixed magnitudes, an all-zero row, -0.0s and exact rounding ties."""
    x = torch.randn(M, K) * torch.rand(M, 1) * 10
    x[0] = 0.0
    if M > 2:
        x[1, ::2] = -0.0
        x[2] = torch.randint(-1200, 1200, (K,)) / 8
    return x


@pytest.mark.parametrize("M, K", SHAPES, ids=str)
def test_quantize_rows_dynamic(cpp, M, K):
    x = _awkward(M, K)
    q, scale = cpp.quantize_rows_dynamic(x, quant.MIN_SCALE)
    q_ref, scale_ref = reference.quantize_rows(x)
    assert_bitwise_equal(scale, scale_ref)
    assert_bitwise_equal(q, q_ref)


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_quantize_rows_dynamic_non_finite_rows(cpp, bad):
    x = _awkward(5, 37)
    x[3, 36] = bad  # in the vector tail
    x[4, 0] = bad
    q, scale = cpp.quantize_rows_dynamic(x, quant.MIN_SCALE)
    q_ref, scale_ref = reference.quantize_rows(x)
    assert torch.equal(scale.isnan(), scale_ref.isnan()) and scale[3:].isnan().all()
    assert_bitwise_equal(scale[:3], scale_ref[:3])
    assert_bitwise_equal(q, q_ref)


@pytest.mark.parametrize("zero_point", [0, -128, 5, 127])
@pytest.mark.parametrize("M, K", SHAPES, ids=str)
def test_quantize_per_tensor_ties_saturation_non_finite(cpp, M, K, zero_point):
    x = _awkward(M, K).view(-1) * 40  # saturates beyond ±128 · 0.25
    x[-1], x[len(x) // 2], x[0] = NAN, INF, -INF
    x = x.view(M, K)
    scale = torch.tensor([0.25])
    q = cpp.quantize_per_tensor(x, scale.item(), zero_point, False)
    q_ref, _ = reference.quantize_rows(x, scale=scale, zero_point=torch.tensor([zero_point], dtype=torch.int32))
    assert_bitwise_equal(q, q_ref)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_quantize_channels_last_any_layout(layout):
    x = torch.randn(2, 5, 7, 3) * 4
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(2, 5, 14, 3)[:, :, ::2]
    scale, zp = torch.tensor([0.03]), torch.tensor([-7], dtype=torch.int32)
    q = cpu.quantize_channels_last(x, scale=scale, zero_point=zp)
    assert q.is_contiguous(memory_format=torch.channels_last)
    assert_bitwise_equal(q, reference.quantize_channels_last(x, scale=scale, zero_point=zp))


def _epilogue_args(M, N, per_row: bool, per_col: bool, zero_point: str, bias_dtype):
    acc = torch.randint(-2**22, 2**22, (M, N), dtype=torch.int32)
    acc[0, : min(N, 3)] = 0  # zeros meet the bias: signed zeros where the bias is -0.0
    kw = {"a_scale": torch.rand(M if per_row else 1) * 1e-3 + 1e-6,
          "b_scale": torch.rand(N if per_col else 1) * 1e-2 + 1e-6}
    if bias_dtype is not None:
        bias = torch.randn(N)
        bias[0] = -0.0
        kw["bias"] = bias.to(bias_dtype)
    if zero_point != "none":
        kw["a_zero_point"] = torch.randint(-128, 128, (M if zero_point == "per_row" else 1,), dtype=torch.int32)
        kw["b_sum"] = torch.randint(-20000, 20000, (N,), dtype=torch.int32)
    return acc, kw


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.int8, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ["none", "relu", "relu6", "gelu"])
@pytest.mark.parametrize(("per_row", "per_col", "zero_point", "bias_dtype"),
                         [(True, True, "none", torch.float32), (False, False, "per_tensor", None),
                          (True, False, "per_row", torch.float16), (False, True, "per_tensor", torch.bfloat16)])
@pytest.mark.parametrize("M, N", [(1, 1), (1, 64), (13, 19), (67, 45)], ids=str)
def test_gemm_epilogue(M, N, per_row, per_col, zero_point, bias_dtype, activation, out_dtype):
    acc, kw = _epilogue_args(M, N, per_row, per_col, zero_point, bias_dtype)
    if out_dtype == torch.int8:
        kw |= {"out_scale": torch.tensor([0.05]), "out_zero_point": torch.tensor([-3], dtype=torch.int32)}
    if activation == "relu6":
        kw["a_scale"] = kw["a_scale"] * 1e-2  # values around 6: both clamps bite
    got = cpu.gemm.fused_epilogue(acc, out_dtype=out_dtype, activation_name=activation, **kw)
    expected = reference.gemm_epilogue(acc, out_dtype=out_dtype, activation_name=activation, **kw)
    assert_bitwise_equal(got, expected)
    if got.is_floating_point():  # torch.equal holds -0.0 == 0.0: the signs too
        assert torch.equal(got.signbit(), expected.signbit())


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.int8])
@pytest.mark.parametrize("activation", ["none", "relu", "relu6", "gelu"])
def test_gemm_epilogue_non_finite(activation, out_dtype):
    """A NaN row scale (a dynamic row that held NaN or ±inf) and ±inf / NaN in the bias, as the reference."""
    acc, kw = _epilogue_args(4, 37, True, True, "none", torch.float32)
    kw["a_scale"][1] = NAN
    kw["bias"][5], kw["bias"][36], kw["bias"][7] = INF, -INF, NAN
    if out_dtype == torch.int8:
        kw |= {"out_scale": torch.tensor([0.05]), "out_zero_point": torch.tensor([9], dtype=torch.int32)}
    got = cpu.gemm.fused_epilogue(acc, out_dtype=out_dtype, activation_name=activation, **kw)
    expected = reference.gemm_epilogue(acc, out_dtype=out_dtype, activation_name=activation, **kw)
    assert torch.equal(got.isnan(), expected.isnan()) if got.is_floating_point() else True
    assert_bitwise_equal(got.nan_to_num(123.0), expected.nan_to_num(123.0))


def test_without_the_cpp_the_torch_ops_serve(monkeypatch):
    """Where native.cpp cannot be built (LOWP_CPU_CPP=0, no compiler), the same outputs come from torch ops, and a
    failed build says why, once."""
    x = _awkward(13, 19)
    acc, kw = _epilogue_args(13, 19, True, True, "per_row", torch.float32)
    def run():
        q, scale = cpu.quantize_rows(x, min_scale=quant.MIN_SCALE)
        return q, scale, cpu.gemm.fused_epilogue(acc, out_dtype=torch.float32, **kw)

    with_cpp = run()
    monkeypatch.setattr(native, "load", lambda: None)
    for a, b in zip(with_cpp, run(), strict=True):
        assert_bitwise_equal(a, b)


def test_a_failed_build_warns_and_returns_none(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(**kwargs):
        raise RuntimeError("Error building extension: g++: command not found")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    native.load.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert native.load() is None
        assert any("could not be built" in str(w.message) and "g++" in str(w.message) for w in caught)
    finally:
        native.load.cache_clear()


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")) or not shutil.which("ninja"),
                    reason="no C++ compiler or ninja on this machine: lowp runs without native.cpp")
def test_it_builds_where_a_compiler_is():
    """On a machine with g++ and ninja (this project's), the C++ path must be the one tested, not skipped."""
    assert native.load() is not None


def test_lowp_cpu_cpp_0_turns_it_off(monkeypatch):
    monkeypatch.setenv("LOWP_CPU_CPP", "0")
    native.load.cache_clear()
    try:
        assert native.load() is None
    finally:
        native.load.cache_clear()


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.int8])
def test_gemm_epilogue_on_a_float_accumulator(cpp, out_dtype):
    """oneDNN's float32 accumulator (integers, zero point subtracted): the same epilogue, checked for exactness on
    the way; one value at 2^24 (in a vector tail) and the result is empty, for the caller to recompute in int32."""
    acc, kw = _epilogue_args(13, 37, True, True, "none", torch.float32)  # no zero point: oneDNN subtracted it
    if out_dtype == torch.int8:
        kw |= {"out_scale": torch.tensor([0.05]), "out_zero_point": torch.tensor([4], dtype=torch.int32)}
    facc = acc.float()
    got = cpu.gemm.fused_epilogue(facc.clone(), out_dtype=out_dtype, activation_name="relu", **kw)
    assert_bitwise_equal(got, reference.gemm_epilogue(facc.clone(), out_dtype=out_dtype, activation_name="relu",
                                                      **kw))
    facc[12, 36] = 2.0**24
    assert cpu.gemm.fused_epilogue(facc, out_dtype=out_dtype, activation_name="relu", **kw).numel() == 0


@pytest.mark.parametrize(("C", "H", "W", "R", "S", "stride", "padding", "dilation"), [
    (1, 9, 11, 3, 3, (1, 1), (0, 0), (1, 1)),    # a stem: 3-byte window rows
    (20, 7, 6, 3, 3, (1, 1), (1, 1), (2, 1)),    # dilated along H only: whole-row copies; padding: per tap
    (3, 13, 12, 5, 2, (2, 3), (2, 0), (1, 1)),   # strided, rectangular kernel
    (16, 6, 9, 2, 3, (1, 2), (1, 1), (1, 2)),    # dilated along W: per tap
    (1, 40, 50, 3, 3, (1, 1), (1, 1), (1, 1)),   # 4000 rows: threads' chunks start inside an image
])
def test_im2col_through_the_gemm_conv(cpp, monkeypatch, C, H, W, R, S, stride, padding, dilation):
    """native.cpp's im2col (the window-row copies inside x, the per-tap path at its borders) under cpu/conv.py's
    GEMM route, bit-exact with the reference convolution, the zero point reading as padding."""
    monkeypatch.setattr(cpu.conv, "_GEMM_MAX_PIXELS", 2**62)
    x = torch.randint(-128, 128, (2, C, H, W), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    w = torch.randint(-127, 128, (5, C, R, S), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=1, a_zero_point=torch.tensor([-7],
              dtype=torch.int32), b_sum=w.sum(dim=(1, 2, 3), dtype=torch.int32), a_scale=torch.tensor([0.02]),
              b_scale=torch.rand(5) * 1e-2, out_dtype=torch.float32)
    assert_bitwise_equal(cpu.int8_conv2d(x, w, **kw), reference.int8_conv2d(x, w, **kw))
    raw = dict(stride=stride, padding=padding, dilation=dilation, groups=1)  # the int32 accumulator, padding 0
    assert_bitwise_equal(cpu.int8_conv2d(x, w, **raw), reference.int8_conv2d(x, w, **raw))


@pytest.mark.parametrize(("N", "C", "H", "W", "K", "R", "S", "stride", "padding", "dilation"), [
    (1, 1, 28, 28, 32, 3, 3, (1, 1), (0, 0), (1, 1)),    # ConvNet's conv1 at batch 1: two vectors of channels
    (2, 3, 11, 9, 70, 3, 3, (2, 1), (1, 1), (1, 1)),     # RGB, K past four vectors with a tail, padding per tap
    (3, 2, 9, 10, 5, 2, 3, (1, 2), (2, 0), (2, 1)),      # dilated, strided, rectangular, K under a vector
    (1, 7, 6, 6, 17, 3, 3, (1, 1), (1, 1), (1, 1)),      # 63 taps, a vector and one channel
    (16, 1, 28, 28, 8, 3, 3, (1, 1), (1, 1), (1, 1)),    # 12544 pixels: threads' chunks and short tiles
])
@pytest.mark.parametrize("per_image", [False, True])
def test_conv_direct_through_the_conv(cpp, monkeypatch, per_image, N, C, H, W, K, R, S, stride, padding, dilation):
    """native.cpp's conv_direct (the tile of pixels inside x, the scratch rows at its borders, the channel vectors
    and their tail) under cpu/conv.py's direct route, bit-exact with the reference convolution for float32 and int8
    outputs, the zero point reading as padding."""
    monkeypatch.setattr(cpu.conv, "_direct_route", lambda cpp, pixels, taps, k: True)
    x = torch.randint(-128, 128, (N, C, H, W), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    w = torch.randint(-128, 128, (K, C, R, S), dtype=torch.int8).contiguous(memory_format=torch.channels_last)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=1, a_zero_point=torch.tensor([-7],
              dtype=torch.int32), b_sum=w.sum(dim=(1, 2, 3), dtype=torch.int32),
              a_scale=torch.rand(N if per_image else 1) * 0.05 + 0.01, b_scale=torch.rand(K) * 1e-2,
              bias=torch.randn(K), activation="relu6")
    for out in (dict(out_dtype=torch.float32), dict(out_dtype=torch.int8, out_scale=torch.tensor([0.03]),
                                                    out_zero_point=torch.tensor([5], dtype=torch.int32))):
        y = cpu.int8_conv2d(x, w, **kw, **out)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert_bitwise_equal(y, reference.int8_conv2d(x, w, **kw, **out))


def test_direct_route_takes_few_taps_and_little_work(cpp):
    """The direct convolution serves a first layer's few taps at small sizes; oneDNN and the GEMM the rest (and
    its exactness bound, taps · 128 · 128 < 2^24, holds for every convolution it may take)."""
    assert cpp.direct_route(28 * 28, 9, 32)             # ConvNet conv1, batch 1
    assert not cpp.direct_route(256 * 26 * 26, 9, 32)   # ... batch 256: oneDNN
    assert not cpp.direct_route(26 * 26, 288, 64)       # conv2: too many taps
    assert cpp.DIRECT_MAX_TAPS * 128 * 128 < 2**24
