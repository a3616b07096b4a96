"""INT8 GEMM with a fused epilogue: C = epilogue(A · Bᵀ).

    a: (M, K) int8, K-contiguous (any row stride)
    b: (N, K) int8, K-contiguous — nn.Linear's own weight layout
    c: (M, N) int32 (raw) | float16 / bfloat16 / float32 (dequantized) | int8 (requantized)

Both operands are read K-contiguous and fed as tl.dot(a, tl.trans(b)): on sm_90 that is what lowers to
`wgmma.mma_async ... .s32.s8.s8`; a (K, N) row-major B ran ~10x slower on H100 (ANCHORS.md). Accumulation is
int32; the epilogue (kernels/epilogue.py) does scales, zero-point correction, bias, activation and requant.
"""

import torch
import triton
import triton.language as tl

from .epilogue import gemm_epilogue
from .tuning import gemm_configs, m_bucket, make_gemm_pruner

# (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps)
_INT8_GEMM_TABLE = [
    (128, 256, 128, 3, 8),  # large shapes: won on H100 at 4096³–8192³ (ANCHORS.md, ~1,040 TOPS plain)
    (256, 128, 128, 3, 8),  # large shapes, tall
    (128, 128, 128, 4, 8),
    (128, 128, 64, 4, 4),
    (64, 128, 128, 4, 4),
    (64, 64, 128, 5, 4),  # M ≈ 128: won on H100 (ANCHORS.md)
    (32, 64, 256, 4, 4),  # the rest serve decode (M ≤ 32): weight-bandwidth bound, many N tiles in flight
    (16, 64, 256, 4, 4),
    (16, 32, 256, 5, 4),
]

# Interpreter (CPU) runs skip autotuning: one modest tile, small enough that odd test shapes exercise the
# masked tails in both M and N.
INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "num_warps": 4, "num_stages": 1}


@triton.jit
def _int8_gemm_kernel(
    a_ptr, b_ptr, c_ptr,
    a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, out_scale_ptr, out_zp_ptr,
    M, N, K, m_bucket,  # m_bucket only keys the autotuner
    stride_am, stride_bn, stride_cm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
    OUTPUT: tl.constexpr, A_SCALE_PER_ROW: tl.constexpr, B_SCALE_PER_COL: tl.constexpr,
    A_ZP_PER_ROW: tl.constexpr, ACTIVATION: tl.constexpr,
):
    # Grouped tile order: GROUP_M row-tiles sweep the N tiles together so their B tiles stay in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Tail rows/columns re-read row M-1 / N-1 instead of masking every load; the store is masked.
    rows_a = (offs_m % M).to(tl.int64)
    rows_b = (offs_n % N).to(tl.int64)
    a_ptrs = a_ptr + rows_a[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + rows_b[:, None] * stride_bn + offs_k[None, :]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_mask = offs_k[None, :] < K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=k_mask, other=0)
            b = tl.load(b_ptrs, mask=k_mask, other=0)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    y = gemm_epilogue(acc, offs_m, offs_n, M, N,
                      a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, out_scale_ptr, out_zp_ptr,
                      OUTPUT, A_SCALE_PER_ROW, B_SCALE_PER_COL, A_ZP_PER_ROW, ACTIVATION)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _even_k(args) -> bool:
    """K needs no mask when the K tiles cover it exactly."""
    return args["K"] % args["BLOCK_K"] == 0


_int8_gemm_tuned = triton.autotune(
    configs=gemm_configs(_INT8_GEMM_TABLE),
    key=["m_bucket", "N", "K"],
    # The requant epilogue (zero points, output scale) spills on 128-accumulator-per-thread tiles
    # (tools/inspect_kernels.py, sm_90, triton 3.9: 128x256x128/8 warps used 320 B of stack).
    prune_configs_by={"early_config_prune": make_gemm_pruner(
        operand_bytes=1, heavy_epilogue=lambda args: args["OUTPUT"] == "int8")},
)(triton.heuristics({"EVEN_K": _even_k})(_int8_gemm_kernel))

_OUTPUT_KIND = {torch.int32: "int32", torch.int8: "int8",
                torch.float16: "float", torch.bfloat16: "float", torch.float32: "float"}


def _direct(kernel):
    return kernel


def int8_gemm(a, b, *, a_scale=None, b_scale=None, bias=None, a_zero_point=None, b_sum=None,
              activation="none", out_dtype=torch.int32, out_scale=None, out_zero_point=None,
              config=None, wrap=_direct):
    """Launch the INT8 GEMM; arguments are assumed validated (lowp_ops.ops does that).

    a: (M, K) int8 with a.stride(1) == 1; b: (N, K) int8 with b.stride(1) == 1.
    a_scale: float32 (M,) or (1,); b_scale: float32 (N,) or (1,); bias: (N,) float; a_zero_point: int32 (M,) or
    (1,) with b_sum int32 (N,) = Σ_k b[n, k]; out_scale float32 (1,), out_zero_point int32 (1,) for int8 output.
    activation: "none" | "relu" | "relu6" | "gelu". Returns c: (M, N) out_dtype.
    config: a dict of BLOCK_M/BLOCK_N/BLOCK_K/GROUP_M/num_warps/num_stages to bypass autotuning (CPU tensors
    under TRITON_INTERPRET=1 always do, with INTERPRETER_CONFIG). wrap: torch.library.wrap_triton when
    launched from inside a triton_op, so torch.compile traces into the kernel.
    """
    M, K = a.shape
    N = b.shape[0]
    c = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    args = dict(
        a_ptr=a, b_ptr=b, c_ptr=c, a_scale_ptr=a_scale, b_scale_ptr=b_scale, bias_ptr=bias,
        a_zp_ptr=a_zero_point, b_sum_ptr=b_sum, out_scale_ptr=out_scale, out_zp_ptr=out_zero_point,
        M=M, N=N, K=K, m_bucket=m_bucket(M), stride_am=a.stride(0), stride_bn=b.stride(0), stride_cm=c.stride(0),
        OUTPUT=_OUTPUT_KIND[out_dtype],
        # One scale / zero point for everything is the per-tensor variant (also when M or N is 1).
        A_SCALE_PER_ROW=a_scale is not None and a_scale.numel() != 1,
        B_SCALE_PER_COL=b_scale is not None and b_scale.numel() != 1,
        A_ZP_PER_ROW=a_zero_point is not None and a_zero_point.numel() != 1,
        ACTIVATION=activation,
    )

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    if config is None and a.device.type == "cpu":
        config = INTERPRETER_CONFIG
    if config is None:
        wrap(_int8_gemm_tuned)[grid](**args)
    else:  # the bare @triton.jit kernel: wrap_triton accepts jit and autotune objects, not heuristics
        wrap(_int8_gemm_kernel)[grid](**args, **config, EVEN_K=_even_k({"K": K, **config}))
    return c
