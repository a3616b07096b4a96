"""Does an int8 wgmma overlap the next K step in this Triton? A compile-only probe for sm_90 (no GPU needed).

    python tools/gluon_int8_probe.py        # per tile: the PTX wgmma waits, registers, spill, SASS per K step

lowp's GEMM (kernels/gemm.py) writes `tl.dot`, and Triton's wgmma pipeliner makes a dot asynchronous only with a
float32 accumulator ("Can't make dot async because the accumulator is not fp32", its debug log, triton 3.6 and 3.9):
every int8 K step waits for its own wgmma (`wgmma.wait_group 0`). Gluon, Triton's explicit dialect, issues the
wgmma asynchronously and leaves one group in flight (`warpgroup_mma(..., is_async=True)` then
`warpgroup_mma_wait(num_outstanding=1)`) whatever the accumulator. This probe compiles such a main loop — a ring of
TMA loads under mbarriers, an int32 accumulator, one wgmma in flight — and reports the waits, so that whoever takes
up a Gluon int8 GEMM knows the lever holds in the installed Triton. It is not one of lowp's kernels: the interpreter
cannot run Gluon, so CI could not test such a kernel against the reference; that decision is the team's.
Exits 1 when a tile does not compile, keeps no wgmma in flight, or spills.
"""

from __future__ import annotations

import re
import sys
import warnings

import torch
import triton
from inspect_kernels import _resources
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.runtime.jit import mangle_type

# triton 3.9 renamed the TMA load (3.6: async_copy_global_to_shared)
tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared


@gluon.jit
def _int8_main_loop(a_desc, b_desc, c_ptr, M, N, K, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """c (M, N) int32 = a (M, K) int8 · b (N, K) int8ᵀ, one (BLOCK_M, BLOCK_N) tile per program."""
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
    off_m = gl.program_id(0) * BLOCK_M
    off_n = gl.program_id(1) * BLOCK_N
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    # int8 wgmma: instruction N at most 224 (128 here), K 32
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                     instr_shape=[16, min(BLOCK_N, 128), 32])
    acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.int32, layout=layout)
    k_tiles = gl.cdiv(K, BLOCK_K)
    nbytes: gl.constexpr = (BLOCK_M + BLOCK_N) * BLOCK_K
    for i in gl.static_range(STAGES - 1):
        mbarrier.expect(bars.index(i), nbytes)
        tma_load(a_desc, [off_m, i * BLOCK_K], bars.index(i), a_bufs.index(i))
        tma_load(b_desc, [off_n, i * BLOCK_K], bars.index(i), b_bufs.index(i))
    for kt in range(k_tiles):
        s = kt % STAGES
        mbarrier.wait(bars.index(s), (kt // STAGES) & 1)
        acc = warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), acc, is_async=True)
        # one wgmma left in flight: the previous step's has finished, so its slot can be refilled
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
        nk = kt + STAGES - 1
        if nk < k_tiles:
            ns = nk % STAGES
            mbarrier.expect(bars.index(ns), nbytes)
            tma_load(a_desc, [off_m, nk * BLOCK_K], bars.index(ns), a_bufs.index(ns))
            tma_load(b_desc, [off_n, nk * BLOCK_K], bars.index(ns), b_bufs.index(ns))
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    offs_m = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
    offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
    gl.store(c_ptr + offs_m[:, None] * N + offs_n[None, :], acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


TILES = [(128, 128, 128, 4, 4), (128, 128, 128, 4, 8), (128, 256, 128, 3, 8)]  # BM, BN, BK, stages, warps


def probe(block_m, block_n, block_k, stages, warps, arch: int = 90) -> dict:
    """Compile one tile at 4096³ (meta tensors: shapes and strides, no memory); its report row."""
    a, b = (torch.empty(4096, 4096, dtype=torch.int8, device="meta") for _ in range(2))
    descs = {name: TensorDescriptor(t, list(t.shape), list(t.stride()), [rows, block_k],
                                    gl.NVMMASharedLayout.get_default_for([rows, block_k], gl.int8))
             for name, t, rows in (("a_desc", a, block_m), ("b_desc", b, block_n))}
    signature = {**{k: mangle_type(d) for k, d in descs.items()}, "c_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32",
                 "STAGES": "constexpr", "num_warps": "constexpr"}
    source = GluonASTSource(_int8_main_loop, signature, constexprs={"STAGES": stages, "num_warps": warps})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    ptx = compiled.asm["ptx"]
    row = {"tile": f"{block_m}x{block_n}x{block_k}", "stages": stages, "warps": warps,
           "pendings": sorted({int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)}),
           "mma": sorted(set(re.findall(r"wgmma\.mma_async\.\S*", ptx))), **_resources(compiled.asm["cubin"])}
    int8 = any(".s32.s8.s8" in m for m in row["mma"])
    row["ok"] = int8 and max(row["pendings"], default=0) >= 1 and row["stack"] == 0
    return row


def main() -> int:
    warnings.filterwarnings("ignore", message=".*FP_FUSION.*")
    print(f"sm_90, triton {triton.__version__}: Gluon int8 main loop, one wgmma in flight")
    rows = []
    for tile in TILES:
        try:
            rows.append(probe(*tile))
        except Exception as error:  # a Triton without this Gluon API, or a tile it refuses
            rows.append({"tile": "x".join(map(str, tile[:3])), "ok": False,
                         "error": f"{type(error).__name__}: {error}"})
    for r in rows:
        if "error" in r:
            print(f"{r['tile']:12} FAIL {r['error'][:300]}")
        else:
            print(f"{r['tile']:12} {r['stages']} st {r['warps']} w  waits {r['pendings']}  regs {r['regs']}  "
                  f"stack {r['stack']}  SASS per step {r['loops'][:1]}  {' '.join(r['mma'])}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
