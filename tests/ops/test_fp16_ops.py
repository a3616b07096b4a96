"""torch.ops.lowp.fp16_mm / fp16_mm_accumulate_ / fp16_linear and Fp16Linear: opcheck, float64 gradcheck on the
reference path, the Triton kernels' forward and gradients against the reference (interpreter on CPU), compile,
validation."""

import pytest
import torch

from lowp_ops.nn import Fp16Linear
from util import assert_bitwise_equal, assert_float_gemm_close, reference_path, rel_rms_error

lowp = torch.ops.lowp
ACTIVATIONS = ["none", "relu", "relu6", "gelu"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_float64_reference(activation):
    x = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    if activation == "relu6":  # keep pre-activations away from the kinks at 0 and 6
        x.data *= 2
    assert torch.autograd.gradcheck(lambda x, w, b: lowp.fp16_linear(x, w, b, activation=activation), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: lowp.fp16_linear(x, w, None, activation=activation), (x, w))


def _opcheck_cases():
    x = torch.randn(13, 45, dtype=torch.float16, requires_grad=True)
    w = torch.randn(37, 45, dtype=torch.float16, requires_grad=True)
    b = torch.randn(37, requires_grad=True)
    a16, b16 = torch.randn(13, 45).bfloat16(), torch.randn(37, 45).bfloat16()
    return [
        ("fp16_mm", (a16, b16.T), {"bias": torch.randn(37), "activation": "gelu"}),
        ("fp16_mm", (a16.T.contiguous().T, b16.T.contiguous()), {"out_dtype": torch.float32}),
        ("fp16_mm_accumulate_", (torch.zeros(45, 45), a16.T, a16), {}),
        ("fp16_linear", (x, w, b), {"activation": "gelu"}),
        ("fp16_linear", (torch.randn(2, 3, 45, dtype=torch.float16, requires_grad=True), w, None),
         {"activation": "relu", "out_dtype": torch.float32}),
    ]


@pytest.mark.parametrize("name, args, kwargs", _opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args, kwargs):
    torch.library.opcheck(getattr(lowp, name), args, kwargs)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 8 * 2.0**-11), (torch.bfloat16, 8 * 2.0**-8)])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("M", [1, 13, 67])
def test_kernel_forward_and_gradients_match_reference(kernels_on_cpu, M, activation, dtype, tol):
    # Triton kernels (forward, dX = dz·W, dW = dzᵀ·x) against the float64 reference. Operands and results are
    # rounded to the compute dtype (unit roundoff u) at a handful of points — inputs, dz, outputs — so the
    # relative RMS error stays within a few u; 8u is the bound.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x64 = torch.randn(M, 45, dtype=torch.float64, device=device)
    w64 = torch.randn(37, 45, dtype=torch.float64, device=device) / 6
    b64 = torch.randn(37, dtype=torch.float64, device=device)
    x, w = x64.to(dtype).requires_grad_(), w64.to(dtype).requires_grad_()
    b = b64.float().requires_grad_()
    y = lowp.fp16_linear(x, w, b, activation=activation)
    g = torch.randn_like(y)
    y.backward(g)
    # reference: the same rounded inputs, in float64
    xr, wr, br = (t.detach().cpu().double().requires_grad_() for t in (x, w, b))
    with reference_path():
        yr = lowp.fp16_linear(xr, wr, br, activation=activation)
        yr.backward(g.cpu().double())
    assert rel_rms_error(y.cpu(), yr) < tol
    for got, want in ((x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        assert got.dtype == (torch.float32 if got is b.grad else dtype)
        assert rel_rms_error(got.cpu(), want) < tol


def test_fp16_mm_layouts_and_accumulate(kernels_on_cpu):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(45, 13, device=device).half().T  # (13, 45), M-contiguous: the weight-gradient layout
    b = torch.randn(45, 37, device=device).half()
    assert_float_gemm_close(lowp.fp16_mm(a, b, out_dtype=torch.float32), a.double() @ b.double(), a, b)
    c = torch.ones(13, 37, device=device)
    lowp.fp16_mm_accumulate_(c, a, b)
    assert_float_gemm_close(c - 1, a.double() @ b.double(), a, b)


def test_compile_fullgraph_forward_and_backward():
    layer = Fp16Linear(45, 37, activation="gelu")
    x = torch.randn(13, 45)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    y = compiled(x)
    y.float().sum().backward()
    grad_compiled = layer.weight.grad.clone()
    layer.weight.grad = None
    layer(x).float().sum().backward()
    # Inductor fuses the reference's float32 elementwise tail (bias, gelu) and may round it differently: the two
    # agree to about one float16 ulp (2^-11 relative)
    assert rel_rms_error(y, layer(x)) < 2.0**-10
    assert rel_rms_error(grad_compiled, layer.weight.grad) < 2.0**-10


def test_fp16_linear_module():
    ref = torch.nn.Linear(45, 37)
    layer = Fp16Linear.from_linear(ref, compute_dtype=torch.bfloat16, activation="relu")
    assert layer.weight.dtype == torch.float32 and "compute=bfloat16" in repr(layer)
    x = torch.randn(4, 45)
    y = layer(x)
    assert y.dtype == torch.float32  # computed in bfloat16, returned in the input's dtype
    assert rel_rms_error(y, torch.relu(ref(x))) < 2e-2
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.bias.grad.dtype == torch.float32
    fresh = Fp16Linear(45, 37)
    assert fresh.weight.abs().max() <= 1 / 45**0.5  # nn.Linear's init bound
    with pytest.raises(ValueError, match="compute_dtype must be float16 or bfloat16"):
        Fp16Linear(4, 4, compute_dtype=torch.float32)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fp16_linear_output_takes_in_place_ops_under_autograd(activation):
    """The output is no view of the op's (M, N) result (autograd forbids in-place ops on views made inside a custom
    Function), and relu / relu6 keep their derivative as a mask, so an in-place op after a fused relu does not
    invalidate what backward reads. Gradients equal those of the same ops out of place."""
    x = torch.randn(2, 3, 45, dtype=torch.float16)
    w, b = torch.randn(37, 45, dtype=torch.float16) / 6, torch.randn(37)
    grads = []
    for inplace in (False, True):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = lowp.fp16_linear(xs, ws, bs, activation=activation, out_dtype=torch.float32)
        y = torch.nn.functional.silu(y, inplace=inplace)
        y = y.mul_(2) if inplace else y * 2
        y.sum().backward()
        grads.append((xs.grad, ws.grad, bs.grad))
    for got, want in zip(*grads, strict=True):
        assert_bitwise_equal(got, want)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: lowp.fp16_mm(torch.randn(3, 4).half(), torch.randn(5, 2).half()), ValueError,
     r"lowp.fp16_mm: argument 'b' must be \(K, N\) with K = a.shape\[1\] = 4, got shape \(5, 2\)"),
    (lambda: lowp.fp16_mm(torch.randn(3, 4).half(), torch.randn(4, 2).bfloat16()), TypeError,
     r"lowp.fp16_mm: argument 'b' must have dtype float16, got bfloat16"),
    (lambda: lowp.fp16_mm(torch.randint(0, 3, (3, 4), dtype=torch.int8), torch.randn(4, 2).half()), TypeError,
     r"argument 'a' must have dtype float16, bfloat16, float32 or float64, got int8"),
    (lambda: lowp.fp16_mm(torch.randn(3, 4).half(), torch.randn(4, 2).half(), out_dtype=torch.int8), TypeError,
     r"argument 'out_dtype' must be float16, bfloat16 or float32"),
    (lambda: lowp.fp16_linear(torch.randn(3, 4).half(), torch.randn(2, 5).half()), ValueError,
     r"lowp.fp16_linear: argument 'weight' must be \(N, K\) with K = x.shape\[-1\] = 4"),
    (lambda: lowp.fp16_linear(torch.randn(3, 4).half(), torch.randn(2, 4).half(), torch.randn(3)), ValueError,
     r"argument 'bias' must hold one value per output column \(shape \(2,\)\), got shape \(3,\)"),
    (lambda: lowp.fp16_linear(torch.randn(3, 4).half(), torch.randn(2, 4).half(), activation="tanh"), ValueError,
     r"'activation' must be one of"),
    (lambda: lowp.fp16_mm_accumulate_(torch.zeros(3, 2).half(), torch.randn(3, 4).half(), torch.randn(4, 2).half()),
     TypeError, r"lowp.fp16_mm_accumulate_: argument 'c' must have dtype float32, got float16"),
    (lambda: lowp.fp16_mm_accumulate_(torch.zeros(3, 3), torch.randn(3, 4).half(), torch.randn(4, 2).half()),
     ValueError, r"argument 'c' must have shape \(M, N\) = \(3, 2\), got \(3, 3\)"),
], ids=lambda v: "" if callable(v) else None)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
