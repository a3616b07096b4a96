"""kernels/gemm.py with float16 / bfloat16 operands on the Triton interpreter (CPU) or the GPU: every layout the
training ops use, against a float64 reference, within the error bound of float32 accumulation (util.py)."""

import pytest
import torch

from lowp_ops import reference
from lowp_ops.kernels import gemm
from util import assert_float_gemm_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MNK = [(1, 1, 1), (1, 37, 45), (13, 45, 100), (67, 33, 64), (16, 17, 19)]


def _operands(M, N, K, dtype, layout):
    """a (M, K) and b (K, N) as the views each training GEMM passes."""
    if layout == "A·B":  # dx = dy · W
        a, b = torch.randn(M, K), torch.randn(K, N)
    elif layout == "A·Bᵀ":  # y = x · Wᵀ
        a, b = torch.randn(M, K), torch.randn(N, K).T
    else:  # "Aᵀ·B": dW = dyᵀ · x
        a, b = torch.randn(K, M).T, torch.randn(K, N)
    return a.to(DEVICE, dtype), b.to(DEVICE, dtype)


@pytest.mark.parametrize("layout", ["A·B", "A·Bᵀ", "Aᵀ·B"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M, N, K", MNK, ids=lambda v: str(v))
def test_layouts(M, N, K, dtype, layout):
    a, b = _operands(M, N, K, dtype, layout)
    out = gemm(a, b, out_dtype=dtype)
    assert out.dtype == dtype and out.shape == (M, N)
    assert_float_gemm_close(out, a.double() @ b.double(), a, b)


@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_epilogue(out_dtype, activation):
    a, b = _operands(67, 45, 100, torch.float16, "A·Bᵀ")
    bias = torch.randn(45, device=DEVICE)
    out = gemm(a, b, bias=bias, activation=activation, out_dtype=out_dtype)
    ref = reference.activation(a.double() @ b.double() + bias.double(), activation)
    assert_float_gemm_close(out, ref, a, b)


@pytest.mark.parametrize("config", [None, dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, GROUP_M=2, num_warps=4,
                                               num_stages=2)])
def test_accumulate_into_float32(config):
    a, b = _operands(13, 45, 64, torch.bfloat16, "Aᵀ·B")
    c0 = torch.randn(13, 45, device=DEVICE)
    c = c0.clone()
    returned = gemm(a, b, accumulate_into=c, config=config)
    assert returned is c
    gemm(a, b, accumulate_into=c, config=config)
    assert_float_gemm_close(c - c0, 2 * (a.double() @ b.double()), a, 2 * b.float())


def test_matches_reference_gemm_and_empty():
    a, b = _operands(13, 45, 100, torch.float16, "A·B")
    assert_float_gemm_close(gemm(a, b, out_dtype=torch.float32), reference.gemm(a, b, out_dtype=torch.float64),
                            a, b)
    assert gemm(a[:0], b, out_dtype=torch.float16).shape == (0, 45)


@pytest.fixture
def tuned_on_cpu(monkeypatch):
    """The autotuned launch, on CPU tensors too (the launchers otherwise pin INTERPRETER_CONFIG there), with a
    benchmark that runs each trial config three times on the real arguments and ranks configs in trial order: what
    triton 3.6's autotuner does on the GPU (it benchmarks even a lone surviving config). Yields the list of trials."""
    if DEVICE == "cuda":
        pytest.skip("on a GPU the real autotuner runs; this reproduces it on CPU tensors")
    from lowp_ops.kernels import launch
    from lowp_ops.kernels.gemm import _TUNED

    monkeypatch.setattr(launch, "INTERPRETER_CONFIG", None)
    trials = []

    def bench(kernel_call, quantiles):
        for _ in range(3):
            kernel_call()
        trials.append(kernel_call)
        return [float(len(trials))] * len(quantiles)

    for tuned in _TUNED.values():
        monkeypatch.setattr(tuned, "_do_bench", bench)
        monkeypatch.setattr(tuned, "cache", {})
    yield trials


def test_accumulate_into_survives_the_autotuners_trial_runs(tuned_on_cpu):
    # K = 130 keeps both BLOCK_M = 16 tiles of the fp16 table (BLOCK_K 128 <= next_power_of_2(130)): two trial
    # configs x 3 runs each write into c before the chosen one runs; without restore_value c would hold 7 products
    a, b = _operands(13, 37, 130, torch.float16, "Aᵀ·B")
    c0 = torch.randn(13, 37)
    c = c0.clone()
    gemm(a, b, accumulate_into=c)
    assert len(tuned_on_cpu) == 2
    assert_float_gemm_close(c - c0, a.double() @ b.double(), a, b.float())


def test_autotune_key_holds_what_the_pruner_reads(tuned_on_cpu):
    # the same (M, N, K) and operand dtypes in the forward and the weight-gradient layout (A M-contiguous: the
    # pruner caps its accumulators), then another output dtype: each tunes on its own, none reuses another's tile
    from lowp_ops.kernels.gemm import _TUNED

    for layout, out_dtype in [("A·Bᵀ", torch.float16), ("Aᵀ·B", torch.float16), ("Aᵀ·B", torch.float32)]:
        a, b = _operands(13, 37, 130, torch.float16, layout)
        assert_float_gemm_close(gemm(a, b, out_dtype=out_dtype), a.double() @ b.double(), a, b)
    assert len(_TUNED[False, False].cache) == 3
    assert len(tuned_on_cpu) == 3 * 2  # both BLOCK_M = 16 tiles tried for each
