"""The worked example of the article lowp grew from (model acceleration and low-precision computing, with its
formulas and a small ConvNet), runnable: its ConvNet and a real data set to train it on (scikit-learn's bundled
handwritten digits, no download). Used by the mixed-precision training tool, the demo and the tests."""

from .convnet import ConvNet
from .digits import load_digits_28
from .training import accuracy, mixed_precision, train, underflow_count

__all__ = ["ConvNet", "accuracy", "load_digits_28", "mixed_precision", "train", "underflow_count"]
