"""torch.ops.lowp: the torch.library registrations, one module per op family.

Every op is a `triton_op`, so torch.compile traces into the Triton kernels it launches (through wrap_triton).
CUDA tensors run the Triton kernels; CPU tensors run the native CPU backend lowp_ops.cpu (or the reference,
lowp_ops.reference, when selected: backends.py); other devices are refused. Each op has a fake implementation
(shape and dtype only, after the same validation). The int8 and fp8 ops are inference ops on quantized data, without
autograd; fp16_linear has autograd. The GEMM and conv ops exported here (and as lowp_ops.<op>) are the ops with a
shortcut: a plain eager call runs the op's validation and body without torch.library's dispatch (_common.direct).

    quantize_per_token(x, dtype)                  float (..., K) -> int8 / e4m3 (..., K), float32 scales (...)
    quantize_per_tensor(x, scale, zp, dtype)      float (...)    -> int8 / e4m3 (...)
    int8_mm(a, b, a_scale, b_scale, bias, ...)    int8 (..., K) x int8 (N, K)ᵀ -> (..., N), fused epilogue
    int8_linear(x, weight, weight_scale, ...)     float (..., K) -> quantize -> int8_mm -> (..., N)
    fp8_mm(a, b, a_scale, b_scale, bias, ...)     e4m3 (..., K) x e4m3 (N, K)ᵀ -> (..., N), row-wise scales
    fp8_linear(x, weight, weight_scale, ...)      float (..., K) -> quantize (e4m3) -> fp8_mm -> (..., N)
    int8_conv2d(x, weight, stride, padding, ...)  float NCHW (quantized per tensor inside) or int8 NHWC x, implicit
                                                  GEMM conv, same epilogue -> (N, K, OH, OW)
    quantize_channels_last(x, scale, zero_point)  float NCHW -> int8 NHWC in one pass
    int8_max_pool2d(x, kernel_size, stride, ...)  int8 (N, C, H, W) -> max-pooled int8 NHWC (hand-offs through pools)
    int8_add(a, b, a_scale, b_scale, out_scale, ...)  int8 + int8 as their values, requantized (residual hand-offs)
    fp16_mm(a, b, bias, activation)               f16/bf16 (M, K) x (K, N), any strides -> (M, N)
    fp16_mm_accumulate_(c, a, b)                  c float32 (M, N) += a · b
    fp16_linear(x, weight, bias, activation)      f16/bf16 (..., K) x (N, K)ᵀ -> (..., N), with autograd
"""

from ._common import direct
from .add import int8_add
from .conv import eager_int8_conv2d, quantize_channels_last
from .fp8 import eager_fp8_linear, eager_fp8_mm
from .fp16 import fp16_linear, fp16_mm, fp16_mm_accumulate_
from .int8 import eager_int8_linear, eager_int8_mm
from .pool import int8_max_pool2d
from .quantize import quantize_per_tensor, quantize_per_token

# the GEMM and conv ops as lowp_ops exports them: a plain eager call skips torch.library's dispatch (_common.direct)
int8_conv2d, int8_linear, int8_mm = direct(eager_int8_conv2d), direct(eager_int8_linear), direct(eager_int8_mm)
fp8_linear, fp8_mm = direct(eager_fp8_linear), direct(eager_fp8_mm)

__all__ = ["fp8_linear", "fp8_mm", "fp16_linear", "fp16_mm", "fp16_mm_accumulate_", "int8_add", "int8_conv2d",
           "int8_linear", "int8_max_pool2d", "int8_mm", "quantize_channels_last", "quantize_per_tensor",
           "quantize_per_token"]
