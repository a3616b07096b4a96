"""GEMM with a fused epilogue, one kernel for int8, fp8 (e4m3) and fp16/bf16 operands:  C = epilogue(A · B).

    a: (M, K), b: (K, N), any strides — the layout is read from the strides, never from a copied kernel:
       nn.Linear forward  y  = x · Wᵀ : b = W.T         (W stored (N, K): b is K-contiguous)
       input gradient     dx = dy · W : b = W           (N-contiguous)
       weight gradient    dW = dyᵀ · x: a = dy.T        (M-contiguous)
    int8 operands accumulate in int32, fp8 and fp16 / bf16 operands in float32 (Tensor Cores either way). Triton
    specializes a stride equal to 1 at compile time, so each layout gets its own vectorized loads.
    c: (M, N) — int32 (raw), float16 / bfloat16 / float32, or int8 (requantized); with ACCUMULATE, c (float32)
       holds the running sum and c += epilogue(A · B) (weight-gradient accumulation).

8-bit operands (int8, fp8) must both be K-contiguous: on sm_90 that is what lowers to `wgmma.mma_async ...
.s32.s8.s8` / `.f32.e4m3.e4m3`; with a (K, N) row-major int8 B, plain Triton INT8 ran 107 instead of 997 TOPS at
4096³ on an H100 80GB (bench/BASELINES.md, GEMM throughput). Each int8 K step waits for its own wgmma before the next
is issued (no overlap): Triton's wgmma pipeliner keeps only float32 accumulators asynchronous ("Can't make dot async
because the accumulator is not fp32" in its debug log, triton 3.6 and 3.9); fp8 and fp16 overlap one step. Gluon's
explicit async wgmma does overlap int8 (tools/gluon_int8_probe.py), but the interpreter cannot run Gluon.
FP8 accumulation: sm_90's fp8 wgmma adds its products into the accumulator with fewer bits than float32 (about 14
kept: DeepSeek-V3 technical report, arXiv 2412.19437, "Increasing Accumulation Precision"). FAST_ACCUM=False
moves each BLOCK_K slice's sum into a float32 accumulator (Triton's max_num_imprecise_acc = BLOCK_K, the report's
remedy); FAST_ACCUM=True accumulates all of K in the wgmma (what torch._scaled_mm's use_fast_accum=True asks of
cuBLAS). The interpreter has no such mode: float32 either way.
Decode (M <= 16) with int8 operands may split the reduction: N / BLOCK_N tiles alone leave most of an H100's 132
SMs without work, so SPLIT_K programs share each tile's K steps (program_id(1)), add their int32 partial sums into a
workspace, and the last to arrive runs the epilogue (_sum_splits). The total is an integer, so the result is exact
and does not depend on the order of arrival; fp8 and fp16 / bf16 (float sums) never split.
Large 8-bit GEMMs may also run persistent (TMA): at most one program per SM walks the tiles, loading A and Bᵀ through
TMA descriptors (the copy engine fills out-of-bounds rows and K with zeros, so no masks and no address arithmetic:
75-93 SASS instructions per K step against 95-140 for the pointer tiles, sm_90 offline). The autotuner times it
beside the pointer tiles where the operands allow it (_tma_ok), eager launches only.
The epilogue lives in kernels/epilogue.py, the launch in kernels/launch.py.
"""

import functools

import torch
import triton
import triton.language as tl

from .epilogue import gemm_epilogue, grouped_tile
from .launch import INTERPRETER_CONFIG, TiledKernel, direct, fake, output_kind
from .tuning import gemm_configs, m_bucket, make_gemm_pruner

__all__ = ["INTERPRETER_CONFIG", "fp8_gemm", "gemm", "int8_gemm"]  # INTERPRETER_CONFIG lives in kernels/launch.py

# (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps); each table feeds its own autotuner over the same kernel.
# 8-bit operands (int8, and fp8, not yet tuned on a GPU: the same bytes per stage and the same wgmma K-depth of 32;
# fp8 without FAST_ACCUM never gets the 128-accumulator-per-thread tiles, _register_heavy):
_INT8_TABLE = [
    # large shapes: the two INT8 tiles that won on an H100 80GB (bench/BASELINES.md, "Tiles and layouts"), where
    # plain Triton INT8 reached 997 TOPS at 4096³ and 1,043 at 8192³
    (128, 256, 128, 3, 8),
    (256, 128, 128, 3, 8),  # tall
    (128, 128, 128, 4, 8),
    (128, 128, 64, 4, 4),
    (64, 128, 128, 4, 4),
    (64, 64, 128, 5, 4),  # M ≈ 128: won at M = 128 on an H100 80GB (bench/BASELINES.md, "Tiles and layouts")
    (32, 64, 256, 4, 4),  # the rest serve decode (M ≤ 32): weight-bandwidth bound, many N tiles in flight
    (16, 64, 256, 4, 4),
    (16, 32, 256, 5, 4),
]
# int8 decode with split K (_allows: M ≤ 16): N / BLOCK_N tiles alone are 64-344 programs for N = 4096-11008, at
# most 2.6 per SM of an H100's 132; splitting K 2 or 4 ways puts 128-1376 in flight. Not yet timed on a GPU.
_SPLIT_TABLE = [(16, 64, 256, 4, 4), (16, 32, 256, 5, 4)]
# The persistent TMA variant (8-bit operands, M ≥ 64: _allows): the large tiles. Not yet timed on a GPU.
_TMA_TABLE = [(256, 128, 128, 3, 8), (128, 128, 128, 4, 8), (128, 128, 64, 4, 4)]
# 16-bit operands: the same tiles with half the K depth (the same bytes per stage). Not yet tuned on a GPU.
_FP16_TABLE = [
    (128, 256, 64, 3, 8),
    (256, 128, 64, 3, 8),
    (128, 128, 64, 4, 8),
    (128, 128, 32, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 5, 4),
    (32, 64, 128, 4, 4),
    (16, 64, 128, 4, 4),
    (16, 32, 128, 5, 4),
]


@triton.jit
def _sum_splits(acc, split_sum_ptr, split_count_ptr, offs_m, offs_n, N, tile, mask, SPLIT_K: tl.constexpr):
    """Split-K: add this program's int32 partial sum (BLOCK_M, BLOCK_N) into the workspace; the split that arrives
    last gets the total back, and the zeros left behind serve the next call. Returns (total, mask): mask is kept
    only in the last split, which alone finishes the tile. Integer addition: the total does not depend on the order
    of arrival, so results are deterministic (a float accumulator's would not be).
    split_sum_ptr: int32 (M, N) contiguous, split_count_ptr: int32, one per tile; both zero between calls."""
    sums = split_sum_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.atomic_add(sums, acc, mask=mask, sem="relaxed")
    tl.debug_barrier()  # every thread's adds are in before the arrival (release) is counted
    last = tl.atomic_add(split_count_ptr + tile, 1, sem="acq_rel") == SPLIT_K - 1
    mask = tl.where(last, mask, False)
    total = tl.atomic_xchg(sums, 0, mask=mask)  # read the total, leave 0
    tl.atomic_xchg(split_count_ptr + tile, 0, mask=last)
    return total, mask


@triton.jit
def _gemm_tile(tile, a_src, b_src, c_ptr,
               a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, out_scale_ptr, out_zp_ptr,
               split_sum_ptr, split_count_ptr, M, N, K,
               stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
               EVEN_K: tl.constexpr, ACCUMULATE: tl.constexpr, FAST_ACCUM: tl.constexpr,
               OUTPUT: tl.constexpr, A_SCALE_PER_ROW: tl.constexpr, B_SCALE_PER_COL: tl.constexpr,
               A_ZP_PER_ROW: tl.constexpr, ACTIVATION: tl.constexpr, SPLIT_K: tl.constexpr, TMA: tl.constexpr,
               INT8: tl.constexpr, FP8: tl.constexpr):
    """One output tile (grouped order, program_id(1) its K split): the reduction, then the epilogue and the store.
    a_src / b_src: A and Bᵀ as TMA descriptors (TMA), else A's and B's pointers."""
    pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    if not TMA:
        # Tail rows/columns re-read row M-1 / column N-1 instead of masking every load; the store is masked. Every
        # offset is int64: a stride along K may be anything fp16_mm is given (B (K, N) with N beyond 2^31 / BLOCK_K).
        rows_a = (offs_m % M).to(tl.int64)
        cols_b = (offs_n % N).to(tl.int64)
        a_ptrs = a_src + rows_a[:, None] * stride_am + offs_k.to(tl.int64)[None, :] * stride_ak
        b_ptrs = b_src + offs_k.to(tl.int64)[:, None] * stride_bk + cols_b[None, :] * stride_bn
        a_step = tl.full((), BLOCK_K, tl.int64) * stride_ak  # (a stride of 1 is a constexpr: no .to on it)
        b_step = tl.full((), BLOCK_K, tl.int64) * stride_bk

    ACC: tl.constexpr = tl.int32 if INT8 else tl.float32
    # fp8 only (None is the default elsewhere): promote to float32 every BLOCK_K products unless FAST_ACCUM
    IMPRECISE: tl.constexpr = BLOCK_K if FP8 and not FAST_ACCUM else None
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    k_first = 0
    k_end = tl.cdiv(K, BLOCK_K)
    if SPLIT_K > 1:  # this program's share of the K steps
        per_split = tl.cdiv(k_end, SPLIT_K)
        k_first = tl.program_id(1) * per_split
        k_end = tl.minimum(k_first + per_split, k_end)
        a_ptrs += k_first * a_step
        b_ptrs += k_first * b_step
    for k in range(k_first, k_end):
        if TMA:  # out-of-bounds rows, columns and K zero-filled by the copy engine
            a = a_src.load([pid_m * BLOCK_M, k * BLOCK_K])
            b = b_src.load([pid_n * BLOCK_N, k * BLOCK_K]).T
        elif EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, out_dtype=ACC, max_num_imprecise_acc=IMPRECISE)
        if not TMA:
            a_ptrs += a_step
            b_ptrs += b_step

    c_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K > 1:  # the last split to arrive finishes the tile
        acc, c_mask = _sum_splits(acc, split_sum_ptr, split_count_ptr, offs_m, offs_n, N, tile, c_mask, SPLIT_K)
    y = gemm_epilogue(acc, offs_m, offs_n, M, N, offs_m,
                      a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, out_scale_ptr, out_zp_ptr,
                      OUTPUT, A_SCALE_PER_ROW, B_SCALE_PER_COL, A_ZP_PER_ROW, ACTIVATION)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n.to(tl.int64)[None, :] * stride_cn
    if ACCUMULATE:
        y = y + tl.load(c_ptrs, mask=c_mask, other=0.0)
    tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=c_mask)


# m_bucket, m_aligned and tma_ok are read by the autotuner only: not specialized, so that their values (1, 16, 32,
# ...) do not compile variants of their own
@triton.jit(do_not_specialize=["m_bucket", "m_aligned", "tma_ok"])
def _gemm_kernel(
    a_ptr, b_ptr, c_ptr,
    a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, out_scale_ptr, out_zp_ptr,
    split_sum_ptr, split_count_ptr,  # the SPLIT_K workspace (_sum_splits); None when SPLIT_K is 1
    M, N, K, m_bucket, m_aligned, tma_ok,  # m_bucket, m_aligned (M % 16 == 0), tma_ok only key the autotuner
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr, ACCUMULATE: tl.constexpr, FAST_ACCUM: tl.constexpr,
    OUTPUT: tl.constexpr, A_SCALE_PER_ROW: tl.constexpr, B_SCALE_PER_COL: tl.constexpr,
    A_ZP_PER_ROW: tl.constexpr, ACTIVATION: tl.constexpr,
    SPLIT_K: tl.constexpr = 1,  # programs per tile along K (program_id(1)); int8 operands only
    TMA: tl.constexpr = False,  # persistent, operands through TMA descriptors; 8-bit, K-contiguous, sm_90+
):
    INT8: tl.constexpr = a_ptr.dtype.element_ty == tl.int8
    FP8: tl.constexpr = a_ptr.dtype.element_ty == tl.float8e4nv
    if TMA:
        # Persistent: a grid of at most one program per SM, each walking the tiles program_id, + programs, ...
        # Descriptors made on the device (triton.set_allocator: kernels/gemm.py _ensure_allocator); Bᵀ is the
        # (N, K) weight as nn.Linear stores it.
        a_src = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[stride_am, 1], block_shape=[BLOCK_M, BLOCK_K])
        b_src = tl.make_tensor_descriptor(b_ptr, shape=[N, K], strides=[stride_bn, 1], block_shape=[BLOCK_N, BLOCK_K])
        for tile in range(tl.program_id(0), tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N), tl.num_programs(0)):
            _gemm_tile(tile, a_src, b_src, c_ptr,
                       a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, out_scale_ptr, out_zp_ptr,
                       split_sum_ptr, split_count_ptr, M, N, K,
                       stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                       BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, EVEN_K, ACCUMULATE, FAST_ACCUM, OUTPUT,
                       A_SCALE_PER_ROW, B_SCALE_PER_COL, A_ZP_PER_ROW, ACTIVATION, SPLIT_K, TMA, INT8, FP8)
    else:  # not the same walk with one step: a loop around the tile raised registers until two tiles spilled
        _gemm_tile(tl.program_id(0), a_ptr, b_ptr, c_ptr,
                   a_scale_ptr, b_scale_ptr, bias_ptr, a_zp_ptr, b_sum_ptr, out_scale_ptr, out_zp_ptr,
                   split_sum_ptr, split_count_ptr, M, N, K,
                   stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                   BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, EVEN_K, ACCUMULATE, FAST_ACCUM, OUTPUT,
                   A_SCALE_PER_ROW, B_SCALE_PER_COL, A_ZP_PER_ROW, ACTIVATION, SPLIT_K, TMA, INT8, FP8)


def _register_heavy(args) -> bool:
    """Variants that spill on 128-accumulator-per-thread tiles (compiled by tools/inspect_kernels.py for sm_90,
    triton 3.9): the requant epilogue (128x256x128, 3 stages, 8 warps: 312 B of stack); an M-contiguous A (the
    weight-gradient layout) when M is not a multiple of 16, where `offs_m % M` loses the rows' contiguity and A's
    tiles pass through registers, the wgmma synchronous (256x128x64, 3 stages, 8 warps: 224 B of stack at M = 100,
    254-255 registers at M = 4100; at M = 4096 every tile of the table compiles at 72-224 registers, no spill,
    overlapped wgmma: 2026-12-06); and fp8 without FAST_ACCUM, which holds each BLOCK_K slice's wgmma sum in a
    second accumulator before adding it to the float32 one (128x256x128, 3 stages, 8 warps: 192 B; 256x128x128 and
    128x128x64 / 4 warps compiled at 254 and 255 registers, at the limit)."""
    precise_fp8 = args["a_ptr"].dtype == torch.float8_e4m3fn and not args["FAST_ACCUM"]
    m_contiguous = args["stride_am"] == 1 and args["stride_ak"] != 1
    return args["OUTPUT"] == "int8" or (m_contiguous and not args["m_aligned"]) or precise_fp8


def _allows(kwargs, args) -> bool:
    """Where the variants may run. SPLIT_K: int8 operands (an integer total does not depend on the order the splits
    arrive in, a float one would), not accumulating, decode (M ≤ 16), two K steps a split at least. TMA: where the
    launcher found the operands fit TMA descriptors (tma_ok: _tma_ok), for M ≥ 64 (its tiles have 64 rows or more)."""
    split = kwargs.get("SPLIT_K", 1)
    if split > 1:
        return (_splittable(args["a_ptr"], args["ACCUMULATE"]) and args["m_bucket"] <= 16
                and triton.cdiv(args["K"], kwargs["BLOCK_K"]) >= 2 * split)
    if kwargs.get("TMA", False):
        return bool(args["tma_ok"]) and args["m_bucket"] >= 64
    return True


def _splittable(a, accumulate: bool) -> bool:
    return a.dtype == torch.int8 and not accumulate


def _tma_ok(a, b, accumulate: bool) -> bool:
    """Whether the TMA variant can read a (M, K) and b (K, N): 8-bit and K-contiguous, base addresses and row strides
    16-byte aligned (what a TMA descriptor takes), on sm_90 or newer, launched eagerly."""
    if a.element_size() != 1 or accumulate or a.stride(1) != 1 or b.stride(0) != 1 or a.stride(0) % 16 or \
            b.stride(1) % 16:
        return False
    if fake(a) or fake(b):  # torch.compile traces the launch: no addresses, and no allocator in its code
        return False
    if a.data_ptr() % 16 or b.data_ptr() % 16:
        return False
    return a.device.type != "cuda" or _device(a.device.index)[0] >= 9


@functools.cache
def _device(index) -> tuple[int, int]:
    """(major compute capability, SM count) of a CUDA device."""
    properties = torch.cuda.get_device_properties(index)
    return properties.major, properties.multi_processor_count


def _ensure_allocator() -> None:
    """The TMA variant makes its descriptors on the device, in global memory that Triton asks an allocator for; give
    it torch's, unless the caller set one (Triton's is per context, none by default)."""
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


_WORKSPACES: dict[tuple[int, int], torch.Tensor] = {}  # (device, stream) -> the SPLIT_K workspace, zero at rest
_RETIRED: list[torch.Tensor] = []  # outgrown workspaces: a captured CUDA graph may still address one


def _split_workspace(a, numel: int) -> torch.Tensor:
    """int32, at least numel, all zero: _sum_splits leaves it so after every launch. One per CUDA device and stream
    (launches on one stream never overlap), kept between calls so that a decode step pays no allocation and no
    memset; a new zeroed one where the operands are fake (torch.compile traces the launch) or on the CPU."""
    if a.device.type != "cuda" or fake(a):
        return torch.zeros(numel, dtype=torch.int32, device=a.device)
    key = (a.device.index, torch.cuda.current_stream(a.device).cuda_stream)
    workspace = _WORKSPACES.get(key)
    if workspace is None or workspace.numel() < numel:
        if workspace is not None:
            _RETIRED.append(workspace)
        # doubling: a model's layers and batch sizes retire a handful of workspaces, not one per new size
        grown = 2 * workspace.numel() if workspace is not None else 1 << 16
        workspace = _WORKSPACES[key] = torch.zeros(max(numel, grown), dtype=torch.int32, device=a.device)
    return workspace


_GEMM = TiledKernel(_gemm_kernel, reduction="K")
# Plus the dtype of every tensor argument (Triton adds those), and everything else the pruner reads (_register_heavy:
# the output kind, A's layout, whether M is a multiple of 16, the fp8 accumulation mode; _allows: whether TMA can
# read the operands), so that no call reuses a tile pruned away for it (a tile tuned at M = 4096 is not reused at
# M = 4100, nor the other way round). A's strides do not follow the batch size: (K, 1) forward, (N_out, 1) input
# gradient, (1, N_out) weight gradient (M is then the layer's output width, the batch is K), so keying on them adds
# no re-tuning as traffic changes.
_KEY = ["m_bucket", "m_aligned", "tma_ok", "N", "K", "stride_am", "stride_ak", "OUTPUT", "FAST_ACCUM"]
_PRUNE = make_gemm_pruner(m_bucket_arg="m_bucket", n_arg="N", k_arg="K", operand_arg="a_ptr",
                          register_heavy=_register_heavy, allows=_allows)
_8BIT_CONFIGS = (gemm_configs(_INT8_TABLE) + gemm_configs(_SPLIT_TABLE, SPLIT_K=2)
                 + gemm_configs(_SPLIT_TABLE, SPLIT_K=4) + gemm_configs(_TMA_TABLE, TMA=True))
# (8-bit operands, accumulate into c) -> the autotuned kernel; accumulating launches restore c after every trial
_TUNED = {(eight_bit, accumulate): _GEMM.autotuned(_8BIT_CONFIGS if eight_bit else gemm_configs(_FP16_TABLE),
                                                   key=_KEY, prune=_PRUNE, restore_value=("c_ptr",) * accumulate)
          for eight_bit in (False, True) for accumulate in (False, True)}


def gemm(a, b, *, a_scale=None, b_scale=None, bias=None, a_zero_point=None, b_sum=None, activation="none",
         out_dtype=None, out_scale=None, out_zero_point=None, accumulate_into=None, fast_accum=False, config=None,
         wrap=direct):
    """Launch the GEMM; arguments are assumed validated (lowp_ops.ops does that). Returns c (M, N).

    a: (M, K), b: (K, N), both int8 or both float8_e4m3fn (each K-contiguous), or both float16 / bfloat16, any
    strides. a_scale: float32 (M,) or (1,); b_scale: float32 (N,) or (1,) (8-bit only); bias: (N,) float;
    a_zero_point: int32 (M,) or (1,) with b_sum int32 (N,) = Σ_k b[k, n]; out_scale float32 (1,) and
    out_zero_point int32 (1,) for int8 output. activation: "none" | "relu" | "relu6" | "gelu".
    out_dtype: int32 (raw int8 product), int8, float16, bfloat16, float32. accumulate_into: a float32 (M, N)
    tensor updated in place (c += result) and returned instead of a new one. fast_accum: fp8 only, the whole
    reduction in sm_90's fp8 accumulator (module docstring).
    config: BLOCK_M/BLOCK_N/BLOCK_K/GROUP_M/num_warps/num_stages (and SPLIT_K or TMA, the variants) to bypass
    autotuning (CPU tensors under TRITON_INTERPRET=1 always do, with INTERPRETER_CONFIG). wrap:
    torch.library.wrap_triton when launched from inside a triton_op, so torch.compile traces into the kernel.
    """
    M, K = a.shape
    N = b.shape[1]
    c = accumulate_into if accumulate_into is not None else torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    bucket = m_bucket(M)
    args = dict(
        a_ptr=a, b_ptr=b, c_ptr=c, a_scale_ptr=a_scale, b_scale_ptr=b_scale, bias_ptr=bias,
        a_zp_ptr=a_zero_point, b_sum_ptr=b_sum, out_scale_ptr=out_scale, out_zp_ptr=out_zero_point,
        M=M, N=N, K=K, m_bucket=bucket, m_aligned=int(M % 16 == 0),
        # asked of the operands where a TMA config may run (_allows: M ≥ 64 when tuning)
        tma_ok=int((config.get("TMA", False) if config else bucket >= 64)
                   and _tma_ok(a, b, accumulate_into is not None)),
        stride_am=a.stride(0),
        stride_ak=a.stride(1),
        stride_bk=b.stride(0), stride_bn=b.stride(1), stride_cm=c.stride(0), stride_cn=c.stride(1),
        ACCUMULATE=accumulate_into is not None, FAST_ACCUM=fast_accum, OUTPUT=output_kind(c.dtype),
        # One scale / zero point for everything is the per-tensor variant (also when M or N is 1).
        A_SCALE_PER_ROW=a_scale is not None and a_scale.numel() != 1,
        B_SCALE_PER_COL=b_scale is not None and b_scale.numel() != 1,
        A_ZP_PER_ROW=a_zero_point is not None and a_zero_point.numel() != 1,
        ACTIVATION=activation,
    )
    variant = config or {}
    if variant.get("TMA", False) and not args["tma_ok"]:
        raise ValueError("gemm: TMA needs 8-bit, K-contiguous operands with 16-byte aligned rows, launched eagerly")
    if variant.get("SPLIT_K", 1) > 1 and not _splittable(a, accumulate_into is not None):
        raise ValueError(f"gemm: SPLIT_K needs int8 operands and no accumulate_into, got {a.dtype}")
    # the SPLIT_K workspace wherever a split config may run
    args.update(split_sum_ptr=None, split_count_ptr=None)
    if (variant.get("SPLIT_K", 1) > 1 if config else
            a.device.type == "cuda" and M <= 16 and _splittable(a, accumulate_into is not None)):
        tiles = triton.cdiv(M, 16) * triton.cdiv(N, 16)  # a bound: every tile is 16 x 16 or larger
        workspace = _split_workspace(a, M * N + tiles)
        args.update(split_sum_ptr=workspace[:M * N], split_count_ptr=workspace[M * N:M * N + tiles])
    if args["tma_ok"] and a.device.type == "cuda":
        _ensure_allocator()

    def grid(meta):
        tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])
        if meta.get("TMA", False):  # persistent: one program per SM at most (the interpreter: 3, uneven shares)
            return (min(tiles, _device(a.device.index)[1] if a.device.type == "cuda" else 3),)
        return (tiles, meta.get("SPLIT_K", 1))

    tuned = _TUNED[a.element_size() == 1, accumulate_into is not None]
    _GEMM.launch(tuned, grid, args, device=a.device, config=config, wrap=wrap)
    return c


def int8_gemm(a, b, *, out_dtype=torch.int32, **kwargs):
    """a: (M, K) int8, b: (N, K) int8 — nn.Linear's weight layout, both K-contiguous — -> epilogue(a · bᵀ)."""
    return gemm(a, b.T, out_dtype=out_dtype, **kwargs)


def fp8_gemm(a, b, *, out_dtype=torch.float32, **kwargs):
    """a: (M, K) float8_e4m3fn, b: (N, K) float8_e4m3fn, both K-contiguous -> epilogue(a · bᵀ), float out.
    Tiles with BLOCK_M < 64 (the decode tiles) compile to mma.sync on fp16 operands, the e4m3 codes widened
    exactly (tools/inspect_kernels.py, sm_90 offline): float32 accumulation there whatever fast_accum says."""
    return gemm(a, b.T, out_dtype=out_dtype, **kwargs)
