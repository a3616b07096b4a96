"""Per-layer quantization report and the policy built on it: which layers go INT8 and which stay FP16.

For each Linear / Conv2d, on a calibration batch: the SQNR of its int8 weights and inputs (measured, and as the
uniform-noise model σ² = Δ²/12 predicts), the SQNR of its INT8 output against its float output, and — on a GPU —
the INT8 and FP16 latency of the layer. The policy keeps in FP16 a layer whose INT8 output is too lossy or, on a
GPU, slower than FP16; apply_policy converts the rest to INT8. It sits above the registry, whose workflows it
uses.

Beside INT8, each Linear gets the FP8 numbers: e4m3 input SQNR (per-token, dynamic) and the output SQNR of
torch.ops.lowp.fp8_linear with e4m3 per-channel weights. Where FP8 pays: its grid is relative (error at most 1/16
of each value, quant/error.py), so it gives ~31.5 dB on any input, while per-token INT8's step is its row's
largest value / 127. On Gaussian inputs INT8 wins (41-43 dB out vs ~29 dB for FP8); on activations with an
outlier channel (LLMs: a few channels ~100x the rest, the weight column correspondingly small) INT8's step follows
the outlier and its output drops to 13-15 dB, while FP8 holds ~29 dB (tests/test_policy.py, K = 64..1024, CPU).
A layer whose INT8 output SQNR sits far below its FP8 one is a candidate for fp8_linear: Policy.from_report(...,
fp8=True) sends it there when FP8 reaches the bound INT8 misses. The input SQNR over the
whole tensor understates this: the outlier channel is most of its energy. Conv2d layers have no FP8 numbers (lowp
has no FP8 conv), nor do layers on a GPU older than sm_89 (no FP8 Tensor Cores).

>>> import torch
>>> from lowp_ops.policy import Policy, apply_policy, layer_report
>>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> stats = layer_report(model, torch.randn(64, 16), time_layers=False)
>>> mixed = apply_policy(model, Policy.from_report(stats, min_sqnr_db=30))
>>> sorted({type(m).__name__ for m in mixed} - {"Identity", "ReLU"})
['Int8Linear']
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from . import quant
from ._validate import fp8_supported
from .nn import Fp16Linear, Int8Conv2d, Int8Linear
from .registry import Fp8DynamicConfig, Fp16Config, Int8DynamicConfig, quantize

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
    # FP8 e4m3: per-token input, lowp::fp8_linear output; None for a Conv2d (no FP8 conv) or on a pre-sm_89 GPU
    fp8_input_sqnr_db: float | None = None
    fp8_output_sqnr_db: float | None = None
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
    y = layer(x)
    stat = LayerStat(fqn, type(layer).__name__, w_err.sqnr_db, w_err.predicted_sqnr_db, x_err.sqnr_db,
                     x_err.predicted_sqnr_db, quant.sqnr_db(y, int8(x)))
    if isinstance(layer, nn.Linear) and fp8_supported(x.device):
        stat.fp8_input_sqnr_db = quant.quantization_error(x, quant.Fp8Spec(granularity="per_token")).sqnr_db
        qw = quant.quantize_tensor(layer.weight, quant.Fp8Spec(granularity="per_channel", axis=0))
        y8 = torch.ops.lowp.fp8_linear(x.contiguous(), qw.qdata, qw.scale, layer.bias, out_dtype=torch.float32)
        stat.fp8_output_sqnr_db = quant.sqnr_db(y, y8)
    if time_layers:
        x16 = x.half()
        # copies: Fp16Linear.from_linear copies the weights, and a conv (no FP16 module) is deep-copied before .half()
        fp16 = Fp16Linear.from_linear(layer) if isinstance(layer, nn.Linear) else copy.deepcopy(layer).half()
        stat.int8_ms = time_ms(lambda: int8(x16))
        stat.fp16_ms = time_ms(lambda: fp16(x16))
    return stat


@dataclass
class Policy:
    """Which layers leave INT8, and why. keep_fp16: INT8 output SQNR under min_sqnr_db (and FP8's too, or FP8 not
    asked for), or (when timed) INT8 slower than FP16. use_fp8: Linear layers whose INT8 output falls under
    min_sqnr_db where FP8's reaches it (from_report(..., fp8=True): the outlier-channel layers)."""

    keep_fp16: dict[str, str]  # fqn -> reason
    use_fp8: dict[str, str] = field(default_factory=dict)  # fqn -> reason

    @classmethod
    def from_report(cls, stats: list[LayerStat], min_sqnr_db: float = 30.0, *, fp8: bool = False) -> Policy:
        keep, use_fp8 = {}, {}
        for s in stats:
            int8_low = f"INT8 output SQNR {s.output_sqnr_db:.1f} dB < {min_sqnr_db:.0f} dB"
            if s.output_sqnr_db < min_sqnr_db:
                fp8_ok = fp8 and s.fp8_output_sqnr_db is not None and s.fp8_output_sqnr_db >= min_sqnr_db
                if fp8_ok:
                    use_fp8[s.fqn] = f"{int8_low}, FP8 {s.fp8_output_sqnr_db:.1f} dB"
                else:
                    keep[s.fqn] = int8_low
            elif s.int8_ms is not None and s.fp16_ms is not None and s.int8_ms > s.fp16_ms:
                keep[s.fqn] = f"INT8 {s.int8_ms:.3f} ms slower than FP16 {s.fp16_ms:.3f} ms"
        return cls(keep, use_fp8)

    def int8_filter(self, module: nn.Module, fqn: str) -> bool:
        """For a workflow's filter_fn=: True where the layer may go INT8."""
        return fqn not in self.keep_fp16 and fqn not in self.use_fp8


def apply_policy(model: nn.Module, policy: Policy) -> nn.Module:
    """A converted copy of `model`: INT8 (dynamic) for the layers the policy allows, FP8 (Fp8Linear) for the ones it
    sends there, FP16 (Fp16Linear) for the Linear layers it keeps; a kept Conv2d stays float (lowp has no FP16
    conv)."""
    layers = {fqn: m for fqn, m in model.named_modules() if type(m) in _INT8}
    if all(fqn in policy.keep_fp16 and not isinstance(m, nn.Linear) for fqn, m in layers.items()):
        return copy.deepcopy(model)  # nothing to convert (quantize would refuse)
    overrides = {**dict.fromkeys(policy.keep_fp16, Fp16Config()), **dict.fromkeys(policy.use_fp8, Fp8DynamicConfig())}
    return quantize(model, Int8DynamicConfig(), overrides=overrides)


def format_report(stats: list[LayerStat], policy: Policy | None = None) -> str:
    """A markdown table, one row per layer: SQNR in dB (INT8 with the noise model's figure in parentheses, then
    FP8 e4m3, "-" where there is none), times in ms, and the policy's decision."""
    header = ("| layer | type | weight SQNR (model) | input SQNR (model) | INT8 output SQNR | FP8 input SQNR | "
              "FP8 output SQNR | INT8 ms | FP16 ms | policy |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in stats:
        fp8 = " | ".join("-" if v is None else f"{v:.1f}" for v in (s.fp8_input_sqnr_db, s.fp8_output_sqnr_db))
        ms = (f"{s.int8_ms:.3f} | {s.fp16_ms:.3f}" if s.int8_ms is not None else "- | -")
        decision = "INT8"
        if policy is not None and s.fqn in policy.keep_fp16:
            decision = f"FP16: {policy.keep_fp16[s.fqn]}"
        elif policy is not None and s.fqn in policy.use_fp8:
            decision = f"FP8: {policy.use_fp8[s.fqn]}"
        lines.append(f"| {s.fqn} | {s.kind} | {s.weight_sqnr_db:.1f} ({s.weight_predicted_sqnr_db:.1f}) | "
                     f"{s.input_sqnr_db:.1f} ({s.input_predicted_sqnr_db:.1f}) | {s.output_sqnr_db:.1f} | {fp8} | "
                     f"{ms} | {decision} |")
    return "\n".join(lines)
