"""tools/inspect_kernels.py compiles the GEMM configs for sm_90 without a GPU (Triton ships ptxas/cuobjdump).

It runs in a subprocess: these tests run with TRITON_INTERPRET=1, under which kernels cannot be compiled."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _import_bench():
    """bench/ is not installed, and the repository root stays off sys.path (conftest): load it from its folder."""
    if "bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench", ROOT / "bench" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "bench")])
        sys.modules["bench"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["bench"])


def _inspect(tmp_path, *flags):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "inspect_kernels.py"), "--json", str(out), *flags],
                          check=False, env=env, capture_output=True, text=True)
    return proc, json.loads(out.read_text())


def test_gemm_tiles_use_wgmma_without_spilling(tmp_path):
    # Hopper's tensor-core path (wgmma ... s32.s8.s8 / f32.e4m3.e4m3 / f32.f16.f16), not mma.sync or FMA, and no
    # register spills for any tile the pruner can pick: the W8A8 linear (fp16 out, bias), the requantizing
    # epilogue, the FP8 linear with its BLOCK_K-slice promotion (whose largest tiles spilled before the pruner
    # limited them), the fp16 weight-gradient layout (M-contiguous A), and the implicit-GEMM convolution.
    variants = ["fp16+bias", "int8+zp", "fp8 fp16+bias", "f16 wgrad", "conv fp16 out"]
    proc, report = _inspect(tmp_path, *(arg for v in variants for arg in ("--variant", v)), "--large-only")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every kernel variant the ops can launch compiles (the interpreter would not catch a compile error)
    assert report["compile_check"] and all(r["ok"] for r in report["compile_check"]), report["compile_check"]
    assert {r["kernel"] for r in report["compile_check"]} == {"gemm", "conv2d", "quantize", "max_pool2d"}
    assert {"e4m3 dynamic bf16, two pass", "fp8 fast fp16+bias"} <= {r["variant"] for r in report["compile_check"]}
    rows = report["rows"]
    assert len(rows) >= 12
    assert {r["variant"] for r in rows} == set(variants)
    for r in rows:
        gmma = {"fp16_gemm": "HGMMA", "fp8_gemm": "QGMMA"}.get(r["kernel"], "IGMMA")
        assert r["wgmma"] and r["stack"] == 0 and r["sass_gmma"] == [gmma], r
        # the wgmma waits are reported; fp8 keeps a group in flight across K steps (triton 3.9 waits for every int8
        # step, and for the fp16 weight gradient's, whose A goes through registers: the table says so per tile)
        assert r["pendings"] and (r["kernel"] != "fp8_gemm" or max(r["pendings"]) >= 1), r


def test_bench_smoke_run_checks_every_case():
    # python -m bench --smoke builds every (op, shape set, provider) case on tiny shapes and checks it against
    # FP32 — what a GPU run does before timing — with nothing timed
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--no-progress"], check=False,
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 wrong, nothing timed" in proc.stdout and "## int8_conv" in proc.stdout


def test_model_bench_smoke_run():
    proc = subprocess.run([sys.executable, "-m", "bench.models", "--smoke"], check=False, capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model variants built and checked" in proc.stdout and "| MLP block | 8 | lowp int8 static |" in proc.stdout


def test_bench_report_from_timed_rows(tmp_path):
    # the GPU-only half of the harness (speedups, % of peak, markdown, CSV, JSON, plots) on made-up timings
    _import_bench()
    from bench import harness

    info = {"card": "NVIDIA H100 80GB HBM3", "date": "2026-01-01", "torch": "x", "triton": "y", "lowp": "z",
            "ceilings": {"bandwidth": 3.0, "int8": 900.0, "fp16": 650.0}}
    rows = []
    for m in (1, 16, 2048):
        for provider, ms in (("lowp", 1.0), ("torch_fp16", 1.5), ("torch_fp32", 8.0)):
            flops = 2 * m * 11008 * 4096
            rows.append({"op": "int8_linear", "shape": [m, 11008, 4096], "provider": provider, "status": "ok",
                         "check": "40 dB", "ms": ms, "tflops": flops / ms / 1e9, "tbps": 0.1,
                         "pct_of_peak": 100 * flops / ms / 1e9 / 900})
    rows.append({"op": "int8_linear", "shape": [1, 11008, 4096], "provider": "torchao", "status": "skipped",
                 "note": "torchao not installed"})
    harness.speedups(rows)
    assert rows[0]["speedup_vs"] == {"torch_fp16": 1.5, "torch_fp32": 8.0}
    report = harness.markdown(info, rows)
    assert "| 2048, 11008, 4096 |" in report and "1.50x" in report and "torchao (torchao not installed)" in report
    paths = harness.save(info, rows, report, str(tmp_path), "test")
    names = {p.name for p in paths}
    assert {"test-NVIDIA_H100_80GB_HBM3-2026-01-01.csv", "test-NVIDIA_H100_80GB_HBM3-2026-01-01-speedup.png",
            "test-NVIDIA_H100_80GB_HBM3-2026-01-01-roofline.png"} <= names
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)


def test_make_demo_job_runs(tmp_path):
    # the `make demo` job end to end on a small setting: training, conversion, accuracy, timing, report, plot
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--epochs", "1", "--batch", "16",
                           "--quick", "--cache", str(tmp_path / "cache"), "--report", str(tmp_path / "report")],
                          check=False, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| int8 static |" in report and "| fp16" in report and "through int8_linear" in report
    assert (tmp_path / "report" / "schemes.png").exists() and list((tmp_path / "cache").glob("*.pt"))
    # speedups are against FP32, which is its own 1.00x baseline
    assert "| fp32 |" in report and "1.00x / 1.00x |" in report and "x the speed of FP32 F.linear" in report
    # the report names the backend the subprocess ran (it inherits this environment), and says when the timings are
    # the slow reference (or the interpreter) rather than lowp's speed
    import torch

    from lowp_ops.cpu import support

    if torch.cuda.is_available():
        backend = "Backend: lowp's Triton kernels on "
    elif os.environ.get("LOWP_CPU_BACKEND", "native") == "native" and support.missing() is None:
        backend = "Backend: CPU: lowp's native int8 backend (oneDNN int8 conv/matmul, torch._int_mm) on "
    else:
        backend = "not lowp's speed"
    assert backend in report and "NOT kernel timings" not in report, report
    # FP16 has no native CPU path: its row is marked emulated, with the reason under the table
    if not torch.cuda.is_available():
        assert "| fp16 (emulated on CPU, see note) |" in report and "its CPU time is not a speed claim" in report


def test_lock_pins_this_environment():
    # `make lock` runs tools/lock.py in a venv of today's resolution; here it runs over the test environment
    from packaging.requirements import Requirement

    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "lock.py")], check=True, capture_output=True,
                          text=True)
    header, *lines = proc.stdout.splitlines()
    assert header.startswith("# Written by `make lock`")
    pins = {r.name: r for r in map(Requirement, lines)}
    assert "pytest" in pins and "numpy" in pins and not {"torch", "lowp-ops", "pip"} & set(pins)
    import numpy
    import pytest

    assert str(pins["pytest"].specifier) == f"=={pytest.__version__}"
    assert str(pins["numpy"].specifier) == f"=={numpy.__version__}"
    # a release that needs a newer Python than lowp's floor (3.10) is pinned only where it installs
    spec = importlib.util.spec_from_file_location("lock", ROOT / "tools" / "lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    assert lock._marker(">=3.11", "3.10") == 'python_full_version >= "3.11"'
    assert lock._marker(">=3.9,<3.16", "3.10") == "" and lock._marker(None, "3.10") == ""
    assert all(r.marker is None or r.marker.evaluate() for r in pins.values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs for real (tools/gpu_verify.py)")
def test_gpu_verify_dry_run(tmp_path):
    """tools/gpu_verify.py's stages on a machine without CUDA: setup reports the versions, every other stage says
    why it skipped, and both reports are written (so the script cannot rot between GPU sessions)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_verify.py"), "--out", str(tmp_path),
                           "--budget", "60"], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_verify.json").read_text())
    assert results["setup"]["torch"] == torch.__version__ and results["setup"]["gpu"] == "none"
    stages = results["stages"]
    assert list(stages) == ["setup", "tests", "large", "perf", "overhead", "compile"]
    for name, record in stages.items():
        assert record["status"] == ("done" if name == "setup" else "skipped"), (name, record)
        if name != "setup":
            assert "no CUDA device" in record["reason"]
    assert "## perf: skipped" in (tmp_path / "gpu_verify.md").read_text()


def test_gpu_verify_stages_run_small_on_the_cpu():
    """What the GPU stages call, at small sizes on the CPU: the big-tensor checks are exact, the eager-call timer
    and the compile checks run, every perf case names an op and providers bench/ has, the autotuners are found,
    and the stages' budgets fit one 480-second call with room to spare."""
    _import_bench()
    from bench.cases import OPS
    from bench.providers import PROVIDERS

    spec = importlib.util.spec_from_file_location("gpu_verify", ROOT / "tools" / "gpu_verify.py")
    gv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gv)
    assert sum(gv.BUDGETS.values()) <= 480 - 30
    for name, check in gv.large_cases(67, (2, 6, 5, 7), "cpu"):
        assert check(), name
    assert gv.host_us("cpu", 3) > 0
    assert [item["result"] for item in gv.compile_checks("cpu")] == ["ok", "ok"]
    for op, shape, mine, theirs, bar, _ in gv.PERF:
        assert op in OPS and op in PROVIDERS[mine].ops and op in PROVIDERS[theirs].ops, (op, mine, theirs)
        assert len(shape) == (9 if op == "int8_conv" else 3), (op, shape)  # bench/cases.py's shape forms
        assert bar > 0
    assert "conv2d" in gv.chosen_tiles()


def test_gluon_int8_probe_keeps_a_wgmma_in_flight():
    # tools/gluon_int8_probe.py: Gluon's explicit async wgmma on an int32 accumulator compiles overlapped (a wait
    # for 1 group in flight), where tl.dot's pipeliner waits for every int8 step (kernels/gemm.py)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gluon_int8_probe.py")], check=False, env=env,
                          capture_output=True, text=True, cwd=ROOT / "tools")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("waits [0, 1]") == 3, proc.stdout
