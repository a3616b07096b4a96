"""The benchmark cases: ops, the shape sets they run on, their FP32 reference and how their work is counted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lowp_ops import quant

# GEMM shapes are (M, N, K); conv shapes (batch, C, H, W, K, R, stride, padding, groups).
SHAPES = {
    "square": [(4096, 4096, 4096), (8192, 8192, 8192)],
    "llm": [(m, 11008, 4096) for m in (1, 16, 128, 2048, 8192)] + [(128, 4096, 4096), (16, 4096, 4096)],
    "convnet_fc": [(b, 128, 9216) for b in (1, 256)] + [(b, 10, 128) for b in (1, 256)],
    "resnet50": [(32, 64, 56, 56, 64, 3, 1, 1, 1), (32, 256, 56, 56, 64, 1, 1, 0, 1),
                 (32, 128, 28, 28, 128, 3, 1, 1, 1), (32, 256, 14, 14, 256, 3, 1, 1, 1),
                 (32, 512, 7, 7, 512, 3, 1, 1, 1)],
    "convnet_conv": [(256, 1, 28, 28, 32, 3, 1, 0, 1), (256, 32, 26, 26, 64, 3, 1, 0, 1),
                     (1, 32, 26, 26, 64, 3, 1, 0, 1)],
    "depthwise": [(32, 256, 28, 28, 256, 3, 1, 1, 256)],
}


def smoke_shape(shape: tuple, multiple: int = 1) -> tuple:
    """A tiny version of a shape with the same structure (odd sizes on purpose); GEMM N and K rounded up to
    `multiple` (M stays odd)."""
    if len(shape) == 3:
        M, N, K = (min(s, d) for s, d in zip(shape, (13, 37, 45), strict=True))
        return M, -(-N // multiple) * multiple, -(-K // multiple) * multiple
    b, c, h, w, k, r, stride, pad, groups = shape
    g = min(groups, 4)
    return (1, min(c, 4 * g) if groups > 1 else min(c, 6), min(h, 9), min(w, 9), min(k, 4 * g) if groups > 1
            else min(k, 10), r, stride, pad, g)


@dataclass
class Problem:
    """One op at one shape: float data on a device, the FP32 reference output, and its work."""

    op: str
    shape: tuple
    data: dict
    reference: torch.Tensor
    flops: int  # arithmetic (2 per multiply-add); 0 for memory-bound ops
    bytes: int  # the fewest bytes the op must move (inputs read once, outputs written once)


@dataclass
class Op:
    name: str
    shape_sets: tuple[str, ...]
    make: Callable[[tuple, str], Problem]
    kind: str  # what its rate is compared with: "int8", "fp8", "fp16" tensor-core peak, or "bandwidth"
    # The most SQNR (dB) against FP32 the op's number format allows on this data: a provider's bar is lowered to it
    max_bar_db: float = float("inf")
    smoke_multiple: int = 1  # smoke shapes round N and K up to this, so that every provider can run them


def _gemm_data(shape, device, seed=0):
    M, N, K = shape
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(M, K, device=device, generator=g)
    w = torch.randn(N, K, device=device, generator=g) / K**0.5
    b = torch.randn(N, device=device, generator=g)
    return x, w, b


def _int8_mm(shape, device):
    M, N, K = shape
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device=device, generator=g)
    b = torch.randint(-128, 128, (N, K), dtype=torch.int8, device=device, generator=g)
    ref = (a.double() @ b.double().T).to(torch.int32)  # exact
    return Problem("int8_mm", shape, {"a": a, "b": b}, ref, 2 * M * N * K, M * K + N * K + 4 * M * N)


def _linear(op):
    """int8_linear / fp8_linear: float x (M, K), weight (N, K), bias (N,); providers take fp16 in and out and
    quantize the weight before timing, so its bytes are one per element."""
    def make(shape, device):
        M, N, K = shape
        x, w, b = _gemm_data(shape, device)
        return Problem(op, shape, {"x": x, "w": w, "b": b}, F.linear(x, w, b), 2 * M * N * K,
                       2 * (M * K + M * N) + (1 if op in ("int8_linear", "fp8_linear") else 2) * N * K)
    return make


def _fp8_mm(shape, device):
    """e4m3 operands a (M, K), b (N, K) with row-wise float32 scales (M,), (N,): the Gaussian data of the float
    ops, quantized per token / per output channel. The reference is the exact product of the codes, scaled, so
    the check measures the GEMM and its bfloat16 output, not the quantization. Work counted as int8_mm's, with the
    bfloat16 output torch._scaled_mm's row-wise path requires on CUDA (and the scales)."""
    M, N, K = shape
    x, w, _ = _gemm_data(shape, device)
    qa = quant.quantize_tensor(x, quant.Fp8Spec(granularity="per_token"))
    qb = quant.quantize_tensor(w, quant.Fp8Spec(granularity="per_channel", axis=0))
    ref = (qa.qdata.double() @ qb.qdata.double().T) * qa.scale.double()[:, None] * qb.scale.double()[None, :]
    return Problem("fp8_mm", shape, {"a": qa.qdata, "b": qb.qdata, "a_scale": qa.scale, "b_scale": qb.scale},
                   ref.float(), 2 * M * N * K, M * K + N * K + 2 * M * N + 4 * (M + N))


def _fp16_mm(shape, device):
    M, N, K = shape
    x, w, _ = _gemm_data(shape, device)
    a, b = x.half(), w.T.contiguous().half()  # (M, K) @ (K, N), both row-major: cuBLAS's `a @ b`
    return Problem("fp16_mm", shape, {"a": a, "b": b}, a.float() @ b.float(), 2 * M * N * K,
                   2 * (M * K + K * N + M * N))


def _fp16_linear_train(shape, device):
    M, N, K = shape
    x, w, b = _gemm_data(shape, device)
    g = torch.randn(M, N, device=device)
    return Problem("fp16_linear_train", shape, {"x": x, "w": w, "b": b, "g": g}, F.linear(x, w, b), 6 * M * N * K,
                   2 * (2 * M * K + 2 * N * K + 2 * M * N))


def _conv(shape, device):
    B, C, H, W, K, R, stride, pad, groups = shape
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(B, C, H, W, device=device, generator=g)
    w = torch.randn(K, C // groups, R, R, device=device, generator=g) / (C // groups * R * R) ** 0.5
    b = torch.randn(K, device=device, generator=g)
    ref = F.conv2d(x, w, b, stride, pad, 1, groups)
    OH, OW = ref.shape[2:]
    return Problem("int8_conv", shape, {"x": x, "w": w, "b": b, "geometry": (stride, pad, groups)}, ref,
                   2 * B * K * OH * OW * (C // groups) * R * R,
                   B * C * H * W + K * C // groups * R * R + 2 * ref.numel())


def _quantize(shape, device):
    M, _, K = shape
    x = torch.randn(M, K, device=device).half()
    return Problem("quantize", shape, {"x": x}, x.float(), 0, 2 * M * K + M * K + 4 * M)


OPS = {op.name: op for op in [
    Op("int8_mm", ("square", "llm"), _int8_mm, "int8"),
    Op("int8_linear", ("llm", "convnet_fc"), _linear("int8_linear"), "int8"),
    # torch._scaled_mm takes N and K multiples of 16 only
    Op("fp8_mm", ("square", "llm"), _fp8_mm, "fp8", smoke_multiple=16),
    # e4m3 activations and weights: 31.5-32.6 dB against FP32 on this data (smoke shapes and (64, 96, 128), CPU:
    # ~28.5 dB on x·wᵀ, plus 3 dB from the exact bias of the same power); a wrong scale or layout gives ~0 dB or less
    Op("fp8_linear", ("llm",), _linear("fp8_linear"), "fp8", max_bar_db=25.0, smoke_multiple=16),
    Op("fp16_mm", ("square", "llm"), _fp16_mm, "fp16"),
    Op("fp16_linear_train", ("llm",), _fp16_linear_train, "fp16"),
    Op("int8_conv", ("resnet50", "convnet_conv", "depthwise"), _conv, "int8"),
    Op("quantize", ("llm",), _quantize, "bandwidth"),
]}
