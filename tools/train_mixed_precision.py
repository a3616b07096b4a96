"""Mixed-precision training (FP16 compute, FP32 master weights, loss scaling) of the seed ConvNet
(lowp_ops.examples.ConvNet), FP32 beside FP16, on real data.

    python tools/train_mixed_precision.py                      # writes bench/results/mixed_precision-*.{json,md,png}
    python tools/train_mixed_precision.py --epochs 2 --out /tmp

Both runs start from the same weights and see the same batches. The mixed-precision model computes its Linear
layers in float16 through torch.ops.lowp.fp16_linear (the Triton kernels on CUDA, the float16-rounding reference
on CPU) with float32 master weights and torch.amp.GradScaler. Reported: loss curves, test accuracy, and how many
gradient elements underflow to zero in float16 without loss scaling and with the scaler's scale.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import pathlib

import torch

import lowp_ops
from lowp_ops.examples import ConvNet, accuracy, load_digits_28, mixed_precision, train, underflow_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = (torch.cuda.get_device_name() if device.type == "cuda"
             else "cpu (lowp reference path, fp16 rounding emulated)")

    tx, ty, vx, vy = (t.to(device) for t in load_digits_28(seed=args.seed))
    torch.manual_seed(args.seed)
    fp32 = ConvNet().to(device)
    mp = mixed_precision(fp32)
    before = {f"scale {s:g}": underflow_count(fp32, mp, tx[:256], ty[:256], s) for s in (1.0, 2.0**16)}

    curves = {"fp32": train(fp32, tx, ty, epochs=args.epochs, seed=args.seed)}
    scaler = torch.amp.GradScaler(device.type)
    curves["mixed fp16"] = train(mp, tx, ty, epochs=args.epochs, seed=args.seed, scaler=scaler)
    acc = {"fp32": accuracy(fp32, vx, vy), "mixed fp16": accuracy(mp, vx, vy)}

    # the trained weights give the small gradients late training sees: measure underflow there too
    probe = mixed_precision(fp32)
    after = {f"scale {s:g}": underflow_count(copy.deepcopy(fp32), probe, tx[:256], ty[:256], s)
             for s in (1.0, scaler.get_scale())}

    info = {"date": datetime.date.today().isoformat(), "device": where, "torch": torch.__version__,
            "lowp": lowp_ops.__version__, "epochs": args.epochs, "seed": args.seed,
            "train": len(ty), "test": len(vy)}
    result = {"machine": info, "loss_curves": curves, "test_accuracy": acc, "final_grad_scale": scaler.get_scale(),
              "underflow_at_init": before, "underflow_after_training": after}
    lines = [f"# Mixed-precision training of the seed ConvNet — {where}, {info['date']}", "",
             f"scikit-learn digits upsampled to 28x28: {info['train']} train / {info['test']} test images; "
             f"Adam 1e-3, batch 64, {args.epochs} epochs, seed {args.seed}; torch {info['torch']}.", "",
             "| epoch | " + " | ".join(f"{k} loss" for k in curves) + " |", "|---:|" + "---:|" * len(curves)]
    lines += [f"| {e + 1} | " + " | ".join(f"{curves[k][e]:.4f}" for k in curves) + " |" for e in range(args.epochs)]
    lines += ["", "| | FP32 | mixed FP16 (lowp fp16_linear + GradScaler) |", "|---|---:|---:|",
              f"| test accuracy % | {acc['fp32']:.2f} | {acc['mixed fp16']:.2f} |", "",
              "Gradient elements zero in the FP16 model but not in FP32 (same weights, 256 images), of all nonzero:"]
    for when, counts in (("at init", before), ("after training", after)):
        lines += [f"- {when}: " + "; ".join(f"loss {k}: {z:,} of {n:,}" for k, (z, n) in counts.items())]
    report = "\n".join(lines) + "\n"
    print(report)

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"mixed_precision-{'cuda' if device.type == 'cuda' else 'cpu'}-{info['date']}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(report)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for k, c in curves.items():
            ax.plot(range(1, len(c) + 1), c, marker="o", label=f"{k} ({acc[k]:.1f} % test)")
        ax.set(xlabel="epoch", ylabel="training loss (NLL)", yscale="log", title="seed ConvNet on digits")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=120)
    except ImportError:
        print("(matplotlib not installed: no plot)")


if __name__ == "__main__":
    main()
