"""Training lowp_ops.examples.ConvNet in FP32 and in mixed precision (§3.1.1 of the article lowp grew from: model
acceleration and low-precision computing, with its formulas and a small ConvNet): float16 Linear layers on lowp's
Tensor Core GEMM with float32 master weights, and dynamic loss scaling by torch.amp.GradScaler."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import Fp16Linear


def mixed_precision(model: nn.Module, compute_dtype: torch.dtype = torch.float16) -> nn.Module:
    """A copy of `model` whose nn.Linear layers compute in compute_dtype through lowp (float32 master weights);
    other layers (the convolutions) stay float32."""
    model = copy.deepcopy(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, Fp16Linear.from_linear(child, compute_dtype=compute_dtype))
        else:
            setattr(model, name, mixed_precision(child, compute_dtype) if list(child.children()) else child)
    return model


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 6, batch_size: int = 64,
          lr: float = 1e-3, seed: int = 0, scaler: torch.amp.GradScaler | None = None,
          max_steps: int | None = None) -> list[float]:
    """Adam on NLL loss; returns the mean training loss of each epoch. With a scaler, the loss is scaled before
    backward and the step unscaled (and skipped on inf/NaN gradients), as GradScaler does."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)  # batch order
    torch.manual_seed(seed)  # dropout masks: two runs with the same seed see the same ones
    curve, steps = [], 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        total, count = 0.0, 0
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            loss = F.nll_loss(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            total, count = total + loss.item() * len(idx), count + len(idx)
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        curve.append(total / count)
        if max_steps is not None and steps >= max_steps:
            break
    return curve


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent, eval mode."""
    model.eval()
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(y), batch_size))
    return 100.0 * correct / len(y)


def underflow_count(fp32_model: nn.Module, mp_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    loss_scale: float) -> tuple[int, int]:
    """How many gradient elements of the mixed-precision model come out exactly zero where the FP32 model's
    (same weights, same batch, eval mode) are not: values that underflowed in float16 on the way back.
    Returns (zeroed, nonzero in FP32), over every parameter."""
    fp32_model.eval()
    mp_model.eval()
    for m in (fp32_model, mp_model):
        m.zero_grad(set_to_none=True)
    F.nll_loss(fp32_model(x), y).backward()
    (F.nll_loss(mp_model(x), y) * loss_scale).backward()
    zeroed = nonzero = 0
    for p32, pmp in zip(fp32_model.parameters(), mp_model.parameters(), strict=True):
        live = p32.grad != 0
        nonzero += int(live.sum())
        zeroed += int((live & (pmp.grad == 0)).sum())
    return zeroed, nonzero
