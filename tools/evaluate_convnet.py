"""lowp_ops.examples.ConvNet (the small ConvNet of the article lowp grew from, on model acceleration and
low-precision computing) on scikit-learn's digits under every lowp scheme, side by side.

    python tools/evaluate_convnet.py                 # writes bench/results/convnet_schemes-<device>-<date>.{json,md}

FP32 training, then: INT8 dynamic (quantize_dynamic), INT8 static (prepare -> calibrate on 8 training batches ->
convert), INT8 QAT (prepare_qat -> one epoch of fine-tuning -> convert) and FP16 (to_fp16). On a CUDA machine the
converted models run lowp's Triton kernels; the script also checks that every Linear / Conv2d of each converted
model dispatches to torch.ops.lowp (no aten linear / convolution left).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib

import torch

import lowp_ops
from lowp_ops.examples import load_digits_28
from lowp_ops.examples.evaluation import compare_schemes, dispatched_ops

_FLOAT_LAYER_OPS = ("aten.linear", "aten.addmm", "aten.mm", "aten.convolution", "aten.conv2d")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu (lowp reference path)"
    acc, models = compare_schemes(epochs=args.epochs, seed=args.seed, device=device)

    x = load_digits_28(seed=args.seed)[2][:8].to(device)
    dispatch = {}
    for name in ("int8 dynamic", "int8 static", "int8 qat"):
        ops = dispatched_ops(models[name], x)
        lowp = {k: v for k, v in ops.items() if k.startswith("lowp.")}
        leftover = {k: v for k, v in ops.items() if k in _FLOAT_LAYER_OPS}
        assert not leftover, f"{name}: float layers left: {leftover}"
        dispatch[name] = lowp
    date = datetime.date.today().isoformat()
    lines = [f"# Seed ConvNet on digits under each lowp scheme — {where}, {date}", "",
             f"scikit-learn digits at 28x28 (1,438 train / 359 test), FP32 trained {args.epochs} epochs (Adam 1e-3, "
             f"seed {args.seed}); static INT8 calibrated on 512 training images; QAT: 1 epoch at lr 1e-4. "
             f"torch {torch.__version__}, lowp {lowp_ops.__version__}.", "",
             "| scheme | test accuracy % | vs FP32 |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {v - acc['fp32']:+.2f} |" for k, v in acc.items()]
    lines += ["", "torch.ops.lowp calls per forward (no aten linear / convolution left):"]
    lines += [f"- {k}: " + ", ".join(f"{op} x{n}" for op, n in sorted(v.items())) for k, v in dispatch.items()]
    report = "\n".join(lines) + "\n"
    print(report)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"convnet_schemes-{device}-{date}"
    (out / f"{stem}.json").write_text(json.dumps({"device": where, "date": date, "accuracy": acc,
                                                  "lowp_ops": dispatch, "epochs": args.epochs}, indent=1))
    (out / f"{stem}.md").write_text(report)


if __name__ == "__main__":
    main()
