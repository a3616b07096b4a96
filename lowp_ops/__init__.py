"""lowp: hand-written Triton kernels for low-precision deep learning in PyTorch.

Layers, bottom to top: lowp_ops.kernels (Triton, CUDA tensors) and lowp_ops.cpu (oneDNN / torch int8, CPU
tensors), peers -> lowp_ops.ops (torch.ops.lowp.*, which picks one by device; lowp_ops.reference is the oracle
both are tested against, selectable with use_cpu_backend) -> lowp_ops.nn (modules) -> lowp_ops.registry (configs
and the handlers that convert layers under them; the entry point quantize(model, config), and torch.ao's workflows
over it: quantize_dynamic, prepare / calibrate / convert, prepare_qat, to_fp16) -> lowp_ops.policy (per-layer
report, INT8 / FP16 policy). lowp_ops.quant holds the quantization math.

>>> import torch, lowp_ops
>>> w = torch.randn(32, 64)
>>> qw = lowp_ops.quant.quantize_tensor(w, lowp_ops.quant.per_channel(axis=0))
>>> y = lowp_ops.int8_linear(torch.randn(2, 64), qw.qdata, qw.scale)
>>> y.shape, y.dtype
(torch.Size([2, 32]), torch.float32)
"""

from . import nn, quant
from .ops import (
                       fp8_linear,
                       fp8_mm,
                       fp16_linear,
                       fp16_mm,
                       fp16_mm_accumulate_,
                       int8_add,
                       int8_conv2d,
                       int8_linear,
                       int8_max_pool2d,
                       int8_mm,
                       quantize_channels_last,
                       quantize_per_tensor,
                       quantize_per_token,
)
from .ops.backends import cpu_backend, use_cpu_backend
from .registry import (
    Fp8DynamicConfig,
    Fp16Config,
    Int8DynamicConfig,
    Int8StaticConfig,
    LayerContext,
    LowpConfig,
    QATConfig,
    calibrate,
    convert,
    prepare,
    prepare_qat,
    quantize,
    quantize_dynamic,
    register,
    sync_observers,
    to_fp16,
)

__version__ = "0.1.0"
__all__ = ["Fp8DynamicConfig", "Fp16Config", "Int8DynamicConfig", "Int8StaticConfig", "LayerContext", "LowpConfig",
           "QATConfig", "calibrate", "convert", "cpu_backend", "fp8_linear", "fp8_mm", "fp16_linear", "fp16_mm",
           "fp16_mm_accumulate_", "int8_add", "int8_conv2d", "int8_linear", "int8_max_pool2d", "int8_mm", "nn",
           "prepare", "prepare_qat", "quant", "quantize", "quantize_channels_last", "quantize_dynamic",
           "quantize_per_tensor", "quantize_per_token", "register", "sync_observers", "to_fp16",
           "use_cpu_backend"]
