# make demo / make test work on a fresh Linux machine with only Python 3.10+.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch==2.13.0 resolves to the CPU build kept on this project's machines; elsewhere pip takes PyPI's default
# build. Override for a CUDA machine, e.g. `make test TORCH='torch>=2.6' LOCK=` to keep an installed torch.
TORCH  ?= torch==2.13.0
# Every other package at the version `make test` was last green on (a fresh clone installs what CI ran, not what
# pip resolves today). `make lock` refreshes it; `LOCK=` installs unpinned.
LOCK   ?= constraints.txt
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check $(if $(LOCK),--constraint $(LOCK))

.PHONY: demo test bench inspect lock clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH)"
	$(PIP) -e ".[dev]"
	# the C++ CPU kernels (lowp_ops/cpu/native.py), built once (~30 s); without a compiler lowp warns and goes on
	$(PY) -c "from lowp_ops.cpu import native; print('lowp C++ CPU kernels:', 'built' if native.load() else 'not built')"
	touch $@

demo: $(VENV)/.installed
	$(PY) tools/demo.py

# ruff (lint + import order, config in pyproject.toml) first: a lint error fails the build like a test
test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# pytest-benchmark microbenchmarks of the Python-side overhead (dispatch, launch path, module forward at batch 1)
bench: $(VENV)/.installed
	$(PY) -m pytest -q bench/test_overhead.py --benchmark-only --benchmark-columns=min,median,mean,rounds

# Kernel inspector: registers / spills / wgmma for every GEMM config, compiled for sm_90 (no GPU needed).
inspect: $(VENV)/.installed
	$(PY) tools/inspect_kernels.py

# Re-pin to what pip resolves today: a throwaway venv, unpinned install, its versions written to $(LOCK). Then
# `make test` (it reinstalls) and commit the file if it passes. The peers extra (the CPU bench's ONNX Runtime and
# OpenVINO rows) is pinned too, for `pip install --constraint constraints.txt -e ".[peers]"`; make installs only dev.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check "$(TORCH)" -e ".[dev,peers]"
	.venv-lock/bin/python tools/lock.py > $(or $(LOCK),constraints.txt)
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .venv-lock build *.egg-info .pytest_cache
