"""torch.ops.lowp.fp8_mm / fp8_linear and the quantize ops with dtype=torch.float8_e4m3fn at the edges: refused
inputs (the exception type and a message naming the op and the argument), fake and meta tensors, and non-finite
input, overflow and empty sums as lowp_ops/ops/fp8.py's and the quantize ops' docstrings state them, on the three
backends (the reference, the native CPU backend, the Triton kernels: interpreted on CPU tensors, or the GPU).

Tolerances as test_fp8_ops.py: e4m3 codes byte for byte, scales and same-backend outputs bitwise, GEMM outputs
against the reference within util.assert_fp8_gemm_close's bound.
"""

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from lowp_ops import quant, reference
from util import (
    assert_bitwise_equal,
    assert_codes_equal,
    assert_fp8_gemm_close,
    e4m3_codes,
    int8,
    on,
    reference_call,
)

HAS_CUDA = torch.cuda.is_available()
FP8, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
NAN, INF = math.nan, math.inf
lowp = torch.ops.lowp
U_ACC = 2.0**-13 if HAS_CUDA else 2.0**-24  # the accumulator's unit roundoff: test_fp8_ops.py

# the interpreter evaluates inf · 0 in numpy, which warns
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _weight(N, K):
    qw = quant.quantize_tensor(torch.randn(N, K) / 4, quant.Fp8Spec(granularity="per_channel", axis=0))
    return qw.qdata, qw.scale


# ------------------------------------------------------------------------------------------ refused input

def _mm_args():
    return dict(a=e4m3_codes(13, 45), b=e4m3_codes(37, 45), a_scale=torch.rand(13) + 0.1, b_scale=torch.rand(37) + 0.1)


META = torch.device("meta")
# value -> how the message shows it; 1e-45 is the smallest float32 subnormal (1 / scale = inf), 2^-127 the largest
# power of two below the normal range
SCALE_VALUES = [(NAN, r"\[nan\]"), (INF, r"\[inf\]"), (0.0, r"\[0\.0\]"), (-0.5, r"\[-0\.5\]"),
                (1e-45, r"\[1\.4\d*e-45\]"), (2.0**-127, r"\[5\.87\d*e-39\]")]


@pytest.mark.parametrize("change, exc, match", [
    (dict(a=int8(13, 45)), TypeError, r"argument 'a' must have dtype float8_e4m3fn, got int8"),
    (dict(a=torch.randn(13, 45)), TypeError, r"argument 'a' must have dtype float8_e4m3fn, got float32"),
    (dict(a=torch.randn(13, 45).to(E5M2)), TypeError, r"argument 'a' must have dtype float8_e4m3fn, got float8_e5m2"),
    (dict(b=torch.randn(37, 45).to(E5M2)), TypeError, r"argument 'b' must have dtype float8_e4m3fn, got float8_e5m2"),
    (dict(b=int8(37, 45)), TypeError, r"argument 'b' must have dtype float8_e4m3fn, got int8"),
    (dict(a=torch.tensor(1.0).to(FP8)), ValueError, r"argument 'a' must have at least 1 dim"),
    (dict(b=e4m3_codes(2, 37, 45)), ValueError, r"argument 'b' must be 2-D, got shape \(2, 37, 45\)"),
    (dict(b=e4m3_codes(37, 44)), ValueError,
     r"argument 'b' must be \(N, K\) with K = a.shape\[-1\] = 45, got shape \(37, 44\)"),
    (dict(b=e4m3_codes(45, 37).T), ValueError, r"argument 'b' must be contiguous along its last dim"),
    (dict(a=e4m3_codes(45, 13).T), ValueError, r"argument 'a' must be contiguous along its last dim"),
    (dict(b=e4m3_codes(37, 45).to(META)), ValueError, r"argument 'b' is on meta but 'a' is on cpu"),
    (dict(a_scale=torch.ones(13, device=META)), ValueError, r"argument 'a_scale' is on meta but 'a' is on cpu"),
    (dict(bias=torch.ones(37, device=META)), ValueError, r"argument 'bias' is on meta but 'a' is on cpu"),
    (dict(a_scale=None), TypeError, r"argument 'a_scale' must be a Tensor, got NoneType"),
    (dict(b_scale=None), TypeError, r"argument 'b_scale' must be a Tensor, got NoneType"),
    (dict(a_scale=torch.rand(12)), ValueError, r"'a_scale' must hold one scale per row \(shape \(13,\),.* \(12,\)"),
    (dict(a_scale=torch.rand(13, 1)), ValueError, r"'a_scale' must hold one scale per row .* got shape \(13, 1\)"),
    (dict(b_scale=torch.rand(36)), ValueError, r"'b_scale' must hold one scale per output column \(shape \(37,\), or"),
    (dict(b_scale=torch.rand(37).double()), TypeError, r"argument 'b_scale' must have dtype float32, got float64"),
    (dict(a_scale=torch.rand(13).half()), TypeError, r"argument 'a_scale' must have dtype float32, got float16"),
    (dict(b_scale=torch.full((37,), INF)), ValueError, r"'b_scale' must .* got \[inf, inf, inf, inf\] \.\.\."),
    (dict(bias=torch.randn(36)), ValueError, r"'bias' must hold one value per output column \(shape \(37,\)\)"),
    (dict(bias=torch.ones(37, dtype=torch.int32)), TypeError, r"argument 'bias' must have dtype float16, bfloat16 or"),
    (dict(activation="swish"), ValueError, r"'activation' must be one of 'none', 'relu', 'relu6', 'gelu', got 'swish'"),
    (dict(out_dtype=torch.int8), TypeError, r"'out_dtype' must be float16, bfloat16 or float32, got torch.int8"),
    (dict(out_dtype=torch.int32), TypeError, r"'out_dtype' must be float16, bfloat16 or float32, got torch.int32"),
    (dict(out_dtype=FP8), TypeError, r"'out_dtype' must be float16, bfloat16 or float32, got torch.float8_e4m3fn"),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_fp8_mm_rejects_bad_input(change, exc, match):
    with pytest.raises(exc, match=rf"^lowp\.fp8_mm: .*{match}"):
        lowp.fp8_mm(**{**_mm_args(), **change})


def _linear_args():
    w, w_scale = _weight(37, 45)
    return dict(x=torch.randn(13, 45), weight=w, weight_scale=w_scale, bias=torch.randn(37))


@pytest.mark.parametrize("change, exc, match", [
    (dict(x=int8(13, 45)), TypeError, r"argument 'x' must have dtype float16, bfloat16 or float32, got int8"),
    (dict(x=e4m3_codes(13, 45)), TypeError, r"argument 'x' must have dtype float16, bfloat16 or float32, got float8"),
    (dict(weight=int8(37, 45)), TypeError, r"argument 'weight' must have dtype float8_e4m3fn, got int8"),
    (dict(weight=torch.randn(37, 45).to(E5M2)), TypeError, r"'weight' must have dtype float8_e4m3fn, got float8_e5m2"),
    (dict(weight=torch.randn(37, 45)), TypeError, r"argument 'weight' must have dtype float8_e4m3fn, got float32"),
    (dict(weight=e4m3_codes(37, 46)), ValueError, r"argument 'weight' must be \(N, K\) with K = x.shape\[-1\] = 45"),
    (dict(weight=e4m3_codes(45, 37).T), ValueError, r"argument 'weight' must be contiguous along its last dim"),
    (dict(x=torch.randn(45, 13).T), ValueError, r"argument 'x' must be contiguous along its last dim"),
    (dict(weight=e4m3_codes(37, 45).to(META)), ValueError, r"argument 'weight' is on meta but 'x' is on cpu"),
    (dict(x_scale=torch.ones(1, device=META)), ValueError, r"argument 'x_scale' is on meta but 'x' is on cpu"),
    (dict(weight_scale=None), TypeError, r"argument 'weight_scale' must be a Tensor, got NoneType"),
    (dict(weight_scale=torch.rand(5)), ValueError, r"'weight_scale' must hold one scale per output column"),
    (dict(weight_scale=torch.rand(37, 1)), ValueError, r"'weight_scale' must hold .* got shape \(37, 1\)"),
    (dict(weight_scale=torch.rand(37).double()), TypeError, r"'weight_scale' must have dtype float32, got float64"),
    (dict(x_scale=torch.rand(13)), ValueError, r"argument 'x_scale' must hold one element \(static per-tensor"),
    (dict(x_scale=torch.tensor([0.1]).half()), TypeError, r"argument 'x_scale' must have dtype float32, got float16"),
    (dict(bias=torch.randn(36)), ValueError, r"'bias' must hold one value per output column"),
    (dict(activation="silu"), ValueError, r"'activation' must be one of 'none', 'relu', 'relu6', 'gelu'"),
    (dict(out_dtype=torch.int8), TypeError, r"'out_dtype' must be float16, bfloat16 or float32, got torch.int8"),
    (dict(out_dtype=torch.int32), TypeError, r"'out_dtype' must be float16, bfloat16 or float32, got torch.int32"),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_fp8_linear_rejects_bad_input(change, exc, match):
    with pytest.raises(exc, match=rf"^lowp\.fp8_linear: .*{match}"):
        lowp.fp8_linear(**{**_linear_args(), **change})


def test_int8_ops_refuse_fp8_operands():
    x, w = torch.randn(3, 8), e4m3_codes(4, 8)
    with pytest.raises(TypeError, match=r"^lowp\.int8_linear: argument 'weight' must have dtype int8, got float8"):
        lowp.int8_linear(x, w, torch.ones(4))
    with pytest.raises(TypeError, match=r"^lowp\.int8_mm: argument 'a' must have dtype int8, got float8_e4m3fn"):
        lowp.int8_mm(e4m3_codes(3, 8), int8(4, 8))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: lowp.quantize_per_token(torch.randn(3, 4), torch.float16), TypeError,
     r"lowp\.quantize_per_token: argument 'dtype' must be int8 or float8_e4m3fn, got torch\.float16"),
    (lambda: lowp.quantize_per_token(torch.randn(3, 4), E5M2), TypeError,
     r"lowp\.quantize_per_token: argument 'dtype' must be int8 or float8_e4m3fn, got torch\.float8_e5m2"),
    (lambda: lowp.quantize_per_token(e4m3_codes(3, 4), FP8), TypeError,
     r"lowp\.quantize_per_token: argument 'x' must have dtype float16, bfloat16 or float32, got float8_e4m3fn"),
    (lambda: lowp.quantize_per_token(torch.randn(4, 3).T, FP8), ValueError,
     r"lowp\.quantize_per_token: argument 'x' must be contiguous along its last dim"),
    (lambda: lowp.quantize_per_tensor(torch.randn(3, 4), torch.tensor([0.1]), dtype=torch.float16), TypeError,
     r"lowp\.quantize_per_tensor: argument 'dtype' must be int8 or float8_e4m3fn, got torch\.float16"),
    (lambda: lowp.quantize_per_tensor(torch.randn(3, 4), torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32),
                                      dtype=FP8), ValueError,
     r"lowp\.quantize_per_tensor: argument 'zero_point' applies to int8 codes only: FP8 quantization is symmetric"),
    (lambda: lowp.quantize_per_tensor(torch.randn(3, 4), None, dtype=FP8), TypeError,
     r"lowp\.quantize_per_tensor: argument 'scale' must be a Tensor, got NoneType"),
    (lambda: lowp.quantize_per_tensor(torch.randn(3, 4), torch.rand(3), dtype=FP8), ValueError,
     r"lowp\.quantize_per_tensor: argument 'scale' must hold one element"),
    (lambda: lowp.quantize_per_tensor(torch.randn(3, 4), torch.tensor([0.1]).double(), dtype=FP8), TypeError,
     r"lowp\.quantize_per_tensor: argument 'scale' must have dtype float32, got float64"),
    (lambda: lowp.quantize_per_tensor(torch.randn(3, 4), torch.tensor([0.1], device=META), dtype=FP8), ValueError,
     r"lowp\.quantize_per_tensor: argument 'scale' is on meta but 'x' is on cpu"),
], ids=["token-fp16", "token-e5m2", "token-fp8 x", "token-strided", "tensor-fp16", "tensor-zero_point",
        "tensor-no scale", "tensor-scale shape", "tensor-scale dtype", "tensor-scale device"])
def test_quantize_ops_reject_bad_input(call, exc, match):
    with pytest.raises(exc, match=rf"^{match}"):
        call()


def _scale_calls(s):
    x, a, (w, w_scale) = torch.randn(3, 8), e4m3_codes(3, 8), _weight(4, 8)
    one = torch.ones(1)
    return {
        ("quantize_per_tensor", "scale"): lambda: lowp.quantize_per_tensor(x, s, dtype=FP8),
        ("fp8_mm", "a_scale"): lambda: lowp.fp8_mm(a, w, s, w_scale),
        ("fp8_mm", "b_scale"): lambda: lowp.fp8_mm(a, w, one, s),
        ("fp8_linear", "weight_scale"): lambda: lowp.fp8_linear(x, w, s),
        ("fp8_linear", "x_scale"): lambda: lowp.fp8_linear(x, w, w_scale, x_scale=s),
    }


SCALE_ARGS = list(_scale_calls(None))


@pytest.mark.parametrize("value, shown", SCALE_VALUES, ids=["nan", "inf", "zero", "negative", "subnormal", "2^-127"])
@pytest.mark.parametrize("op, name", SCALE_ARGS, ids=[f"{o}-{n}" for o, n in SCALE_ARGS])
def test_scales_that_are_not_finite_normal_and_positive_are_refused(op, name, value, shown):
    with pytest.raises(ValueError, match=rf"^lowp\.{op}: argument '{name}' must hold finite, normal float32 scales "
                                         rf"\(>= 2\^-126\), got {shown}"):
        _scale_calls(torch.tensor([value]))[op, name]()


def test_dynamic_scales_of_non_finite_rows_are_refused_by_fp8_mm():
    # quantize_per_token gives a row holding inf scale NaN; handed to fp8_mm, it is a user-given scale
    x = torch.randn(3, 8)
    x[1, 2] = INF
    q, s = lowp.quantize_per_token(x, FP8)
    with pytest.raises(ValueError, match=r"^lowp\.fp8_mm: argument 'a_scale' must hold finite, normal .* got \[nan\]"):
        lowp.fp8_mm(q, e4m3_codes(4, 8), s, torch.ones(1))


# ---------------------------------------------------------------------------------- fake and meta tensors

@pytest.mark.parametrize("mode", ["fake", "meta"])
def test_fake_and_meta_calls_give_shapes_and_dtypes(mode):
    def make(shape, dtype=torch.float32):
        return torch.empty(shape, dtype=dtype, device="meta" if mode == "meta" else "cpu")

    with FakeTensorMode() if mode == "fake" else torch.device("meta"):
        x, w, w_scale = make((2, 3, 45), torch.bfloat16), make((37, 45), FP8), make((37,))
        q, s = lowp.quantize_per_token(x, FP8)
        assert (q.shape, q.dtype, s.shape, s.dtype) == ((2, 3, 45), FP8, (2, 3), torch.float32)
        q = lowp.quantize_per_tensor(x, make((1,)), dtype=FP8)
        assert (q.shape, q.dtype) == ((2, 3, 45), FP8)
        y = lowp.fp8_mm(make((2, 3, 45), FP8), w, s, w_scale)
        assert (y.shape, y.dtype) == ((2, 3, 37), torch.float32)
        y = lowp.fp8_mm(make((5, 45), FP8), w, make((5,)), make(()), out_dtype=torch.bfloat16)
        assert (y.shape, y.dtype) == ((5, 37), torch.bfloat16)
        y = lowp.fp8_linear(x, w, w_scale)
        assert (y.shape, y.dtype) == ((2, 3, 37), torch.bfloat16)
        y = lowp.fp8_linear(x, w, w_scale, x_scale=make((1,)), out_dtype=torch.float16)
        assert (y.shape, y.dtype) == ((2, 3, 37), torch.float16)
        # shapes and dtypes are checked without data; values (scales) cannot be
        with pytest.raises(ValueError, match=r"^lowp\.fp8_mm: argument 'b' must be \(N, K\)"):
            lowp.fp8_mm(make((5, 45), FP8), make((37, 44), FP8), make((5,)), w_scale)
        with pytest.raises(TypeError, match=r"^lowp\.fp8_linear: argument 'weight' must have dtype float8_e4m3fn"):
            lowp.fp8_linear(x, make((37, 45), torch.int8), w_scale)
        with pytest.raises(TypeError, match=r"^lowp\.quantize_per_token: argument 'dtype' must be int8 or"):
            lowp.quantize_per_token(x, torch.float16)


# ------------------------------------------------------------------------------- on the three backends

# ----------------------------------------------------------------------------------- non-finite numbers

BAD, GOOD = [1, 2, 3], [0, 4]  # rows of _rows with / without a non-finite value


def _rows(K=45, dtype=torch.float32):
    x = torch.randn(5, K) * 3
    x[1, 5] = NAN
    x[2, 0] = INF
    x[3, K - 1] = -INF
    x[4] = 0.0  # a finite row at the edge: scale MIN_SCALE
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_quantize_per_token_poisons_non_finite_rows(device, dtype):
    # quantize_per_token's docstring: a row holding NaN or inf gets scale NaN and NaN e4m3 codes
    x = _rows(dtype=dtype).to(device)
    q, scale = lowp.quantize_per_token(x, FP8)
    assert scale[BAD].isnan().all() and q[BAD].float().isnan().all()
    q_good, scale_good = lowp.quantize_per_token(x[GOOD], FP8)  # the same rows without the others
    assert_codes_equal(q[GOOD], q_good)
    assert_bitwise_equal(scale[GOOD], scale_good)
    assert scale[4].item() == quant.MIN_SCALE and not q[4].float().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_quantize_per_tensor_keeps_nan_and_saturates_inf(device, dtype):
    x = _rows(dtype=dtype)
    q = lowp.quantize_per_tensor(*on(device, x, torch.tensor([0.05])), dtype=FP8).cpu()
    q_of_finite = lowp.quantize_per_tensor(*on(device, x.nan_to_num(0.0, 0.0, 0.0), torch.tensor([0.05])),
                                           dtype=FP8).cpu().float()
    expected = torch.where(x.isnan(), NAN, torch.where(x.isinf(), x.float().sign() * 448, q_of_finite))
    assert_codes_equal(q, expected.to(FP8))


@pytest.mark.parametrize("activation", ["none", "relu", "relu6", "gelu"])
def test_fp8_linear_dynamic_non_finite_rows_are_nan(device, activation):
    x, (w, w_scale), bias = _rows(), _weight(37, 45), torch.randn(37)
    args = on(device, x, w, w_scale, bias)
    y = lowp.fp8_linear(*args, activation=activation)
    assert y[BAD].isnan().all()
    ref = reference_call(lowp.fp8_linear, *args, activation=activation)
    q, q_scale = reference.quantize_rows(x, dtype=FP8)
    assert_fp8_gemm_close(y[GOOD].cpu(), ref[GOOD], q[GOOD], w, q_scale[GOOD], w_scale, u_acc=U_ACC)


def test_fp8_linear_static_saturates_inf(device):
    x, (w, w_scale) = _rows(), _weight(37, 45)
    x[1, 5] = 1.0  # NaN: next test
    x_scale = torch.tensor([0.02])
    x, w, w_scale, x_scale = on(device, x, w, w_scale, x_scale)
    y = lowp.fp8_linear(x, w, w_scale, x_scale=x_scale)
    assert y.isfinite().all()
    assert_bitwise_equal(y, lowp.fp8_linear(x.clamp(-448 * 0.02, 448 * 0.02), w, w_scale, x_scale=x_scale))


def test_fp8_linear_static_nan_row_is_nan(device):
    x, (w, w_scale) = torch.randn(5, 45), _weight(37, 45)
    x[1, 5] = NAN
    y = lowp.fp8_linear(*on(device, x, w, w_scale), x_scale=torch.tensor([0.02], device=device))
    assert y[1].isnan().all() and y[[0, 2, 3, 4]].isfinite().all()


@pytest.mark.parametrize("operand", ["a", "b", "fp8_linear weight"])
def test_nan_code_gives_nan_row_or_column(device, operand):
    # lowp_ops/ops/fp8.py: NaN among the codes gives NaN where it enters, the row of a or the column of b / weight
    a, (b, b_scale) = e4m3_codes(5, 45), _weight(7, 45)
    codes = (a if operand == "a" else b).view(torch.uint8)
    codes[2, 9], codes[4, 0] = 0xFF, 0x7F  # e4m3's two NaN codes
    if operand == "fp8_linear weight":
        y = lowp.fp8_linear(*on(device, torch.randn(5, 45), b, b_scale), activation="relu")
    else:
        y = lowp.fp8_mm(*on(device, a, b, torch.rand(5) + 0.1, b_scale), activation="relu")
    poisoned = y[[2, 4]] if operand == "a" else y[:, [2, 4]]
    kept = y[[0, 1, 3]] if operand == "a" else y[:, [0, 1, 3, 5, 6]]
    assert poisoned.isnan().all() and kept.isfinite().all()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # in the interpreter's numpy
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_overflow_of_the_output_dtype_is_inf(device, out_dtype):
    # 448 · 448 · 16 = 3.2e6 per output: past float16's 65504; times 1e33, past float32's (and bfloat16's) 3.4e38
    a = torch.tensor([[448.0] * 16, [-448.0] * 16, [1.0] * 16]).to(FP8)
    b = torch.full((2, 16), 448.0).to(FP8)
    big = {torch.float16: 1.0, torch.bfloat16: 1e33, torch.float32: 1e33}[out_dtype]
    a_scale, b_scale = torch.tensor([big, big, 2.0**-20]), torch.tensor([1.0, big])
    y = lowp.fp8_mm(*on(device, a, b, a_scale, b_scale), out_dtype=out_dtype).cpu()
    assert y[0].tolist() == [INF, INF] and y[1].tolist() == [-INF, -INF] and y[2].isfinite().all(), y
    relu = lowp.fp8_mm(*on(device, a, b, a_scale, b_scale), activation="relu", out_dtype=out_dtype).cpu()
    assert relu[0].tolist() == [INF, INF] and relu[1].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------------- empty sums: K = 0, M = 0

RELU6_BIAS = torch.tensor([-1.0, 0.5, 2.0, 8.0])  # relu6 -> [0, 0.5, 2, 6]: the epilogue of an empty sum


def test_k_0_gives_the_epilogue_of_0(device):
    expected = torch.tensor([0.0, 0.5, 2.0, 6.0])
    w, w_scale, bias = on(device, torch.empty(4, 0).to(FP8), torch.ones(4), RELU6_BIAS)
    y = lowp.fp8_mm(torch.empty(3, 0, dtype=FP8, device=device), w, torch.ones(3, device=device), w_scale, bias,
                    "relu6")
    assert_bitwise_equal(y.cpu(), expected.expand(3, 4))
    for x_scale in (None, torch.tensor([0.1], device=device)):
        y = lowp.fp8_linear(torch.empty(2, 3, 0, device=device), w, w_scale, bias, x_scale, "relu6")
        assert_bitwise_equal(y.cpu(), expected.expand(2, 3, 4))
    q, scale = lowp.quantize_per_token(torch.empty(3, 0, device=device), FP8)
    assert q.shape == (3, 0) and q.dtype == FP8
    assert_bitwise_equal(scale.cpu(), torch.full((3,), quant.MIN_SCALE))


def test_m_0(device):
    x, (w, w_scale) = torch.empty(0, 5, device=device), on(device, *_weight(4, 5))
    assert lowp.fp8_linear(x, w, w_scale).shape == (0, 4)
    assert lowp.fp8_linear(x, w, w_scale, x_scale=torch.tensor([0.1], device=device)).shape == (0, 4)
    assert lowp.fp8_mm(x.to(FP8), w, torch.ones(0, device=device), w_scale).shape == (0, 4)
    q, s = lowp.quantize_per_token(x, FP8)
    assert q.shape == (0, 5) and q.dtype == FP8 and s.shape == (0,)
    assert lowp.quantize_per_tensor(x, torch.tensor([0.1], device=device), dtype=FP8).shape == (0, 5)


def test_fp8_on_a_gpu_without_fp8_is_refused(monkeypatch):
    # no such GPU here: the check reads the capability through torch.cuda, which is what is faked
    from lowp_ops.ops import _common

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")

    class OnCuda:
        is_cuda, device = True, torch.device("cuda", 0)

    with pytest.raises(ValueError, match=r"lowp.fp8_mm: argument 'a' is on NVIDIA A100 \(sm_80\): float8_e4m3fn "
                                         r"needs sm_89 or newer"):
        _common.check_fp8_device("fp8_mm", "a", OnCuda())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    _common.check_fp8_device("fp8_mm", "a", OnCuda())
