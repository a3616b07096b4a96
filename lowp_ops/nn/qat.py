"""Quantization-aware training modules: float layers whose forward sees what the INT8 kernels will compute.

Weights are fake-quantized with their own per-channel min/max every step (exactly what conversion stores) and
inputs with a moving-average min/max observer (scales follow the activations as training moves them); gradients
flow straight through (torch.fake_quantize's clipped straight-through estimator). lowp_ops.convert turns each
into the matching Int8Linear / Int8Conv2d with the same integers and scales.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import quant
from ..quant.observers import MovingAverageMinMaxObserver


class _FakeQuant:
    """What QATLinear and QATConv2d share: the input observer and the two fake-quantizations."""

    def _init_qat(self, weight_spec: quant.QuantSpec, activation_spec: quant.QuantSpec, activation: str) -> None:
        self.weight_spec, self.activation_spec, self.activation = weight_spec, activation_spec, activation
        self.input_observer = MovingAverageMinMaxObserver(activation_spec)

    def input_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_observer.calculate_qparams()

    def _fake_quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.input_observer.has_data:  # eval mode freezes the scales
            self.input_observer(x)
        scale, zero_point = self.input_qparams()
        return quant.fake_quantize(x, scale, zero_point, self.activation_spec)

    def _fake_quant_weight(self) -> torch.Tensor:
        scale, zero_point = quant.choose_qparams(*quant.reduce_minmax(self.weight, self.weight_spec), self.weight_spec)
        return quant.fake_quantize(self.weight, scale, zero_point, self.weight_spec)

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return F.relu(y)
        if self.activation == "relu6":
            return F.relu6(y)
        return F.gelu(y) if self.activation == "gelu" else y

    def _qat_repr(self) -> str:
        return (f"fake-quant weight={'per-channel' if self.weight_spec.axis is not None else 'per-tensor'} int8, "
                f"input=int8 per tensor ({'symmetric' if self.activation_spec.symmetric else 'affine'}), "
                f"activation={self.activation}")


class QATLinear(nn.Linear, _FakeQuant):
    """nn.Linear training under int8 fake quantization. x: (..., in_features) float -> (..., out_features)."""

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_spec: quant.QuantSpec, activation_spec: quant.QuantSpec,
                   activation: str = "none") -> QATLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device)
        layer.load_state_dict(linear.state_dict())
        layer._init_qat(weight_spec, activation_spec, activation)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._activate(F.linear(self._fake_quant_input(x), self._fake_quant_weight(), self.bias))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._qat_repr()}"


class QATConv2d(nn.Conv2d, _FakeQuant):
    """nn.Conv2d training under int8 fake quantization. x: (N, C, H, W) float -> (N, K, OH, OW)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_spec: quant.QuantSpec, activation_spec: quant.QuantSpec,
                   activation: str = "none") -> QATConv2d:
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode, device=conv.weight.device)
        layer.load_state_dict(conv.state_dict())
        layer._init_qat(weight_spec, activation_spec, activation)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._activate(self._conv_forward(self._fake_quant_input(x), self._fake_quant_weight(), self.bias))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._qat_repr()}"
