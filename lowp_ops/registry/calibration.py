"""calibrate: calibration batches through a prepared model, whatever form the batches take."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn


def calibrate(model: nn.Module, data: Iterable, *, max_batches: int | None = None, progress: bool = True) -> nn.Module:
    """Run calibration batches through a prepared model in eval mode, without gradients; tensors go to the model's
    device. `data` yields batches (a DataLoader works), each one of
        a tensor                               model(x)
        a dict of keyword arguments            model(**batch): {"input": x}, or a tokenizer's {"input_ids": ...,
                                               "attention_mask": ...}; non-tensor values pass as they are
        a tuple / list (input, target, ...)    its first element, itself a tensor or a dict as above
    The first batch is also the example call convert analyses the model on (unless prepare had example_inputs).
    A tqdm bar shows progress when tqdm is installed. Returns the model.

    >>> import torch, lowp_ops
    >>> prepared = lowp_ops.prepare(torch.nn.Sequential(torch.nn.Linear(8, 4)))
    >>> _ = lowp_ops.calibrate(prepared, [(torch.randn(16, 8), torch.randn(16, 4))], progress=False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"calibrate: model must be a torch.nn.Module, got {type(model).__name__}")
    if not hasattr(model, "_lowp_prepared"):
        raise ValueError("calibrate: the model was not prepared; call lowp_ops.prepare(model) first")
    if isinstance(data, (torch.Tensor, Mapping)) or not isinstance(data, Iterable):
        raise TypeError(f"calibrate: data must be an iterable of batches (a DataLoader, a list), got "
                        f"{type(data).__name__}" + ("; to calibrate on one batch, pass [batch]"
                                                    if isinstance(data, (torch.Tensor, Mapping)) else ""))
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 0):
        raise TypeError(f"calibrate: max_batches must be None or an int >= 0, got {max_batches!r}")
    device = next(model.parameters()).device
    batches = data
    if progress:
        try:
            from tqdm.auto import tqdm

            batches = tqdm(data, total=max_batches or (len(data) if hasattr(data, "__len__") else None),
                           desc="calibrating", unit="batch")
        except ImportError:
            pass
    model.eval()
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            _run_batch(model, batch, device, i)
    return model


def _run_batch(model: nn.Module, batch, device: torch.device, index: int) -> None:
    """One calibration batch through the model (see calibrate for the forms a batch may take)."""
    whole = batch
    if isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if isinstance(batch, torch.Tensor):
        model(batch.to(device))
    elif isinstance(batch, Mapping) and all(isinstance(k, str) for k in batch):
        model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    else:
        raise TypeError(f"calibrate: batch {index} is {_describe(whole)}; a batch must be a tensor, a dict of keyword "
                        f"arguments for the model (str keys), or a tuple / list whose first element is one of those")


def _describe(batch) -> str:
    name = type(batch).__name__
    article = "an" if name[0].lower() in "aeiou" else "a"
    if isinstance(batch, (list, tuple)):
        kinds = ", ".join(type(b).__name__ for b in batch[:4])
        return f"an empty {name}" if not batch else f"{article} {name} of [{kinds}]"
    return f"{article} {name}"
