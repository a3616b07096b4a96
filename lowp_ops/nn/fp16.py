"""Fp16Linear: a Linear layer computing on lowp's float16 / bfloat16 Tensor Core GEMM, float32 master weights."""

from __future__ import annotations

import torch
from torch import nn

from .._validate import ACTIVATIONS
from ._base import CAST_DTYPES, float_cast

_COMPUTE_DTYPES = (torch.float16, torch.bfloat16)


class Fp16Linear(nn.Module):
    """y = activation(x · Wᵀ + b) computed in float16 or bfloat16 through torch.ops.lowp.fp16_linear.

    The parameters stay float32 ("master weights"): each forward casts the weight to the compute dtype, so the
    optimizer updates float32 values and small updates are not lost to float16 rounding; gradients come back
    float32 through the cast. Use torch.amp.GradScaler for the loss, as float16 gradients underflow without it.

    x: (..., in_features), any float dtype (cast to compute_dtype) -> y: (..., out_features) in out_dtype, or, when
    out_dtype is None, in x's dtype, as the nn.Linear it replaced returns: a float32 model stays float32 around the
    layer (attention that meets its output, logits). The GEMM writes that dtype from its float32 accumulator, so a
    float32 output is not rounded to 16 bits first (float64 is computed as float32 and widened).

    Casts (nn.Module.half() / .bfloat16() / .double() / .float() / .to(dtype)) follow the quantized modules' rule
    (nn/_base.py) and never touch the float32 master weights: a cast sets the output dtype, and a 16-bit cast the
    compute dtype too (.to(torch.bfloat16) computes in bfloat16); .float() gives back the output and compute dtypes
    the layer was built with, so m.half().float() behaves exactly as m.

    >>> layer = Fp16Linear.from_linear(torch.nn.Linear(8, 4))
    >>> layer(torch.randn(2, 8)).dtype, layer(torch.randn(2, 8).half()).dtype
    (torch.float32, torch.float16)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 compute_dtype: torch.dtype = torch.float16, activation: str = "none",
                 out_dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        if compute_dtype not in _COMPUTE_DTYPES:
            raise ValueError(f"Fp16Linear: compute_dtype must be float16 or bfloat16, got {compute_dtype}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"Fp16Linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if out_dtype is not None and out_dtype not in CAST_DTYPES:
            raise TypeError(f"Fp16Linear: out_dtype must be None (follow the input), float16, bfloat16, float32 or "
                            f"float64, got {out_dtype}")
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype, self.activation, self.out_dtype = compute_dtype, activation, out_dtype
        self.built = (compute_dtype, out_dtype)  # what .float() returns to
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device)) if bias else None
        nn.Linear.reset_parameters(self)  # nn.Linear's own initialization (it reads only weight and bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, compute_dtype: torch.dtype = torch.float16,
                    activation: str = "none", out_dtype: torch.dtype | None = None) -> Fp16Linear:
        """A copy of `linear` (its weights as float32 masters) that computes in compute_dtype and returns out_dtype
        (None: the input's dtype)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, compute_dtype=compute_dtype,
                    activation=activation, out_dtype=out_dtype, device=linear.weight.device)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = self.compute_dtype
        out_dtype = self.out_dtype or (x.dtype if x.dtype in CAST_DTYPES else dt)
        y = torch.ops.lowp.fp16_linear(x.to(dt), self.weight.to(dt), self.bias, activation=self.activation,
                                       out_dtype=torch.float32 if out_dtype == torch.float64 else out_dtype)
        return y.to(out_dtype)

    def _apply(self, fn, recurse=True):
        """.to(device) / .cuda() move the parameters; a float cast sets the output dtype (and the compute dtype,
        for float16 / bfloat16) instead of casting the float32 master weights (class docstring)."""
        cast, device = float_cast(fn, self.weight.device)
        if cast is None:
            return super()._apply(fn, recurse)
        if cast not in CAST_DTYPES:
            raise TypeError(f"Fp16Linear: cannot cast to {cast}: a cast sets the float output dtype, which must be "
                            f"float16, bfloat16, float32 or float64")
        built_compute, built_out = self.built
        self.compute_dtype = cast if cast in _COMPUTE_DTYPES else built_compute
        self.out_dtype = built_out if cast == torch.float32 else cast
        return super()._apply(lambda t: t.to(device), recurse)

    def extra_repr(self) -> str:
        out = str(self.out_dtype).removeprefix("torch.") if self.out_dtype else "input dtype"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"compute={str(self.compute_dtype).removeprefix('torch.')}, output={out}, "
                f"activation={self.activation}, master=float32")
