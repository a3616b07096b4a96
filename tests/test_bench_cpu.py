"""python -m bench --device cpu --smoke: every CPU benchmark row (FP32 eager / torch.compile, torch.ao, lowp native
and reference) built on tiny shapes, checked against FP32 and timed once.

It runs in a subprocess without TRITON_INTERPRET (conftest sets it for the tests in this process), so it sees the
environment a user's `python -m bench --device cpu` does, as tests/test_tools.py does for inspect_kernels."""

import importlib.util
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_cpu_bench_smoke_run_builds_every_workload(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "bench", "--device", "cpu", "--smoke", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    # a row per provider of each workload
    for row in ("| seed ConvNet | 4 | lowp static |", "| seed ConvNet | 1 | torch.ao static x86 |",
                "| Linear 64x64 | 256 | lowp int8_linear op |", "| Linear 64x64 | 1 | lowp Int8Linear (reference) |"):
        assert row in out, out
    if importlib.util.find_spec("transformers") is not None:  # the dev extra installs it: BERT must run
        assert "| BERT 2L-64 | 2x16 | lowp dynamic |" in out, out
    else:
        assert "BERT skipped: transformers unavailable" in out, out
    assert "## Milestones" in out and ", 0 broken (smoke: nothing saved)" in out, out
    assert not list(tmp_path.iterdir()), "a smoke run must not write results"
