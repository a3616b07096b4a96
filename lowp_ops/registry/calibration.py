"""calibrate: calibration batches through a prepared model, whatever form the batches take; sync_observers: the
observers of every rank made to agree."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..quant.observers import Observer


def calibrate(model: nn.Module, data: Iterable, *, max_batches: int | None = None, progress: bool = True,
              process_group=None) -> nn.Module:
    """Run calibration batches through a prepared model in eval mode, without gradients; tensors go to the model's
    device. Under torch.distributed (initialized, more than one rank in `process_group`, the default group when
    None) each rank calibrates on its own batches and the observers are then reduced across the ranks
    (sync_observers), so every rank converts to the same model; every rank must call calibrate.
    `data` yields batches (a DataLoader works), each one of
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
    if _ranks(process_group) > 1:
        sync_observers(model, process_group)
    return model


def _ranks(group) -> int:
    """How many ranks `group` (the default group when None) has; 1 without an initialized torch.distributed."""
    dist = torch.distributed
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def sync_observers(model: nn.Module, process_group=None) -> nn.Module:
    """Reduce the statistics of every observer in model across the ranks of process_group (torch.distributed's
    default group when None), so that each rank computes the same scales: min / max observers then hold the range
    of all the ranks' batches (the qparams of one process that saw them all), histograms the counts of all of them
    on the widest range, moving averages the ranks' mean (Observer.all_reduce). calibrate calls it under
    torch.distributed; a QAT model's input observers keep a moving average per rank (DDP broadcasts rank 0's
    buffers each step by default): call it on every rank before convert. A collective: every rank calls it, on the
    same model. Returns the model.

    >>> import torch, lowp_ops
    >>> prepared = lowp_ops.prepare(torch.nn.Sequential(torch.nn.Linear(8, 4)))
    >>> _ = lowp_ops.sync_observers(prepared)  # one process: nothing to reduce
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sync_observers: model must be a torch.nn.Module, got {type(model).__name__}")
    observers = [m for m in model.modules() if isinstance(m, Observer)]
    if _ranks(process_group) <= 1:
        return model
    dist = torch.distributed
    # every rank must hold the same observers: compare their count first, so that a mismatch raises on every rank
    # instead of leaving some waiting in a collective
    device = next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device  # nccl reduces on the GPU
    count = torch.tensor([len(observers), -len(observers)], dtype=torch.int64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX, group=process_group)
    if int(count[0]) != -int(count[1]):
        raise ValueError(f"sync_observers: the ranks hold {-int(count[1])} to {int(count[0])} observers; every rank "
                         f"must call it on the same prepared model")
    for observer in observers:
        observer.all_reduce(process_group)
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
