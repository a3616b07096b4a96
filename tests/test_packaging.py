"""The distribution ships kernels/ as lowp_ops.kernels and nothing as a top-level `kernels` module (that name
belongs to another PyPI project, which transformers imports); installs follow the checked-in lock."""

import importlib.metadata
import importlib.util
import pathlib
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def test_import_kernels_never_finds_this_repository():
    # The repository root holds kernels/; on sys.path it would shadow PyPI's `kernels`, which transformers
    # (a dev dependency) requires and imports at model construction. conftest keeps the root off sys.path.
    assert str(ROOT) not in {str(pathlib.Path(p or ".").resolve()) for p in sys.path}
    spec = importlib.util.find_spec("kernels")
    try:
        pypi = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        assert spec is None, spec
        return
    assert spec is not None and pathlib.Path(spec.origin).parent != ROOT / "kernels", spec
    assert pathlib.Path(spec.origin).is_relative_to(pypi.locate_file("")), spec


def test_make_installs_the_locked_versions():
    # constraints.txt pins every package `make test` installs (torch aside: TORCH picks its build), so a fresh
    # clone resolves what CI was last green on; in the venv make built, each applicable pin is what is installed
    pins = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    pinned = {canonicalize_name(r.name): r for r in pins}
    dev = [Requirement(r) for r in importlib.metadata.requires("lowp-ops")]
    for r in dev:
        if canonicalize_name(r.name) != "torch" and (r.marker is None or r.marker.evaluate({"extra": "dev"})):
            assert canonicalize_name(r.name) in pinned, f"{r.name} is not pinned: run `make lock`"
    if pathlib.Path(sys.prefix).resolve() != ROOT / ".venv":
        pytest.skip("not the venv make built (the GPU machine installs with --no-deps)")
    for name, r in pinned.items():
        try:  # the distribution an import finds first (setuptools, once imported, adds its vendored ones behind)
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if r.marker is None or r.marker.evaluate():
            assert r.specifier.contains(installed, prereleases=True), (
                f"{name} {installed} installed, {r.specifier} locked: `make test` reinstalls")
