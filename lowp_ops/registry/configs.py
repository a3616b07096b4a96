"""One frozen config per scheme. Its type picks the handlers that convert each layer (handlers.py); its fields are
what those handlers read.

    LowpConfig                 the base: a config type handlers are registered against
      Int8Config               shared by the INT8 schemes: the weight spec and the output dtype
        Int8DynamicConfig      activations quantized at run time        quantize / quantize_dynamic
        Int8StaticConfig       activations with calibrated scales       prepare -> calibrate -> convert
        QATConfig              scales learned in training               prepare_qat -> train -> convert
      Fp8DynamicConfig         Linear on lowp's FP8 (e4m3) GEMM         quantize / quantize_dynamic
      Fp16Config               Linear on lowp's float16 / bfloat16 GEMM quantize / to_fp16

>>> import torch, lowp_ops
>>> lowp_ops.Int8StaticConfig(observer="percentile", out_dtype=torch.float16).chain_int8
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..quant import Fp8Spec, Granularity, QuantSpec, per_channel
from ..quant.observers import OBSERVERS

# What the INT8 kernels take (kernels/gemm.py, kernels/conv.py): int8 operands, symmetric weights with one
# scale per output channel (or one for all), activations with one scale and zero point per tensor.
_WEIGHT_SPECS = (per_channel(axis=0), QuantSpec(bits=8))
# What the FP8 GEMM takes (kernels/gemm.py): e4m3 operands, the weight with one scale per output channel or one
_FP8_WEIGHT_SPECS = (Fp8Spec(granularity="per_channel", axis=0), Fp8Spec())
_OUT_DTYPES = (None, torch.float16, torch.bfloat16, torch.float32)
COMPUTE_DTYPES = (torch.float16, torch.bfloat16)
# The built-in configs, for messages that list them
CONFIG_NAMES = "Int8DynamicConfig, Int8StaticConfig, QATConfig, Fp16Config, Fp8DynamicConfig"


@dataclass(frozen=True, kw_only=True)
class LowpConfig:
    """Base of every lowp config. A config's type selects the handlers (lowp_ops.register(module_type,
    config_type)); subclass it to give handlers of your own their settings. Frozen, so one config can serve
    many layers and be compared field by field (the names of one shared module must agree on theirs)."""


@dataclass(frozen=True, kw_only=True)
class Int8Config(LowpConfig):
    """What every INT8 scheme shares.

    weight:     int8 symmetric, per output channel (per_channel(axis=0), the default) or per tensor
                (QuantSpec(bits=8)); quantized once, at conversion.
    out_dtype:  float dtype of the layer's output: None (its input's dtype; float32 after an int8 input),
                torch.float16, torch.bfloat16 or torch.float32.
    """

    weight: QuantSpec = field(default_factory=lambda: per_channel(axis=0))
    out_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.weight not in _WEIGHT_SPECS:
            raise ValueError(f"{name}: weight must be 8-bit signed symmetric per output channel (axis 0) or per "
                             f"tensor, what the INT8 kernels take, got {self.weight}")
        _check_out_dtype(name, self.out_dtype)


def _check_out_dtype(owner: str, out_dtype) -> None:
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"{owner}: out_dtype must be None, float16, bfloat16 or float32, got {out_dtype}")


@dataclass(frozen=True, kw_only=True)
class Int8DynamicConfig(Int8Config):
    """INT8 with activations quantized at run time: per token (row) for Linear, per tensor for Conv2d, symmetric.
    No calibration; fields as Int8Config.

    >>> import torch, lowp_ops
    >>> q = lowp_ops.quantize(torch.nn.Sequential(torch.nn.Linear(8, 4)), lowp_ops.Int8DynamicConfig())
    >>> q[0].qweight.dtype, q[0](torch.randn(2, 8)).dtype
    (torch.int8, torch.float32)
    """


@dataclass(frozen=True, kw_only=True)
class _ActivationConfig(Int8Config):
    """The fields of the INT8 schemes whose activations have fixed scales (static and QAT)."""

    activation: QuantSpec = field(default_factory=lambda: QuantSpec(bits=8, symmetric=False))
    chain_int8: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        name, a = type(self).__name__, self.activation
        if not isinstance(a, QuantSpec) or a.bits != 8 or not a.signed or a.granularity is not Granularity.PER_TENSOR:
            raise ValueError(f"{name}: activation must be an 8-bit signed per-tensor QuantSpec, got {a}")
        if not isinstance(self.chain_int8, bool):
            raise TypeError(f"{name}: chain_int8 must be a bool, got {type(self.chain_int8).__name__}")


@dataclass(frozen=True, kw_only=True)
class Int8StaticConfig(_ActivationConfig):
    """INT8 with each layer's input scale fixed by calibration: prepare attaches observers, calibrate runs data,
    convert swaps the layers. Fields of Int8Config, and:

    activation:  spec of the input quantization: 8-bit signed, per tensor, affine (default) or symmetric.
    observer:    how calibration turns the inputs it sees into a scale: "minmax" (default), "moving_average",
                 "percentile" or "mse" (lowp_ops.quant.OBSERVERS).
    chain_int8:  True (default): where only int8-safe ops (relu, flatten / reshape, dropout at inference,
                 identity) sit between two converted layers, the first hands int8 codes to the second, requantized
                 with the second's input scale. False: every layer returns float.

    >>> import lowp_ops
    >>> lowp_ops.Int8StaticConfig(observer="mse", chain_int8=False).observer
    'mse'
    """

    observer: str = "minmax"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.observer not in OBSERVERS:
            raise ValueError(f"Int8StaticConfig: observer must be one of {tuple(OBSERVERS)}, got {self.observer!r}")


@dataclass(frozen=True, kw_only=True)
class QATConfig(_ActivationConfig):
    """INT8 learned in training: prepare_qat swaps layers for QATLinear / QATConv2d (fake-quantized weights and
    inputs, input scales from a moving-average min/max), convert turns them into INT8 layers with those scales.
    Fields of Int8Config, and activation and chain_int8 as in Int8StaticConfig.

    >>> import lowp_ops
    >>> lowp_ops.QATConfig().activation.symmetric
    False
    """


@dataclass(frozen=True, kw_only=True)
class Fp16Config(LowpConfig):
    """Linear layers on lowp's float16 / bfloat16 Tensor Core GEMM (Fp16Linear), float32 master weights: trains
    with torch.amp.GradScaler, serves as is.

    compute_dtype:  torch.float16 (default) or torch.bfloat16, what the GEMM multiplies in.
    out_dtype:      float dtype of the layer's output: None (default: its input's dtype, so a float32 model stays
                    float32 around it), torch.float16, torch.bfloat16 or torch.float32.

    >>> import torch, lowp_ops
    >>> lowp_ops.Fp16Config(compute_dtype=torch.bfloat16).compute_dtype
    torch.bfloat16
    """

    compute_dtype: torch.dtype = torch.float16
    out_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        check_compute_dtype("Fp16Config", self.compute_dtype)
        _check_out_dtype("Fp16Config", self.out_dtype)


@dataclass(frozen=True, kw_only=True)
class Fp8DynamicConfig(LowpConfig):
    """FP8 W8A8 Linear layers (Fp8Linear): weights quantized once to e4m3, activations to e4m3 per token (row) at
    run time, float32 accumulation on lowp's fp8 GEMM. No calibration. Conv2d layers stay float (there is no FP8
    conv), and the report says so.

    weight:          an e4m3 Fp8Spec: per output channel (Fp8Spec(granularity="per_channel", axis=0), the default)
                     or per tensor (Fp8Spec()); quantized once, at conversion.
    out_dtype:       float dtype of the layer's output: None (its input's dtype), torch.float16, torch.bfloat16 or
                     torch.float32.
    use_fast_accum:  False (default): each BLOCK_K slice of the reduction is added into a float32 accumulator.
                     True: the whole reduction in sm_90's fp8 accumulator, faster and with fewer bits
                     (lowp.fp8_mm); CPU tensors accumulate in float32 either way.

    >>> import torch, lowp_ops
    >>> q = lowp_ops.quantize(torch.nn.Sequential(torch.nn.Linear(8, 4)), lowp_ops.Fp8DynamicConfig())
    >>> q[0].qweight.dtype, q.lowp_report.swapped["0"]
    (torch.float8_e4m3fn, 'Fp8Linear by linear_to_fp8_dynamic')
    """

    weight: Fp8Spec = field(default_factory=lambda: _FP8_WEIGHT_SPECS[0])
    out_dtype: torch.dtype | None = None
    use_fast_accum: bool = False

    def __post_init__(self) -> None:
        if self.weight not in _FP8_WEIGHT_SPECS:
            raise ValueError(f"Fp8DynamicConfig: weight must be an e4m3 Fp8Spec per output channel (axis 0) or per "
                             f"tensor, what the FP8 kernels take, got {self.weight}")
        _check_out_dtype("Fp8DynamicConfig", self.out_dtype)
        if not isinstance(self.use_fast_accum, bool):
            raise TypeError(f"Fp8DynamicConfig: use_fast_accum must be a bool, got "
                            f"{type(self.use_fast_accum).__name__} {self.use_fast_accum!r}")


def check_compute_dtype(owner: str, compute_dtype) -> None:
    """TypeError / ValueError naming `owner` unless compute_dtype is torch.float16 or torch.bfloat16."""
    if not isinstance(compute_dtype, torch.dtype):
        raise TypeError(f"{owner}: compute_dtype must be a torch.dtype (float16 or bfloat16), got "
                        f"{type(compute_dtype).__name__} {compute_dtype!r}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"{owner}: compute_dtype must be torch.float16 or torch.bfloat16, got {compute_dtype}")


__all__ = ["Fp8DynamicConfig", "Fp16Config", "Int8Config", "Int8DynamicConfig", "Int8StaticConfig", "LowpConfig",
           "QATConfig"]
