"""native.cpp, built on first use: the CPU backend's quantization and GEMM epilogue passes as one C++ loop each.

Why C++: at batch 1 each torch op costs ~3 us of Python, and the pure-torch path takes five to seven of them per
pass; at scale each op is a pass over memory. Measured on the CI machine (AMD EPYC, avx512_vnni, 2 threads, torch
2.13, 2026-12-06), C++ / torch ops:
    quantize_rows dynamic, (1, 64): 1.1 / 38 us;  (1024, 768): 133 / 243 us
    gemm_epilogue float32 out, (1, 64): 1.1 / 10.5 us;  (1024, 3072): 562 / 657 us
Both are bit-exact with lowp_ops.reference (tests/cpu/test_native.py). Plan runs a module's whole int8 layer (the
route above, from x to the output) in one call out of Python, for the eager lanes of lowp_ops/ops/_common.py:
Int8Linear (1, 64) x (64, 64) 37 -> 5.3 us, F.linear 4.6 us (same machine and day; tests/nn/test_eager_lane.py).
The build (g++ through torch.utils.cpp_extension, ~30 s, once per source version and CPU: it is compiled for this
CPU) lands in torch's extension cache (TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions). Where it cannot be
built (no compiler, no write access) lowp warns once and the torch-op path serves, with the same results, slower at
small sizes.
LOWP_CPU_CPP=0 turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("native.cpp")
# -ffp-contract=off: no fused multiply-add, so (acc · a_scale) · b_scale + bias rounds as the torch ops do;
# -march=native: this CPU's vector instructions (the build is per machine, its name carries the CPU's flags)
CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


@functools.cache
def load():
    """The compiled module, or None (with a warning, once) where it cannot be built or LOWP_CPU_CPP=0."""
    if os.environ.get("LOWP_CPU_CPP", "1") == "0":
        return None
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode() + _cpu_flags().encode()).hexdigest()
    try:
        from torch.utils.cpp_extension import load as build

        return build(name=f"lowp_cpu_{digest[:16]}", sources=[str(SOURCE)], extra_cflags=CFLAGS,
                     extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as error:  # no compiler, no ninja, no writable cache: the torch-op path serves
        warnings.warn(f"lowp: the C++ CPU kernels (lowp_ops/cpu/native.cpp) could not be built "
                      f"({type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
                      f"); quantization and GEMM epilogues run as torch ops: same results, slower at small batch",
                      RuntimeWarning, stacklevel=2)
        return None

