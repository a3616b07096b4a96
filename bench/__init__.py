"""lowp's benchmark harness (not installed): cases (op x shape set) x providers (lowp, cuBLAS / cuDNN through torch,
cuBLAS through CuPy, torchao, unfused eager), each checked against FP32 before it is timed.

    python -m bench --ops int8_linear --shapes llm --providers all --out bench/results
    python -m bench --preset int8          # the INT8 GEMM / linear shapes;  --preset fp8, fp16, conv
    python -m bench --smoke                # CPU: every case built and checked on tiny shapes, nothing timed
"""

import sys
from pathlib import Path

# `python -m bench` puts the repository root on sys.path, where kernels/ (shipped as lowp_ops.kernels) would shadow
# PyPI's `kernels`, which transformers imports: take it off; bench's own modules resolve through this package.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]
