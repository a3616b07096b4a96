"""Autotuning shared by the GEMM families: one config generator per family feeds this pruner, and tuning is keyed
on a bucket of M so that serving traffic (a new batch size every call) does not re-tune on every M."""

import triton

# Usable shared memory per block on H100/H200 is ~227 KB (ANCHORS.md); keep headroom for the epilogue's layout
# conversion scratch and barriers.
SMEM_BUDGET_BYTES = 200 * 1024


def m_bucket(m: int) -> int:
    """The autotune key for M: next power of two, capped where larger M no longer changes the best tile."""
    return min(triton.next_power_of_2(max(int(m), 1)), 8192)


def gemm_configs(table, group_m: int = 8) -> list:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) rows -> triton.Config list."""
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                          num_stages=stages, num_warps=warps)
            for bm, bn, bk, stages, warps in table]


def make_gemm_pruner(register_heavy=lambda named_args: False):
    """A Triton early_config_prune: drop tiles that overflow shared memory or do not fit the problem.

    Expects the kernel to take `a_ptr` (whose element size sets the shared-memory cost of a stage), `m_bucket`,
    `N` and `K` arguments. register_heavy(named_args) says when the
    kernel needs so many registers besides its accumulator that big accumulators spill; then each thread may
    hold at most 64 accumulator elements.
    """

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}  # Triton passes positional arguments in named_args, the rest as kwargs
        mb, n, k = args["m_bucket"], args["N"], args["K"]
        operand_bytes = args["a_ptr"].element_size()
        max_acc_per_thread = 64 if register_heavy(args) else 128

        def fits(c):
            kw = c.kwargs
            bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]
            smem = c.num_stages * (bm + bn) * bk * operand_bytes
            return (smem <= SMEM_BUDGET_BYTES
                    and bm * bn <= max_acc_per_thread * 32 * c.num_warps
                    and bm <= max(16, mb)                       # no tile mostly made of padding rows
                    and (mb < 256 or bm >= 64)                  # large M: small tiles waste the tensor cores
                    and bn <= max(32, triton.next_power_of_2(n))
                    and bk <= max(32, triton.next_power_of_2(k)))

        kept = [c for c in configs if fits(c)]
        return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]

    return prune
