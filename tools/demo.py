"""The `make demo` job: the seed article's ConvNet, trained on real handwritten digits, converted FP32 -> INT8
(dynamic and static) and FP16 by lowp, with accuracy and latency side by side; then one LLM-sized linear layer
through int8_linear.

On a CUDA machine the converted models run lowp's Triton kernels. Without one they run lowp's pure-torch
reference path — the same arithmetic, not the same speed — and the demo says so. The trained FP32 checkpoint is
cached (~/.cache/lowp) so later runs skip training. Writes demo-report/report.md and demo-report/schemes.png;
`--help` lists the knobs (epochs, batch, cache and report folders).
"""

from __future__ import annotations

import argparse
import os
import pathlib

import torch
import torch.nn.functional as F

import lowp_ops
from lowp_ops import quant
from lowp_ops.examples import ConvNet, accuracy, load_digits_28, train
from lowp_ops.examples.evaluation import convert_all
from lowp_ops.registry.policy import time_ms

CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "lowp"


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


def convnet_section(device: str, args, report: pathlib.Path) -> list[str]:
    tx, ty, vx, vy = (t.to(device) for t in load_digits_28())
    fp32 = trained_convnet(device, tx, ty, args.epochs, args.cache)
    models = convert_all(fp32, tx, ty, qat_epochs=0)
    rows = []
    for name, model in models.items():
        model.eval()
        one, batch = vx[:1], vx[:args.batch]
        rows.append((name, accuracy(model, vx, vy), time_ms(lambda: model(one)), time_ms(lambda: model(batch))))
    base = {r[0]: r for r in rows}["fp32"]
    lines = [f"| model | test accuracy % | batch 1 ms | batch {args.batch} ms | speedup vs FP32 (b1 / b{args.batch}) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {a:.2f} | {t1:.3f} | {t256:.3f} | {base[2] / t1:.2f}x / {base[3] / t256:.2f}x |"
              for n, a, t1, t256 in rows]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
        names = [r[0] for r in rows]
        ax1.bar(names, [r[1] for r in rows], color="tab:blue")
        ax1.set(ylabel="test accuracy %", ylim=(min(r[1] for r in rows) - 2, 100), title="accuracy")
        ax2.bar(names, [r[3] for r in rows], color="tab:orange")
        ax2.set(ylabel=f"ms per batch of {args.batch}", title=f"latency, batch {args.batch}")
        for ax in (ax1, ax2):
            ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        fig.savefig(report / "schemes.png", dpi=110)
    except ImportError:
        lines.append("(matplotlib not installed: no plot)")
    return lines


def linear_section(device: str, quick: bool) -> list[str]:
    if device == "cuda":
        M, K, N, dtype = 2048, 4096, 11008, torch.float16
    else:
        M, K, N, dtype = (32, 256, 256, torch.float32) if quick else (256, 1024, 1024, torch.float32)
    layer = torch.nn.Linear(K, N).to(device)
    x = torch.randn(M, K, device=device)
    qw = quant.quantize_tensor(layer.weight.detach(), quant.per_channel(axis=0))
    with torch.no_grad():
        y32 = layer(x)
        y8 = lowp_ops.int8_linear(x.to(dtype), qw.qdata, qw.scale, layer.bias.detach().to(dtype))
    x_lp, w_lp, b_lp = x.to(dtype), layer.weight.detach().to(dtype), layer.bias.detach().to(dtype)
    flops = 2 * M * N * K
    timings = [("FP32 F.linear", time_ms(lambda: F.linear(x, layer.weight, layer.bias)))]
    if device == "cuda":
        timings.append(("FP16 F.linear (cuBLAS)", time_ms(lambda: F.linear(x_lp, w_lp, b_lp))))
    timings.append(("lowp int8_linear", time_ms(lambda: lowp_ops.int8_linear(x_lp, qw.qdata, qw.scale, b_lp))))
    w_err = quant.quantization_error(layer.weight.detach(), quant.per_channel(axis=0))
    lines = [f"x ({M}, {K}) {str(dtype).removeprefix('torch.')} through a ({N}, {K}) layer: output SQNR "
             f"{quant.sqnr_db(y32, y8):.1f} dB vs FP32 (int8 weight {w_err.sqnr_db:.1f} dB; the uniform-noise "
             f"model predicts {w_err.predicted_sqnr_db:.1f} dB)", ""]
    lines += [f"- {name}: {ms:.3f} ms, {flops / ms / 1e9:.2f} TFLOP/s, {timings[0][1] / ms:.2f}x FP32"
              for name, ms in timings]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8, help="FP32 training epochs (the checkpoint is cached)")
    parser.add_argument("--batch", type=int, default=256, help="the large batch timed beside batch 1")
    parser.add_argument("--cache", type=pathlib.Path, default=CACHE)
    parser.add_argument("--report", type=pathlib.Path, default=pathlib.Path("demo-report"))
    parser.add_argument("--quick", action="store_true", help="small linear problem (the tests use it)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    where = (f"CUDA: {torch.cuda.get_device_name()} — lowp's Triton kernels" if cuda else
             "CPU, no CUDA device — lowp runs its pure-torch reference path here: accuracy is real, timings are "
             "NOT kernel timings (the seed's 2-4x INT8 claim is about the GPU kernels)")
    print(f"lowp demo\n  device: {where}")
    args.report.mkdir(parents=True, exist_ok=True)
    lines = [f"# lowp demo — {where}", "", f"torch {torch.__version__}, lowp {lowp_ops.__version__}", "",
             "## The seed ConvNet on scikit-learn's digits (359 test images)", ""]
    lines += convnet_section(device, args, args.report)
    lines += ["", "![accuracy and latency](schemes.png)", "", "## One linear layer through int8_linear", ""]
    lines += linear_section(device, args.quick)
    report = "\n".join(lines) + "\n"
    (args.report / "report.md").write_text(report)
    print(report)
    print(f"report written to {args.report / 'report.md'}")


if __name__ == "__main__":
    main()
