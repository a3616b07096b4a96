"""int8_gemm on the CPU: the exact accumulator from oneDNN's int8 matmul (or torch._int_mm), then
lowp_ops.reference's epilogue — the same float32 operations in the same order, in one C++ pass (native.cpp) or as
torch ops, so every output (float, int8 requant, int32) is bit-exact with the reference.
fp8_gemm: e4m3 values widened to float32 (exactly) and a float32 matmul; this CPU
has no fp8 arithmetic (torch._scaled_mm on it ran no faster than that: 137 vs 124 ms at M=256, K=N=4096).

Which accumulator, ms on the CI machine (AMD EPYC, avx512_vnni, 2 threads, torch 2.13, 2026-11-25),
torch._int_mm / onednn.qlinear (u8 input shift included):
    K = N = 4096:       M=1 0.20 / 0.22, M=2 3.0 / 0.22, M=32 4.2 / 1.6, M=256 14.6 / 10.2   (FP32 M=256: 59)
    K=9216, N=128:      M=1 0.015 / 0.056, M=32 0.22 / 0.22, M=256 0.82 / 1.0
    K=768, N=768/3072:  M=8 0.036 / 0.083, M=1024 1.8 / 1.6 and 6.0 / 6.4; K=3072, N=768, M=1024: 6.6 / 5.7
Again on 2026-12-06 (same machine, medians of 20), GMAC/s: M=1024, K=768, N=3072: 430 / 402 (K=3072, N=768: 430 /
408); M=2048, K=384, N=1536: 417 / 355; M=256, K=N=4096: 331 / 418.
qlinear pays a ~40 us fixed cost and wins only on large weights; _int_mm has a fast M = 1 path. So: qlinear
for M >= 2 and N·K >= 2^23, else _int_mm. qlinear takes one zero point per tensor and returns float32, exact only
below 2^24: it runs with unit scales and is kept only when its output proves exact; otherwise, and while an op is
traced (torch.compile, export), _int_mm.
"""

from __future__ import annotations

import torch

from .. import reference
from . import native, support
from .support import as_uint8, exact_integers, fall_back, packed, traced

_QLINEAR_MIN_WEIGHT = 2**23  # N·K from which oneDNN's qlinear beats torch._int_mm (module docstring)


def _dense(t: torch.Tensor) -> torch.Tensor:
    # torch._int_mm (https://github.com/pytorch/pytorch/issues/194682) and onednn.qlinear_prepack return wrong
    # results for zero-stride operands
    if t.is_contiguous():  # no zero stride on a dim of more than one element: the common case, one C call
        return t
    return t.contiguous() if any(s == 0 and n > 1 for n, s in zip(t.shape, t.stride(), strict=True)) else t


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) int8, b (N, K) int8 -> a · bᵀ int32 (M, N), exact, through torch._int_mm with its hazards guarded."""
    if a.shape[1] == 1:  # torch._int_mm returns garbage for K = 1 (torch 2.13, CI machine); an outer product is exact
        return a.int() * b.int().T
    return torch._int_mm(_dense(a), _dense(b).T)


def _qlinear_acc(a: torch.Tensor, b: torch.Tensor, zero_point: int) -> torch.Tensor:
    """Σ_k (a[m, k] − zero_point) · b[n, k] as float32 from oneDNN, exact only while every value stays below 2^24
    (exact_integers, or native.cpp's epilogue, checks)."""
    N = b.shape[0]
    weight, ones, zeros = packed(b, ("qlinear",), lambda: (torch.ops.onednn.qlinear_prepack(_dense(b), None),
                                                           torch.ones(N), torch.zeros(N, dtype=torch.int64)))
    return torch.ops.onednn.qlinear_pointwise(as_uint8(a), 1.0, zero_point + 128, weight, ones, zeros, None, 1.0, 0,
                                              torch.float32, "none", [], "")


NATIVE_ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2}  # native.cpp's epilogue codes
ABSENT = torch.empty(0)  # an absent tensor argument of native.cpp's functions


def native_finishes(activation: str, out_dtype: torch.dtype) -> bool:
    """Whether native.cpp's epilogue (with gelu applied after it, to a float output) finishes this output."""
    return activation in NATIVE_ACTIVATIONS or (activation == "gelu" and out_dtype != torch.int8)


def native_epilogue(*, out_dtype, a_scale=None, b_scale=None, bias=None, a_zero_point=None, b_sum=None,
                    activation_name="none", out_scale=None, out_zero_point=None) -> tuple:
    """The epilogue arguments native.cpp's functions take after their own (gemm_epilogue, conv_direct): absent
    tensors as ABSENT, the activation's code, the output scale and zero point as numbers (-1.0: float output)."""
    requant = out_dtype == torch.int8
    return (ABSENT if a_scale is None else a_scale.reshape(-1), ABSENT if b_scale is None else b_scale,
            ABSENT if bias is None else bias.float(), ABSENT if a_zero_point is None else a_zero_point,
            ABSENT if b_sum is None else b_sum, NATIVE_ACTIVATIONS.get(activation_name, 0),
            out_scale.item() if requant else -1.0,
            int(out_zero_point.item()) if requant and out_zero_point is not None else 0)


def native_finish(y: torch.Tensor, activation: str, out_dtype: torch.dtype) -> torch.Tensor:
    """native.cpp's epilogue output (float32 or int8) finished: gelu (torch's, as the reference) and the float
    output dtype."""
    if activation == "gelu":
        y = reference.activation(y, "gelu")
    return y if out_dtype in (torch.float32, torch.int8) else y.to(out_dtype)


def _cpp_for(acc: torch.Tensor, activation: str, out_dtype: torch.dtype):
    """native.cpp's module where it finishes this epilogue: relu-type activations to any output, gelu (torch's, after
    the C++ pass) to a float one; none for the raw int32 accumulator or a traced call."""
    if out_dtype == torch.int32 or traced(acc) or not native_finishes(activation, out_dtype):
        return None
    return native.load()


def fused_epilogue(acc: torch.Tensor, *, out_dtype, a_scale=None, b_scale=None, bias=None, a_zero_point=None,
                   b_sum=None, activation_name="none", out_scale=None, out_zero_point=None) -> torch.Tensor:
    """reference.gemm_epilogue of an int32 accumulator (or oneDNN's float32 one, zero point subtracted), in one C++
    pass (native.cpp) where it applies, bit-exact with the reference's torch ops (gelu: the reference's, on the C++
    pass's float32 output). A float32 accumulator holding a value of 2^24 or more (inexact) gives an empty tensor
    (the C++ pass checks on the way, the torch ops first): the caller recomputes in int32."""
    cpp = _cpp_for(acc, activation_name, out_dtype)
    if cpp is None:
        if acc.is_floating_point() and not exact_integers(acc):
            return acc.new_empty(0)
        return reference.gemm_epilogue(acc, out_dtype=out_dtype, a_scale=a_scale, b_scale=b_scale, bias=bias,
                                       a_zero_point=a_zero_point, b_sum=b_sum, activation_name=activation_name,
                                       out_scale=out_scale, out_zero_point=out_zero_point)
    y = cpp.gemm_epilogue(acc, *native_epilogue(out_dtype=out_dtype, a_scale=a_scale, b_scale=b_scale, bias=bias,
                                                a_zero_point=a_zero_point, b_sum=b_sum,
                                                activation_name=activation_name, out_scale=out_scale,
                                                out_zero_point=out_zero_point))
    if y.numel() != acc.numel():  # inexact float accumulator
        return y
    return native_finish(y, activation_name, out_dtype)


def fp8_gemm(a: torch.Tensor, b: torch.Tensor, *, out_dtype=torch.float32, activation="none", fast_accum=False,
             **epilogue) -> torch.Tensor:
    """a float8_e4m3fn (M, K), b float8_e4m3fn (N, K) -> epilogue(a · bᵀ) (M, N); keyword arguments as
    kernels.fp8_gemm. The float32 accumulator is within reference.fp8_gemm's bound of the exact one."""
    acc = a.float() @ _dense(b).float().T
    return reference.gemm_epilogue(acc, activation_name=activation, out_dtype=out_dtype, **epilogue)


def int8_gemm(a: torch.Tensor, b: torch.Tensor, *, out_dtype=torch.int32, activation="none", a_zero_point=None,
              b_sum=None, **epilogue) -> torch.Tensor:
    """a int8 (M, K), b int8 (N, K) -> epilogue(a · bᵀ) (M, N); keyword arguments as kernels.int8_gemm."""
    if support.missing():
        fall_back("int8_gemm", support.missing())
        return reference.int8_gemm(a, b, out_dtype=out_dtype, activation=activation, a_zero_point=a_zero_point,
                                   b_sum=b_sum, **epilogue)
    epilogue["activation_name"] = activation
    (M, K), N = a.shape, b.shape[0]
    per_tensor_zp = a_zero_point is None or a_zero_point.numel() == 1
    if per_tensor_zp and M >= 2 and N * K >= _QLINEAR_MIN_WEIGHT and not traced(a, b):
        zp = 0 if a_zero_point is None else int(a_zero_point.item())
        acc = _qlinear_acc(a, b, zp)  # the zero point is already subtracted
        if out_dtype == torch.int32:
            if exact_integers(acc):
                return acc.to(torch.int32)
        else:
            y = fused_epilogue(acc, out_dtype=out_dtype, **epilogue)
            if y.numel() == acc.numel():  # empty: not exact
                return y
    return fused_epilogue(int_mm(a, b), out_dtype=out_dtype, a_zero_point=a_zero_point, b_sum=b_sum, **epilogue)
