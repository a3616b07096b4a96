"""Per-layer quantization report and the policy built on it: which layers go INT8 and which stay FP16.

For each Linear / Conv2d, on a calibration batch: the SQNR of its int8 weights and inputs (measured, and as the
uniform-noise model σ² = Δ²/12 predicts), the SQNR of its INT8 output against its float output, and — on a GPU —
the INT8 and FP16 latency of the layer. The policy keeps in FP16 a layer whose INT8 output is too lossy or, on a
GPU, slower than FP16; apply_policy converts the rest to INT8.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from .. import quant
from ..nn import Fp16Linear, Int8Conv2d, Int8Linear
from .workflows import quantize_dynamic, to_fp16

_INT8 = {nn.Linear: Int8Linear, nn.Conv2d: Int8Conv2d}


@dataclass
class LayerStat:
    """One layer's numbers (SQNR in dB; times in ms, None without a GPU)."""

    fqn: str
    kind: str
    weight_sqnr_db: float
    weight_predicted_sqnr_db: float
    input_sqnr_db: float
    input_predicted_sqnr_db: float
    output_sqnr_db: float
    int8_ms: float | None = None
    fp16_ms: float | None = None


def time_ms(fn, reps: int = 5) -> float:
    """Median milliseconds of fn() without autograd: CUDA events (triton.testing.do_bench) on a GPU, a host
    clock on the CPU."""
    with torch.no_grad():
        if torch.cuda.is_available():
            import triton.testing

            return triton.testing.do_bench(fn, return_mode="median")
        fn()
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(samples)


def layer_report(model: nn.Module, batch: torch.Tensor, *, time_layers: bool | None = None) -> list[LayerStat]:
    """Run `batch` through `model` once (eval, no grad), capture each Linear / Conv2d input, and measure.
    time_layers: time INT8 vs FP16 per layer (default: only when CUDA is available); both run on the same float16
    copy of the layer's input, made before either clock starts, so neither pays a cast the other does not.
    The model is left as it was: its training flags are restored and every measurement runs on copies."""
    time_layers = torch.cuda.is_available() if time_layers is None else time_layers
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, fqn=fqn: inputs.__setitem__(fqn, args[0].detach()))
             for fqn, m in model.named_modules() if type(m) in _INT8]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(batch)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    with torch.no_grad():
        return [_layer_stat(fqn, model.get_submodule(fqn), x, time_layers) for fqn, x in inputs.items()]


def _layer_stat(fqn: str, layer: nn.Module, x: torch.Tensor, time_layers: bool) -> LayerStat:
    w_err = quant.quantization_error(layer.weight, quant.per_channel(axis=0))
    x_spec = quant.per_token() if isinstance(layer, nn.Linear) else quant.per_tensor()
    x_err = quant.quantization_error(x, x_spec)
    int8 = _INT8[type(layer)].from_float(layer)
    stat = LayerStat(fqn, type(layer).__name__, w_err.sqnr_db, w_err.predicted_sqnr_db, x_err.sqnr_db,
                     x_err.predicted_sqnr_db, quant.sqnr_db(layer(x), int8(x)))
    if time_layers:
        x16 = x.half()
        # copies: Fp16Linear.from_linear copies the weights, and a conv (no FP16 module) is deep-copied before .half()
        fp16 = Fp16Linear.from_linear(layer) if isinstance(layer, nn.Linear) else copy.deepcopy(layer).half()
        stat.int8_ms = time_ms(lambda: int8(x16))
        stat.fp16_ms = time_ms(lambda: fp16(x16))
    return stat


@dataclass
class Policy:
    """Which layers stay FP16: INT8 output SQNR under min_sqnr_db, or (when timed) INT8 slower than FP16."""

    keep_fp16: dict[str, str]  # fqn -> reason

    @classmethod
    def from_report(cls, stats: list[LayerStat], min_sqnr_db: float = 30.0) -> Policy:
        keep = {}
        for s in stats:
            if s.output_sqnr_db < min_sqnr_db:
                keep[s.fqn] = f"INT8 output SQNR {s.output_sqnr_db:.1f} dB < {min_sqnr_db:.0f} dB"
            elif s.int8_ms is not None and s.fp16_ms is not None and s.int8_ms > s.fp16_ms:
                keep[s.fqn] = f"INT8 {s.int8_ms:.3f} ms slower than FP16 {s.fp16_ms:.3f} ms"
        return cls(keep)

    def int8_filter(self, fqn: str, module: nn.Module) -> bool:
        """For quantize_dynamic / prepare's filter=: True where the layer may go INT8."""
        return fqn not in self.keep_fp16


def apply_policy(model: nn.Module, policy: Policy) -> nn.Module:
    """INT8 (dynamic) for the layers the policy allows; FP16 (Fp16Linear) for the Linear layers it keeps."""
    layers = [fqn for fqn, m in model.named_modules() if type(m) in _INT8]
    converted = (quantize_dynamic(model, filter=policy.int8_filter) if any(f not in policy.keep_fp16 for f in layers)
                 else copy.deepcopy(model))
    if any(isinstance(converted.get_submodule(f), nn.Linear) for f in policy.keep_fp16):
        converted = to_fp16(converted, filter=lambda fqn, m: fqn in policy.keep_fp16, inplace=True)
    return converted


def format_report(stats: list[LayerStat], policy: Policy | None = None) -> str:
    header = ("| layer | type | weight SQNR (model) | input SQNR (model) | INT8 output SQNR | INT8 ms | FP16 ms | "
              "policy |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---|"]
    for s in stats:
        ms = (f"{s.int8_ms:.3f} | {s.fp16_ms:.3f}" if s.int8_ms is not None else "- | -")
        decision = "INT8" if policy is None or s.fqn not in policy.keep_fp16 else f"FP16: {policy.keep_fp16[s.fqn]}"
        lines.append(f"| {s.fqn} | {s.kind} | {s.weight_sqnr_db:.1f} ({s.weight_predicted_sqnr_db:.1f}) | "
                     f"{s.input_sqnr_db:.1f} ({s.input_predicted_sqnr_db:.1f}) | {s.output_sqnr_db:.1f} | {ms} | "
                     f"{decision} |")
    return "\n".join(lines)
