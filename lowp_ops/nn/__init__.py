"""The modules users end up holding: thin wrappers that keep their parameters and call torch.ops.lowp."""

from .add import Add, Int8Add
from .fp8 import Fp8Linear
from .fp16 import Fp16Linear
from .int8 import Int8Conv2d, Int8Linear
from .pool import Int8MaxPool2d
from .qat import QATConv2d, QATLinear

__all__ = ["Add", "Fp8Linear", "Fp16Linear", "Int8Add", "Int8Conv2d", "Int8Linear", "Int8MaxPool2d", "QATConv2d",
           "QATLinear"]
