"""The small ConvNet (its §5.2) of the article lowp grew from, on model acceleration and low-precision computing:
conv 1→32→64, max-pool, dropout, fc 9216→128→10, log-softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvNet(nn.Module):
    """x: (B, 1, 28, 28) float -> log-probabilities (B, 10) float32.

    The article's layers and order; the only change is that log_softmax runs in float32, so the same module works
    when its Linear layers are swapped for float16 ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout2d(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = self.conv2(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x.float(), dim=1)
