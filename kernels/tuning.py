"""Autotuning shared by the tiled kernels (the GEMM and the implicit-GEMM conv): a config generator that each family
feeds its table of tiles, a pruner, and the bucket of M that tuning is keyed on, so that serving traffic (a new batch
size every call) does not re-tune on every M."""

import triton

# Usable shared memory per block on sm_90 (H100, H200) is about 227 KB (bench/BASELINES.md, "Shared memory",
# H100 80GB HBM3); keep headroom for the epilogue's layout conversion scratch and barriers.
SMEM_BUDGET_BYTES = 200 * 1024


def m_bucket(m: int) -> int:
    """The autotune key for M: next power of two, capped where larger M no longer changes the best tile. Plain int
    arithmetic: triton.next_power_of_2 goes through a constexpr-function wrapper, ~2.5 us a call (CI machine)."""
    return min(1 << (max(int(m), 1) - 1).bit_length(), 8192)


def gemm_configs(table, group_m: int = 8, **variant) -> list:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) rows -> triton.Config list; variant: constexprs that every
    config of the table sets (the GEMM's SPLIT_K or TMA, kernels/gemm.py)."""
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, **variant},
                          num_stages=stages, num_warps=warps)
            for bm, bn, bk, stages, warps in table]


def make_gemm_pruner(*, m_bucket_arg: str, n_arg: str, k_arg: str, operand_arg: str,
                     register_heavy=lambda args: False, allows=lambda kwargs, args: True):
    """A Triton early_config_prune: drop tiles that overflow shared memory or do not fit the problem.

    m_bucket_arg, n_arg, k_arg, operand_arg: the names of the kernel's arguments holding m_bucket(M) for the rows,
    the number of columns, the reduction length, and an operand tensor whose element size sets the shared-memory
    cost of a pipeline stage.
    register_heavy(args) says when the kernel needs so many registers besides its accumulator that big
    accumulators spill; then each thread may hold at most 64 accumulator elements, otherwise 128.
    allows(config.kwargs, args) says whether the kernel can run a config's variant (its own constexprs) on args at
    all. When no config is left, the allowed one with the smallest BLOCK_M x BLOCK_N tile is kept.
    """

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}  # Triton passes positional arguments in named_args, the rest as kwargs
        mb, n, k = args[m_bucket_arg], args[n_arg], args[k_arg]
        operand_bytes = args[operand_arg].element_size()
        max_acc_per_thread = 64 if register_heavy(args) else 128

        def fits(c):
            kw = c.kwargs
            bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]
            smem = c.num_stages * (bm + bn) * bk * operand_bytes  # both operand tiles, every pipeline stage
            return (smem <= SMEM_BUDGET_BYTES
                    and bm * bn <= max_acc_per_thread * 32 * c.num_warps
                    and bm <= max(16, mb)                       # no tile mostly made of padding rows
                    and (mb < 256 or bm >= 64)                  # large M: small tiles waste the tensor cores
                    and bn <= max(32, triton.next_power_of_2(n))
                    and bk <= max(32, triton.next_power_of_2(k)))

        allowed = [c for c in configs if allows(c.kwargs, args)]
        kept = [c for c in allowed if fits(c)]
        return kept or [min(allowed, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]

    return prune
