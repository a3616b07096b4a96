"""kernels/tuning.py: the autotune pruner and the M bucket, on made-up configs and arguments (no kernel runs).

Each expected value is derived in a comment from the rule it checks. The shared-memory numbers assume the 200 KiB
budget that test_shared_memory_budget_drops_big_stages asserts first."""

import pytest
import torch

from lowp_ops.kernels.tuning import SMEM_BUDGET_BYTES, gemm_configs, m_bucket, make_gemm_pruner

KiB = 1024
PRUNE = make_gemm_pruner(m_bucket_arg="m_bucket", n_arg="N", k_arg="K", operand_arg="a_ptr")


def _args(m_bucket=8192, n=4096, k=4096, dtype=torch.int8, **extra):
    """Kernel arguments by name, as Triton hands them to the pruner; large M, N, K unless given."""
    return {"m_bucket": m_bucket, "N": n, "K": k, "a_ptr": torch.empty(0, dtype=dtype), **extra}


def _kept(prune, table, args, **kwargs):
    """The (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) rows of `table` that survive pruning."""
    kept = prune(gemm_configs(table), args, **kwargs)
    return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages, c.num_warps)
            for c in kept]


@pytest.mark.parametrize("m, bucket", [
    (1, 1),            # 2^0: M = 1 (decode) is its own bucket
    (16, 16),          # a power of two is its own bucket
    (17, 32),          # one past a power of two: the next one, 2^5
    (8192, 8192),      # the cap, 2^13: the largest bucket
    (10**6, 8192),     # beyond the cap: next power of two 2^20, capped to 2^13
])
def test_m_bucket_edges(m, bucket):
    assert m_bucket(m) == bucket


@pytest.mark.parametrize("dtype, stages", [
    # one stage of a 128x256x128 tile holds (128 + 256) x 128 operand elements = 48 Ki elements:
    (torch.int8, [1, 2, 3, 4]),    # 48 KiB each; 4 x 48 = 192 KiB fits 200 KiB, 5 x 48 = 240 KiB does not
    (torch.float16, [1, 2]),       # 96 KiB each; 2 x 96 = 192 KiB fits, 3 x 96 = 288 KiB does not
])
def test_shared_memory_budget_drops_big_stages(dtype, stages):
    assert SMEM_BUDGET_BYTES == 200 * KiB  # the premise of the numbers above
    # 8 warps: 128 x 256 accumulators over 256 threads = 128 each, the most a thread may hold; M, N, K large
    table = [(128, 256, 128, s, 8) for s in range(1, 7)]
    assert _kept(PRUNE, table, _args(dtype=dtype)) == [(128, 256, 128, s, 8) for s in stages]


# Tiles of 16 to 128 rows by 32 x 32, one stage: small enough that only BLOCK_M decides.
_ROWS = [(bm, 32, 32, 1, 4) for bm in (16, 32, 64, 128)]


@pytest.mark.parametrize("bucket, rows", [
    (1, [16]),                  # M = 1: 16 rows, the smallest tile an MMA takes, is all there is to keep
    (16, [16]),                 # M <= 16: a 32-row tile would be at least half padding
    (32, [16, 32]),             # M in 17..32: 32 rows fit, 64 would be more than half padding
    (128, [16, 32, 64, 128]),   # M in 65..128: every tile up to 128 rows
])
def test_tiny_m_keeps_no_tile_mostly_padding(bucket, rows):
    # BLOCK_M <= max(16, bucket): the bucket is M rounded up to a power of two, so a tile that passes is more
    # than half real rows (or 16 rows, the minimum)
    assert [t[0] for t in _kept(PRUNE, _ROWS, _args(m_bucket=bucket))] == rows


def test_large_m_drops_small_tiles():
    # from bucket 256 on, tiles under 64 rows go: wgmma works on 64-row warpgroup tiles, and a large M has
    # enough 64-row tiles to fill the GPU
    assert [t[0] for t in _kept(PRUNE, _ROWS, _args(m_bucket=256))] == [64, 128]
    # bucket 128 (M in 65..128) still keeps them: BLOCK_M <= 128 is the only row rule there
    assert [t[0] for t in _kept(PRUNE, _ROWS, _args(m_bucket=128))] == [16, 32, 64, 128]


def test_register_heavy_variants_cap_accumulators_per_thread():
    # accumulators per thread = BLOCK_M x BLOCK_N / (32 x num_warps):
    table = [(128, 256, 64, 2, 8),   # 32768 / 256 = 128: over the register-heavy cap of 64
             (128, 128, 64, 2, 8),   # 16384 / 256 = 64: at the cap
             (128, 128, 64, 2, 4),   # 16384 / 128 = 128: over the cap
             (64, 128, 64, 2, 4)]    # 8192 / 128 = 64: at the cap
    prune = make_gemm_pruner(m_bucket_arg="m_bucket", n_arg="N", k_arg="K", operand_arg="a_ptr",
                             register_heavy=lambda args: args["OUTPUT"] == "int8")
    # 128 per thread is the limit otherwise: every tile is kept
    assert _kept(prune, table, _args(), OUTPUT="float") == table
    # register_heavy sees keyword arguments too (Triton passes non-positional ones that way)
    assert _kept(prune, table, _args(), OUTPUT="int8") == [table[1], table[3]]


def test_fallback_keeps_the_smallest_tile_when_everything_is_pruned():
    # at M = 1 every tile of 64 rows or more is mostly padding (BLOCK_M <= 16), so all of these go; the tile with
    # the fewest accumulators, 64 x 64 = 4096 (against 8192 for 128 x 64 and 64 x 128, 16384 for 128 x 128), stays
    table = [(128, 128, 64, 2, 4), (128, 64, 64, 2, 4), (64, 64, 64, 2, 4), (64, 128, 64, 2, 4)]
    assert _kept(PRUNE, table, _args(m_bucket=1)) == [(64, 64, 64, 2, 4)]


def test_pruner_reads_the_argument_names_it_is_given():
    # the conv kernel's columns and reduction are COLS and C_G; N and K here hold decoys that would keep every tile
    prune = make_gemm_pruner(m_bucket_arg="m_bucket", n_arg="COLS", k_arg="C_G", operand_arg="a_ptr")
    table = [(64, bn, bk, 2, 4) for bn in (32, 64, 128) for bk in (32, 64)]
    # COLS = 40: BLOCK_N <= max(32, next_power_of_2(40) = 64); C_G = 1 (depthwise): BLOCK_K <= max(32, 1) = 32
    args = {**_args(), "COLS": 40, "C_G": 1}
    assert _kept(prune, table, args) == [(64, 32, 32, 2, 4), (64, 64, 32, 2, 4)]


def test_the_gemm_caps_precise_fp8_and_keeps_fast_fp8_tiles():
    # kernels/gemm.py's _register_heavy: fp8 that promotes each BLOCK_K slice to float32 holds a second accumulator
    # (128x256x128 spilled 192 B, sm_90 offline), so it gets at most 64 accumulators a thread: 128 x 256 on 8 warps
    # (128 a thread) goes, 128 x 128 on 8 warps (64) stays; with fast accumulation, or int8, both stay
    from lowp_ops.kernels.gemm import _PRUNE

    table = [(128, 256, 128, 3, 8), (128, 128, 128, 4, 8)]
    forward = {"stride_am": 4096, "stride_ak": 1, "OUTPUT": "float"}
    fp8 = _args(dtype=torch.float8_e4m3fn, **forward)
    assert _kept(_PRUNE, table, {**fp8, "FAST_ACCUM": False}) == [table[1]]
    assert _kept(_PRUNE, table, {**fp8, "FAST_ACCUM": True}) == table
    assert _kept(_PRUNE, table, {**_args(**forward), "FAST_ACCUM": False}) == table


def test_the_weight_gradient_keeps_big_tiles_where_m_is_a_multiple_of_16():
    # kernels/gemm.py's _register_heavy: an M-contiguous A (dW = dyᵀ · x) goes through registers only where M is not a
    # multiple of 16 (sm_90 offline: at M = 4096 every tile compiles without spilling, overlapped; at M = 4100
    # 128 x 256 on 8 warps takes 254 registers, synchronous), so only then the 64-accumulator cap
    from lowp_ops.kernels.gemm import _KEY, _PRUNE

    table = [(128, 256, 64, 3, 8), (128, 128, 64, 4, 8)]
    wgrad = _args(dtype=torch.float16, stride_am=1, stride_ak=4096, OUTPUT="float", FAST_ACCUM=False)
    assert _kept(_PRUNE, table, {**wgrad, "m_aligned": 1}) == table
    assert _kept(_PRUNE, table, {**wgrad, "m_aligned": 0}) == [table[1]]
    assert "m_aligned" in _KEY  # a tile tuned for one is never reused for the other



def test_variants_only_where_they_may_run():
    # kernels/gemm.py's _allows: SPLIT_K for int8 operands, not accumulating, at M <= 16 with cdiv(K, BLOCK_K) >=
    # 2 x SPLIT_K; TMA where the launcher found the operands fit a descriptor (tma_ok), at M >= 64
    from lowp_ops.kernels.gemm import _PRUNE

    decode, large = [(16, 64, 256, 4, 4)], [(128, 128, 128, 4, 8)]
    configs = (gemm_configs(decode) + gemm_configs(decode, SPLIT_K=2) + gemm_configs(decode, SPLIT_K=4)
               + gemm_configs(large, TMA=True))

    def variants(m_bucket, k=4096, dtype=torch.int8, accumulate=False, tma_ok=1, n=4096):
        args = _args(m_bucket=m_bucket, n=n, k=k, dtype=dtype, stride_am=k, stride_ak=1, OUTPUT="float",
                     FAST_ACCUM=False, ACCUMULATE=accumulate, m_aligned=0, tma_ok=tma_ok)
        return [(c.kwargs.get("SPLIT_K", 1), c.kwargs.get("TMA", False)) for c in _PRUNE(configs, args)]

    plain = (1, False)
    assert variants(16) == [plain, (2, False), (4, False)]       # K = 4096: 16 steps of 256, 4 a split at 4-way
    assert variants(16, k=1024) == [plain, (2, False)]           # 4 steps: 2 a split at 2-way, 1 at 4-way
    assert variants(32) == [plain]                               # M = 17..32: not decode, and below 64 rows
    assert variants(16, dtype=torch.float8_e4m3fn) == [plain]    # a float sum's order shows
    assert variants(16, accumulate=True) == [plain]
    assert variants(128) == [plain, (1, True)]
    assert variants(128, tma_ok=0) == [plain]
    assert variants(16, n=8, k=16) == [plain]                    # everything pruned: the fallback is plain
