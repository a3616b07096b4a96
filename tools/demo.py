"""The `make demo` job: the small ConvNet of the article lowp grew from (model acceleration and low-precision
computing, with its formulas and a small ConvNet; lowp_ops.examples.ConvNet), trained on real handwritten digits,
converted FP32 -> INT8 (dynamic and static) and FP16 by lowp, with accuracy and speedup vs FP32 side by side; then
one LLM-sized linear layer through int8_linear, timed against FP32 F.linear.

The report names the backend that ran: lowp's Triton kernels on a CUDA machine; on a CPU, lowp's native int8
backend (oneDNN int8 convolution / matmul and torch._int_mm, lowp_ops.cpu), or the exact but slow pure-torch
reference when LOWP_CPU_BACKEND=reference forces it or the CPU lacks int8 dot products (the report then says so,
and why). FP16 has no native CPU path: on a CPU it runs emulated (float16 values, float32 arithmetic), so the
report marks its CPU time as no speed claim. The trained FP32 checkpoint is cached (~/.cache/lowp) so later runs
skip training. Writes demo-report/report.md and demo-report/schemes.png (accuracy, and speedup vs FP32 at batch 1
and the large batch); `--help` lists the knobs (epochs, batch, cache and report folders).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import resource
import statistics
import textwrap
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F

import lowp_ops
from lowp_ops import quant
from lowp_ops.cpu import support
from lowp_ops.examples import ConvNet, accuracy, load_digits_28, train
from lowp_ops.examples.evaluation import convert_all
from lowp_ops.policy import time_ms

CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "lowp"
FP16_ON_CPU = ("fp16 on CPU runs emulated: lowp has no native CPU FP16 matmul, so Fp16Linear runs the reference "
               "(float16 values, float32 arithmetic) and its CPU time is not a speed claim; lowp's FP16 kernels are "
               "for GPU tensor cores. Its accuracy is real. Only the Linear layers are FP16; the convs stay FP32.")


def median_ms(fn, *, min_reps: int = 10, min_s: float = 0.5) -> float:
    """Median milliseconds of fn() without autograd. On a GPU, time_ms (CUDA events). On the CPU three warm-up calls
    (oneDNN builds its primitives and lowp prepacks weights on the first), then at least min_reps calls and min_s
    seconds: time_ms's one warm-up and five calls swung batch-1 ConvNet timings by up to 5x between back-to-back
    runs on a shared 2-core machine (2026-11-25)."""
    if torch.cuda.is_available():
        return time_ms(fn)
    with torch.no_grad():
        for _ in range(3):
            fn()
        samples, start = [], time.perf_counter()
        while len(samples) < min_reps or time.perf_counter() - start < min_s:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds all processes have used since boot, CPU seconds this process has used), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    ours = resource.getrusage(resource.RUSAGE_SELF)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), ours.ru_utime + ours.ru_stime


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return (names[0] if names else platform.processor() or platform.machine()) + f", {torch.get_num_threads()} threads"


def backend_ran(device: str) -> tuple[str, bool]:
    """(one line naming what the timed lowp ops ran on, whether their timings are lowp's speed)."""
    if device == "cuda":
        return f"lowp's Triton kernels on {torch.cuda.get_device_name()}", True
    backend, reason = lowp_ops.cpu_backend(), support.missing()
    if backend == "native" and reason is None:
        return f"CPU: lowp's native int8 backend (oneDNN int8 conv/matmul, torch._int_mm) on {cpu_model()}", True
    oracle = "the exact, slow oracle: the INT8 timings below measure it, not lowp's speed"
    if backend == "native":
        return (f"CPU ({cpu_model()}): lowp's pure-torch REFERENCE backend, because the native int8 backend cannot "
                f"run here ({reason}) — {oracle}"), False
    if backend == "reference":
        how = "LOWP_CPU_BACKEND=reference" if os.environ.get("LOWP_CPU_BACKEND") == "reference" else "forced"
        return (f"CPU ({cpu_model()}): lowp's pure-torch REFERENCE backend ({how}) — {oracle}; without it lowp runs "
                f"its native int8 backend"), False
    return (f"CPU ({cpu_model()}): lowp's Triton kernels under Triton's interpreter (LOWP_CPU_BACKEND={backend}, a "
            f"test mode) — the timings below are the interpreter's, not lowp's speed"), False


class Scheme(NamedTuple):
    """One row of the ConvNet table: test accuracy, median ms at batch 1 and at the large batch, speedups vs FP32."""
    name: str
    accuracy: float
    ms_b1: float
    ms_batch: float
    speedup_b1: float = 1.0
    speedup_batch: float = 1.0


def trained_convnet(device: str, tx, ty, epochs: int, cache: pathlib.Path) -> ConvNet:
    model = ConvNet().to(device)
    path = cache / f"convnet-digits-seed0-{epochs}ep.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location=device))
        print(f"  loaded the trained FP32 ConvNet from {path}")
        return model
    print(f"  training the FP32 ConvNet on the digits ({epochs} epochs, once; cached afterwards) ...")
    torch.manual_seed(0)
    train(model, tx, ty, epochs=epochs)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def convnet_section(device: str, args, report: pathlib.Path, timer, ran: str, is_speed: bool) -> list[str]:
    tx, ty, vx, vy = (t.to(device) for t in load_digits_28())
    fp32 = trained_convnet(device, tx, ty, args.epochs, args.cache)
    one, batch = vx[:1], vx[:args.batch]
    # "int8 static, timed": each layer timed against FP32 at batch 1, the slower kept FP32 (time_layers=True)
    models = convert_all(fp32, tx, ty, qat_epochs=0, time_at=one)
    rows = []
    for name, model in models.items():
        model.eval()
        ms_b1, ms_batch = timer(lambda m=model: m(one)), timer(lambda m=model: m(batch))
        rows.append(Scheme(name, accuracy(model, vx, vy), ms_b1, ms_batch))
    base = next(r for r in rows if r.name == "fp32")
    rows = [r._replace(speedup_b1=base.ms_b1 / r.ms_b1, speedup_batch=base.ms_batch / r.ms_batch) for r in rows]
    emulated = device == "cpu"  # FP16 has no native CPU path (FP16_ON_CPU)
    lines = [f"| model | test accuracy % | batch 1 ms | batch {args.batch} ms | speedup vs FP32 (b1 / b{args.batch}) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.name}{' (emulated on CPU, see note)' if emulated and r.name == 'fp16' else ''} | "
              f"{r.accuracy:.2f} | {r.ms_b1:.3f} | {r.ms_batch:.3f} | {r.speedup_b1:.2f}x / {r.speedup_batch:.2f}x |"
              for r in rows]
    losers = [r.name for r in rows if r.name.startswith("int8") and r.speedup_b1 < 1]
    if is_speed and losers:
        batch1 = (f"Note: {', '.join(losers)} loses to FP32 at batch 1 here, where the FP32 forward is only "
                  f"{base.ms_b1:.2f} ms of work: each int8 layer carries a fixed per-call cost (the Python around "
                  f"each library call, quantizing the activations) that outweighs the arithmetic it saves in the "
                  f"smallest layers. INT8 pays off once the arithmetic dominates: batch {args.batch} above, and the "
                  f"linear layer below. \"int8 static, timed\" converts with time_layers=True at batch 1: the layers "
                  f"slower than FP32 there stay FP32.")
        lines += ["", batch1]
    if emulated:
        lines += ["", f"Note: {FP16_ON_CPU}"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [f"{r.name}\n(emulated)" if emulated and r.name == "fp16" else r.name for r in rows]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        ax1.bar_label(ax1.bar(names, [r.accuracy for r in rows], color="tab:blue"), fmt="%.2f", fontsize=7)
        ax1.set(ylabel="test accuracy %", ylim=(min(r.accuracy for r in rows) - 2, 100), title="accuracy")
        width, xs = 0.38, range(len(rows))
        for shift, column, label, color in ((-1, "speedup_b1", "batch 1", "tab:orange"),
                                            (1, "speedup_batch", f"batch {args.batch}", "tab:red")):
            bars = ax2.bar([x + shift * width / 2 for x in xs], [getattr(r, column) for r in rows], width, label=label,
                           color=color, hatch=["//" if "emulated" in n else "" for n in names])
            ax2.bar_label(bars, fmt="%.2fx", fontsize=7)
        ax2.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax2.set(xticks=list(xs), xticklabels=names, ylabel="speedup vs FP32 (higher is faster)",
                title="speedup vs FP32 (FP32 = 1.0x)")
        ax2.set_ylim(0, max(max(r.speedup_b1, r.speedup_batch) for r in rows) * 1.15)
        ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        for ax in (ax1, ax2):
            ax.tick_params(axis="x", rotation=30, labelsize=8)
        title = ran if is_speed else "lowp REFERENCE backend: timings are the slow exact oracle, not lowp's speed"
        fig.suptitle(textwrap.fill(title, 130), fontsize=9)
        fig.tight_layout()
        fig.savefig(report / "schemes.png", dpi=110)
    except ImportError:
        lines.append("(matplotlib not installed: no plot)")
    return lines


def linear_section(device: str, quick: bool, timer) -> list[str]:
    if device == "cuda":
        M, K, N, dtype = 2048, 4096, 11008, torch.float16
    else:  # an LLM-projection-sized layer: large enough that int8 arithmetic, not call overhead, sets the time
        M, K, N, dtype = (32, 256, 256, torch.float32) if quick else (256, 4096, 4096, torch.float32)
    layer = torch.nn.Linear(K, N).to(device)
    x = torch.randn(M, K, device=device)
    qw = quant.quantize_tensor(layer.weight.detach(), quant.per_channel(axis=0))
    with torch.no_grad():
        y32 = layer(x)
        y8 = lowp_ops.int8_linear(x.to(dtype), qw.qdata, qw.scale, layer.bias.detach().to(dtype))
    x_lp, w_lp, b_lp = x.to(dtype), layer.weight.detach().to(dtype), layer.bias.detach().to(dtype)
    flops = 2 * M * N * K
    timings = [("FP32 F.linear", timer(lambda: F.linear(x, layer.weight, layer.bias)))]
    if device == "cuda":
        timings.append(("FP16 F.linear (cuBLAS)", timer(lambda: F.linear(x_lp, w_lp, b_lp))))
    int8_name = "lowp int8_linear (activations quantized per token inside)"
    timings.append((int8_name, timer(lambda: lowp_ops.int8_linear(x_lp, qw.qdata, qw.scale, b_lp))))
    w_err = quant.quantization_error(layer.weight.detach(), quant.per_channel(axis=0))
    unit, per = ("TFLOP/s", 1e9) if device == "cuda" else ("GFLOP/s", 1e6)
    sqnr = (f"x ({M}, {K}) {str(dtype).removeprefix('torch.')} through a ({N}, {K}) layer: output SQNR "
            f"{quant.sqnr_db(y32, y8):.1f} dB vs FP32 (int8 weight {w_err.sqnr_db:.1f} dB; the uniform-noise model "
            f"predicts {w_err.predicted_sqnr_db:.1f} dB)")
    lines = [sqnr, ""]
    lines += [f"- {name}: {ms:.3f} ms, {flops / ms / per:.2f} {unit}, {timings[0][1] / ms:.2f}x the speed of FP32 "
              f"F.linear" for name, ms in timings]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8, help="FP32 training epochs (the checkpoint is cached)")
    parser.add_argument("--batch", type=int, default=256, help="the large batch timed beside batch 1")
    parser.add_argument("--cache", type=pathlib.Path, default=CACHE)
    parser.add_argument("--report", type=pathlib.Path, default=pathlib.Path("demo-report"))
    parser.add_argument("--quick", action="store_true",
                        help="small linear problem and short timing runs (the tests use it)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ran, is_speed = backend_ran(device)
    timer = (lambda fn: median_ms(fn, min_reps=3, min_s=0.0)) if args.quick else median_ms
    print(f"lowp demo\n  backend: {ran}")
    args.report.mkdir(parents=True, exist_ok=True)
    timing = ("triton.testing.do_bench's median (CUDA events)" if device == "cuda" else
              f"the median of at least {'3 calls' if args.quick else '10 calls and 0.5 s'} after 3 warm-up calls")
    versions = f"torch {torch.__version__}, lowp {lowp_ops.__version__}; each time is {timing}."
    lines = ["# lowp demo", "", f"Backend: {ran}.", "", versions, "",
             "## The seed ConvNet on scikit-learn's digits (359 test images)", ""]
    start, t0 = cpu_seconds(), time.perf_counter()
    lines += convnet_section(device, args, args.report, timer, ran, is_speed)
    lines += ["", "![accuracy and speedup vs FP32](schemes.png)", "", "## One linear layer through int8_linear", ""]
    lines += linear_section(device, args.quick, timer)
    end = cpu_seconds()
    others = (end[0] - start[0] - (end[1] - start[1])) / (time.perf_counter() - t0) if start and end else 0.0
    if others > 0.25:  # a quarter core; an idle 2-core machine measured 0.01 (2026-11-25)
        busy = (f"WARNING: other processes kept {others:.1f} CPU cores busy on average while this ran: its threads "
                f"waited for them, so the timings below are disturbed. Rerun on an idle machine.")
        print(busy)
        lines.insert(4, busy + "\n")
    report = "\n".join(lines) + "\n"
    (args.report / "report.md").write_text(report)
    print(report)
    print(f"report written to {args.report / 'report.md'}")


if __name__ == "__main__":
    main()
