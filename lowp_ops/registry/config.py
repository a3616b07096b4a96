"""QuantConfig: how a layer is quantized. One config for a whole model, overridable per layer (by fqn)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..quant import Granularity, QuantSpec, per_channel

# What the INT8 kernels take (kernels/gemm.py, kernels/conv.py): int8 operands, symmetric weights with one
# scale per output channel (or one for all), activations with one scale and zero point per tensor.
_WEIGHT_SPECS = (per_channel(axis=0), QuantSpec(bits=8))
_OBSERVER_NAMES = ("minmax", "moving_average", "percentile", "mse")


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize a layer.

    weight:      int8 symmetric, per output channel (default) or per tensor — quantized once, at conversion.
    activation:  the spec of static activations: 8-bit signed, per tensor, affine (default) or symmetric.
                 Dynamic quantization ignores it: per token for Linear, per tensor for Conv2d, symmetric.
    static:      False: activations quantized on the fly (quantize_dynamic). True: fixed scales from calibration
                 (prepare -> calibrate -> convert) or from QAT (prepare_qat -> train -> convert).
    observer:    how calibration turns ranges into scales: "minmax", "moving_average", "percentile", "mse".
    out_dtype:   float dtype of a quantized layer's output (None: its input's dtype; float32 after int8 input).
    chain_int8:  convert lets a quantized layer hand int8 straight to the next quantized layer when only int8-safe
                 ops (relu, flatten / reshape, dropout in eval, identity) sit between them.
    skip:        layers left in float: fully qualified names or fnmatch patterns ("classifier.*").

    >>> QuantConfig(static=True, observer="percentile", skip=("fc2",)).static
    True
    """

    weight: QuantSpec = field(default_factory=lambda: per_channel(axis=0))
    activation: QuantSpec = field(default_factory=lambda: QuantSpec(bits=8, symmetric=False))
    static: bool = False
    observer: str = "minmax"
    out_dtype: torch.dtype | None = None
    chain_int8: bool = True
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.weight not in _WEIGHT_SPECS:
            raise ValueError(f"QuantConfig: weight spec must be 8-bit signed symmetric per output channel (axis 0) "
                             f"or per tensor — what the INT8 kernels take — got {self.weight}")
        a = self.activation
        if a.bits != 8 or not a.signed or a.granularity is not Granularity.PER_TENSOR:
            raise ValueError(f"QuantConfig: activation spec must be 8-bit signed per tensor, got {a}")
        if self.observer not in _OBSERVER_NAMES:
            raise ValueError(f"QuantConfig: observer must be one of {_OBSERVER_NAMES}, got {self.observer!r}")
        if self.out_dtype not in (None, torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"QuantConfig: out_dtype must be None, float16, bfloat16 or float32, got {self.out_dtype}")
        if isinstance(self.skip, str) or not all(isinstance(p, str) for p in self.skip):
            raise TypeError(f"QuantConfig: skip must be a tuple of names or fnmatch patterns, got {self.skip!r}")
