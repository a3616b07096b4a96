#!/usr/bin/env bash
# What a GPU session runs, in stages that each fit one device call (10 minutes); results land under $OUT.
# First on a card: `python tools/gpu_verify.py --install` (the staged 480-second check: tests, > 2^31 elements,
# ratios against the baselines, eager overhead, compile); the stages below are for longer sessions.
#   bash bench/gpu_session.sh check    # install, GPU tests (kernel tests run on CUDA tensors), kernel inspector
#   bash bench/gpu_session.sh bench    # python -m bench --preset int8 / fp16 / conv (autotuning included)
#   bash bench/gpu_session.sh fp8      # the inspector's e4m3 check, then python -m bench --preset fp8
#   bash bench/gpu_session.sh models   # model-level benchmarks, mixed-precision training, the ConvNet schemes
# Copy $OUT's results into bench/results/ and commit them.
set -uo pipefail
OUT=${OUT:-/tmp/lowp-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q -e . --no-deps --no-build-isolation
case "${1:-check}" in
  check)
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$OUT/gpu.txt"
    python3 -m pytest -q -x -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/tests.txt"
    python3 tools/inspect_kernels.py --json "$OUT/inspect.json" > "$OUT/inspect.txt" 2>&1; echo "inspect rc=$?" ;;
  bench)
    for preset in int8 fp16 conv; do
      python3 -m bench --preset "$preset" --no-progress --out "$OUT" 2>&1 | tail -30
    done ;;
  fp8)
    # every tile the pruner can pick for the FP8 linear compiles to wgmma .e4m3.e4m3 (QGMMA), without spills
    python3 tools/inspect_kernels.py --json "$OUT/inspect-fp8.json" --large-only --variant "fp8 fp16+bias" \
      --variant "fp8 bf16+bias" --variant "fp8 fast fp16+bias" --variant "fp8 fast bf16+bias" \
      > "$OUT/inspect-fp8.txt" 2>&1; echo "inspect e4m3 rc=$?"
    python3 -m pytest -q -p no:cacheprovider tests/kernels tests/ops -k "fp8" 2>&1 | tail -5 | tee "$OUT/tests-fp8.txt"
    python3 -m bench --preset fp8 --no-progress --out "$OUT" 2>&1 | tail -40 ;;
  models)
    python3 -m bench.models --out "$OUT" 2>&1 | tail -30
    python3 -m pytest -q bench/test_overhead.py --benchmark-only 2>&1 | tail -12
    python3 tools/train_mixed_precision.py --out "$OUT" 2>&1 | tail -12
    python3 tools/evaluate_convnet.py --out "$OUT" 2>&1 | tail -16 ;;
esac
