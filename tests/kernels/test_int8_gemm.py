"""kernels/gemm.py with int8 operands, on the Triton interpreter (CPU) or the GPU, against lowp_ops.reference.

Tolerances: int32 and requantized int8 outputs are bit-exact (same integer arithmetic; the float epilogue runs
the reference's float32 operations in the same order, and the interpreter never contracts them into FMAs).
Float outputs are therefore bit-exact too, with two exceptions. gelu: the interpreter's erf (libm, double) and
torch's float32 erf differ by up to a few float32 ulp, bounded below by 4 ulp of the largest output. bfloat16:
the interpreter truncates float32 -> bfloat16 where the GPU (and torch) round to nearest even, so it may be one
bfloat16 ulp (relative 2^-7) off.
"""

import math

import pytest
import torch

from lowp_ops import reference
from lowp_ops.kernels import gemm, int8_gemm
from util import assert_bitwise_equal, assert_requant_equal, int8

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MNK = [(1, 1, 1), (1, 37, 45), (13, 45, 100), (67, 33, 64), (16, 17, 19)]
# Small tiles so that tails in M, N and K all occur; EVEN_K is on where K % BLOCK_K == 0.
CONFIGS = {
    "16x32x32": None,  # the interpreter default
    "32x64x64": dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=2, num_warps=4, num_stages=2),
    "16x16x32": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=1, num_warps=4, num_stages=2),
}


def _case(M, N, K):
    a, b = int8(M, K).to(DEVICE), int8(N, K).to(DEVICE)
    a_scale = (torch.rand(M) * 0.02 + 1e-3).to(DEVICE)
    b_scale = (torch.rand(N) * 0.02 + 1e-3).to(DEVICE)
    bias = torch.randn(N).to(DEVICE)
    return a, b, a_scale, b_scale, bias


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("M, N, K", MNK, ids=lambda v: str(v))
def test_int32_output_bit_exact(M, N, K, config):
    a, b, *_ = _case(M, N, K)
    assert_bitwise_equal(int8_gemm(a, b, config=CONFIGS[config]), reference.int8_gemm(a, b))


def test_extreme_values_and_strided_rows():
    K = 300
    a_full = torch.full((13, K + 20), -128, dtype=torch.int8, device=DEVICE)
    a = a_full[:, :K]  # row stride K + 20
    b = torch.full((37, K), -128, dtype=torch.int8, device=DEVICE)
    c = int8_gemm(a, b)
    assert (c == 128 * 128 * K).all()
    assert_bitwise_equal(c, reference.int8_gemm(a, b))


@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M, N, K", MNK[1:], ids=lambda v: str(v))
def test_float_output_matches_reference(M, N, K, out_dtype, activation):
    a, b, a_scale, b_scale, bias = _case(M, N, K)
    kw = dict(a_scale=a_scale, b_scale=b_scale, bias=bias, activation=activation, out_dtype=out_dtype)
    out = int8_gemm(a, b, **kw)
    ref = reference.int8_gemm(a, b, **kw)
    if DEVICE == "cpu" and out_dtype != torch.bfloat16:
        assert_bitwise_equal(out, ref)
    else:  # bf16 truncation (interpreter) or FMA contraction (GPU): at most one ulp of the output dtype
        torch.testing.assert_close(out, ref, rtol=2 * torch.finfo(out_dtype).eps, atol=1e-5)


@pytest.mark.parametrize("per_tensor", ["a", "b", "both"])
def test_per_tensor_scales(per_tensor):
    a, b, a_scale, b_scale, bias = _case(13, 37, 45)
    if per_tensor in ("a", "both"):
        a_scale = a_scale[:1].clone()
    if per_tensor in ("b", "both"):
        b_scale = b_scale[:1].clone()
    kw = dict(a_scale=a_scale, b_scale=b_scale, bias=bias, out_dtype=torch.float32)
    torch.testing.assert_close(int8_gemm(a, b, **kw), reference.int8_gemm(a, b, **kw), rtol=1e-6, atol=1e-6)


def test_gelu_within_erf_difference():
    a, b, a_scale, b_scale, bias = _case(67, 45, 64)
    kw = dict(a_scale=a_scale, b_scale=b_scale, bias=bias, activation="gelu", out_dtype=torch.float32)
    out, ref = int8_gemm(a, b, **kw), reference.int8_gemm(a, b, **kw)
    torch.testing.assert_close(out, ref, rtol=0, atol=4 * torch.finfo(torch.float32).eps * ref.abs().max().item())


@pytest.mark.parametrize("a_zp_per_row", [False, True])
@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
@pytest.mark.parametrize("M, N, K", MNK[1:], ids=lambda v: str(v))
def test_requantized_int8_output_bit_exact(M, N, K, activation, a_zp_per_row):
    a, b, a_scale, b_scale, bias = _case(M, N, K)
    a_zp = torch.randint(-20, 20, (M if a_zp_per_row else 1,), dtype=torch.int32, device=DEVICE)
    b_sum = b.sum(1, dtype=torch.int32)
    # an output scale that clips some values at both ends: the clamp is exercised too
    y = reference.int8_gemm(a, b, a_scale=a_scale, b_scale=b_scale, bias=bias, a_zero_point=a_zp, b_sum=b_sum,
                            activation=activation, out_dtype=torch.float32)
    out_scale = (y.abs().amax() / 100).reshape(1)
    out_zp = torch.tensor([-9], dtype=torch.int32, device=DEVICE)
    kw = dict(a_scale=a_scale, b_scale=b_scale, bias=bias, a_zero_point=a_zp, b_sum=b_sum, activation=activation,
              out_dtype=torch.int8, out_scale=out_scale, out_zero_point=out_zp)
    out, ref = int8_gemm(a, b, **kw), reference.int8_gemm(a, b, **kw)
    assert_requant_equal(out, ref)


def test_requant_without_output_zero_point_and_empty_shapes():
    a, b, a_scale, b_scale, _ = _case(13, 37, 45)
    kw = dict(a_scale=a_scale, b_scale=b_scale, out_dtype=torch.int8, out_scale=torch.tensor([0.05], device=DEVICE))
    assert_bitwise_equal(int8_gemm(a, b, **kw), reference.int8_gemm(a, b, **kw))
    assert int8_gemm(int8(0, 45).to(DEVICE), b).shape == (0, 37)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's -inf · 0
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("activation", ["none", "relu", "relu6", "gelu"])
def test_activations_propagate_non_finite_values(activation, out_dtype):
    # a NaN / ±inf bias decides its column whatever the accumulator: torch's own ops in float64 are the oracle
    # (F.gelu: gelu(+inf) = +inf, gelu(-inf) = NaN); tl.maximum would have dropped the NaN
    a, b, a_scale, b_scale, _ = _case(3, 4, 16)
    bias = torch.tensor([math.nan, math.inf, -math.inf, 0.5], device=DEVICE)
    out = int8_gemm(a, b, a_scale=a_scale, b_scale=b_scale, bias=bias, activation=activation, out_dtype=out_dtype)
    special = bias[:3].double().cpu()
    torch_act = {"none": lambda v: v, "relu": torch.relu, "relu6": lambda v: torch.clamp(v, 0.0, 6.0),
                 "gelu": torch.nn.functional.gelu}[activation]
    expected = torch_act(special).to(out_dtype).expand(3, 3)
    torch.testing.assert_close(out[:, :3].cpu(), expected, rtol=0, atol=0, equal_nan=True)
    assert torch.isfinite(out[:, 3]).all()


# Split K (decode, kernels/gemm.py): 2 and 3 programs per tile, K not a multiple of BLOCK_K (the last split's masked
# tail) or too short for every split to get a step (an empty split adds zeros), and the requant epilogue.
SPLITS = {f"split{s} {bk}": dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=bk, GROUP_M=1, num_warps=4, num_stages=2, SPLIT_K=s)
          for s, bk in ((2, 32), (3, 32), (3, 64))}


class _Twice:
    """A launcher's `wrap` hook that launches twice on the same arguments, as the autotuner's trial runs do, and
    checks that the split workspace is back to zero after each launch (what makes a second launch exact)."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def run(**args):
            for _ in range(2):
                self.kernel[grid](**args)
                assert not args["split_sum_ptr"].any() and not args["split_count_ptr"].any()
        return run


@pytest.mark.parametrize("config", SPLITS)
@pytest.mark.parametrize("M, N, K", [(1, 37, 45), (13, 45, 100), (16, 17, 200)], ids=lambda v: str(v))
def test_split_k_bit_exact(M, N, K, config):
    a, b, a_scale, b_scale, bias = _case(M, N, K)
    zp = dict(a_zero_point=torch.tensor([-3], dtype=torch.int32, device=DEVICE), b_sum=b.int().sum(1).int())
    requant = dict(a_scale=a_scale, b_scale=b_scale, bias=bias, activation="relu", out_dtype=torch.int8,
                   out_scale=torch.tensor([0.05], device=DEVICE), **zp)
    assert_bitwise_equal(int8_gemm(a, b, config=SPLITS[config], wrap=_Twice), reference.int8_gemm(a, b))
    assert_requant_equal(int8_gemm(a, b, config=SPLITS[config], wrap=_Twice, **requant),
                         reference.int8_gemm(a, b, **requant))


def test_split_k_refused_where_order_matters():
    a, b = int8(3, 64).to(DEVICE).half(), int8(5, 64).to(DEVICE).half()
    with pytest.raises(ValueError, match="SPLIT_K needs int8 operands"):
        gemm(a, b.T, out_dtype=torch.float32, config=SPLITS["split2 32"])


# The persistent TMA variant (kernels/gemm.py): K a multiple of 16 (TMA's row alignment, int8) but not of BLOCK_K
# (the copy engine zero-fills the K tail, and M / N tails), more tiles than programs (three in the interpreter, each
# walking an uneven share), every epilogue.
TMA = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=2, TMA=True)


@pytest.mark.parametrize("M, N, K", [(1, 37, 48), (13, 45, 96), (67, 33, 64), (150, 70, 160)], ids=lambda v: str(v))
def test_tma_variant_bit_exact(M, N, K):
    a, b, a_scale, b_scale, bias = _case(M, N, K)
    assert_bitwise_equal(int8_gemm(a, b, config=TMA), reference.int8_gemm(a, b))
    requant = dict(a_scale=a_scale, b_scale=b_scale, bias=bias, activation="relu6", out_dtype=torch.int8,
                   out_scale=torch.tensor([0.05], device=DEVICE), out_zero_point=torch.tensor([3], device=DEVICE),
                   a_zero_point=torch.tensor([-3], dtype=torch.int32, device=DEVICE), b_sum=b.int().sum(1).int())
    assert_requant_equal(int8_gemm(a, b, config=TMA, **requant), reference.int8_gemm(a, b, **requant))
    floats = dict(a_scale=a_scale, b_scale=b_scale, bias=bias, out_dtype=torch.float32)
    out, ref = int8_gemm(a, b, config=TMA, **floats), reference.int8_gemm(a, b, **floats)
    assert_bitwise_equal(out, ref) if DEVICE == "cpu" else torch.testing.assert_close(out, ref)


def test_tma_variant_refused_where_a_descriptor_cannot_read():
    with pytest.raises(ValueError, match="TMA needs 8-bit, K-contiguous operands with 16-byte aligned rows"):
        int8_gemm(int8(5, 45).to(DEVICE), int8(7, 45).to(DEVICE), config=TMA)  # rows of 45 bytes
    with pytest.raises(ValueError, match="TMA needs"):
        gemm(int8(5, 64).to(DEVICE).half(), int8(7, 64).to(DEVICE).half().T, out_dtype=torch.float32, config=TMA)


def test_8bit_tiles_below_32_deep_refused_as_the_compiler_would():
    # the interpreter runs an int8 dot of depth 16; Triton's NVIDIA backend refuses it (K >= 32 for 8-bit dots)
    config = dict(CONFIGS["16x16x32"], BLOCK_K=16)
    with pytest.raises(ValueError, match="BLOCK_K must be >= 32 for 8-bit operands"):
        int8_gemm(int8(3, 64).to(DEVICE), int8(5, 64).to(DEVICE), config=config)
