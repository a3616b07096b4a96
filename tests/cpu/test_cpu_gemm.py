"""lowp_ops/cpu/gemm.py (oneDNN qlinear or torch._int_mm accumulator + the reference's epilogue) against
lowp_ops.reference: every output bit-exact (the same integer accumulator, then the same float32 torch operations)."""

import pytest
import torch

from lowp_ops import cpu, reference
from lowp_ops.cpu import gemm as cpu_gemm
from lowp_ops.cpu import support
from util import assert_bitwise_equal, int8

pytestmark = pytest.mark.skipif(support.missing() is not None, reason=f"no native CPU path: {support.missing()}")

# M = 1, 13, 67; K = 1 (torch._int_mm's garbage case) and 2; K, N not multiples of 16
MNK = [(1, 1, 5), (13, 2, 7), (1, 45, 37), (13, 100, 45), (67, 33, 67), (67, 1, 19)]


def _epilogue(M, N, *, zero_point, per_row):
    kw = dict(a_scale=torch.rand(M if per_row else 1) * 0.02 + 1e-3, b_scale=torch.rand(N) * 0.02 + 1e-3,
              bias=torch.randn(N))
    if zero_point:
        kw["a_zero_point"] = torch.randint(-128, 128, (M if per_row else 1,), dtype=torch.int32)
    return kw


@pytest.mark.parametrize("M, K, N", MNK, ids=str)
def test_int32_output_bit_exact(M, K, N):
    a, b = int8(M, K), int8(N, K)
    assert_bitwise_equal(cpu.int8_gemm(a, b), reference.int8_gemm(a, b))


@pytest.mark.parametrize("zero_point, per_row", [(False, True), (True, False), (True, True)],
                         ids=["per-token", "static zp", "zp per row"])
@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("M, K, N", MNK, ids=str)
def test_epilogue_outputs_bit_exact(M, K, N, out_dtype, activation, zero_point, per_row):
    a, b = int8(M, K), int8(N, K)
    kw = dict(_epilogue(M, N, zero_point=zero_point, per_row=per_row), activation=activation, out_dtype=out_dtype)
    if zero_point:
        kw["b_sum"] = b.sum(dim=1, dtype=torch.int32)
    if out_dtype == torch.int8:
        y = reference.int8_gemm(a, b, **dict(kw, out_dtype=torch.float32))
        kw.update(out_scale=(y.abs().amax() / 100).reshape(1), out_zero_point=torch.tensor([-9], dtype=torch.int32))
    assert_bitwise_equal(cpu.int8_gemm(a, b, **kw), reference.int8_gemm(a, b, **kw))


@pytest.fixture
def small_qlinear(monkeypatch):
    """oneDNN's qlinear route from N·K = 2^21 (its threshold is 2^23): the route's tests keep weights of ~2M values,
    whose float64 reference stays quick."""
    monkeypatch.setattr(cpu_gemm, "_QLINEAR_MIN_WEIGHT", 2**21)


@pytest.mark.usefixtures("small_qlinear")
@pytest.mark.parametrize("cpp", [True, False], ids=["native.cpp", "torch ops"])
@pytest.mark.parametrize("out_dtype", [torch.int32, torch.float32, torch.int8])
def test_large_accumulators_take_the_exact_int_mm_route(monkeypatch, out_dtype, cpp):
    # (-128) · (-128) · 1100 = 18,022,400 > 2^24: oneDNN's float32 accumulator cannot hold it exactly, so the
    # qlinear result is rejected (by exact_integers, or by native.cpp's epilogue on the way) and torch._int_mm
    # recomputes it
    a = torch.full((3, 1100), -128, dtype=torch.int8)
    b = torch.full((2100, 1100), -128, dtype=torch.int8)  # N·K above the qlinear threshold
    a[1, :7] = 5  # rows that differ
    kw = {} if out_dtype == torch.int32 else dict(a_scale=torch.rand(3) + 0.5, b_scale=torch.rand(2100) * 1e-6,
                                                  out_dtype=out_dtype)
    if out_dtype == torch.int8:
        kw.update(out_scale=torch.tensor([0.5]), out_zero_point=torch.tensor([-9], dtype=torch.int32))
    calls = []
    monkeypatch.setattr(cpu_gemm, "int_mm", lambda *args: calls.append(1) or reference.int8_gemm(*args))
    if not cpp:  # where native.cpp cannot be built, the torch-op epilogue checks exactness first
        monkeypatch.setattr(cpu_gemm.native, "load", lambda: None)
    for k in (1100, 1000):  # 16,384,000 < 2^24 at K = 1000: oneDNN's answer stands
        calls.clear()
        ka, kb = a[:, :k].contiguous(), b[:, :k].contiguous()
        assert_bitwise_equal(cpu.int8_gemm(ka, kb, **kw), reference.int8_gemm(ka, kb, **kw))
        assert bool(calls) == (k == 1100)


@pytest.mark.usefixtures("small_qlinear")
@pytest.mark.parametrize("zero_point, per_row", [(False, True), (True, False)], ids=["per-token", "static zp"])
@pytest.mark.parametrize("out_dtype", [torch.int32, torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("M", [2, 13, 67])
def test_onednn_route_bit_exact(M, out_dtype, zero_point, per_row, monkeypatch):
    # weights large enough (N·K >= 2^21, the threshold here) for oneDNN's qlinear; _int_mm must not be needed
    K, N = 1100, 1907
    monkeypatch.setattr(cpu_gemm, "int_mm", lambda *args: pytest.fail("took the _int_mm route"))
    a, b = int8(M, K), int8(N, K, low=-127)
    kw = {} if out_dtype == torch.int32 else dict(_epilogue(M, N, zero_point=zero_point, per_row=per_row),
                                                  activation="relu", out_dtype=out_dtype)
    if "a_zero_point" in kw:
        kw["b_sum"] = b.sum(dim=1, dtype=torch.int32)
    if out_dtype == torch.int8:
        kw.update(out_scale=torch.tensor([0.5]), out_zero_point=torch.tensor([-9], dtype=torch.int32))
    assert_bitwise_equal(cpu.int8_gemm(a, b, **kw), reference.int8_gemm(a, b, **kw))


def test_zero_strides_and_strided_rows():
    # torch._int_mm returns wrong results for zero-stride operands (https://github.com/pytorch/pytorch/issues/194682)
    b = int8(1, 40).expand(9, 40)
    a = int8(13, 60)[:, 10:50]  # row stride 60
    assert_bitwise_equal(cpu_gemm.int_mm(a, b), reference.int8_gemm(a, b))
    assert_bitwise_equal(cpu.int8_gemm(a, b), reference.int8_gemm(a, b))


def test_prepacked_weight_follows_in_place_writes():
    a, b = int8(13, 45), int8(7, 45, low=-127)
    first = cpu.int8_gemm(a, b)
    b.mul_(-1)  # same tensor, new values (-127..127 negates in int8): the cached prepacked copy must not be reused
    assert_bitwise_equal(cpu.int8_gemm(a, b), reference.int8_gemm(a, b))
    assert_bitwise_equal(cpu.int8_gemm(a, b), -first)


def test_inference_mode_tensors():
    # tensors made under torch.inference_mode have no version counter for the prepacked-weight cache to read
    with torch.inference_mode():
        a, b = int8(13, 1100), int8(1907, 1100)
        assert_bitwise_equal(cpu.int8_gemm(a, b), reference.int8_gemm(a, b))
