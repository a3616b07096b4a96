"""The distribution ships kernels/ as lowp_ops.kernels and nothing as a top-level `kernels` module (that name
belongs to another PyPI project, which transformers probes for)."""

import importlib.util
import pathlib
import subprocess
import sys
import zipfile

import lowp_ops

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_kernels_live_under_lowp_ops():
    spec = importlib.util.find_spec("lowp_ops.kernels")
    assert spec is not None and pathlib.Path(spec.origin).parent == ROOT / "kernels"
    assert lowp_ops.kernels.gemm.__module__ == "lowp_ops.kernels.gemm"


def test_wheel_layout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("lowp_ops-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lowp_ops/kernels/gemm.py" in names and "lowp_ops/ops/fp16.py" in names and "lowp_ops/quant/spec.py" in names
    assert not [n for n in names if n.startswith(("kernels/", "tests/", "bench/", "tools/"))]
