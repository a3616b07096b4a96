"""torch.ops.lowp.*: schemas, opcheck, torch.compile, batch prefixes, chaining, and input validation.

On a CPU machine these run the reference path; on a GPU machine (pytest -m gpu) the same ops run the kernels and
are compared with the reference."""

import pytest
import torch
import torch.nn.functional as F

from lowp_ops import quant, reference
from util import assert_bitwise_equal, int8

lowp = torch.ops.lowp


def _linear_case(M=13, K=45, N=37, dtype=torch.float32, device="cpu"):
    lin = torch.nn.Linear(K, N)
    qw = quant.quantize_tensor(lin.weight.detach(), quant.per_channel(axis=0))
    x = torch.randn(M, K)
    return (x.to(device, dtype), qw.qdata.to(device), qw.scale.to(device), lin.bias.detach().to(device),
            lin.to(device))


# --------------------------------------------------------------------------------------------- opcheck

def _opcheck_cases():
    a, b = int8(13, 45), int8(37, 45)
    sa, sb, bias = torch.rand(13) * 0.01 + 1e-3, torch.rand(37) * 0.01 + 1e-3, torch.randn(37)
    x, w, ws, wb, _ = _linear_case()
    zp = torch.tensor([3], dtype=torch.int32)
    return [
        ("quantize_per_token", (torch.randn(2, 5, 33).half(),), {}),
        ("quantize_per_tensor", (torch.randn(13, 45), torch.tensor([0.02]), zp), {}),
        ("int8_mm-int32", (a, b), {}),
        ("int8_mm-fp16-gelu", (a, b, sa, sb, bias), {"activation": "gelu", "out_dtype": torch.float16}),
        ("int8_mm-requant", (a, b, sa, sb, bias), {"a_zero_point": zp, "out_dtype": torch.int8,
                                                  "out_scale": torch.tensor([0.1]), "activation": "relu"}),
        ("int8_linear-dynamic", (x, w, ws, wb), {}),
        ("int8_linear-batched-bf16", (torch.randn(2, 3, 45).bfloat16(), w, ws, wb), {"activation": "relu"}),
        ("int8_linear-static", (x, w, ws, wb), {"x_scale": torch.tensor([0.03]), "x_zero_point": zp}),
    ]


@pytest.mark.parametrize("name, args, kwargs", _opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args, kwargs):
    op = getattr(lowp, name.split("-")[0])
    torch.library.opcheck(op, args, kwargs)


def _grad_cases():
    """Each int8 / e4m3 op with a float input that requires grad (x, or the bias of the *_mm ops)."""
    x, w, ws, wb, _ = _linear_case()
    a, b, sa, sb = int8(13, 45), int8(37, 45), torch.rand(13) * 0.01 + 1e-3, torch.rand(37) * 0.01 + 1e-3
    f8 = quant.quantize_tensor(torch.randn(37, 45), quant.Fp8Spec(granularity="per_channel", axis=0))
    a8 = quant.quantize_tensor(torch.randn(13, 45), quant.Fp8Spec(granularity="per_token"))
    conv_w = int8(8, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    grad = lambda t: t.clone().requires_grad_()  # noqa: E731
    return {
        "int8_linear": ("Int8Linear", lambda: lowp.int8_linear(grad(x), w, ws, wb)),
        "int8_mm": ("Int8Linear", lambda: lowp.int8_mm(a, b, sa, sb, grad(wb))),
        "int8_conv2d": ("Int8Conv2d", lambda: lowp.int8_conv2d(grad(torch.randn(2, 3, 6, 6)), conv_w, [1, 1], [1, 1],
                                                               [1, 1], 1, weight_scale=torch.full((8,), 0.01))),
        "fp8_linear": ("Fp8Linear", lambda: lowp.fp8_linear(grad(x), f8.qdata, f8.scale.reshape(-1), wb)),
        "fp8_mm": ("Fp8Linear", lambda: lowp.fp8_mm(a8.qdata, f8.qdata, a8.scale.reshape(-1), f8.scale.reshape(-1),
                                                    grad(wb))),
    }


@pytest.mark.parametrize("name", list(_grad_cases()))
def test_backward_through_an_inference_op_names_prepare_qat(name):
    layer, call = _grad_cases()[name]
    y = call()
    assert y.requires_grad
    y = torch.relu_(y)  # an in-place op after it is legal: only backward is refused
    with pytest.raises(RuntimeError, match=rf"lowp.{name}: {layer} and this op are inference-only: .* use "
                                           rf"lowp_ops.prepare_qat\(model\) .* then lowp_ops.convert"):
        y.sum().backward()
    with torch.no_grad():  # no grad, no autograd node
        assert call().grad_fn is None


def test_schemas_are_typed():
    schema = str(lowp.int8_mm.default._schema)
    assert "Tensor? a_scale=None" in schema and 'str activation="none"' in schema
    assert "ScalarType? out_dtype=None" in schema


# ---------------------------------------------------------------------------------------- semantics

def test_int8_linear_tracks_float_linear():
    x, w, ws, wb, lin = _linear_case(M=67, K=96, N=40)
    y = lowp.int8_linear(x, w, ws, wb)
    assert y.dtype == x.dtype and y.shape == (67, 40)
    assert quant.sqnr_db(lin(x), y) > 30  # 8-bit weights and activations: ~35-40 dB on Gaussian data


def test_int8_linear_equals_quantize_then_int8_mm():
    x, w, ws, wb, _ = _linear_case()
    q, s = lowp.quantize_per_token(x)
    expected = lowp.int8_mm(q, w, s, ws, wb, activation="gelu", out_dtype=torch.float16)
    assert_bitwise_equal(lowp.int8_linear(x, w, ws, wb, activation="gelu", out_dtype=torch.float16), expected)


def test_static_int8_linear_with_zero_point():
    x, w, ws, wb, lin = _linear_case()
    x_scale, x_zp = quant.choose_qparams(x.min(), x.max(), quant.per_tensor(symmetric=False))
    x_scale, x_zp = x_scale.reshape(1), x_zp.reshape(1)
    y = lowp.int8_linear(x, w, ws, wb, x_scale=x_scale, x_zero_point=x_zp)
    # by hand: dequantize both operands, multiply in float64
    xq = lowp.quantize_per_tensor(x, x_scale, x_zp)
    x_hat = (xq.double() - x_zp.double()) * x_scale.double()
    w_hat = w.double() * ws.double()[:, None]
    torch.testing.assert_close(y.double(), x_hat @ w_hat.T + wb.double(), rtol=1e-5, atol=1e-5)
    assert quant.sqnr_db(lin(x), y) > 30


def test_batch_prefix():
    x, w, ws, wb, _ = _linear_case()
    xb = torch.randn(2, 3, 45)
    y = lowp.int8_linear(xb, w, ws, wb)
    assert y.shape == (2, 3, 37)
    assert_bitwise_equal(y.reshape(6, 37), lowp.int8_linear(xb.reshape(6, 45), w, ws, wb))
    q, s = lowp.quantize_per_token(xb)
    assert q.shape == (2, 3, 45) and s.shape == (2, 3)
    assert lowp.int8_mm(q, w, s, ws).shape == (2, 3, 37)


def test_int8_layers_chain_without_float_round_trip():
    # layer 1 requantizes its relu output to int8; layer 2 consumes those int8 values directly
    x = torch.randn(13, 45)
    w1 = quant.quantize_tensor(torch.randn(64, 45) * 0.1, quant.per_channel(0))
    w2 = quant.quantize_tensor(torch.randn(37, 64) * 0.1, quant.per_channel(0))
    s1 = torch.tensor([0.02])
    h = lowp.int8_linear(x, w1.qdata, w1.scale, activation="relu", out_dtype=torch.int8, out_scale=s1)
    assert h.dtype == torch.int8 and int(h.min()) >= 0
    y = lowp.int8_mm(h, w2.qdata, s1, w2.scale, out_dtype=torch.float32)
    # the same chain in float with the same rounding points
    h_ref = quant.quantize(F.relu(lowp.int8_linear(x, w1.qdata, w1.scale)), s1[0], torch.tensor(0),
                           quant.QuantSpec(bits=8, symmetric=False))
    assert_bitwise_equal(h, h_ref)
    torch.testing.assert_close(y, reference.int8_gemm(h_ref, w2.qdata, a_scale=s1, b_scale=w2.scale,
                                                      out_dtype=torch.float32))


def test_small_m_and_empty_batch():
    x, w, ws, wb, _ = _linear_case(M=1)
    assert lowp.int8_linear(x, w, ws, wb).shape == (1, 37)
    assert lowp.int8_linear(torch.randn(0, 45), w, ws, wb).shape == (0, 37)


def test_compile_fullgraph_int8_linear():
    x, w, ws, wb, _ = _linear_case()

    def f(x):
        return lowp.int8_linear(x, w, ws, wb, activation="relu")

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    assert_bitwise_equal(compiled(x), f(x))


# -------------------------------------------------------------------------------------------- errors

def _mm_args():
    return dict(a=int8(13, 45), b=int8(37, 45), a_scale=torch.rand(13) + 0.1, b_scale=torch.rand(37) + 0.1)


@pytest.mark.parametrize("change, exc, match", [
    (dict(a=torch.randn(13, 45)), TypeError, r"lowp.int8_mm: argument 'a' must have dtype int8, got float32"),
    (dict(b=int8(37, 44)), ValueError,
     r"argument 'b' must be \(N, K\) with K = a.shape\[-1\] = 45, got shape \(37, 44\)"),
    (dict(b=int8(45, 37).T), ValueError, r"argument 'b' must be contiguous along its last dim"),
    (dict(a=int8(45, 13).T), ValueError, r"argument 'a' must be contiguous along its last dim"),
    (dict(b=int8(37, 45).to("meta")), ValueError, r"argument 'b' is on meta but 'a' is on cpu"),
    (dict(a_scale=torch.rand(12)), ValueError, r"'a_scale' must hold one scale per row \(shape \(13,\),.* \(12,\)"),
    (dict(b_scale=torch.rand(36)), ValueError, r"'b_scale' must hold one scale per output column \(shape \(37,\), or"),
    (dict(b_scale=torch.rand(37).double()), TypeError, r"'b_scale' must have dtype float32, got float64"),
    (dict(a_scale=torch.tensor([float("nan")])), ValueError, r"'a_scale' must hold finite, normal .* got \[nan\]"),
    (dict(b_scale=torch.full((37,), float("inf"))), ValueError, r"'b_scale' must .* got \[inf, inf, inf, inf\] \.\.\."),
    (dict(b_scale=-torch.ones(1)), ValueError, r"'b_scale' must hold finite, normal .* got \[-1.0\]"),
    (dict(a_scale=None), ValueError, r"argument 'a_scale' is required for out_dtype float32"),
    (dict(activation="swish"), ValueError, r"'activation' must be one of 'none', 'relu', 'relu6', 'gelu', got 'swish'"),
    (dict(out_dtype=torch.int32), ValueError,
     r"out_dtype int32 returns the raw accumulator, so a_scale, b_scale cannot apply"),
    (dict(out_dtype=torch.int8), ValueError, r"out_dtype int8 requantizes the output and needs 'out_scale'"),
    (dict(out_dtype=torch.int16), TypeError, r"argument 'out_dtype' must be int32, int8, float16, bfloat16 or float32"),
    (dict(bias=torch.randn(36)), ValueError, r"'bias' must hold one value per output column \(shape \(37,\)\)"),
    (dict(a_zero_point=torch.tensor([1.0])), TypeError, r"argument 'a_zero_point' must have dtype int32, got float32"),
    (dict(b_sum=torch.zeros(37, dtype=torch.int32)), ValueError, r"'b_sum' only serves the zero-point correction"),
    (dict(out_scale=torch.tensor([1.0])), ValueError, r"'out_scale' / 'out_zero_point' only apply to out_dtype int8"),
    (dict(a=int8(13, 2**17 + 1), b=int8(37, 2**17 + 1)), ValueError, r"K = 131073 can overflow .*: at most 131071"),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_int8_mm_rejects_bad_input(change, exc, match):
    kwargs = {**_mm_args(), **change}
    with pytest.raises(exc, match=match):
        lowp.int8_mm(**kwargs)


@pytest.mark.parametrize("change, exc, match", [
    (dict(x=int8(13, 45)), TypeError,
     r"lowp.int8_linear: argument 'x' must have dtype float16, bfloat16 or float32, got int8"),
    (dict(weight=torch.randn(37, 45)), TypeError, r"argument 'weight' must have dtype int8"),
    (dict(weight=int8(37, 46)), ValueError, r"argument 'weight' must be \(N, K\) with K = x.shape\[-1\] = 45"),
    (dict(weight_scale=torch.rand(5)), ValueError, r"argument 'weight_scale' must hold one scale per output column"),
    (dict(x_scale=torch.rand(13)), ValueError, r"argument 'x_scale' must hold one element \(static per-tensor"),
    (dict(x_zero_point=torch.tensor([0], dtype=torch.int32)), ValueError, r"'x_zero_point' needs 'x_scale'"),
    (dict(out_dtype=torch.int32), TypeError,
     r"'out_dtype' must be int8, float16, bfloat16 or float32, got torch.int32"),
    (dict(x=torch.randn(45, 13).T), ValueError, r"argument 'x' must be contiguous along its last dim"),
])
def test_int8_linear_rejects_bad_input(change, exc, match):
    x, w, ws, wb, _ = _linear_case()
    kwargs = {**dict(x=x, weight=w, weight_scale=ws, bias=wb), **change}
    with pytest.raises(exc, match=match):
        lowp.int8_linear(**kwargs)


def test_quantize_ops_reject_bad_input():
    with pytest.raises(TypeError, match=r"lowp.quantize_per_token: argument 'x' must have dtype float16"):
        lowp.quantize_per_token(int8(3, 4))
    with pytest.raises(ValueError, match=r"lowp.quantize_per_token: argument 'x' must have at least 1 dim"):
        lowp.quantize_per_token(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"lowp.quantize_per_tensor: argument 'scale' must hold finite, normal"):
        lowp.quantize_per_tensor(torch.randn(3, 4), torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"argument 'scale' must hold one element"):
        lowp.quantize_per_tensor(torch.randn(3, 4), torch.rand(3))


def test_scale_check_runs_again_after_an_in_place_change():
    args = _mm_args()
    lowp.int8_mm(**args)
    args["b_scale"][0] = float("nan")
    with pytest.raises(ValueError, match="'b_scale' must hold finite, normal"):
        lowp.int8_mm(**args)


# ------------------------------------------------------------------------------------------------ GPU

@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 13, 16, 67, 300])
def test_gpu_ops_match_reference(M):
    x, w, ws, wb, _ = _linear_case(M=M, K=96, N=80, dtype=torch.float16, device="cuda")
    q, s = lowp.quantize_per_token(x)
    q_ref, s_ref = reference.quantize_rows(x)
    assert_bitwise_equal(q, q_ref)
    assert_bitwise_equal(s, s_ref)
    assert_bitwise_equal(lowp.int8_mm(q, w), reference.int8_gemm(q, w))
    y = lowp.int8_linear(x, w, ws, wb)
    y_ref = reference.int8_gemm(q_ref, w, a_scale=s_ref, b_scale=ws, bias=wb, out_dtype=torch.float16)
    torch.testing.assert_close(y, y_ref, rtol=2e-3, atol=1e-3)  # one fp16 ulp from FMA contraction
    torch.library.opcheck(lowp.int8_linear, (x, w, ws, wb))
    compiled = torch.compile(lambda t: lowp.int8_linear(t, w, ws, wb), fullgraph=True)
    torch.testing.assert_close(compiled(x), y, rtol=2e-3, atol=1e-3)
    assert quant.sqnr_db(F.linear(x.float(), w.float() * ws[:, None], wb), y) > 30
