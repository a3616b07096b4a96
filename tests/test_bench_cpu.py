"""python -m bench --device cpu --smoke: every CPU benchmark row (FP32 eager / torch.compile, torch.ao, ONNX Runtime and
OpenVINO where the `peers` extra is installed, lowp native and reference) built on tiny shapes, checked against FP32
and timed once.

It runs in a subprocess without TRITON_INTERPRET (conftest sets it for the tests in this process), so it sees the
environment a user's `python -m bench --device cpu` does, as tests/test_tools.py does for inspect_kernels."""

import importlib.util
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# each peer runtime (bench/peers.py): the packages its rows need (the peers extra), and rows it must give: static
# QDQ / NNCF int8 on the ConvNet, dynamic int8 and NNCF int8 on the encoders
PEERS = {"ONNX Runtime": (("onnxruntime", "onnx"),
                          ("| seed ConvNet | 4 | ort static QDQ |", "| BERT 2L-64 | 2x16 | ort fp32 |",
                           "| MiniLM 2L-32 | 4x16 | ort dynamic |")),
         "OpenVINO": (("openvino", "nncf"),
                      ("| seed ConvNet | 1 | openvino fp32 |", "| seed ConvNet | 4 | openvino int8 (nncf) |",
                       "| MiniLM 2L-32 | 4x16 | openvino int8 (nncf) |"))}


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
    if importlib.util.find_spec("transformers") is not None:  # the dev extra installs it: the encoders must run
        assert "| BERT 2L-64 | 2x16 | lowp dynamic |" in out, out
        assert "| MiniLM 2L-32 | 4x16 | lowp dynamic | " in out and "| cos min " in out, out
        assert "| ResNet 1-1-1-1 | 2 | lowp static |" in out, out
        assert "| ResNet 1-1-1-1 | 1 | lowp static chain_int8=False |" in out, out
    else:
        assert "BERT skipped: transformers unavailable" in out and "MiniLM skipped: transformers unavailable" in out
        assert "ResNet-50 skipped: transformers unavailable" in out
    # found, not imported: importing OpenVINO / NNCF here would load them into the other tests' process
    for runtime, (packages, rows) in PEERS.items():
        if all(importlib.util.find_spec(p) is not None for p in packages):  # the peers extra is installed
            for row in rows:
                if "ConvNet" in row or importlib.util.find_spec("transformers") is not None:
                    assert row in out, out
        else:
            assert f"{runtime} rows skipped: " in out, out
    assert "## Milestones" in out and ", 0 broken (smoke: nothing saved)" in out, out
    assert not list(tmp_path.iterdir()), "a smoke run must not write results"
