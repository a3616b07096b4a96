"""Quantization math in one place: specs (integer grids: QuantSpec; FP8 formats: Fp8Spec), qparams, quantize /
dequantize / fake-quantize, error analysis.

>>> import torch
>>> from lowp_ops import quant
>>> w = torch.randn(64, 128)
>>> qw = quant.quantize_tensor(w, quant.per_channel(axis=0))
>>> quant.sqnr_db(w, qw.dequantize()) > 35
True
"""

from .affine import QuantizedTensor, dequantize, fake_quantize, quantize, quantize_tensor
from .error import QuantError, grid_step, quantization_error, sqnr_db, uniform_noise_variance
from .observers import (
                        OBSERVERS,
                        HistogramObserver,
                        MinMaxObserver,
                        MovingAverageMinMaxObserver,
                        Observer,
                        PercentileObserver,
)
from .qparams import MIN_SCALE, choose_qparams, reduce_minmax
from .spec import Fp8Spec, Granularity, QuantSpec, Spec, per_channel, per_group, per_tensor, per_token

__all__ = [
    "MIN_SCALE", "OBSERVERS", "Fp8Spec", "Granularity", "HistogramObserver", "MinMaxObserver",
    "MovingAverageMinMaxObserver", "Observer", "PercentileObserver", "QuantError", "QuantSpec", "QuantizedTensor",
    "Spec", "choose_qparams", "dequantize", "fake_quantize", "grid_step", "per_channel", "per_group", "per_tensor",
    "per_token", "quantization_error", "quantize", "quantize_tensor", "reduce_minmax", "sqnr_db",
    "uniform_noise_variance",
]
