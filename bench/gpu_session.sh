#!/usr/bin/env bash
# Everything a GPU session should run, in one device call (each step's output lands under $OUT):
#   device run: bash bench/gpu_session.sh
# GPU tests (the kernel tests run on CUDA tensors there), the kernel inspector (wgmma / spills), the INT8 and
# FP16 benchmarks, and mixed-precision training through the Triton kernels. Copy $OUT's results into
# bench/results/ and commit them.
set -uo pipefail
OUT=${OUT:-/tmp/lowp-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q -e . --no-deps --no-build-isolation
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -x -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/tests.txt"
python3 tools/inspect_kernels.py --json "$OUT/inspect.json" > "$OUT/inspect.txt" 2>&1; echo "inspect rc=$?"
python3 bench/int8.py --out "$OUT" 2>&1 | tail -30
python3 bench/fp16.py --out "$OUT" 2>&1 | tail -20
python3 bench/conv.py --out "$OUT" 2>&1 | tail -20
python3 tools/train_mixed_precision.py --out "$OUT" 2>&1 | tail -12
