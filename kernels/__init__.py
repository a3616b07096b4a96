"""Triton kernels (imported as lowp_ops.kernels): @triton.jit kernels and one launcher per family.

Launchers check nothing beyond what they need to launch; lowp_ops.ops validates user input first.
"""

from .add import int8_add
from .conv import int8_conv2d
from .gemm import fp8_gemm, gemm, int8_gemm
from .pool import int8_max_pool2d
from .quantize import quantize_channels_last, quantize_rows

__all__ = ["fp8_gemm", "gemm", "int8_add", "int8_conv2d", "int8_gemm", "int8_max_pool2d", "quantize_channels_last",
           "quantize_rows"]
