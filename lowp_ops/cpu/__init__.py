"""The native CPU backend (imported as lowp_ops.cpu): int8 arithmetic on the CPU's int8 dot-product instructions
through the libraries torch ships, peer of the Triton kernels (lowp_ops.kernels) under the ops layer.

Same launcher names and signatures as lowp_ops.kernels (less `wrap`), arguments already validated by lowp_ops.ops:
    quantize_rows(x, ...)            per-token / static quantization to int8 or e4m3: float32 to int8 in one C++ pass
                                     (native.cpp), else torch reductions + in-place elementwise ops
    quantize_channels_last(x, ...)   float NCHW -> int8 NHWC, the layout change folded into the int8 cast
    per_tensor_qparams(x, ...)       int8_conv2d's dynamic per-tensor scale, computed on the host (no kernel has it:
                                     on CUDA the ops run the reference's)
    int8_gemm(a, b, ...)             oneDNN int8 matmul (qlinear) or torch._int_mm for the exact accumulator, then
                                     lowp_ops.reference's epilogue (one C++ pass): bit-exact with the reference
    fp8_gemm(a, b, ...)              e4m3 operands widened to float32 and a float32 matmul (no fp8 arithmetic on CPUs),
                                     then the reference's epilogue
    int8_conv2d(x, w, ...)           small convolutions: one GEMM over the patches, bit-exact; others: oneDNN's int8
                                     convolution (qconv2d) with the epilogue fused where oneDNN can express it
                                     (requant may differ from the reference by 1 LSB; tested)
    int8_max_pool2d(x, ...)          int8 codes max-pooled channels_last (native.cpp), exact
    int8_add(a, b, ...)              two int8 tensors added as their values and requantized (native.cpp), exact
native.py builds native.cpp (the C++ passes) on first use; without a compiler the torch-op paths serve, slower at
small sizes. Under torch.compile / torch.export the launchers run inside opaque ops (lowp_cpu::<op>, ops/_common.py).
The fp16 ops have no native CPU path here: they run lowp_ops.reference (float32 arithmetic) on CPU tensors.
Where the CPU lacks int8 dot products (no VNNI) the GEMM and the convolution fall back to the reference, with one
warning; the quantize ops need no special instructions.
"""

from .add import int8_add
from .conv import int8_conv2d
from .gemm import fp8_gemm, int8_gemm
from .pool import int8_max_pool2d
from .quantize import per_tensor_qparams, quantize_channels_last, quantize_rows

__all__ = ["fp8_gemm", "int8_add", "int8_conv2d", "int8_gemm", "int8_max_pool2d", "per_tensor_qparams",
           "quantize_channels_last", "quantize_rows"]
