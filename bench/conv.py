"""INT8 conv2d benchmarks of issue 4, in one run on one card, each layer beside cuDNN.

    python bench/conv.py --out bench/results            # on a CUDA machine
    python bench/conv.py --smoke                        # CPU: checks the script's paths, no timing claims

Layers: ResNet-50's at batch 32 ("same" padding; ANCHORS.md has the cuDNN rates measured there), the seed
ConvNet's conv2 at batch 256, and a depthwise 3x3. Providers: cuDNN FP32 (NCHW, TF32 off), TF32, FP16
channels_last; lowp int8_conv2d on int8 channels_last input with fp16 output (dequantize + bias fused) and with
int8 output (requantized: the layer-to-layer case), and the Int8Conv2d module on fp16 NCHW input (quantize +
layout change + conv). Each lowp result is checked against FP32 (SQNR > 30 dB) before timing.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import bench_ms, header, machine, save

from lowp_ops import quant
from lowp_ops.nn import Int8Conv2d

# name: (batch, C, H, W, K, R, stride, padding, groups)
LAYERS = {
    "resnet50 3x3 64": (32, 64, 56, 56, 64, 3, 1, 1, 1),
    "resnet50 1x1 256->64": (32, 256, 56, 56, 64, 1, 1, 0, 1),
    "resnet50 3x3 128": (32, 128, 28, 28, 128, 3, 1, 1, 1),
    "resnet50 3x3 256": (32, 256, 14, 14, 256, 3, 1, 1, 1),
    "resnet50 3x3 512": (32, 512, 7, 7, 512, 3, 1, 1, 1),
    "seed convnet conv2": (256, 32, 26, 26, 64, 3, 1, 0, 1),
    "depthwise 3x3 256": (32, 256, 28, 28, 256, 3, 1, 1, 256),
}


def layer_case(name, spec, device, smoke: bool) -> dict:
    B, C, H, W, K, R, stride, pad, groups = spec
    if smoke:
        B, H, W = 1, min(H, 9), min(W, 9)
        C, K, groups = min(C, 16), min(K, 16), min(groups, 16)
    conv = torch.nn.Conv2d(C, K, R, stride, pad, groups=groups, device=device)
    x = torch.randn(B, C, H, W, device=device)
    ref = conv(x).float()
    module = Int8Conv2d.from_float(conv, input_scale=x.abs().max() / 127, out_dtype=torch.float16)
    q = torch.ops.lowp.quantize_channels_last(x, module.input_scale)
    y8 = module(q)
    sqnr = quant.sqnr_db(ref, y8)
    assert sqnr > 30, f"{name}: SQNR {sqnr:.1f} dB"
    row = {"layer": name, "shape": spec, "sqnr_db": sqnr}
    if smoke:
        return row
    OH, OW = ref.shape[2:]
    flops = 2 * B * K * OH * OW * (C // groups) * R * R
    geo = (module.stride, module.padding, module.dilation, module.groups)
    out_scale = (ref.abs().max() / 127).reshape(1)

    def lowp_fp16():
        return torch.ops.lowp.int8_conv2d(q, module.weight, *geo, module.input_scale, module.weight_scale,
                                          module.bias, out_dtype=torch.float16)

    def lowp_int8():
        return torch.ops.lowp.int8_conv2d(q, module.weight, *geo, module.input_scale, module.weight_scale,
                                          module.bias, out_dtype=torch.int8, out_scale=out_scale)

    w32, b32 = conv.weight.detach(), conv.bias.detach()
    x16 = x.half().contiguous(memory_format=torch.channels_last)
    w16 = w32.half().contiguous(memory_format=torch.channels_last)
    b16 = b32.half()
    x16_nchw = x.half()

    def cudnn(inp, w, b):
        return F.conv2d(inp, w, b, stride, pad, 1, groups)

    with torch.no_grad():
        torch.backends.cudnn.allow_tf32 = False
        row["fp32_tflops"] = flops / bench_ms(lambda: cudnn(x, w32, b32)) / 1e9
        torch.backends.cudnn.allow_tf32 = True
        row["tf32_tflops"] = flops / bench_ms(lambda: cudnn(x, w32, b32)) / 1e9
        row["fp16_cl_tflops"] = flops / bench_ms(lambda: cudnn(x16, w16, b16)) / 1e9
        row["lowp_fp16_out_tflops"] = flops / bench_ms(lowp_fp16) / 1e9
        row["lowp_int8_out_tflops"] = flops / bench_ms(lowp_int8) / 1e9
        row["lowp_module_tflops"] = flops / bench_ms(lambda: module(x16_nchw)) / 1e9
    for k in ("lowp_fp16_out", "lowp_int8_out", "lowp_module"):
        row[f"{k}_vs_fp16"] = row[f"{k}_tflops"] / row["fp16_cl_tflops"]
        row[f"{k}_vs_fp32"] = row[f"{k}_tflops"] / row["fp32_tflops"]
    from lowp_ops.kernels.conv import _conv2d_tuned

    row["config"] = str(_conv2d_tuned.best_config)
    return row


def markdown(info: dict, rows: list[dict]) -> str:
    lines = header(info, "lowp INT8 conv2d benchmarks")
    if rows and "fp32_tflops" in rows[0]:
        lines += ["| layer | cuDNN FP32 | TF32 | FP16 NHWC | lowp int8→fp16 | lowp int8→int8 | module fp16 NCHW in | "
                  "int8→fp16 vs FP16 | int8→int8 vs FP16 | vs FP32 | SQNR dB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['layer']} | {r['fp32_tflops']:.0f} | {r['tf32_tflops']:.0f} | {r['fp16_cl_tflops']:.0f} | "
                  f"{r['lowp_fp16_out_tflops']:.0f} | {r['lowp_int8_out_tflops']:.0f} | "
                  f"{r['lowp_module_tflops']:.0f} | {r['lowp_fp16_out_vs_fp16']:.2f}x | "
                  f"{r['lowp_int8_out_vs_fp16']:.2f}x | {r['lowp_fp16_out_vs_fp32']:.1f}x | {r['sqnr_db']:.1f} |"
                  for r in rows]
        lines += ["", "(effective TFLOPS / TOPS = 2·N·K·OH·OW·(C/groups)·R·S / time)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results", help="folder for the JSON and markdown results")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, correctness only (CPU is fine)")
    args = parser.parse_args()
    smoke = args.smoke or not torch.cuda.is_available()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = machine()
    rows = [layer_case(name, spec, device, smoke) for name, spec in LAYERS.items()]
    report = markdown(info, rows)
    print(report)
    if smoke:
        print("smoke run: all cases computed and checked; nothing timed")
    else:
        save(args.out, "conv", info, {"rows": rows}, report)


if __name__ == "__main__":
    main()
