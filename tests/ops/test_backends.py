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
    # the op itself (lowp_ops.int8_linear would run this call's native plan, not the launchers: test_direct_calls.py)
    torch.ops.lowp.int8_linear(torch.randn(3, 8), int8(4, 8), torch.rand(4))
    assert seen == ["quantize_rows", "int8_gemm"]
    seen.clear()
    with lowp_ops.use_cpu_backend("reference"):
        torch.ops.lowp.int8_linear(torch.randn(3, 8), int8(4, 8), torch.rand(4))
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


def _graph_op_cases():
    """(lowp op, its arguments with out_dtype resolved, as the op's body gets them) for every lowp_cpu:: op, on
    awkward shapes: plan-served calls (M = 1, small convs) and calls the plans decline (int32 out, gelu, 67 rows)."""
    a, b = int8(13, 19), int8(7, 19)
    x4 = torch.randn(2, 5, 7, 9)
    scale, zp = torch.tensor([0.03]), torch.tensor([-4], dtype=torch.int32)
    out_scale, out_zp = torch.tensor([0.05]), torch.tensor([3], dtype=torch.int32)
    w, w_scale, bias = int8(7, 19), torch.rand(7) / 50, torch.randn(7)
    conv_w = int8(6, 5, 3, 3).contiguous(memory_format=CL)
    lowp = torch.ops.lowp
    return [
        (lowp.quantize_per_token, (torch.randn(13, 19), torch.int8)),
        (lowp.quantize_per_tensor, (torch.randn(13, 19), scale, zp, torch.int8)),
        (lowp.quantize_channels_last, (x4, scale, zp)),
        (lowp.int8_max_pool2d, (int8(2, 5, 7, 9).contiguous(memory_format=CL), [3, 2], [2, 2], [1, 0], [1, 1], True)),
        (lowp.int8_mm, (a, b, None, None, None, None, None, "none", torch.int32, None, None)),
        (lowp.int8_mm, (a, b, torch.rand(13), torch.rand(7), torch.randn(7), None, None, "relu", torch.float32, None,
                        None)),
        (lowp.int8_linear, (torch.randn(1, 19), w, w_scale, bias, None, None, None, "relu6", torch.float32, None,
                            None)),
        (lowp.int8_linear, (torch.randn(67, 19), w, w_scale, bias, scale, zp, None, "none", torch.int8, out_scale,
                            out_zp)),
        (lowp.int8_linear, (torch.randn(3, 19), w, w_scale, None, None, None, None, "gelu", torch.float32, None,
                            None)),
        (lowp.int8_conv2d, (x4, conv_w, [1, 1], [1, 1], [1, 1], 1, scale, torch.rand(6), torch.randn(6), zp, None,
                            "relu", torch.int8, out_scale, out_zp)),
        (lowp.int8_conv2d, (int8(2, 5, 7, 9).contiguous(memory_format=CL), conv_w, [2, 1], [0, 1], [1, 2], 1, scale,
                            torch.rand(6), None, None, None, "none", torch.float32, None, None)),
    ]


def _outputs(y):
    return y if isinstance(y, tuple) else (y,)


@native
def test_the_native_backend_in_graphs_passes_opcheck_and_equals_the_op():
    """lowp_cpu::<op> (ops/_common.py, in_graphs): what compiled and exported graphs call for a lowp op on CPU
    tensors. Each passes opcheck and returns the lowp op's own output, bit for bit (a native plan where one serves,
    else the op's body)."""
    for op, args in _graph_op_cases():
        graph_op = getattr(torch.ops.lowp_cpu, op._qualified_op_name.split("::")[1])
        torch.library.opcheck(graph_op, args)
        for got, expected in zip(_outputs(graph_op(*args)), _outputs(op(*args)), strict=True):
            assert_bitwise_equal(got, expected)


@native
def test_compiled_ops_are_one_graph_op_each():
    """torch.compile puts one lowp_cpu:: op in the graph for each lowp op (no launcher pieces, no reference
    arithmetic), and the compiled function returns the eager op's output."""
    from torch._inductor.utils import run_and_get_code

    for op, args in _graph_op_cases():
        torch._dynamo.reset()
        name = op._qualified_op_name.split("::")[1]
        out, (code,) = run_and_get_code(torch.compile(lambda *a, op=op: op(*a), fullgraph=True), *args)
        assert code.count("= torch.ops.lowp_cpu.") == 1 and f"= torch.ops.lowp_cpu.{name}.default(" in code, code
        for got, expected in zip(_outputs(out), _outputs(op(*args)), strict=True):
            assert_bitwise_equal(got, expected)
