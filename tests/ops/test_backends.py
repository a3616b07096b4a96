"""lowp_ops/ops/backends.py: CPU tensors run the native backend by default, the reference when asked, and every op
agrees with the reference through torch.ops.lowp on awkward shapes (M = 1, 13, 67; K = 1, 2; K, N not multiples
of 16). Tolerances as tests/cpu: bit-exact, but for oneDNN's fused conv epilogue (4 float32 ulp, 1 LSB int8)."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import lowp_ops
from lowp_ops import cpu, quant
from lowp_ops.cpu import support
from util import assert_bitwise_equal, assert_onednn_close, int8, reference_path

CL = torch.channels_last
native = pytest.mark.skipif(support.missing() is not None, reason=f"no native CPU path: {support.missing()}")


def _import_with(backend: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"LOWP_CPU_BACKEND": backend}
    return subprocess.run([sys.executable, "-c", "import lowp_ops; print(lowp_ops.cpu_backend())"], env=env,
                          capture_output=True, text=True)


def test_environment_variable_picks_the_backend_at_import():
    proc = _import_with("reference")
    assert proc.returncode == 0 and proc.stdout.strip() == "reference", proc.stderr
    proc = _import_with("fast")
    assert proc.returncode != 0 and "CPU backend must be one of native, reference, triton, got 'fast'" in proc.stderr


def test_context_manager_restores_the_backend_even_on_error():
    assert lowp_ops.cpu_backend() == "native"
    with pytest.raises(KeyError), lowp_ops.use_cpu_backend("reference"):
        assert lowp_ops.cpu_backend() == "reference"
        raise KeyError
    assert lowp_ops.cpu_backend() == "native"
    with pytest.raises(ValueError, match="got 'onednn'"), lowp_ops.use_cpu_backend("onednn"):
        pass


def test_triton_backend_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"), lowp_ops.use_cpu_backend("triton"):
        pass


@native
def test_ops_run_the_native_backend(monkeypatch):
    seen = []
    for name in ("int8_gemm", "quantize_rows"):
        fn = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, _fn=fn, _name=name, **k: seen.append(_name) or _fn(*a, **k))
    lowp_ops.int8_linear(torch.randn(3, 8), int8(4, 8), torch.rand(4))
    assert seen == ["quantize_rows", "int8_gemm"]
    seen.clear()
    with lowp_ops.use_cpu_backend("reference"):
        lowp_ops.int8_linear(torch.randn(3, 8), int8(4, 8), torch.rand(4))
    assert seen == []


def test_without_int8_dot_products_gemm_and_conv_fall_back_once_with_a_reason(monkeypatch):
    monkeypatch.setattr(support, "missing", lambda: "this CPU has no int8 dot-product instructions (test)")
    monkeypatch.setattr(support, "_warned", set())
    a, b = int8(13, 45), int8(7, 45)
    x = int8(2, 5, 9, 9).contiguous(memory_format=CL)
    w = int8(4, 5, 3, 3, low=-127).contiguous(memory_format=CL)
    calls = {"int8_gemm": lambda: lowp_ops.int8_mm(a, b),
             "int8_conv2d": lambda: lowp_ops.int8_conv2d(x, w, (1, 1), (1, 1), (1, 1), 1)}
    for name, call in calls.items():
        with pytest.warns(RuntimeWarning, match=rf"lowp {name}: no native CPU path \(this CPU has no int8 dot"):
            out = call()
        with reference_path():
            assert_bitwise_equal(out, call())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            call()  # said once, not on every call


OPS_CASES = [pytest.param(M, K, 33, id=f"M{M}-K{K}-N33") for M in (1, 13, 67) for K in (1, 2, 45)]


@native
@pytest.mark.parametrize("M, K, N", OPS_CASES)
def test_linear_ops_match_the_reference(M, K, N):
    x = torch.randn(2, M, K) * 3
    w = quant.quantize_tensor(torch.randn(N, K), quant.per_channel(axis=0))
    bias, act_scale, zp = torch.randn(N), torch.tensor([0.02]), torch.tensor([3], dtype=torch.int32)
    out_kw = dict(out_dtype=torch.int8, out_scale=torch.tensor([0.1]), out_zero_point=torch.tensor([-2],
                                                                                             dtype=torch.int32))
    calls = [
        lambda: lowp_ops.quantize_per_token(x),
        lambda: lowp_ops.quantize_per_tensor(x, act_scale, zp),
        lambda: lowp_ops.int8_mm(int8(M, K), w.qdata),
        lambda: lowp_ops.int8_linear(x, w.qdata, w.scale, bias, activation="gelu"),
        lambda: lowp_ops.int8_linear(x.half(), w.qdata, w.scale, bias.half()),
        lambda: lowp_ops.int8_linear(x, w.qdata, w.scale, bias, act_scale, zp, activation="relu", **out_kw),
    ]
    for call in calls:
        torch.manual_seed(1)
        out = call()
        torch.manual_seed(1)
        with reference_path():
            ref = call()
        outs, refs = (t if isinstance(t, tuple) else (t,) for t in (out, ref))
        for o, r in zip(outs, refs, strict=True):
            assert_bitwise_equal(o, r)


@native
@pytest.mark.parametrize("groups, zero_point", [(1, 0), (3, -7), (12, 5)], ids=["dense", "grouped zp", "depthwise zp"])
def test_conv_ops_match_the_reference(groups, zero_point):
    x = torch.randn(2, 12, 13, 11) * 2
    w = torch.randint(-127, 128, (24, 12 // groups, 3, 3), dtype=torch.int8).contiguous(memory_format=CL)
    scale, zp = torch.tensor([0.03]), torch.tensor([zero_point], dtype=torch.int32)
    args = ((2, 1), (1, 1), (1, 2), groups, scale, torch.rand(24) * 0.01, torch.randn(24), zp)
    q = lowp_ops.quantize_channels_last(x, scale, zp)
    y = lowp_ops.int8_conv2d(q, w, *args, activation="relu")
    with reference_path():
        assert_bitwise_equal(q, lowp_ops.quantize_channels_last(x, scale, zp))
        ref = lowp_ops.int8_conv2d(q, w, *args, activation="relu")
    assert_onednn_close(y, ref)


@native
def test_the_native_launchers_in_graphs_pass_opcheck():
    """lowp_cpu::* (backends.py): what a compiled or exported graph calls for CPU tensors."""
    from lowp_ops.ops import backends

    a, b = int8(13, 19), int8(7, 19)
    x = torch.randn(2, 5, 7, 9)
    scale, zp = torch.tensor([0.03]), torch.tensor([-4], dtype=torch.int32)
    conv_w = int8(6, 5, 3, 3).contiguous(memory_format=CL)
    cases = [(backends._quantize_rows, (torch.randn(13, 19),), {"min_scale": quant.MIN_SCALE}),
             (backends._quantize_rows, (torch.randn(13, 19), scale, zp), {}),
             (backends._quantize_channels_last, (x, scale, zp), {}),
             (backends._int8_gemm, (a, b), {}),
             (backends._int8_gemm, (a, b, torch.rand(13), torch.rand(7), torch.randn(7)),
              {"activation": "relu", "out_dtype": torch.float32}),
             (backends._int8_conv2d, (int8(2, 5, 7, 9).contiguous(memory_format=CL), conv_w, [1, 1], [1, 1], [1, 1], 1,
                                      scale, torch.rand(6), torch.randn(6), zp), {"out_dtype": torch.float32})]
    for op, args, kwargs in cases:
        torch.library.opcheck(op, args, kwargs)
