"""lowp_ops.examples.ConvNet (the small ConvNet of the article lowp grew from, on model acceleration and
low-precision computing) on real digits under every lowp scheme, side by side: FP32, INT8 dynamic, INT8 static
(calibrated), INT8 QAT, FP16 — and the check that a converted model really runs on torch.ops.lowp."""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .. import registry
from .convnet import ConvNet
from .digits import load_digits_28
from .training import accuracy, train


class _OpCounter(TorchDispatchMode):
    """Counts the ATen / custom ops a forward pass dispatches."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def dispatched_ops(model: nn.Module, x: torch.Tensor) -> Counter:
    """Which ops one forward pass of `model` on `x` runs (op name -> count)."""
    with torch.no_grad(), _OpCounter() as counter:
        model(x)
    return counter.ops


def convert_all(fp32: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, *, qat_epochs: int = 1,
                calibration_batches: int = 8, seed: int = 0,
                time_at: torch.Tensor | None = None) -> dict[str, nn.Module]:
    """A trained FP32 model -> {scheme: model}: FP32 itself, INT8 dynamic, INT8 static (calibrated on the first
    calibration_batches x 64 training images), INT8 QAT (fine-tuned from the FP32 weights at a tenth of the
    learning rate), FP16. `qat_epochs=0` leaves QAT out. time_at: an input batch; adds "int8 static, timed", INT8
    static converted with time_layers=True on it (the layers slower than FP32 there stay FP32)."""
    models = {"fp32": fp32, "int8 dynamic": registry.quantize_dynamic(fp32)}
    prepared = registry.prepare(fp32)
    registry.calibrate(prepared, (train_x[i:i + 64] for i in range(0, 64 * calibration_batches, 64)), progress=False)
    models["int8 static"] = registry.convert(prepared)
    if time_at is not None:
        models["int8 static, timed"] = registry.convert(prepared, time_layers=True, example_inputs=time_at)
    if qat_epochs:
        qat = registry.prepare_qat(fp32)
        train(qat, train_x, train_y, epochs=qat_epochs, lr=1e-4, seed=seed + 1)
        models["int8 qat"] = registry.convert(qat)
    models["fp16"] = registry.to_fp16(fp32)
    return models


def compare_schemes(*, epochs: int = 6, qat_epochs: int = 1, calibration_batches: int = 8, seed: int = 0,
                    device: str = "cpu") -> tuple[dict[str, float], dict[str, nn.Module]]:
    """Train the ConvNet in FP32 on the digits, derive each lowp variant (convert_all), return (test accuracy %
    by scheme, the models)."""
    tx, ty, vx, vy = (t.to(device) for t in load_digits_28(seed=seed))
    torch.manual_seed(seed)
    fp32 = ConvNet().to(device)
    train(fp32, tx, ty, epochs=epochs, seed=seed)
    models = convert_all(fp32, tx, ty, qat_epochs=qat_epochs, calibration_batches=calibration_batches, seed=seed)
    return {name: accuracy(m, vx, vy) for name, m in models.items()}, models
