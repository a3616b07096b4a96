"""Non-finite numbers (NaN, ±inf) and empty reductions (K = 0, zero channels) through every torch.ops.lowp op, on
the three backends: the reference, the native CPU backend, and the Triton kernels (interpreted on CPU, or the GPU).

lowp's rule for non-finite input:
(a) int8 codes (static quantization, requantized int8 outputs): NaN -> the zero point, +inf -> 127, -inf -> -128;
(b) dynamic per-token quantization: a row holding NaN or ±inf gets scale NaN and codes 0, so its float outputs are
    NaN and its int8 outputs the output zero point; other rows are untouched (bit-exact);
(c) dynamic per-tensor quantization (int8_conv2d on float x without x_scale): one scale serves the call, so a NaN or
    ±inf anywhere makes every float output NaN and every int8 output the output zero point (through a NaN-poisoned
    bias; the scale stays finite);
(d) the float epilogue propagates NaN / ±inf through bias and activation as torch does (gelu(+inf) = +inf).
Empty sums are 0: an op's output is then its epilogue of 0, and an empty row's per-token scale is MIN_SCALE.

Tolerances: int8 codes, scales and int32 outputs bit-exact; float outputs bit-exact with NaN and ±inf in the same
places, except gelu against the reference (the interpreter's erf is not torch's: 4 float32 ulp of the largest
output) and, on a GPU, FMA contraction (1 float32 ulp; requantized int8 within util.assert_requant_equal).
"""

import math

import pytest
import torch

import lowp_ops
from lowp_ops import quant
from util import assert_bitwise_equal, assert_requant_equal, int8, on, reference_call

HAS_CUDA = torch.cuda.is_available()
NAN, INF = math.nan, math.inf
ACTIVATIONS = ["none", "relu", "relu6", "gelu"]
CL = torch.channels_last
lowp = torch.ops.lowp

# the interpreter evaluates inf · 0 in numpy, which warns
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def assert_same(out, ref, *, gelu=False):
    """out (any device) against the reference's ref: see the module docstring for the tolerances."""
    out = out.cpu()
    if not out.dtype.is_floating_point:
        assert_requant_equal(out, ref) if out.dtype == torch.int8 else assert_bitwise_equal(out, ref)
        return
    assert out.dtype == ref.dtype and out.shape == ref.shape
    finite = ref[torch.isfinite(ref)]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    ulps = 4 if gelu else (1 if HAS_CUDA else 0)
    torch.testing.assert_close(out, ref, rtol=0, atol=ulps * torch.finfo(torch.float32).eps * scale, equal_nan=True)


# ------------------------------------------------------------------------------------ (b) dynamic per token

BAD, GOOD = [1, 2, 3, 4], [0, 5]  # rows of _rows with / without a non-finite value


def _rows(K: int, dtype=torch.float32) -> torch.Tensor:
    x = torch.randn(6, K) * 3
    x[1, 5] = NAN
    x[2, 0] = INF
    x[3, K - 1] = -INF
    x[4, 3], x[4, 7] = NAN, INF
    x[5] = 0.0  # a finite row at the edge: scale MIN_SCALE
    return x.to(dtype)


@pytest.mark.parametrize("K", [37, 4100], ids=["one block", "two passes"])  # 4100 > the kernel's 4096-element block
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_quantize_per_token_poisons_non_finite_rows(device, dtype, K):
    x = _rows(K, dtype).to(device)
    q, scale = lowp.quantize_per_token(x)
    assert torch.isnan(scale[BAD]).all() and not q[BAD].any()
    q_good, scale_good = lowp.quantize_per_token(x[GOOD])  # the same rows without the others
    assert_bitwise_equal(q[GOOD], q_good)
    assert_bitwise_equal(scale[GOOD], scale_good)
    assert scale[GOOD[1]].item() == quant.MIN_SCALE and torch.isfinite(scale_good).all()
    q_ref, scale_ref = reference_call(lowp.quantize_per_token, x)
    assert_bitwise_equal(q.cpu(), q_ref)
    torch.testing.assert_close(scale.cpu(), scale_ref, rtol=0, atol=0, equal_nan=True)


def _linear_case(K=37, N=11):
    weight = int8(N, K, low=-127)
    return weight, torch.rand(N) * 0.02 + 1e-3, torch.randn(N)


def _int8_out(out):
    """Keyword arguments for a float32 or requantized int8 (scale 0.5, zero point 7) output."""
    if out == "int8":
        return {"out_dtype": torch.int8, "out_scale": torch.tensor([0.5]),
                "out_zero_point": torch.tensor([7], dtype=torch.int32)}
    return {"out_dtype": torch.float32}


@pytest.mark.parametrize("out", ["float32", "int8"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_int8_linear_dynamic_non_finite_rows(device, activation, out):
    x = _rows(37)
    weight, weight_scale, bias = _linear_case()
    kw = dict(activation=activation, **_int8_out(out))
    args = on(device, x, weight, weight_scale, bias)
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    y = lowp.int8_linear(*args, **kw)
    if out == "int8":
        assert (y[BAD] == 7).all()  # the output zero point
    else:
        assert torch.isnan(y[BAD]).all() and torch.isfinite(y[GOOD]).all()
    x_good = args[0][GOOD]
    assert_bitwise_equal(y[GOOD], lowp.int8_linear(x_good, *args[1:], **kw))
    assert_same(y, reference_call(lowp.int8_linear, *args, **kw), gelu=activation == "gelu")


# --------------------------------------------------------------------------------------- (a) static codes

def _specials(shape):
    x = torch.randn(shape) * 3
    flat = x.view(-1)
    flat[1], flat[4], flat[6], flat[9] = NAN, INF, -INF, NAN
    return x


def _expected_codes(x, q_of_finite, zero_point):
    """Rule (a): the codes of x's finite values as quantizing them gives, NaN -> zero point, ±inf -> 127 / -128."""
    z = 0 if zero_point is None else int(zero_point)
    q = torch.where(torch.isnan(x), z, q_of_finite.to(torch.int32))
    q = torch.where(x == INF, 127, torch.where(x == -INF, -128, q))
    return q.to(torch.int8)


@pytest.mark.parametrize("zero_point", [None, 5, -128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_quantize_per_tensor_non_finite_codes(device, dtype, zero_point):
    x = _specials((4, 9)).to(dtype)
    scale = torch.tensor([0.05])
    zp = None if zero_point is None else torch.tensor([zero_point], dtype=torch.int32)
    q = lowp.quantize_per_tensor(*on(device, x, scale, zp))
    q_of_finite = lowp.quantize_per_tensor(*on(device, x.nan_to_num(0.0, 0.0, 0.0), scale, zp)).cpu()
    assert_bitwise_equal(q.cpu(), _expected_codes(x, q_of_finite, zero_point))
    assert_bitwise_equal(q.cpu(), reference_call(lowp.quantize_per_tensor, x, scale, zp))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_quantize_channels_last_non_finite_codes(device, dtype):
    x = _specials((2, 3, 4, 5)).to(dtype)
    scale, zp = torch.tensor([0.05]), torch.tensor([-9], dtype=torch.int32)
    q = lowp.quantize_channels_last(*on(device, x, scale, zp))
    assert q.is_contiguous(memory_format=CL)
    q_of_finite = lowp.quantize_channels_last(*on(device, x.nan_to_num(0.0, 0.0, 0.0), scale, zp)).cpu()
    assert_bitwise_equal(q.cpu(), _expected_codes(x, q_of_finite, -9).contiguous(memory_format=CL))
    assert_bitwise_equal(q.cpu(), reference_call(lowp.quantize_channels_last, x, scale, zp))


@pytest.mark.parametrize("out", ["float32", "int8"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_int8_linear_static_saturates_non_finite_input(device, activation, out):
    # a calibrated range is fixed: inf is an outlier like any other and NaN reads as 0, so the output stays finite
    x = _rows(37)
    weight, weight_scale, bias = _linear_case()
    kw = dict(x_scale=torch.tensor([0.02]), x_zero_point=torch.tensor([4], dtype=torch.int32),
              activation=activation, **_int8_out(out))
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    args = on(device, x, weight, weight_scale, bias)
    y = lowp.int8_linear(*args, **kw)
    saturated = args[0].nan_to_num(nan=0.0, posinf=1e30, neginf=-1e30)
    assert_bitwise_equal(y, lowp.int8_linear(saturated, *args[1:], **kw))
    assert torch.isfinite(y.float()).all()
    assert_same(y, reference_call(lowp.int8_linear, *args, **kw), gelu=activation == "gelu")


# ------------------------------------------------------------------------- (d) the float epilogue, requant

# bias NaN, +inf, -inf -> the output of that column, whatever the accumulator (torch's values; gelu(+inf) is +inf)
EPILOGUE_OF = {"none": (NAN, INF, -INF), "relu": (NAN, INF, 0.0), "relu6": (NAN, 6.0, 0.0), "gelu": (NAN, INF, NAN)}
# ... requantized with scale 0.5, zero point 7: NaN -> 7, +inf -> 127, -inf -> -128
REQUANT_OF = {"none": (7, 127, -128), "relu": (7, 127, 7), "relu6": (7, 19, 7), "gelu": (7, 127, 7)}
SPECIAL_COLS, FINITE_COLS = [1, 2, 3], [0, 4, 5]


def _special_bias(n=6):
    bias = torch.randn(n)
    bias[SPECIAL_COLS] = torch.tensor([NAN, INF, -INF])
    return bias


def _check_special_columns(y, activation, out):
    """y (..., 6) with its channels last: the columns of a NaN / +inf / -inf bias hold EPILOGUE_OF / REQUANT_OF."""
    expected = REQUANT_OF[activation] if out == "int8" else EPILOGUE_OF[activation]
    for col, value in zip(SPECIAL_COLS, expected, strict=True):
        got = y[..., col].cpu()
        ok = got.isnan().all() if math.isnan(value) else torch.equal(got, torch.full_like(got, value))
        assert ok, (col, value, got.unique())


@pytest.mark.parametrize("out", ["float32", "int8"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_int8_mm_non_finite_bias(device, activation, out):
    a, b = int8(5, 19), int8(6, 19, low=-127)
    kw = dict(a_scale=torch.rand(5) * 0.02 + 1e-3, b_scale=torch.rand(6) * 0.02 + 1e-3, bias=_special_bias(),
              activation=activation, **_int8_out(out))
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    a, b = on(device, a, b)
    y = lowp.int8_mm(a, b, **kw)
    _check_special_columns(y, activation, out)
    finite_bias = kw["bias"].nan_to_num(0.0, 0.0, 0.0)
    assert_bitwise_equal(y[:, FINITE_COLS], lowp.int8_mm(a, b, **dict(kw, bias=finite_bias))[:, FINITE_COLS])
    assert_same(y, reference_call(lowp.int8_mm, a, b, **kw), gelu=activation == "gelu")


def _conv_case(K=6):
    x = torch.randint(-128, 128, (2, 5, 6, 6), dtype=torch.int8).contiguous(memory_format=CL)
    w = torch.randint(-127, 128, (K, 5, 3, 3), dtype=torch.int8).contiguous(memory_format=CL)
    # one x scale and per-channel weight scales: an epilogue the native backend can fuse into oneDNN
    return x, w, ([1, 1], [1, 1], [1, 1], 1, torch.tensor([0.02]), torch.rand(K) * 0.01 + 1e-3)


@pytest.mark.parametrize("out", ["float32", "int8"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_int8_conv2d_non_finite_bias(device, activation, out):
    x, w, (*geometry, x_scale, w_scale) = _conv_case()
    kw = dict(activation=activation, **_int8_out(out))
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    x, w, x_scale, w_scale, bias = on(device, x, w, x_scale, w_scale, _special_bias())
    y = lowp.int8_conv2d(x, w, *geometry, x_scale, w_scale, bias, **kw)
    _check_special_columns(y.permute(0, 2, 3, 1), activation, out)
    ref = reference_call(lowp.int8_conv2d, x, w, *geometry, x_scale, w_scale, bias, **kw)
    assert_same(y, ref, gelu=activation == "gelu")
    # the other channels are those of a finite bias (compared on the reference: with a finite bias the native
    # backend fuses the epilogue into oneDNN, whose float order is its own)
    ref_finite = reference_call(lowp.int8_conv2d, x, w, *geometry, x_scale, w_scale, bias.nan_to_num(0.0, 0.0, 0.0),
                            **kw)
    assert_bitwise_equal(ref[:, FINITE_COLS], ref_finite[:, FINITE_COLS])


@pytest.mark.parametrize("out", ["float32", "int8"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_int8_conv2d_dynamic_non_finite_input_poisons_every_output(device, bad, activation, out):
    # rule (c); in the second image only: one scale serves the call, so the first is poisoned too
    _, w, (*geometry, _, w_scale) = _conv_case()
    x = torch.randn(2, 5, 6, 6)
    x[1, 2, 3, 4] = bad
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in _int8_out(out).items()}
    w, w_scale = on(device, w, w_scale)
    for bias in (torch.randn(6, device=device), None):
        for dtype in (torch.float32, torch.float16):
            y = lowp.int8_conv2d(x.to(device, dtype), w, *geometry, None, w_scale, bias, activation=activation, **kw)
            assert (y == 7).all() if out == "int8" else y.isnan().all(), (bias is None, dtype)


@pytest.mark.parametrize("out", ["float32", "int8"])
def test_int8_conv2d_nan_poisoned_bias(device, out):
    # how int8_conv2d's dynamic per-tensor quantization marks a non-finite input (rule (c)): every output NaN / the
    # output zero point
    x, w, (*geometry, x_scale, w_scale) = _conv_case()
    kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in _int8_out(out).items()}
    x, w, x_scale, w_scale = on(device, x, w, x_scale, w_scale)
    bias = torch.full((6,), NAN, device=device)
    y = lowp.int8_conv2d(x, w, *geometry, x_scale, w_scale, bias, activation="relu", **kw)
    assert (y == 7).all() if out == "int8" else y.isnan().all()


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fp16_mm_non_finite_bias(device, activation):
    # the fp16 / bf16 GEMM shares the int8 GEMM's activation code
    a, b = torch.randn(5, 19).half(), torch.randn(19, 6).half()
    a, b, bias = on(device, a, b, _special_bias())
    y = lowp.fp16_mm(a, b, bias, activation, torch.float32)
    _check_special_columns(y, activation, "float32")
    assert torch.isfinite(y[:, FINITE_COLS]).all()


# ----------------------------------------------------------------------- empty reductions: K = 0, C = 0, M = 0

RELU6_BIAS = torch.tensor([-1.0, 0.5, 2.0, 8.0])  # relu6 -> [0, 0.5, 2, 6]; requantized (0.5, 7) -> [7, 8, 11, 19]


def _empty_sum_output(out, shape):
    """What an op whose every sum is empty returns with RELU6_BIAS and relu6, broadcast to shape (..., 4)."""
    values = {"int32": torch.zeros(4, dtype=torch.int32), "float32": torch.tensor([0.0, 0.5, 2.0, 6.0]),
              "int8": torch.tensor([7, 8, 11, 19], dtype=torch.int8)}[out]
    return values.expand(shape)


def _epilogue_kw(device, out, **scales):
    if out == "int32":
        return {}
    kw = dict(scales, bias=RELU6_BIAS, activation="relu6", **_int8_out(out))
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


def test_quantize_per_token_of_empty_rows(device):
    q, scale = lowp.quantize_per_token(torch.empty(3, 0, device=device))
    assert q.shape == (3, 0) and q.dtype == torch.int8
    assert_bitwise_equal(scale.cpu(), torch.full((3,), quant.MIN_SCALE))
    q, scale = lowp.quantize_per_token(torch.empty(2, 0, 0, device=device))
    assert q.shape == (2, 0, 0) and scale.shape == (2, 0)


@pytest.mark.parametrize("out", ["int32", "float32", "int8"])
def test_int8_mm_with_k_0(device, out):
    a, b = on(device, int8(3, 0), int8(4, 0))
    kw = _epilogue_kw(device, out, a_scale=torch.rand(3) + 0.1, b_scale=torch.rand(4) + 0.1)
    y = lowp.int8_mm(a, b, **kw)
    assert_bitwise_equal(y.cpu(), _empty_sum_output(out, (3, 4)))


@pytest.mark.parametrize("out", ["float32", "int8"])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_int8_linear_with_k_0(device, static, out):
    x, weight = on(device, torch.empty(2, 3, 0), int8(4, 0))
    kw = _epilogue_kw(device, out)
    if static:
        kw.update(x_scale=torch.tensor([0.1], device=device), x_zero_point=torch.tensor([3], dtype=torch.int32,
                                                                                       device=device))
    y = lowp.int8_linear(x, weight, torch.rand(4, device=device) + 0.1, **kw)
    assert_bitwise_equal(y.cpu(), _empty_sum_output(out, (2, 3, 4)))


def test_m_0(device):
    x = torch.empty(0, 5, device=device)
    weight = int8(4, 5).to(device)
    scale, zp = torch.tensor([0.1], device=device), torch.tensor([3], dtype=torch.int32, device=device)
    assert lowp.int8_linear(x, weight, torch.ones(4, device=device)).shape == (0, 4)
    assert lowp.int8_linear(x, weight, torch.ones(4, device=device), x_scale=scale).shape == (0, 4)
    assert lowp.int8_mm(int8(0, 5).to(device), weight).shape == (0, 4)
    q, s = lowp.quantize_per_token(x)
    assert q.shape == (0, 5) and s.shape == (0,)
    assert lowp.quantize_per_tensor(x, scale, zp).shape == (0, 5)
    assert lowp.quantize_channels_last(torch.empty(2, 0, 3, 3, device=device), scale, zp).shape == (2, 0, 3, 3)


CONV_EMPTY = {  # x shape, weight shape, groups
    "zero input channels": ((2, 0, 5, 4), (4, 0, 3, 3), 1),
    "zero input channels, grouped": ((1, 0, 3, 3), (4, 0, 3, 3), 2),
    "zero output channels": ((2, 3, 5, 4), (0, 3, 3, 3), 1),
    "zero images": ((0, 3, 5, 4), (4, 3, 3, 3), 1),
}


@pytest.mark.parametrize("out", ["int32", "float32", "int8"])
@pytest.mark.parametrize("case", CONV_EMPTY)
def test_int8_conv2d_empty(device, case, out):
    x_shape, w_shape, groups = CONV_EMPTY[case]
    K = w_shape[0]
    x = torch.zeros(x_shape, dtype=torch.int8).contiguous(memory_format=CL)
    w = torch.ones(w_shape, dtype=torch.int8).contiguous(memory_format=CL)
    x, w = on(device, x, w)
    kw = _epilogue_kw(device, out, x_scale=torch.tensor([0.1]), weight_scale=torch.tensor([0.2]))
    if "bias" in kw:
        kw["bias"] = kw["bias"][:K]
    y = lowp.int8_conv2d(x, w, [1, 1], [1, 1], [1, 1], groups, **kw)
    shape = (x_shape[0], K, x_shape[2], x_shape[3])  # 3x3 with padding 1 keeps H x W
    assert y.shape == shape and y.is_contiguous(memory_format=CL)
    if x_shape[1] == 0:  # every sum is empty
        assert_bitwise_equal(y.permute(0, 2, 3, 1).cpu(), _empty_sum_output(out, (shape[0], *shape[2:], K)))


@pytest.mark.filterwarnings("ignore:lowp int8_conv2d. no native CPU path:RuntimeWarning")  # traced: the reference
@pytest.mark.parametrize("backend", ["reference", "native"])  # the Triton interpreter cannot trace
def test_empty_sums_compile(backend):
    x_lin, w_lin = torch.empty(3, 0), int8(4, 0)
    x_conv = torch.zeros((1, 0, 3, 3), dtype=torch.int8).contiguous(memory_format=CL)
    w_conv = torch.ones((4, 0, 1, 1), dtype=torch.int8).contiguous(memory_format=CL)
    scale = torch.tensor([0.1])

    def f(x_lin, w_lin, x_conv, w_conv, scale, bias):
        y = lowp.int8_linear(x_lin, w_lin, scale, bias, activation="relu6")
        _, s = lowp.quantize_per_token(x_lin)
        z = lowp.int8_conv2d(x_conv, w_conv, [1, 1], [0, 0], [1, 1], 1, scale, scale, bias, activation="relu6")
        return y, s, z

    args = (x_lin, w_lin, x_conv, w_conv, scale, RELU6_BIAS)
    with lowp_ops.use_cpu_backend(backend):
        y, s, z = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=False)(*args)
    assert_bitwise_equal(y, _empty_sum_output("float32", (3, 4)))
    assert_bitwise_equal(s, torch.full((3,), quant.MIN_SCALE))
    assert_bitwise_equal(z.permute(0, 2, 3, 1), _empty_sum_output("float32", (1, 3, 3, 4)))

