"""Model-level benchmarks: whole networks in FP32, TF32, FP16 and lowp INT8 (dynamic and static), batch 1 and 256.

    python -m bench.models --out bench/results     # on a CUDA machine
    python -m bench.models --smoke                 # CPU: builds and checks every variant, times nothing

Models: the seed ConvNet (lowp_ops.examples.convnet, the small ConvNet of the article lowp grew from; trained on
scikit-learn's digits: accuracy too), torchvision ResNet-50 (random weights, no download; skipped when torchvision
is missing) and a transformer MLP block (4096 -> 11008 -> 4096, GELU).
Reported per variant: latency, speedup over FP32 (that article claims INT8 is 2-4x faster than FP32) and
output SQNR against FP32.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib

import torch
from torch import nn

import lowp_ops
from lowp_ops import quant
from lowp_ops.examples import ConvNet, accuracy, load_digits_28, train

from ._common import bench_ms, header, machine


class MLPBlock(nn.Module):
    def __init__(self, d: int = 4096, hidden: int = 11008):
        super().__init__()
        self.up, self.act, self.down = nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def models(device: str, smoke: bool):
    """name -> (float model, input maker (batch) -> tensor, (test x, test y) or None)."""
    tx, ty, vx, vy = (t.to(device) for t in load_digits_28())
    torch.manual_seed(0)
    convnet = ConvNet().to(device)
    train(convnet, tx, ty, epochs=1 if smoke else 4)
    out = {"seed ConvNet": (convnet, lambda b: vx[:b] if b <= len(vx) else vx.repeat(b // len(vx) + 1, 1, 1, 1)[:b],
                            (vx, vy))}
    d, h = (64, 96) if smoke else (4096, 11008)
    out["MLP block"] = (MLPBlock(d, h).to(device), lambda b: torch.randn(b, d, device=device), None)
    try:
        import torchvision

        res = 64 if smoke else 224
        out["ResNet-50"] = (torchvision.models.resnet50().to(device).eval(),
                            lambda b: torch.randn(b, 3, res, res, device=device), None)
    except Exception as e:  # torchvision missing or broken beside this torch: say so in the report
        print(f"ResNet-50 skipped: torchvision unavailable ({type(e).__name__})")
    return out


def variants(model: nn.Module, calib: torch.Tensor, device: str) -> dict:
    out = {"fp32": model, "tf32": model}
    if device == "cuda":
        out["fp16"] = copy.deepcopy(model).half().to(memory_format=torch.channels_last)
    out["lowp int8 dynamic"] = lowp_ops.quantize_dynamic(model)
    prepared = lowp_ops.prepare(model)
    lowp_ops.calibrate(prepared, [calib], progress=False)
    out["lowp int8 static"] = lowp_ops.convert(prepared)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    smoke = args.smoke or not torch.cuda.is_available()
    device = "cpu" if smoke else "cuda"
    info = machine()
    rows = []
    for name, (model, make_input, test) in models(device, smoke).items():
        model.eval()
        for batch in (1, 8) if smoke else (1, 256):
            x = make_input(batch)
            with torch.no_grad():
                ref = model(x).float()
                for vname, m in variants(model, make_input(min(batch * 4, 64)), device).items():
                    xin = x.half().contiguous(memory_format=torch.channels_last) if vname == "fp16" and x.ndim == 4 \
                        else x.half() if vname == "fp16" else x
                    if vname in ("fp32", "tf32") and device == "cuda":
                        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = vname == "tf32"
                    row = {"model": name, "batch": batch, "variant": vname,
                           "sqnr_db": quant.sqnr_db(ref, m(xin).float())}
                    if test is not None and batch == 1:
                        tx, ty = test
                        row["accuracy"] = accuracy(m, tx.half() if vname == "fp16" else tx, ty)
                    if not smoke:
                        row["ms"] = bench_ms(lambda m=m, xin=xin: m(xin))
                    rows.append(row)
    lines = header(info, "lowp model-level benchmarks")
    lines += ["| model | batch | variant | ms | speedup vs FP32 | output SQNR dB | accuracy % |",
              "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        base = next(b for b in rows if (b["model"], b["batch"], b["variant"]) == (r["model"], r["batch"], "fp32"))
        ms = f"{r['ms']:.3f}" if "ms" in r else "-"
        sp = f"{base['ms'] / r['ms']:.2f}x" if "ms" in r else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {ms} | {sp} | {r['sqnr_db']:.1f} | "
                     f"{r['accuracy']:.2f} |" if "accuracy" in r else
                     f"| {r['model']} | {r['batch']} | {r['variant']} | {ms} | {sp} | {r['sqnr_db']:.1f} | - |")
    report = "\n".join(lines) + "\n"
    print(report)
    if smoke:
        print(f"smoke run: {len(rows)} model variants built and checked, nothing timed")
        return
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"models-{info['card'].replace(' ', '_')}-{info['date']}"
    (out / f"{stem}.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    (out / f"{stem}.md").write_text(report)


if __name__ == "__main__":
    main()
