"""The `make demo` job: one nn.Linear-sized problem through torch.ops.lowp.int8_linear beside FP32.

Quantizes a Linear layer's weight per output channel (int8, symmetric), runs int8_linear (dynamic per-token int8
activations, int32 accumulation, fused dequantize + bias) and reports the error against FP32 — max and relative
error, SQNR, and the uniform-noise prediction for each quantized operand — and the time of each.

On a CUDA machine this runs the Triton kernels at an LLM projection shape with fp16 activations; without one it
runs the pure-torch reference path at a smaller shape, and says so.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

import lowp_ops
from lowp_ops import quant


def _time_ms(fn, reps: int = 10) -> float:
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


def main() -> None:
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    if cuda:
        M, K, N, dtype, device = 2048, 4096, 11008, torch.float16, "cuda"
        where = f"CUDA: {torch.cuda.get_device_name()} (Triton kernels)"
    else:
        M, K, N, dtype, device = 256, 1024, 1024, torch.float32, "cpu"
        where = "CPU, no CUDA device: lowp runs its pure-torch reference path; times are not kernel times"

    layer = torch.nn.Linear(K, N).to(device)
    x = torch.randn(M, K, device=device)
    w_spec, x_spec = quant.per_channel(axis=0), quant.per_token()
    qw = quant.quantize_tensor(layer.weight.detach(), w_spec)
    bias = layer.bias.detach()

    with torch.no_grad():
        y32 = layer(x)
        y8 = lowp_ops.int8_linear(x.to(dtype), qw.qdata, qw.scale, bias.to(dtype))
    err = (y8.float() - y32).abs()
    w_err = quant.quantization_error(layer.weight.detach(), w_spec)
    x_err = quant.quantization_error(x, x_spec)

    print("lowp demo: W8A8 linear (torch.ops.lowp.int8_linear) vs FP32 nn.Linear")
    print(f"  device   {where}")
    print(f"  shape    x ({M}, {K}) {str(dtype).removeprefix('torch.')}, weight ({N}, {K}) -> y ({M}, {N})")
    print(f"  weight   int8 per-channel symmetric: SQNR {w_err.sqnr_db:5.1f} dB "
          f"(uniform-noise model {w_err.predicted_sqnr_db:5.1f} dB)")
    print(f"  input    int8 per-token dynamic:     SQNR {x_err.sqnr_db:5.1f} dB "
          f"(uniform-noise model {x_err.predicted_sqnr_db:5.1f} dB)")
    print(f"  output   SQNR {quant.sqnr_db(y32, y8):5.1f} dB, max |err| {err.max().item():.4f} "
          f"(|y| max {y32.abs().max().item():.2f}), relative RMS error "
          f"{(err.norm() / y32.norm()).item():.2e}")

    x_lp = x.to(dtype)
    w_lp, b_lp = layer.weight.detach().to(dtype), bias.to(dtype)
    rows = [("FP32 F.linear", lambda: F.linear(x, layer.weight, layer.bias))]
    if cuda:
        rows.append(("FP16 F.linear (cuBLAS)", lambda: F.linear(x_lp, w_lp, b_lp)))
    rows.append(("lowp int8_linear", lambda: lowp_ops.int8_linear(x_lp, qw.qdata, qw.scale, b_lp)))
    flops = 2 * M * N * K
    with torch.no_grad():
        times = [(name, _time_ms(fn)) for name, fn in rows]
    base = times[0][1]
    for name, ms in times:
        print(f"  time     {name:24s} {ms:9.3f} ms  {flops / ms / 1e9:8.1f} TFLOP/s  {base / ms:5.2f}x FP32")


if __name__ == "__main__":
    main()
