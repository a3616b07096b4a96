"""tools/inspect_kernels.py compiles the GEMM configs for sm_90 without a GPU (Triton ships ptxas/cuobjdump).

It runs in a subprocess: these tests run with TRITON_INTERPRET=1, under which kernels cannot be compiled."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _inspect(tmp_path, *flags):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "inspect_kernels.py"), "--json", str(out), *flags],
                          env=env, capture_output=True, text=True)
    return proc, json.loads(out.read_text())


def test_gemm_tiles_use_wgmma_without_spilling(tmp_path):
    # Hopper's tensor-core path (wgmma ... s32.s8.s8 / f32.f16.f16), not mma.sync or FMA, and no register spills
    # for any tile the pruner can pick: the W8A8 linear (fp16 out, bias), the requantizing epilogue, and the
    # fp16 weight-gradient layout (M-contiguous A), and the implicit-GEMM convolution.
    proc, report = _inspect(tmp_path, "--variant", "fp16+bias", "--variant", "int8+zp", "--variant", "f16 wgrad",
                            "--variant", "conv fp16 out", "--large-only")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every kernel variant the ops can launch compiles (the interpreter would not catch a compile error)
    assert report["compile_check"] and all(r["ok"] for r in report["compile_check"]), report["compile_check"]
    rows = report["rows"]
    assert len(rows) >= 9
    for r in rows:
        gmma = "HGMMA" if r["kernel"] == "fp16_gemm" else "IGMMA"
        assert r["wgmma"] and r["stack"] == 0 and r["sass_gmma"] == [gmma], r


@pytest.mark.parametrize("script", ["int8.py", "fp16.py", "conv.py"])
def test_bench_smoke_run_checks_every_case(script):
    # bench/*.py --smoke computes and checks each benchmark case on tiny shapes (no timing on CPU)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--smoke"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all cases computed and checked" in proc.stdout
