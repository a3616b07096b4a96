"""Which module becomes which (the registry) and the workflows built on it."""

from .config import QuantConfig
from .core import SCHEMES, SwapReport, register
from .workflows import calibrate, convert, prepare, prepare_qat, quantize_dynamic, to_fp16

__all__ = ["SCHEMES", "QuantConfig", "SwapReport", "calibrate", "convert", "prepare", "prepare_qat",
           "quantize_dynamic", "register", "to_fp16"]
