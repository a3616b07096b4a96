"""CPU benchmarks: FP32 eager and torch.compile, torch.ao INT8, ONNX Runtime and OpenVINO (FP32 and INT8) and lowp
INT8 (native backend, and the reference backend where it finishes in reasonable time) on six workloads, all timed in
one process so the ratios compare like with like on the same machine state.

    python -m bench --device cpu --out bench/results   # real run: writes <out>/cpu-<date>.json and .md
    python -m bench --device cpu --smoke               # tiny shapes: every row built, checked, timed once; no files
    python -m bench --device cpu --repeats 5           # at most 5 timed calls per row (default 20, fewer if slow)

Workloads (shapes of the real run; --smoke shrinks them):
    seed ConvNet       lowp_ops.examples.ConvNet trained 4 epochs on the digits, x: (B, 1, 28, 28) float32, B 1 / 256
    Linear 4096x4096   one nn.Linear, x: (M, 4096) float32, M 1 / 32 / 256, and the raw int8_linear (torch.ops.lowp and
                       lowp_ops' direct call)
    Linear 64x64       per call: x (1, 64), where the arithmetic is nothing and the cost of a call shows
    ResNet-50          transformers.ResNetForImageClassification(ResNetConfig()), random weights, x: (B, 3, 224, 224),
                       B 1 / 16: static INT8 with and without int8 hand-offs (through residual adds)
    BERT-base encoder  transformers.BertModel(BertConfig()) with random weights, input ids (8, 128), mask all ones
    MiniLM-L6 encoder  BertModel in all-MiniLM-L6's shape (6 layers, hidden 384, 12 heads, FFN 1536) with random
                       weights: 64 sentences of 8 to 32 tokens (fixed seed), ids (64, 32) padded, mask 1 on the tokens
    (the encoders are skipped, with the reason printed, when transformers cannot be imported)

Providers: "lowp dynamic" is lowp_ops.quantize_dynamic (Linear per token, Conv2d per tensor), "lowp static" is
lowp_ops.prepare(model) / calibrate / convert; "torch.ao dynamic" is torch.ao.quantization.quantize_dynamic on
nn.Linear; "torch.ao static x86" is torch.ao eager static quantization (fbgemm / oneDNN) of AoReadyConvNet. The peers
(bench/peers.py, the `peers` extra; their rows are skipped, with the reason printed, when a package is missing):
"ort fp32", "ort static QDQ" (ConvNet) and "ort dynamic" (encoders) on ONNX Runtime; "openvino fp32", "openvino
default" (its default precision: bf16 on a CPU with avx512_bf16) and "openvino int8 (nncf)" on OpenVINO. The static
rows calibrate on the same batches.

Each row is checked before it is timed: median ms, speedup over the FP32 eager row of the same workload and batch
(F.linear for the Linear), output SQNR in dB against FP32 (quantized outputs land at ~20-50 dB; garbage would be near
0), and an accuracy: the ConvNet's top-1 % on the 359 held-out digits, the encoders' "cos min" (the smallest cosine
similarity, over the sentences, between the row's and FP32's sentence embeddings: last_hidden_state averaged over
the mask). The markdown ends with the milestones, pass / fail from the ratios and the rivals each should beat.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import pathlib
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import DeQuantStub, QuantStub

import lowp_ops
from lowp_ops import quant
from lowp_ops.examples import ConvNet, accuracy, load_digits_28, train
from lowp_ops.nn import Int8Linear

from . import peers
from ._common import header, machine

# A quantized row under this SQNR is reported as broken: int8 weights and activations gave 27-57 dB on these
# workloads (bench/results/cpu-2026-11-25.md, AMD EPYC CI machine); a wrong scale or layout gives ~0 dB or less.
MIN_SQNR_DB = 10.0

# (what, formatted with the row's workload and batch; workload key; batch: "min" / "max" of the workload's batches;
#  provider; at least this x FP32 eager, or None: at least as fast as its rivals; the providers it should also beat,
#  each compared where it was measured) — issue 21's first milestones.
MILESTONES = (
    ("{workload} static INT8 at batch {batch}: >= 1.72x FP32 eager", "convnet", "min", "lowp static", 1.72,
     ("torch.ao static x86", "ort static QDQ")),
    ("{workload} dynamic INT8 at batch {batch}: >= 1.0x FP32 eager", "convnet", "min", "lowp dynamic", 1.0, ()),
    ("{workload} static INT8 at batch {batch}: >= 6.1x FP32 eager", "convnet", "max", "lowp static", 6.1,
     ("torch.ao static x86", "openvino int8 (nncf)")),
    ("{workload} static INT8 compiled at batch {batch}: as fast as eager", "convnet", "min", "lowp static compile",
     None, ("lowp static",)),
    ("{workload} static INT8 compiled at batch {batch}: as fast as eager", "convnet", "max", "lowp static compile",
     None, ("lowp static",)),
    ("int8_linear, {workload}, M={batch}: >= 3x FP32 F.linear", "linear", "max", "lowp int8_linear op", 3.0, ()),
    ("int8_linear, {workload}, M={batch}: >= 1.0x FP32 F.linear", "linear", "min", "lowp int8_linear op", 1.0, ()),
    ("{workload}, M={batch}: lowp_ops.int8_linear within 2x F.linear's time", "calls", "min", "lowp_ops.int8_linear",
     0.5, ()),
    ("{workload} quantize_dynamic compiled at {batch}: as fast as eager", "bert", "max", "lowp dynamic compile", None,
     ("lowp dynamic",)),
    ("{workload} quantize_dynamic compiled at {batch}: as fast as eager", "minilm", "max", "lowp dynamic compile",
     None, ("lowp dynamic",)),
    ("{workload} quantize_dynamic at {batch}: >= 4.7x FP32 eager", "bert", "max", "lowp dynamic", 4.7,
     ("ort dynamic",)),
    ("{workload} quantize_dynamic at {batch}: >= 3.9x FP32 eager", "minilm", "max", "lowp dynamic", 3.9,
     ("ort dynamic",)),
)


def _repeated(fn, calls: int):
    """fn() called `calls` times; the last call's result."""
    for _ in range(calls - 1):
        fn()
    return fn()


@contextlib.contextmanager
def _quiet_ao():
    """torch.ao.quantization still works in torch 2.13 but warns on every call (deprecated, reduce_range,
    quantized tensor creation); the report says which rows are torch.ao, so the warnings add nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\.")
        yield


class AoReadyConvNet(ConvNet):
    """The seed ConvNet as torch.ao eager static quantization needs it: the same layers and weights (load the
    FP32 state_dict), ReLUs as modules so conv1 + relu and fc1 + relu can be fused, and Quant / DeQuant stubs
    around the int8 region. x: (B, 1, 28, 28) float32 -> log-probabilities (B, 10) float32, as ConvNet."""

    def __init__(self) -> None:
        super().__init__()
        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(self.quant(x)))
        x = self.dropout1(F.max_pool2d(self.conv2(x), 2))  # max-pool and eval dropout run on quantized tensors
        x = self.dropout2(self.relu2(self.fc1(torch.flatten(x, 1))))
        return F.log_softmax(self.dequant(self.fc2(x)).float(), dim=1)


def ao_static_convnet(fp32: ConvNet, calib: list[torch.Tensor]) -> nn.Module:
    """torch.ao eager static INT8 (x86 backend: fbgemm + oneDNN) of a trained ConvNet, calibrated on `calib`."""
    torch.backends.quantized.engine = "x86"
    model = AoReadyConvNet()
    model.load_state_dict(fp32.state_dict())
    model.eval()
    with _quiet_ao(), torch.no_grad():
        model = torch.ao.quantization.fuse_modules(model, [["conv1", "relu1"], ["fc1", "relu2"]])
        model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
        prepared = torch.ao.quantization.prepare(model)
        for x in calib:
            prepared(x)
        return torch.ao.quantization.convert(prepared)


def ao_dynamic(model: nn.Module) -> nn.Module:
    """torch.ao dynamic INT8 of every nn.Linear (a copy; other layers stay FP32)."""
    with _quiet_ao():
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def lowp_static(model: nn.Module, calib: list[torch.Tensor], time_layers: torch.Tensor | None = None,
                config: lowp_ops.Int8StaticConfig | None = None) -> nn.Module:
    """prepare / calibrate / convert; time_layers: an input to time each layer on (convert's time_layers)."""
    prepared = lowp_ops.prepare(model, config)
    lowp_ops.calibrate(prepared, calib, progress=False)
    if time_layers is None:
        return lowp_ops.convert(prepared)
    return lowp_ops.convert(prepared, time_layers=True, example_inputs=time_layers)


_CALLS_PER_TURN = 3  # timed calls a row makes in its turn, after one untimed call that warms its caches again


class Bench:
    """Collects rows. The rows of one workload and batch are timed together, round-robin (a few calls of each row
    in turn, repeated), so a drift in the machine's state — another process, the allocator returning memory to the OS
    (FP32 eager on the ConvNet at batch 256 measured 56 to 99 ms across runs on the CI machine, 2026-11-25) — falls
    on every row alike and the ratios hold. smoke: one timed call per row; otherwise at most `repeats` calls a row,
    fewer for a row whose calls add up to more than budget_s seconds."""

    def __init__(self, smoke: bool, repeats: int, budget_s: float = 8.0) -> None:
        self.smoke, self.repeats, self.budget_s = smoke, repeats, budget_s
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self._pending: list[tuple[dict, object, object]] = []  # (row, fn, acc) checked and warm, not yet timed

    def note(self, text: str) -> None:
        """Print text now and end the report with it (once, however many workloads say it)."""
        print(text, flush=True)
        if text not in self.notes:
            self.notes.append(text)

    def row(self, key: str, workload: str, batch, provider: str, fn, ref: torch.Tensor | None, *,
            backend: str = "native", warmup: int = 2, acc=None, acc_metric: str = "top-1 %", calls: int = 1) -> None:
        """Check fn()'s output against ref (None: this is the baseline) and warm fn up under the lowp CPU backend
        `backend`; it is timed with the other rows of its workload and batch (flush). The checked call is the first
        warm-up; warmup more follow (the first calls of a lowp model pack weights for oneDNN and of torch.compile
        compile). acc() -> the row's accuracy, in acc_metric's unit, evaluated after timing. calls: each timed sample
        is that many calls back to back, reported per call (a call of a few microseconds, timed alone, measures the
        caches the other rows left behind rather than its own cost). An exception becomes the row's error (a
        torch.compile failure is a result, not a crash)."""
        if self._pending and (self._pending[0][0]["key"], self._pending[0][0]["batch"]) != (key, batch):
            self.flush()
        row = {"key": key, "workload": workload, "batch": batch, "provider": provider, "baseline": ref is None,
               "backend": backend, "times": [], "wall_s": 0.0, "calls": calls}
        if calls > 1:
            fn = functools.partial(_repeated, fn, calls)
        if acc is not None:
            row["accuracy_metric"] = acc_metric
        t0 = time.perf_counter()
        try:
            with torch.no_grad(), lowp_ops.use_cpu_backend(backend):
                out = fn()
                if ref is not None:
                    row["sqnr_db"] = quant.sqnr_db(ref, out.float())
                for _ in range(0 if self.smoke else warmup):
                    fn()
            self._pending.append((row, fn, acc))
        except Exception as e:  # noqa: BLE001 - recorded in the report, the other rows still run
            self._fail(row, e)
        row["setup_s"] = time.perf_counter() - t0  # the check and warm-up (a compile): not the timing budget's
        self.rows.append(row)

    @staticmethod
    def _fail(row: dict, e: Exception) -> None:
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"

    def flush(self) -> None:
        """Time the pending rows round-robin, then report them."""
        live = list(self._pending)
        turns = 1 if self.smoke else -(-self.repeats // _CALLS_PER_TURN)
        for _ in range(turns):
            for entry in list(live):
                row, fn, _ = entry
                try:
                    with torch.no_grad(), lowp_ops.use_cpu_backend(row["backend"]):
                        if not self.smoke:
                            fn()  # the other rows' turns evicted this one's data from the caches
                        for _ in range(1 if self.smoke else _CALLS_PER_TURN):
                            t0 = time.perf_counter()
                            fn()
                            dt = time.perf_counter() - t0
                            row["times"].append(dt * 1e3 / row["calls"])
                            row["wall_s"] += dt
                except Exception as e:  # noqa: BLE001
                    self._fail(row, e)
                    live.remove(entry)
                    continue
                if not self.smoke and len(row["times"]) >= 3 and row["wall_s"] > self.budget_s:
                    live.remove(entry)  # a slow row (the reference): enough samples
        for row, _, acc in self._pending:
            if "error" not in row:
                row.update(ms=statistics.median(row["times"]), repeats=len(row["times"]))
                if acc is not None:
                    with torch.no_grad(), lowp_ops.use_cpu_backend(row["backend"]):
                        row["accuracy"] = acc()
            shown = f"{_ms(row['ms'])} ms x{row['repeats']}" if "ms" in row else row["error"]
            sq = f", {row['sqnr_db']:.1f} dB" if "sqnr_db" in row else ""
            print(f"  {row['workload']} | {row['batch']} | {row['provider']}: {shown}{sq} ({row['wall_s']:.1f} s)",
                  flush=True)
        self._pending = []

    def speedups(self) -> None:
        for r in self.rows:
            base = next((b for b in self.rows if b["baseline"] and (b["key"], b["batch"]) == (r["key"], r["batch"])),
                        None)
            if base is not None and "ms" in base and "ms" in r:
                r["speedup"] = base["ms"] / r["ms"]

    def broken(self) -> list[dict]:
        """Rows that failed or returned garbage. torch.compile is excused: whether inductor works depends on the
        machine's C++ toolchain, not on lowp."""
        return [r for r in self.rows if ("error" in r and "compile" not in r["provider"])
                or r.get("sqnr_db", math.inf) < MIN_SQNR_DB]


def bench_convnet(b: Bench) -> None:
    """The seed ConvNet, trained on the digits; rows at the smallest and largest batch, accuracy on the test set."""
    tx, ty, vx, vy = load_digits_28()
    torch.manual_seed(0)
    fp32 = ConvNet()
    # 4 epochs: ~97-98 % test accuracy, enough that an accuracy drop from quantization is visible
    train(fp32, tx, ty, epochs=1 if b.smoke else 4, max_steps=4 if b.smoke else None)
    fp32.eval()
    calib = [tx[i:i + 64] for i in range(0, 64 * (1 if b.smoke else 8), 64)]
    with torch.no_grad():
        models = {"fp32 eager": fp32,
                  # dynamic=False: one static graph per batch size, as a deployment would compile it (a second
                  # batch size would otherwise recompile with a symbolic batch)
                  "fp32 compile": torch.compile(fp32, dynamic=False),
                  "torch.ao dynamic": ao_dynamic(fp32),
                  "torch.ao static x86": ao_static_convnet(fp32, calib)}
        rivals, skipped = peers.convnet(peers.Graph(fp32, (calib[0],), ("x",), {"x": {0: "batch"}}),
                                        [(x,) for x in calib])
        models.update(rivals)  # the rivals' rows before lowp's, as in the report
        models["lowp dynamic"], models["lowp static"] = lowp_ops.quantize_dynamic(fp32), lowp_static(fp32, calib)
        models["lowp static compile"] = torch.compile(models["lowp static"], dynamic=False)
        # layers timed against float at batch 1 on this machine; the slower stay float (kept for both batches)
        models["lowp static time_layers@b1"] = lowp_static(fp32, calib, time_layers=vx[:1])
    for reason in skipped:
        b.note(reason)
    runs = [(name, model, "native") for name, model in models.items()]
    runs += [(f"{name} (reference)", models[name], "reference") for name in ("lowp dynamic", "lowp static")]
    accs: dict[str, float] = {}

    def acc_of(name, model):
        def acc():
            if name not in accs:
                accs[name] = accuracy(model, vx, vy)
            return accs[name]
        return acc

    for batch in (1, 4) if b.smoke else (1, 256):
        x = vx[:batch]
        with torch.no_grad():
            ref = fp32(x)
        for name, model, backend in runs:
            b.row("convnet", "seed ConvNet", batch, name, lambda m=model, x=x: m(x),
                  None if name == "fp32 eager" else ref, backend=backend, warmup=0 if backend == "reference" else 2,
                  acc=acc_of(name, model))
    gap = accs.get("fp32 eager", 0) - accs.get("torch.ao static x86", 0)
    if not b.smoke and abs(gap) > 1.0:
        b.notes.append(f"torch.ao static x86 ConvNet accuracy is {gap:+.2f} points off FP32: check AoReadyConvNet")


def bench_linear(b: Bench) -> None:
    """One K x K Linear at M 1 / 32 / 256: FP32 F.linear, torch.compile, torch.ao dynamic, lowp Int8Linear (per
    token dynamic) on both backends, and the raw op with the weight quantized beforehand, through torch.ops.lowp and
    as lowp_ops.int8_linear (its direct call, lowp_ops/ops/_common.py)."""
    k = 64 if b.smoke else 4096
    torch.manual_seed(0)
    lin = nn.Linear(k, k).eval()
    weight, bias = lin.weight.detach(), lin.bias.detach()
    qw = quant.quantize_tensor(weight, quant.per_channel(axis=0))
    qdata, qscale = qw.qdata, qw.scale.reshape(-1)
    compiled = torch.compile(lin, dynamic=False)
    ao = ao_dynamic(nn.Sequential(lin))
    int8 = Int8Linear.from_float(lin)
    name = f"Linear {k}x{k}"
    for m in (1, 32, 256):
        x = torch.randn(m, k)
        ref = F.linear(x, weight, bias)
        b.row("linear", name, m, "fp32 F.linear", lambda x=x: F.linear(x, weight, bias), None)
        b.row("linear", name, m, "fp32 compile", lambda x=x: compiled(x), ref)
        b.row("linear", name, m, "torch.ao dynamic", lambda x=x: ao(x), ref)
        b.row("linear", name, m, "lowp Int8Linear", lambda x=x: int8(x), ref)
        b.row("linear", name, m, "lowp int8_linear op", lambda x=x: torch.ops.lowp.int8_linear(x, qdata, qscale, bias),
              ref)
        b.row("linear", name, m, "lowp_ops.int8_linear", lambda x=x: lowp_ops.int8_linear(x, qdata, qscale, bias), ref)
        b.row("linear", name, m, "lowp Int8Linear (reference)", lambda x=x: int8(x), ref, backend="reference", warmup=0)


def bench_calls(b: Bench) -> None:
    """The cost of one call where the arithmetic is nothing: a 64 x 64 Linear at M = 1 as F.linear, as lowp's
    Int8Linear, as lowp_ops.int8_linear (the functional call, weight quantized beforehand) and through
    torch.ops.lowp; each sample times 200 calls back to back."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 64).eval()
    weight, bias = lin.weight.detach(), lin.bias.detach()
    qw = quant.quantize_tensor(weight, quant.per_channel(axis=0))
    qdata, qscale = qw.qdata, qw.scale.reshape(-1)
    int8 = Int8Linear.from_float(lin)
    x = torch.randn(1, 64)
    ref = F.linear(x, weight, bias)
    name, calls = "Linear 64x64 per call", 1 if b.smoke else 200
    b.row("calls", name, 1, "fp32 F.linear", lambda: F.linear(x, weight, bias), None, calls=calls)
    b.row("calls", name, 1, "lowp Int8Linear", lambda: int8(x), ref, calls=calls)
    b.row("calls", name, 1, "lowp_ops.int8_linear", lambda: lowp_ops.int8_linear(x, qdata, qscale, bias), ref,
          calls=calls)
    b.row("calls", name, 1, "lowp int8_linear op", lambda: torch.ops.lowp.int8_linear(x, qdata, qscale, bias), ref,
          calls=calls)


class Logits(nn.Module):
    """An image classifier of transformers as the ResNet rows call it: pixel_values (N, 3, H, W) -> logits (N, 1000)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values).logits


def bench_resnet(b: Bench) -> None:
    """transformers' ResNet-50 (ResNetConfig(): bottleneck blocks 3-4-6-3, 224 x 224) with random weights and
    BatchNorm statistics from two training-mode passes; random images. lowp static hands int8 from conv to conv and
    through the 16 residual adds (Int8Add); "chain_int8=False" is the same conversion without hand-offs (each layer
    quantizes its float input and writes float), and lowp dynamic quantizes per call."""
    try:
        from transformers import ResNetConfig, ResNetForImageClassification
    except Exception as e:  # noqa: BLE001 - an optional dependency (the bench extra), missing or broken
        b.note(f"ResNet-50 skipped: transformers unavailable ({type(e).__name__}: {e})")
        return
    small = dict(embedding_size=8, hidden_sizes=[16, 32, 32, 64], depths=[1, 1, 1, 1])
    config, size = (ResNetConfig(**small), 32) if b.smoke else (ResNetConfig(), 224)
    torch.manual_seed(0)
    fp32 = ResNetForImageClassification(config)
    with torch.no_grad():
        for _ in range(2):
            fp32(torch.randn(8, 3, size, size))
    fp32.eval()
    calib = [torch.randn(4, 3, size, size) for _ in range(1 if b.smoke else 4)]
    with torch.no_grad():
        models = {"fp32 eager": Logits(fp32), "lowp dynamic": Logits(lowp_ops.quantize_dynamic(fp32)),
                  "lowp static": Logits(lowp_static(fp32, calib)),
                  "lowp static chain_int8=False": Logits(lowp_static(
                      fp32, calib, config=lowp_ops.Int8StaticConfig(chain_int8=False)))}
    name = "ResNet 1-1-1-1" if b.smoke else "ResNet-50"
    for batch in (1, 2) if b.smoke else (1, 16):
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            ref = models["fp32 eager"](x)
        for provider, m in models.items():
            b.row("resnet", name, batch, provider, lambda m=m, x=x: m(x), None if provider == "fp32 eager" else ref)


class LastHidden(nn.Module):
    """A transformers encoder as every encoder row calls it: (input_ids, attention_mask), both (B, S) int64 ->
    last_hidden_state (B, S, H) float32. Positional and one output, as the exporters need it: BertModel itself, given
    its inputs positionally by the TorchScript exporter, failed ("got multiple values for argument 'use_cache'",
    transformers 5.25)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def sentences(vocab: int, batch: int, seq: int, min_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (batch, seq) int64: `batch` sentences of random tokens whose lengths are drawn uniformly
    from min_len..seq, padded with 0 ([PAD]) to seq; mask is 1 on each sentence's tokens, 0 on its padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    mask = (torch.arange(seq) < torch.randint(min_len, seq + 1, (batch, 1), generator=g)).long()
    return ids * mask, mask


def embeddings(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings (B, H) float32, as sentence-transformers pools MiniLM: hidden (B, S, H) averaged over the
    tokens where mask (B, S) is 1."""
    w = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * w).sum(1) / w.sum(1)


@dataclasses.dataclass(frozen=True)
class Encoder:
    """An encoder workload: transformers.BertModel(BertConfig(**config)) with random weights (nothing downloaded) on
    `batch` sentences of min_len..seq tokens; smoke_*: the --smoke shapes, named "<family> <layers>L-<hidden>"."""

    key: str
    family: str
    name: str
    config: dict
    shape: tuple[int, int, int]  # batch, seq, min_len
    smoke_config: dict
    smoke_shape: tuple[int, int, int]


# BertConfig(): 12 layers, hidden 768, 12 heads, FFN 3072; 8 full sentences of 128 tokens
BERT_BASE = Encoder("bert", "BERT", "BERT-base", {}, (8, 128, 128),
                    dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=256),
                    (2, 16, 16))
# sentence-transformers/all-MiniLM-L6-v2's shape; 64 sentences of 8-32 tokens, a small embedding request
MINILM_L6 = Encoder("minilm", "MiniLM", "MiniLM-L6",
                    dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
                    (64, 32, 8),
                    dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=128), (4, 16, 4))


def bench_encoder(b: Bench, enc: Encoder) -> None:
    """One encoder: FP32 eager and compiled, torch.ao dynamic, the peers (NNCF calibrated on a few other batches of
    sentences), lowp dynamic (native eager and compiled, and reference). The output compared is last_hidden_state
    (batch, seq, hidden) float32, the accuracy the cos min of the sentence embeddings."""
    try:
        from transformers import BertConfig, BertModel
    except Exception as e:  # noqa: BLE001 - an optional dependency (the bench extra), missing or broken
        b.note(f"{enc.family} skipped: transformers unavailable ({type(e).__name__}: {e})")
        return
    config = BertConfig(**(enc.smoke_config if b.smoke else enc.config))
    batch, seq, min_len = enc.smoke_shape if b.smoke else enc.shape
    name = f"{enc.family} {config.num_hidden_layers}L-{config.hidden_size}" if b.smoke else enc.name
    torch.manual_seed(0)
    fp32 = BertModel(config).eval()
    ids, mask = sentences(config.vocab_size, batch, seq, min_len, seed=0)
    calib = [sentences(config.vocab_size, 2 if b.smoke else 8, seq, min_len, seed=1 + i)
             for i in range(1 if b.smoke else 4)]
    eager = copy.deepcopy(fp32)
    eager.set_attn_implementation("eager")
    graph = functools.partial(peers.Graph, example=(ids, mask), names=("input_ids", "attention_mask"),
                              dynamic={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    with torch.no_grad():
        model = LastHidden(fp32)
        models = {"fp32 eager": model, "fp32 compile": torch.compile(model, dynamic=False),
                  "torch.ao dynamic": LastHidden(ao_dynamic(fp32))}
        rivals, skipped = peers.encoder(graph(model), graph(LastHidden(eager)), calib, config.num_attention_heads,
                                        config.hidden_size)
        models.update(rivals)
        models["lowp dynamic"] = LastHidden(lowp_ops.quantize_dynamic(fp32))
        models["lowp dynamic compile"] = torch.compile(models["lowp dynamic"], dynamic=False)
        ref = model(ids, mask)
    for reason in skipped:
        b.note(reason)
    ref_embeddings = embeddings(ref, mask)

    def cos_min(m: nn.Module):
        return lambda: F.cosine_similarity(ref_embeddings, embeddings(m(ids, mask), mask), dim=1).min().item()

    label = f"{batch}x{seq}"
    # 3 warm-up calls for lowp: its first two forward passes took 8.5 and 7.3 s against 2.4 s after on BERT-base
    # (weights packed for oneDNN on the first; CI machine with another job running, 2026-11-25). The reference
    # backend (float64 GEMMs): ~2 s a BERT-base pass, so the time budget leaves it about 3 timed calls and the checked
    # call is its only warm-up.
    runs = [(provider, m, "native", 2 if provider.startswith("lowp") else 1) for provider, m in models.items()]
    runs.append(("lowp dynamic (reference)", models["lowp dynamic"], "reference", 0))
    for provider, m, backend, warmup in runs:
        b.row(enc.key, name, label, provider, lambda m=m: m(ids, mask), None if provider == "fp32 eager" else ref,
              backend=backend, warmup=warmup, acc=cos_min(m), acc_metric="cos min")


def _pick(rows: list[dict], key: str, which: str, provider: str) -> dict | None:
    batches = [r["batch"] for r in rows if r["key"] == key and r["baseline"]]
    if not batches:
        return None
    order = sorted(batches, key=lambda v: int(str(v).split("x")[0]))
    batch = order[0] if which == "min" else order[-1]
    return next((r for r in rows if (r["key"], r["batch"], r["provider"]) == (key, batch, provider)), None)


def milestones(rows: list[dict]) -> list[dict]:
    """Each milestone: its row's speedup, pass / fail, and the comparison with each rival that was measured. One with
    a minimum passes on the minimum alone (the rivals are targets beyond it); one without passes when it is at least
    as fast as every rival, and is n/a when none was measured."""
    out = []
    for what, key, which, provider, minimum, rivals in MILESTONES:
        r = _pick(rows, key, which, provider)
        if r is None:
            out.append({"milestone": what.format(workload=key, batch=which), "status": "n/a",
                        "detail": "no measurement (workload skipped)"})
            continue
        m = {"milestone": what.format(workload=r["workload"], batch=r["batch"]), "minimum": minimum}
        if "speedup" not in r:
            m.update(status="n/a", detail=r.get("error", "not timed"))
            out.append(m)
            continue
        m.update(speedup=r["speedup"], detail=f"measured {r['speedup']:.2f}x", targets={})
        for rival in rivals:
            o = _pick(rows, key, which, rival)
            if o is not None and "speedup" in o:
                m["targets"][rival] = "met" if r["speedup"] >= o["speedup"] else "missed"
                m["detail"] += f"; target >= {rival} ({o['speedup']:.2f}x): {m['targets'][rival]}"
        if minimum is not None:
            m["status"] = "PASS" if r["speedup"] >= minimum else "FAIL"
        elif m["targets"]:
            m["status"] = "PASS" if all(t == "met" for t in m["targets"].values()) else "FAIL"
        else:
            m.update(status="n/a", detail=m["detail"] + "; no rival measured")
        out.append(m)
    return out


def _ms(ms: float) -> str:
    """Milliseconds to the microsecond, or to a tenth of one under 0.1 ms (the per-call rows)."""
    return f"{ms:.3f}" if ms >= 0.1 else f"{ms:.4f}"


def markdown(info: dict, rows: list[dict], marks: list[dict], notes: list[str], smoke: bool) -> str:
    lines = header(info, "lowp CPU benchmarks" + (" (smoke: tiny shapes, one call per row)" if smoke else ""))
    busy = info["load_before"][0] > 0.3  # this run not started yet: anything above ~0 is another process
    lines += [f"1-minute load average just before the run: {info['load_before'][0]} ("
              + (f"something else was using these {info['cores']} cores: expect slower, noisier rows)" if busy
                 else "the machine was idle)"),
              f"Allocator: {info['allocator']} (freed memory stays in the process, so large-batch rows time "
              "arithmetic, not page faults; --system-allocator to time without)",
              f"Peers (bench/peers.py): {info['peers']}", ""]
    lines += ["| workload | batch/M | provider | ms | speedup vs FP32 eager | SQNR dB | accuracy |",
              "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        ms = _ms(r["ms"]) if "ms" in r else "error"
        sp = f"{r['speedup']:.2f}x" if "speedup" in r else "-"
        sq = "-" if r["baseline"] or "sqnr_db" not in r else f"{r['sqnr_db']:.1f}"
        acc = "-" if "accuracy" not in r else (f"cos min {r['accuracy']:.5f}" if r["accuracy_metric"] == "cos min"
                                               else f"{r['accuracy']:.2f} %")
        lines.append(f"| {r['workload']} | {r['batch']} | {r['provider']} | {ms} | {sp} | {sq} | {acc} |")
    lines += ["", ("Rows marked (reference) run the same lowp model on the float64 reference backend "
                   "(lowp_ops.use_cpu_backend(\"reference\")). Timed repeats per row are in the JSON."),
              ("Accuracy: the ConvNet's top-1 % on the 359 held-out digits; an encoder's cos min, the smallest cosine "
               "similarity over its sentences between the row's and FP32's embeddings (last_hidden_state averaged "
               "over the attention mask)."), "",
              "## Milestones" + (" (smoke shapes: not meaningful)" if smoke else ""), ""]
    lines += [f"- {m['status']}: {m['milestone']} — {m['detail']}" for m in marks]
    errors = [f"- {r['workload']} | {r['batch']} | {r['provider']}: {r['error']}" for r in rows if "error" in r]
    if errors or notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes] + errors
    return "\n".join(lines) + "\n"


WORKLOADS = {"convnet": bench_convnet, "resnet": bench_resnet, "linear": bench_linear, "calls": bench_calls,
             "bert": lambda b: bench_encoder(b, BERT_BASE), "minilm": lambda b: bench_encoder(b, MINILM_L6)}


# glibc hands buffers above its mmap threshold (at most 32 MiB) back to the OS on free, so every call of a large-batch
# ConvNet page-faults its activations in again: on the CI machine (2026-11-25) that was 25k faults and 40-57 ms of
# system time per FP32 batch-256 call, FP32 eager swinging 56-99 ms from run to run with the heap's history. Keeping
# freed memory in the process measures the arithmetic instead, the same for every provider (a serving process would
# do the same, or use jemalloc / tcmalloc).
PINNED_ALLOCATOR = "glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295"


def _pin_allocator(argv: list[str]) -> None:
    """Re-run this benchmark in a fresh interpreter with PINNED_ALLOCATOR (glibc reads it only at start)."""
    if os.environ.get("GLIBC_TUNABLES") == PINNED_ALLOCATOR:
        return
    env = dict(os.environ, GLIBC_TUNABLES=PINNED_ALLOCATOR)
    os.execve(sys.executable, [sys.executable, "-m", "bench", "--device", "cpu", *argv], env)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench --device cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results", help="folder for cpu-<date>.json and .md")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one timed call per row, nothing saved")
    parser.add_argument("--repeats", type=int, default=20,
                        help="most timed calls per row (rows slower than ~8 s in all get fewer)")
    parser.add_argument("--system-allocator", action="store_true",
                        help="time with glibc's default allocator settings (page faults included; noisy)")
    args = parser.parse_args(argv)
    if not args.system_allocator and not args.smoke:
        _pin_allocator(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    info = machine("cpu")
    info["allocator"] = ("glibc default" if args.system_allocator
                         else f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')}")
    # other processes on these cores skew every row; the load average just before the run says whether any were
    # busy (afterwards it mostly counts this run)
    info["load_before"] = [round(v, 2) for v in os.getloadavg()]
    info["peers"] = peers.versions()
    b = Bench(smoke=args.smoke, repeats=args.repeats)
    for key, run in WORKLOADS.items():
        print(f"== {key}", flush=True)
        run(b)
        b.flush()
    b.speedups()
    marks = milestones(b.rows)
    report = markdown(info, b.rows, marks, b.notes, args.smoke)
    print(report)
    broken = b.broken()
    info["wall_s"] = round(time.perf_counter() - start, 1)
    print(f"cpu bench: {len(b.rows)} rows in {info['wall_s']} s, {len(broken)} broken"
          + (" (smoke: nothing saved)" if args.smoke else ""))
    if not args.smoke:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"cpu-{info['date']}"
        stem.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": b.rows, "milestones": marks,
                                                         "notes": b.notes}, indent=1, default=str))
        stem.with_suffix(".md").write_text(report)
        print(f"wrote {stem}.json and {stem}.md")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
