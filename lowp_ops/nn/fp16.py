"""Fp16Linear: a Linear layer computing on lowp's float16 / bfloat16 Tensor Core GEMM, float32 master weights."""

from __future__ import annotations

import torch
from torch import nn

from .._validate import ACTIVATIONS


class Fp16Linear(nn.Module):
    """y = activation(x · Wᵀ + b) computed in float16 or bfloat16 through torch.ops.lowp.fp16_linear.

    The parameters stay float32 ("master weights"): each forward casts the weight to the compute dtype, so the
    optimizer updates float32 values and small updates are not lost to float16 rounding; gradients come back
    float32 through the cast. Use torch.amp.GradScaler for the loss, as float16 gradients underflow without it.

    x: (..., in_features), any float dtype (cast to compute_dtype) -> y: (..., out_features) in compute_dtype.

    >>> layer = Fp16Linear.from_linear(torch.nn.Linear(8, 4))
    >>> layer(torch.randn(2, 8)).dtype
    torch.float16
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 compute_dtype: torch.dtype = torch.float16, activation: str = "none", device=None) -> None:
        super().__init__()
        if compute_dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"Fp16Linear: compute_dtype must be float16 or bfloat16, got {compute_dtype}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"Fp16Linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype, self.activation = compute_dtype, activation
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device)) if bias else None
        nn.Linear.reset_parameters(self)  # nn.Linear's own initialization (it reads only weight and bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, compute_dtype: torch.dtype = torch.float16,
                    activation: str = "none") -> Fp16Linear:
        """A copy of `linear` (its weights as float32 masters) that computes in compute_dtype."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, compute_dtype=compute_dtype,
                    activation=activation, device=linear.weight.device)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = self.compute_dtype
        return torch.ops.lowp.fp16_linear(x.to(dt), self.weight.to(dt), self.bias, activation=self.activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"compute={str(self.compute_dtype).removeprefix('torch.')}, activation={self.activation}, "
                f"master=float32")
