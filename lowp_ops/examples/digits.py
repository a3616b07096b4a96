"""scikit-learn's handwritten digits (1,797 real 8x8 scans, bundled with the package: no download), upsampled to
the 28x28 that lowp_ops.examples.ConvNet expects."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def load_digits_28(test_fraction: float = 0.2, seed: int = 0):
    """(train_x, train_y, test_x, test_y): x (n, 1, 28, 28) float32 standardized with the training set's mean
    and std, y (n,) int64 in 0..9. The split is a fixed permutation from `seed`.

    >>> train_x, train_y, test_x, test_y = load_digits_28()
    >>> tuple(train_x.shape), tuple(test_x.shape)
    ((1438, 1, 28, 28), (359, 1, 28, 28))
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # a dev / examples dependency, not a runtime one
        raise ImportError("lowp_ops.examples.load_digits_28 needs scikit-learn: pip install scikit-learn") from e
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]
