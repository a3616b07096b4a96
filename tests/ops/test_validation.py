"""lowp_ops/_validate.py and the checks of lowp_ops/ops: nothing the ops accept can give a wrong answer.

Refused inputs: the exception type and a message naming the op and the argument. Accepted inputs at a bound: the
exact result, computed independently (int64 / float64 by hand), on every CPU backend."""

import os

import pytest
import torch
import torch.nn.functional as F

import lowp_ops
from lowp_ops import _validate
from util import assert_bitwise_equal, int8

lowp = torch.ops.lowp
CL = torch.channels_last
I32 = torch.int32
ONE = torch.ones(1)  # unit scales: float outputs are the exact corrected accumulator where it fits float32

_interpreted = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs Triton's interpreter")
BACKENDS = ["reference", "native", pytest.param("triton", marks=_interpreted)]
FAST_BACKENDS = ["reference", "native"]  # the interpreted conv at K = 65793 takes ~20 s: kernel checked below


def _full(shape, value, channels_last=False):
    t = torch.full(shape, value, dtype=torch.int8)
    return t.contiguous(memory_format=CL) if channels_last else t


def _zp(*values):
    return torch.tensor(values, dtype=I32)


# ------------------------------------------------------------------------------ the int32 accumulator bound

def test_bounds_are_derived_from_int32():
    assert _validate.MAX_K == 131071 and 128 * 128 * 131071 <= 2**31 - 1 < 128 * 128 * 131072
    assert _validate.MAX_K_ZERO_POINT == 65793 and 255 * 128 * 65793 <= 2**31 - 1 < 255 * 128 * 65794


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_mm_at_the_bound_is_exact(backend):
    K = _validate.MAX_K  # all -128: every product is +2^14, the sum 2^31 - 2^14, the largest an int8 GEMM reaches
    a = _full((1, K), -128)
    with lowp_ops.use_cpu_backend(backend):
        out = lowp.int8_mm(a, a)
    assert_bitwise_equal(out, (a.long() @ a.long().T).to(I32))
    assert out.item() == 2**31 - 2**14


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_mm_with_zero_points_at_the_bound_is_exact(backend):
    # |a - za|·|b| = 255·128 in both signs: row 0 (127 - (-128))·(-128), row 1 (-128 - 127)·(-128)
    K = _validate.MAX_K_ZERO_POINT
    a = torch.tensor([[127], [-128]], dtype=torch.int8).expand(2, K).contiguous()
    b = _full((1, K), -128)
    za = _zp(-128, 127)
    with lowp_ops.use_cpu_backend(backend):
        out = lowp.int8_mm(a, b, ONE, ONE, a_zero_point=za)
    exact = (a.long() - za.long()[:, None]) @ b.long().T  # ±(2^31 - 128) = ±2^7·(2^24 - 1): exact in float32
    assert exact.flatten().tolist() == [-255 * 128 * K, 255 * 128 * K]
    assert_bitwise_equal(out, exact.float())


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_int8_linear_with_zero_point_at_the_bound_is_exact(backend):
    K = _validate.MAX_K_ZERO_POINT
    x = torch.full((1, K), 255.0)  # quantizes to 255 + (-128) = 127 with scale 1 and zero point -128
    w = _full((1, K), -128)
    with lowp_ops.use_cpu_backend(backend):
        out = lowp.int8_linear(x, w, ONE, x_scale=ONE, x_zero_point=_zp(-128))
    assert_bitwise_equal(out, torch.tensor([[-255.0 * 128 * K]]))


@pytest.mark.filterwarnings("ignore:lowp int8_conv2d. no native CPU path:RuntimeWarning")  # beyond 2^24
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_int8_conv2d_at_the_bounds_is_exact(backend):
    C = _validate.MAX_K  # 1x1 conv over 131071 channels: the raw int32 accumulator at its bound
    x = _full((1, C, 1, 1), -128, channels_last=True)
    with lowp_ops.use_cpu_backend(backend):
        out = lowp.int8_conv2d(x, x, [1, 1], [0, 0], [1, 1], 1)
    assert out.item() == 128 * 128 * C
    # with a zero point the reduction length C·R·S = 21931·1·3 = 65793
    x = _full((1, 21931, 1, 3), 127, channels_last=True)
    w = _full((1, 21931, 1, 3), -128, channels_last=True)
    with lowp_ops.use_cpu_backend(backend):
        out = lowp.int8_conv2d(x, w, [1, 1], [0, 0], [1, 1], 1, ONE, ONE, None, _zp(-128))
    assert_bitwise_equal(out.flatten(), torch.tensor([-255.0 * 128 * _validate.MAX_K_ZERO_POINT]))


@pytest.mark.parametrize("call, match", [
    (lambda: lowp.int8_mm(int8(1, 131072), int8(1, 131072)),
     r"lowp.int8_mm: K = 131072 can overflow the int32 accumulator: at most 131071"),
    (lambda: lowp.int8_mm(int8(1, 65794), int8(1, 65794), ONE, ONE, a_zero_point=_zp(0)),
     r"lowp.int8_mm: K = 65794 can overflow the int32 accumulator with 'a_zero_point' .*: at most 65793"),
    (lambda: lowp.int8_linear(torch.randn(1, 65794), int8(1, 65794), ONE, x_scale=ONE, x_zero_point=_zp(0)),
     r"lowp.int8_linear: K = 65794 can overflow the int32 accumulator with 'x_zero_point' .*: at most 65793"),
    (lambda: lowp.int8_conv2d(_full((1, 131072, 1, 1), 1, True), _full((1, 131072, 1, 1), 1, True),
                              [1, 1], [0, 0], [1, 1], 1),
     (r"lowp.int8_conv2d: the reduction length C/groups·R·S = 131072 can overflow the int32 accumulator: at most "
      r"131071")),
    (lambda: lowp.int8_conv2d(_full((1, 7311, 3, 3), 1, True), _full((1, 7311, 3, 3), 1, True), [1, 1], [0, 0],
                              [1, 1], 1, ONE, ONE, None, _zp(0)),
     (r"lowp.int8_conv2d: the reduction length C/groups·R·S = 65799 can overflow the int32 accumulator with "
      r"'x_zero_point' .*: at most 65793")),
], ids=["mm", "mm-zp", "linear-zp", "conv", "conv-zp"])
def test_reduction_past_the_bound_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -------------------------------------------------------------------------------- zero points are int8 codes

def _conv_args(zp_name, zp):
    x, w = int8(1, 4, 5, 5).contiguous(memory_format=CL), int8(3, 4, 3, 3).contiguous(memory_format=CL)
    kw = {"x_zero_point": zp} if zp_name == "x_zero_point" else {"out_dtype": torch.int8, "out_scale": ONE,
                                                                      "out_zero_point": zp}
    return lambda: lowp.int8_conv2d(x, w, [1, 1], [1, 1], [1, 1], 1, ONE, ONE, **kw)


def _zero_point_calls(zp):
    x, q, w = torch.randn(3, 8), int8(3, 8), int8(4, 8)
    out = {"out_dtype": torch.int8, "out_scale": ONE, "out_zero_point": zp}
    return {
        ("quantize_per_tensor", "zero_point"): lambda: lowp.quantize_per_tensor(x, ONE, zp),
        ("quantize_channels_last", "zero_point"): lambda: lowp.quantize_channels_last(x.reshape(1, 3, 2, 4), ONE,
                                                                                      zp),
        ("int8_mm", "a_zero_point"): lambda: lowp.int8_mm(q, w, ONE, ONE, a_zero_point=zp),
        ("int8_mm", "out_zero_point"): lambda: lowp.int8_mm(q, w, ONE, ONE, **out),
        ("int8_linear", "x_zero_point"): lambda: lowp.int8_linear(x, w, ONE, x_scale=ONE, x_zero_point=zp),
        ("int8_linear", "out_zero_point"): lambda: lowp.int8_linear(x, w, ONE, **out),
        ("int8_conv2d", "x_zero_point"): _conv_args("x_zero_point", zp),
        ("int8_conv2d", "out_zero_point"): _conv_args("out_zero_point", zp),
    }


ZP_ARGS = list(_zero_point_calls(None))


@pytest.mark.parametrize("value", [128, -129, 300, 2**30, -2**31])
@pytest.mark.parametrize("op, name", ZP_ARGS, ids=[f"{o}-{n}" for o, n in ZP_ARGS])
def test_zero_points_outside_int8_are_refused(op, name, value):
    call = _zero_point_calls(_zp(value))[op, name]
    with pytest.raises(ValueError, match=rf"lowp.{op}: argument '{name}' must hold int8 zero points in "
                                         rf"\[-128, 127\], got \[{value}\]"):
        call()


@pytest.mark.parametrize("op, name", ZP_ARGS, ids=[f"{o}-{n}" for o, n in ZP_ARGS])
def test_float_zero_points_are_refused_by_type(op, name):
    call = _zero_point_calls(torch.tensor([3.7]))[op, name]
    with pytest.raises(TypeError, match=rf"lowp.{op}: argument '{name}' must have dtype int32, got float32"):
        call()


def test_per_row_zero_points_are_checked_entry_by_entry():
    with pytest.raises(ValueError, match=r"lowp.int8_mm: argument 'a_zero_point' .* got \[200, -300\]"):
        lowp.int8_mm(int8(4, 8), int8(4, 8), ONE, ONE, a_zero_point=_zp(0, 200, -300, 127))


@pytest.mark.parametrize("zp", [-128, 127])
def test_zero_points_at_the_int8_limits_give_exact_results(zp):
    # quantize: clamp(round(x / scale) + zp, -128, 127) by hand
    x = torch.tensor([[-300.0, -1.0, 0.0, 1.0, 300.0]])
    expected = torch.clamp(x + zp, -128, 127).to(torch.int8)
    assert_bitwise_equal(lowp.quantize_per_tensor(x, ONE, _zp(zp)), expected)
    assert_bitwise_equal(lowp.quantize_channels_last(x.reshape(1, 1, 1, 5), ONE, _zp(zp)).reshape(1, 5), expected)
    # conv with padding: padded taps read the zero point, i.e. contribute real zeros, on every backend
    x = int8(2, 3, 5, 4).contiguous(memory_format=CL)
    w = int8(4, 3, 3, 3).contiguous(memory_format=CL)
    by_hand = F.conv2d(x.double() - zp, w.double(), padding=1).float()  # integers below 2^24: exact in float32
    for backend in ("reference", "native") + (("triton",) if os.environ.get("TRITON_INTERPRET") == "1" else ()):
        with lowp_ops.use_cpu_backend(backend):
            out = lowp.int8_conv2d(x, w, [1, 1], [1, 1], [1, 1], 1, ONE, ONE, None, _zp(zp))
        assert_bitwise_equal(out.contiguous(), by_hand)
    # requantized output zero point at the limits: clamp(round(y) + zp) by hand
    a, b = int8(3, 8), int8(5, 8)
    y = a.double() @ b.double().T * 2.0**-10
    out = lowp.int8_mm(a, b, torch.tensor([2.0**-10]), ONE, out_dtype=torch.int8, out_scale=ONE,
                       out_zero_point=_zp(zp))
    assert_bitwise_equal(out, torch.clamp(torch.round(y) + zp, -128, 127).to(torch.int8))


# ---------------------------------------------------------------------------------- scales are normal float32

SUBNORMAL = torch.tensor([1e-45])  # the smallest float32 subnormal: 1/scale = inf


def _scale_calls(s):
    x, q, w = torch.randn(3, 8), int8(3, 8), int8(4, 8)
    xc, wc = int8(1, 4, 5, 5).contiguous(memory_format=CL), int8(3, 4, 3, 3).contiguous(memory_format=CL)
    geo = ([1, 1], [1, 1], [1, 1], 1)
    return {
        ("quantize_per_tensor", "scale"): lambda: lowp.quantize_per_tensor(x, s),
        ("quantize_channels_last", "scale"): lambda: lowp.quantize_channels_last(x.reshape(1, 3, 2, 4), s),
        ("int8_mm", "a_scale"): lambda: lowp.int8_mm(q, w, s, ONE),
        ("int8_mm", "b_scale"): lambda: lowp.int8_mm(q, w, ONE, s),
        ("int8_mm", "out_scale"): lambda: lowp.int8_mm(q, w, ONE, ONE, out_dtype=torch.int8, out_scale=s),
        ("int8_linear", "weight_scale"): lambda: lowp.int8_linear(x, w, s),
        ("int8_linear", "x_scale"): lambda: lowp.int8_linear(x, w, ONE, x_scale=s),
        ("int8_linear", "out_scale"): lambda: lowp.int8_linear(x, w, ONE, out_dtype=torch.int8, out_scale=s),
        ("int8_conv2d", "x_scale"): lambda: lowp.int8_conv2d(xc, wc, *geo, s, ONE),
        ("int8_conv2d", "weight_scale"): lambda: lowp.int8_conv2d(xc, wc, *geo, ONE, s),
        ("int8_conv2d", "out_scale"): lambda: lowp.int8_conv2d(xc, wc, *geo, ONE, ONE, out_dtype=torch.int8,
                                                               out_scale=s),
    }


SCALE_ARGS = list(_scale_calls(None))


@pytest.mark.parametrize("op, name", SCALE_ARGS, ids=[f"{o}-{n}" for o, n in SCALE_ARGS])
def test_subnormal_scales_are_refused(op, name):
    with pytest.raises(ValueError, match=rf"lowp.{op}: argument '{name}' must hold finite, normal float32 scales "
                                         rf"\(>= 2\^-126\), got \[1\.4\d*e-45\]"):
        _scale_calls(SUBNORMAL)[op, name]()


@pytest.mark.parametrize("value", [2.0**-127, 0.0, -0.5, float("inf"), float("nan")])
def test_scales_that_are_not_normal_and_positive_are_refused(value):
    with pytest.raises(ValueError, match=r"lowp.int8_mm: argument 'b_scale' must hold finite, normal"):
        lowp.int8_mm(int8(3, 8), int8(4, 8), ONE, torch.tensor([1.0, 1.0, value, 1.0]))


def test_the_smallest_normal_scale_gives_exact_results():
    s = torch.tensor([2.0**-126])
    x = torch.tensor([[0.0, 2.0**-126, -3 * 2.0**-126, 1.0]])
    assert_bitwise_equal(lowp.quantize_per_tensor(x, s), torch.tensor([[0, 1, -3, 127]], dtype=torch.int8))
    a, b = int8(3, 8), int8(5, 8)
    out = lowp.int8_mm(a, b, s, torch.tensor([2.0**100]))  # 2^-126 · 2^100: exact powers of two
    assert_bitwise_equal(out, (a.double() @ b.double().T * 2.0**-26).float())


# ------------------------------------------------------------------------------- shapes, not element counts

@pytest.mark.parametrize("kwargs, match", [
    ({"b_scale": torch.ones(2, 2)},
     (r"argument 'b_scale' must hold one scale per output column \(shape \(4,\), or one element\), got shape "
      r"\(2, 2\)")),
    ({"bias": torch.ones(2, 2)}, r"argument 'bias' must hold one value per output column .* got shape \(2, 2\)"),
    ({"a_zero_point": _zp(0, 0, 0, 0).reshape(2, 2), "b_sum": torch.zeros(2, 2, dtype=I32)},
     (r"argument 'a_zero_point' must hold one zero point per row \(shape \(4,\), or one element\), got shape "
      r"\(2, 2\)")),
    ({"a_zero_point": _zp(0), "b_sum": torch.zeros(2, 2, dtype=I32)},
     r"argument 'b_sum' must hold .* got shape \(2, 2\)"),
    ({"a_scale": torch.ones(2, 2)}, r"argument 'a_scale' must hold one scale per row \(shape \(4,\), .* \(2, 2\)"),
    ({"out_dtype": torch.int8, "out_scale": torch.ones(2)}, r"argument 'out_scale' must hold one element"),
    ({"out_dtype": torch.int8, "out_scale": ONE, "out_zero_point": _zp(0, 0)},
     r"argument 'out_zero_point' must hold one element"),
], ids=["b_scale", "bias", "a_zero_point", "b_sum", "a_scale", "out_scale", "out_zero_point"])
def test_int8_mm_parameters_need_their_shape_not_just_their_count(kwargs, match):
    kwargs = {"a_scale": ONE, "b_scale": ONE} | kwargs
    with pytest.raises(ValueError, match=rf"lowp.int8_mm: {match}"):
        lowp.int8_mm(int8(4, 8), int8(4, 8), **kwargs)


def test_int8_linear_and_conv_per_column_parameters_need_their_shape():
    with pytest.raises(ValueError, match=r"lowp.int8_linear: argument 'weight_scale' .* got shape \(2, 2\)"):
        lowp.int8_linear(torch.randn(3, 8), int8(4, 8), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"lowp.int8_linear: argument 'weight_sum' .* got shape \(2, 2\)"):
        lowp.int8_linear(torch.randn(3, 8), int8(4, 8), ONE, x_scale=ONE, x_zero_point=_zp(0),
                         weight_sum=torch.zeros(2, 2, dtype=I32))
    xc, wc = int8(1, 4, 5, 5).contiguous(memory_format=CL), int8(4, 4, 3, 3).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match=r"lowp.int8_conv2d: argument 'weight_scale' .* got shape \(2, 2\)"):
        lowp.int8_conv2d(xc, wc, [1, 1], [1, 1], [1, 1], 1, ONE, torch.ones(2, 2))


def test_per_row_parameters_take_the_batch_shape_quantize_per_token_returns():
    x = torch.randn(2, 3, 8)
    q, s = lowp.quantize_per_token(x)
    w, ws = int8(5, 8), torch.rand(5) + 0.1
    assert s.shape == (2, 3)
    zp = _zp(1, -2, 3, 0, 127, -128)
    y = lowp.int8_mm(q, w, s, ws, a_zero_point=zp.reshape(2, 3))
    assert_bitwise_equal(y.reshape(6, 5), lowp.int8_mm(q.reshape(6, 8), w, s.reshape(6), ws, a_zero_point=zp))
    with pytest.raises(ValueError, match=r"lowp.int8_mm: argument 'a_scale' must hold one scale per row \(shape "
                                         r"\(6,\) or \(2, 3\), or one element\), got shape \(3, 2\)"):
        lowp.int8_mm(q, w, s.reshape(3, 2), ws)


# ------------------------------------------------------------------------------ convolution geometry bounds

def _conv(x, w, stride, padding):
    return lowp.int8_conv2d(x, w, [stride, stride], [padding, padding], [1, 1], 1)


def test_absurd_conv_geometry_is_refused_before_allocating():
    x, w = int8(1, 1, 8, 8).contiguous(memory_format=CL), int8(1, 1, 3, 3).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match=r"lowp.int8_conv2d: arguments 'stride' \[1, 1\], 'padding' \[1000000, "
                                         r"1000000\], 'dilation' \[1, 1\] give N·OH·OW = 1·2000006·2000006 = "
                                         r"4000024000036 output pixels .* at most 2\^31 - 2\^20"):
        _conv(x, w, 1, 10**6)
    # the padded extent must fit int32 even when stride keeps the output small
    with pytest.raises(ValueError, match=r"lowp.int8_conv2d: argument 'padding' \[1073741824, 1073741824\] pads "
                                         r"the 8x8 input to 2147483656x2147483656, over 2\^31 - 1"):
        _conv(x, w, 2**30, 2**30)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_extent_at_the_int32_bound_is_exact(backend):
    # H + 2·pad = 1 + 2·(2^30 - 1) = 2^31 - 1; with stride = pad the middle output sits on the one real pixel, and
    # the kernel's last coordinate oh·stride = 2·(2^30 - 1) is the largest int32 it computes
    p = 2**30 - 1
    x = torch.tensor([[[[5]]]], dtype=torch.int8).contiguous(memory_format=CL)
    w = torch.tensor([[[[-7]]]], dtype=torch.int8).contiguous(memory_format=CL)
    with lowp_ops.use_cpu_backend(backend):
        out = _conv(x, w, p, p)
    assert_bitwise_equal(out.contiguous(), torch.tensor([0, 0, 0, 0, -35, 0, 0, 0, 0], dtype=I32).reshape(1, 1, 3, 3))


# -------------------------------------------------------------------------- value checks cannot be bypassed

def test_an_edit_through_data_is_seen_on_cpu():
    a, b, sa, sb = int8(3, 8), int8(4, 8), torch.rand(3) + 0.1, torch.rand(4) + 0.1
    lowp.int8_mm(a, b, sa, sb)
    sb.data[1] = float("nan")  # .data has its own version counter: a version-keyed cache would not see this
    with pytest.raises(ValueError, match=r"lowp.int8_mm: argument 'b_scale' must hold finite, normal .* got \[nan\]"):
        lowp.int8_mm(a, b, sa, sb)
    sb.data = torch.full((4,), 1e-40)  # a new storage under the same tensor
    with pytest.raises(ValueError, match=r"argument 'b_scale' must hold finite, normal .* got \[9\.99\d*e-41, "):
        lowp.int8_mm(a, b, sa, sb)


def test_quantize_per_token_scales_are_not_trusted():
    # a row holding inf gets scale NaN (the non-finite semantics); handed to int8_mm, it is a user-given scale
    x = torch.randn(3, 8)
    x[1, 2] = float("inf")
    q, s = lowp.quantize_per_token(x)
    assert not torch.isfinite(s[1])
    with pytest.raises(ValueError, match=r"lowp.int8_mm: argument 'a_scale' must hold finite, normal .* got \[nan\]"):
        lowp.int8_mm(q, int8(4, 8), s, ONE)


def test_the_cuda_cache_stamp_sees_in_place_ops_and_new_storage_but_not_data_edits():
    # what lets a CUDA scale skip the device sync (exercised here on a CPU tensor: the stamp is device-agnostic)
    t = torch.rand(4) + 0.1
    stamp = _validate._stamp(t)
    assert stamp == _validate._stamp(t)
    t.data[0] = 2.0  # the documented blind spot on CUDA
    assert stamp == _validate._stamp(t)
    t.mul_(2)
    assert stamp != _validate._stamp(t)
    stamp = _validate._stamp(t)
    t.data = torch.rand(4)
    assert stamp != _validate._stamp(t)


def test_dynamic_conv_scales_never_cross_an_op_boundary():
    # float x: int8_conv2d computes its per-tensor scale inside, so there is no fresh scale tensor to check (on CUDA:
    # no device sync per call) and nothing to exempt from the checks
    x = torch.randn(1, 2, 3, 3)
    x[0, 1, 1, 1] = float("inf")
    w = int8(3, 2, 1, 1).contiguous(memory_format=CL)
    y = lowp.int8_conv2d(x, w, [1, 1], [0, 0], [1, 1], 1, None, torch.rand(3) + 0.1)
    assert y.isnan().all()  # one scale for the call: a non-finite x poisons every output (README)


@pytest.mark.gpu
def test_cuda_scales_are_rechecked_after_a_new_storage():
    a, b = int8(3, 8).cuda(), int8(4, 8).cuda()
    sa, sb = torch.rand(3, device="cuda") + 0.1, torch.rand(4, device="cuda") + 0.1
    lowp.int8_mm(a, b, sa, sb)
    sb.data = torch.full((4,), float("nan"), device="cuda")
    with pytest.raises(ValueError, match=r"lowp.int8_mm: argument 'b_scale' must hold finite, normal"):
        lowp.int8_mm(a, b, sa, sb)


@pytest.mark.gpu
def test_cuda_kernels_at_the_bounds_are_exact():
    K = _validate.MAX_K_ZERO_POINT
    a = torch.tensor([[127], [-128]], dtype=torch.int8).expand(2, K).contiguous().cuda()
    b, za, one = _full((1, K), -128).cuda(), _zp(-128, 127).cuda(), ONE.cuda()
    out = lowp.int8_mm(a, b, one, one, a_zero_point=za)
    assert out.flatten().tolist() == [-255.0 * 128 * K, 255.0 * 128 * K]
    a = _full((1, _validate.MAX_K), -128).cuda()
    assert lowp.int8_mm(a, a).item() == 2**31 - 2**14
    x = _full((1, _validate.MAX_K, 1, 1), -128, channels_last=True).cuda()
    assert lowp.int8_conv2d(x, x, [1, 1], [0, 0], [1, 1], 1).item() == 2**31 - 2**14
    p = 2**30 - 1
    x = torch.tensor([[[[5]]]], dtype=torch.int8, device="cuda").contiguous(memory_format=CL)
    w = torch.tensor([[[[-7]]]], dtype=torch.int8, device="cuda").contiguous(memory_format=CL)
    assert _conv(x, w, p, p).flatten().tolist() == [0, 0, 0, 0, -35, 0, 0, 0, 0]


@pytest.mark.parametrize("call, name", [
    (lambda: lowp.int8_linear(torch.randn(2, 8), int8(4, 8), None), "weight_scale"),
    (lambda: lowp.quantize_per_tensor(torch.randn(2, 8), None), "scale"),
    (lambda: lowp.quantize_channels_last(torch.randn(1, 2, 3, 3), None), "scale"),
])
def test_a_missing_required_scale_is_refused(call, name):
    # the schemas declare these `Tensor`, yet torch's dispatcher passes None through (torch 2.13); the launchers
    # would read it as "no scale" (an unscaled result) or "dynamic"
    with pytest.raises(TypeError, match=rf"argument '{name}' must be a Tensor, got NoneType"):
        call()
