"""time_layers=True: each converted layer timed against its float original, on this machine, at the shapes of one
example call; a layer whose converted form is slower stays float, and lowp_report says so with both times.

Why per layer and per machine: whether INT8 pays depends on the layer's shape, the batch and the CPU. On the CI
machine (AMD EPYC, 2 threads, 2026-12-06) the seed ConvNet's first conv (1 input channel) takes ~60 us in INT8 and
~20 us in FP32 at batch 1, and 1.3 vs 4.1 ms at batch 256; its last Linear (128 -> 10) ~40 vs ~6 us at batch 1.

Each layer is timed on the inputs it receives in its own model (the converted layer on what the converted model
hands it: int8 codes after a hand-off), the two alternating in rounds so that a busy machine slows both alike; the
median round decides. A converted layer runs whatever was fused into it (a folded BatchNorm, a relu) and its float
original does not: the comparison leans towards float, which is the side "never slower than float" errs on.

Layers also cost each other: a layer left float hands the next one float, which that one must quantize (and it
loses the int8 hand-off). So when some layers lose alone, the model with them float is timed, whole, against the
model with every layer converted, and the faster is kept (whole_model_faster): on the seed ConvNet at batch 1 the
first conv loses alone (34.7 vs 20.0 us) while conv2 reading its int8 codes takes 49 instead of 72 us, and the whole
model 162 us converted against 187 us with that conv float (CI machine, 2026-12-06).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable

import torch
from torch import nn

from .graph import Example

ROUNDS = 5
ROUND_S = 2e-3  # each round runs a layer this long, at least 3 calls


def _inputs(model: nn.Module, names: Iterable[str], example: Example) -> dict[str, tuple[tuple, dict]]:
    """name -> the (args, kwargs) of that layer's first call in one forward pass of model on example. Under no_grad,
    not inference_mode: the timed models may be the ones returned, and what their first calls cache (oneDNN's packed
    weights) must not be inference tensors, which later in-place use refuses."""
    seen: dict[str, tuple[tuple, dict]] = {}
    handles = []
    for name in names:
        def hook(_module, args, kwargs, name=name):
            seen.setdefault(name, (args, kwargs))
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(*example[0], **example[1])
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _per_call_us(layer: nn.Module, args: tuple, kwargs: dict, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        layer(*args, **kwargs)
    return (time.perf_counter() - start) / calls * 1e6


def median_us(converted: nn.Module, original: nn.Module, q_in: tuple[tuple, dict],
              f_in: tuple[tuple, dict]) -> tuple[float, float]:
    """(converted, original) median µs per call over ROUNDS alternating rounds, after a warm-up call each."""
    with torch.no_grad():
        once = [_per_call_us(converted, *q_in, 1), _per_call_us(original, *f_in, 1)]
        calls = [max(3, int(ROUND_S / max(t * 1e-6, 1e-9))) for t in once]
        q, f = [], []
        for _ in range(ROUNDS):
            q.append(_per_call_us(converted, *q_in, calls[0]))
            f.append(_per_call_us(original, *f_in, calls[1]))
    return statistics.median(q), statistics.median(f)


def slower_than_float(converted: nn.Module, original: nn.Module, names: Iterable[str],
                      example: Example) -> dict[str, str]:
    """name -> why it stays float, for each layer in names (converted in `converted`, float in `original`, the same
    model before conversion) that is slower converted than float on example's shapes. Layers the example call does
    not reach are not timed."""
    names = [n for n in names if not isinstance(converted.get_submodule(n), type(original.get_submodule(n)))]
    q_inputs, f_inputs = _inputs(converted, names, example), _inputs(original, names, example)
    slow = {}
    for name in names:
        if name not in q_inputs or name not in f_inputs:
            continue
        q_us, f_us = median_us(converted.get_submodule(name), original.get_submodule(name), q_inputs[name],
                               f_inputs[name])
        if q_us > f_us:
            slow[name] = (f"slower than float on this machine at the example call's shapes: "
                          f"{type(converted.get_submodule(name)).__name__} {q_us:.1f} us vs "
                          f"{type(original.get_submodule(name)).__name__} {f_us:.1f} us a call (time_layers=True)")
    return slow


def whole_model_faster(converted: nn.Module, mixed: nn.Module, example: Example) -> tuple[bool, float, float]:
    """(whether `converted` runs example faster than `mixed`, both median µs per call): the model with every layer
    converted against the one with the layers slower alone left float, timed as the per-layer rounds are."""
    q_us, m_us = median_us(converted, mixed, example, example)
    return q_us < m_us, q_us, m_us


def whole_model_note(q_us: float, m_us: float) -> str:
    return (f"time_layers: kept every layer converted: the model runs faster whole ({q_us:.1f} us a call) than with "
            f"the layers slower alone left float ({m_us:.1f} us), as they hand int8 on and spare the next layer a "
            f"quantization")
