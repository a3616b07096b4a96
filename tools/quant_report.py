"""Per-layer quantization report for a model and a calibration batch, and the INT8 / FP16 policy from it.

    python tools/quant_report.py                      # the seed ConvNet trained on digits (cached by make demo)
    python tools/quant_report.py --min-sqnr 35
    python tools/quant_report.py --fp8                # layers INT8 would hurt go FP8 where it reaches the bound

For every Linear / Conv2d: SQNR of its int8 weights and inputs beside the uniform-noise model, SQNR of its INT8
output, and on a GPU its INT8 vs FP16 latency; the policy keeps in FP16 the layers where INT8 is too lossy or
slower. Each Linear also shows FP8 (e4m3, per-token inputs, per-channel weights, lowp::fp8_linear) input and output
SQNR; Conv2d rows show "-" there (no FP8 conv). FP8 pays where a layer's input has outlier channels (LLM
activations): per-token INT8 then drops to ~13 dB at the output while e4m3 keeps ~29 dB; on well-spread inputs
(this ConvNet) INT8 is the more precise. In code: lowp_ops.policy (layer_report, Policy.from_report,
apply_policy).
"""

from __future__ import annotations

import argparse

import torch

from lowp_ops.examples import ConvNet, accuracy, load_digits_28, train
from lowp_ops.policy import Policy, apply_policy, format_report, layer_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-sqnr", type=float, default=30.0, help="dB under which a layer stays FP16")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--fp8", action="store_true",
                        help="send Linear layers that INT8 would hurt to FP8 where FP8 reaches --min-sqnr")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tx, ty, vx, vy = (t.to(device) for t in load_digits_28())
    torch.manual_seed(0)
    model = ConvNet().to(device)
    train(model, tx, ty, epochs=args.epochs)
    stats = layer_report(model, tx[:256])
    policy = Policy.from_report(stats, args.min_sqnr, fp8=args.fp8)
    print(format_report(stats, policy))
    mixed = apply_policy(model, policy)
    print(f"\naccuracy: FP32 {accuracy(model, vx, vy):.2f} %, policy model {accuracy(mixed, vx, vy):.2f} %")
    print(mixed.lowp_report)


if __name__ == "__main__":
    main()
