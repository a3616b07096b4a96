"""kernels/gemm.py with float8_e4m3fn operands (fp8_gemm, both K-contiguous), on the Triton interpreter (CPU) or the
GPU, against lowp_ops.reference.fp8_gemm (the exact sum of the products, rounded once to float32).

Tolerance: util.assert_fp8_gemm_close, the bound that a float32 accumulator summing in any order guarantees, plus
the epilogue's roundings and the cast to the output dtype (its docstring derives it); the accumulator's unit
roundoff is _u_acc's. Operands are random e4m3 codes spread over the whole format (every binade, the subnormals,
±0 and ±448), not randn: products then span 2^-18 to 448², and cancellation is common.
"""

import math

import pytest
import torch

from lowp_ops import reference
from lowp_ops.kernels import fp8_gemm, gemm
from lowp_ops.kernels.launch import INTERPRETER_CONFIG
from util import assert_fp8_gemm_close, e4m3_codes

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
E4M3 = torch.float8_e4m3fn
ACTIVATIONS = ["none", "relu", "relu6", "gelu"]
OUT_DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# M = 1, 13, 67; K and N not multiples of 16, but for K = 64, which BLOCK_K = 32 (INTERPRETER_CONFIG) divides: the
# unmasked EVEN_K loop
MNK = [(1, 37, 45), (13, 45, 100), (67, 33, 19), (67, 33, 64)]

# the interpreter evaluates inf · 0 in numpy, which warns
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _u_acc(K: int, fast_accum: bool) -> float:
    """The accumulator's unit roundoff for assert_fp8_gemm_close's K·u_acc term.

    Interpreter: float32 either way. sm_90: the fp8 wgmma keeps about 14 bits of its running sum (DeepSeek-V3
    technical report, arXiv 2412.19437, "Increasing Accumulation Precision"; 2^-13, to be confirmed on the card).
    fast_accum sums all of K that way; otherwise each BLOCK_K slice (at most 256: kernels/gemm.py's tables) is summed
    so and then added in float32, which makes K·u_acc = min(K, 256)·2^-13 + K·2^-24.
    """
    if DEVICE == "cpu":
        return 2.0**-24
    if fast_accum:
        return 2.0**-13
    return min(K, 256) * 2.0**-13 / K + 2.0**-24


def codes(*shape) -> torch.Tensor:
    return e4m3_codes(*shape).to(DEVICE)


def _scales(M, N, *, a_per_row=True, b_per_col=True):
    # about 2^-9 each: |a·b| reaches 448²·K, so the scaled outputs stay far inside float16's range
    a_scale = torch.rand(M if a_per_row else 1) * 2.0**-9 + 2.0**-10
    b_scale = torch.rand(N if b_per_col else 1) * 2.0**-9 + 2.0**-10
    return a_scale.to(DEVICE), b_scale.to(DEVICE)


def _check(a, b, *, a_scale, b_scale, fast_accum=False, config=None, **kw):
    """fp8_gemm (with config: that tile) against the reference within the bound; returns the output."""
    out = fp8_gemm(a, b, a_scale=a_scale, b_scale=b_scale, fast_accum=fast_accum, config=config, **kw)
    ref = reference.fp8_gemm(a, b, a_scale=a_scale, b_scale=b_scale, **kw)
    assert out.dtype == ref.dtype and out.shape == ref.shape == (a.shape[0], b.shape[0])
    assert_fp8_gemm_close(out, ref, a, b, a_scale, b_scale, u_acc=_u_acc(a.shape[1], fast_accum))
    return out


@pytest.mark.parametrize("fast_accum", [False, True], ids=["precise", "fast accum"])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES, ids=str)
@pytest.mark.parametrize("M, N, K", MNK, ids=str)
def test_matches_reference(M, N, K, out_dtype, fast_accum):
    a, b = codes(M, K), codes(N, K)
    a_scale, b_scale = _scales(M, N)
    bias = torch.randn(N, device=DEVICE)
    _check(a, b, a_scale=a_scale, b_scale=b_scale, bias=bias, out_dtype=out_dtype, fast_accum=fast_accum)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activations(activation, out_dtype):
    M, N, K = 13, 45, 100
    a, b = codes(M, K), codes(N, K)
    a_scale, b_scale = _scales(M, N)
    out = _check(a, b, a_scale=a_scale, b_scale=b_scale, bias=torch.randn(N, device=DEVICE), activation=activation,
                 out_dtype=out_dtype)
    if activation in ("relu", "relu6"):  # the clamps themselves, not only closeness to the reference
        assert out.min() == 0 and out.max() <= (6 if activation == "relu6" else math.inf)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("b_per_col", [True, False], ids=["b per column", "b per tensor"])
@pytest.mark.parametrize("a_per_row", [True, False], ids=["a per row", "a per tensor"])
def test_scale_granularity(a_per_row, b_per_col, bias):
    M, N, K = 67, 33, 45
    a, b = codes(M, K), codes(N, K)
    a_scale, b_scale = _scales(M, N, a_per_row=a_per_row, b_per_col=b_per_col)
    _check(a, b, a_scale=a_scale, b_scale=b_scale, bias=torch.randn(N, device=DEVICE) if bias else None,
           out_dtype=torch.float16)


CONFIGS = {
    "16x32x32": INTERPRETER_CONFIG,  # given explicitly, so that a GPU run uses this tile too
    "32x64x64": dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=2, num_warps=4, num_stages=2),
}


@pytest.mark.parametrize("fast_accum", [False, True], ids=["precise", "fast accum"])
@pytest.mark.parametrize("K", [64, 96, 19], ids=lambda k: f"K={k}")  # even for both tiles, for one, for none
@pytest.mark.parametrize("config", CONFIGS)
def test_tiles_and_even_k(config, K, fast_accum):
    M, N = 67, 45
    a, b = codes(M, K), codes(N, K)
    a_scale, b_scale = _scales(M, N)
    _check(a, b, a_scale=a_scale, b_scale=b_scale, bias=torch.randn(N, device=DEVICE), activation="relu",
           out_dtype=torch.bfloat16, fast_accum=fast_accum, config=CONFIGS[config])


def test_extreme_codes_exact():
    # ±448, the smallest and largest subnormals (2^-9, 7·2^-9), the smallest normal (2^-6) and ±0 against each
    # other: a row of one value times a column of another sums K equal products of at most 8 significant bits, so
    # every partial sum has at most 8 + 6 bits (K = 45): exact in float32 whatever the order; only the interpreter
    # is held to exactness (sm_90's fp8 accumulator keeps "about 14 bits", _u_acc), the GPU to the bound
    specials = torch.tensor([448.0, -448.0, 2.0**-9, 7 * 2.0**-9, -(2.0**-6), 0.0, -0.0])
    K = 45
    a = torch.cat([specials[:, None].expand(-1, K).to(E4M3).to(DEVICE), codes(6, K)])
    b = torch.cat([codes(5, K), specials[:, None].expand(-1, K).to(E4M3).to(DEVICE)])
    one = torch.ones(1, device=DEVICE)
    out = _check(a, b, a_scale=one, b_scale=one, out_dtype=torch.float32)
    exact = (a.double() @ b.double().T).float()
    assert exact[0, 5] == 448.0 * 448.0 * K and exact[2, 7] == 2.0**-18 * K  # the values are what they claim
    if DEVICE == "cpu":
        assert torch.equal(out[:7, 5:], exact[:7, 5:])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the interpreter's float16 cast
def test_overflow_of_the_output_dtype_is_inf():
    # 448² · 64 = 12,845,056: beyond float16's 65504, so ±inf there, as a float16 matmul gives (lowp_ops/ops/fp8.py)
    K = 64
    a = torch.full((3, K), 448.0).to(E4M3).to(DEVICE)
    b = torch.tensor([[448.0], [-448.0]]).expand(2, K).to(E4M3).to(DEVICE)
    one = torch.ones(1, device=DEVICE)
    out = _check(a, b, a_scale=one, b_scale=one, out_dtype=torch.float16)
    assert out[:, 0].eq(math.inf).all() and out[:, 1].eq(-math.inf).all()
    assert _check(a, b, a_scale=one, b_scale=one, out_dtype=torch.float32)[0, 0] == 448.0 * 448.0 * K


@pytest.mark.parametrize("nan_code, activation", [(0x7F, "none"), (0xFF, "relu"), (0x7F, "relu6"), (0xFF, "gelu")])
def test_nan_code_gives_nan_row_and_column(nan_code, activation):
    # on CPU this needs tests/conftest.py's fix of the interpreter's fp8 dot, which reads NaN codes as ±480
    M, N, K = 13, 37, 45
    a, b = codes(M, K), codes(N, K)
    # the last row and column: the kernel's tail rows and columns re-read them (then mask the store)
    a.view(torch.uint8)[M - 1, 7] = nan_code
    b.view(torch.uint8)[N - 1, K - 1] = nan_code
    a_scale, b_scale = _scales(M, N)
    out = _check(a, b, a_scale=a_scale, b_scale=b_scale, bias=torch.randn(N, device=DEVICE), activation=activation,
                 out_dtype=torch.float16)
    nan = torch.zeros(M, N, dtype=torch.bool, device=DEVICE)
    nan[M - 1, :] = nan[:, N - 1] = True
    assert torch.equal(out.isnan(), nan)


def test_layout_from_strides():
    # gemm takes b (K, N): fp8_gemm's b.T is its K-contiguous view of an (N, K) weight; rows of a and of the weight
    # further apart than K (slices of wider buffers) are only a stride: with one tile (the same order of additions),
    # bit-identical to the dense copies
    M, N, K = 13, 37, 45
    a = codes(M, K + 19)[:, 3 : K + 3]
    w = codes(N, K + 13)[:, :K]
    a_scale, b_scale = _scales(M, N)
    kw = dict(a_scale=a_scale, b_scale=b_scale, bias=torch.randn(N, device=DEVICE), out_dtype=torch.float32,
              config=INTERPRETER_CONFIG)
    out = gemm(a, w.T, **kw)
    assert torch.equal(out, fp8_gemm(a.contiguous(), w.contiguous(), **kw))
    ref = reference.fp8_gemm(a, w, **{k: v for k, v in kw.items() if k != "config"})
    assert_fp8_gemm_close(out, ref, a, w, a_scale, b_scale, u_acc=_u_acc(K, False))


def test_empty_shapes():
    # M = 0 or N = 0: nothing to launch; K = 0: the empty sum is 0, so the output is the epilogue of 0
    a, b = codes(13, 45), codes(37, 45)
    a_scale, b_scale = _scales(13, 37)
    assert fp8_gemm(a[:0], b, a_scale=a_scale[:0], b_scale=b_scale).shape == (0, 37)
    assert fp8_gemm(a, b[:0], a_scale=a_scale, b_scale=b_scale[:0], out_dtype=torch.float16).shape == (13, 0)
    bias = torch.randn(37, device=DEVICE)
    out = fp8_gemm(a[:, :0], b[:, :0], a_scale=a_scale, b_scale=b_scale, bias=bias, activation="relu")
    assert torch.equal(out, torch.relu(bias).expand(13, 37))


@pytest.mark.parametrize("fast_accum", [False, True], ids=["precise", "fast accum"])
@pytest.mark.parametrize("M, N, K", [(13, 45, 96), (67, 33, 64)], ids=str)
def test_tma_variant(M, N, K, fast_accum):
    # kernels/gemm.py's persistent TMA variant: K a multiple of 16 (TMA's row alignment for 8-bit operands), M, N
    # and K tails zero-filled by the copy engine, more tiles than programs
    config = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=2, TMA=True)
    a, b = codes(M, K), codes(N, K)
    a_scale, b_scale = _scales(M, N)
    _check(a, b, a_scale=a_scale, b_scale=b_scale, bias=torch.randn(N, device=DEVICE), activation="gelu",
           out_dtype=torch.bfloat16, fast_accum=fast_accum, config=config)
