# make demo / make test work on a fresh Linux machine with only Python 3.10+.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# torch==2.13.0 resolves to the CPU build kept on this project's machines; elsewhere pip takes PyPI's default
# build. Override for a CUDA machine, e.g. `make test TORCH='torch>=2.6'` to keep an installed torch.
TORCH  ?= torch==2.13.0

.PHONY: demo test bench inspect clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
