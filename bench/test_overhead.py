"""pytest-benchmark microbenchmarks of lowp's Python-side overhead (`make bench`): op dispatch, the launch path and
a module forward at batch 1, beside F.linear. On a GPU each round ends with torch.cuda.synchronize(), so a round
is the full launch-to-result time; on a CPU the ops run the native CPU backend, so these read as dispatch +
validation + compute."""

import pytest
import torch
import torch.nn.functional as F

import lowp_ops
from lowp_ops import quant
from lowp_ops.ops import int8 as int8_ops

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
K, N = (4096, 4096) if CUDA else (256, 256)


def synced(fn):
    if not CUDA:
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


@pytest.fixture(scope="module")
def case():
    layer = torch.nn.Linear(K, N, device=DEVICE)
    qw = quant.quantize_tensor(layer.weight.detach(), quant.per_channel(axis=0))
    dtype = torch.float16 if CUDA else torch.float32
    x = torch.randn(1, K, device=DEVICE, dtype=dtype)
    return dict(layer=layer, module=lowp_ops.nn.Int8Linear.from_float(layer), w=qw.qdata, s=qw.scale,
                b=layer.bias.detach().to(dtype), x=x, w_float=layer.weight.detach().to(dtype))


def test_f_linear_batch1(benchmark, case):
    benchmark(synced(lambda: F.linear(case["x"], case["w_float"], case["b"])))


def test_int8_linear_op_batch1(benchmark, case):
    benchmark(synced(lambda: torch.ops.lowp.int8_linear(case["x"], case["w"], case["s"], case["b"])))


def test_int8_linear_module_batch1(benchmark, case):
    with torch.no_grad():
        benchmark(synced(lambda: case["module"](case["x"])))


def test_int8_linear_validation_only(benchmark, case):
    benchmark(int8_ops._check_int8_linear, case["x"], case["w"], case["s"], case["b"], None, None, None, "none",
              None, None, None)


def test_quantize_per_token_dispatch(benchmark):
    x = torch.randn(1, 64, device=DEVICE)
    benchmark(synced(lambda: torch.ops.lowp.quantize_per_token(x)))


def test_int8_conv2d_dynamic_module_batch1(benchmark):
    # conv2 of lowp_ops.examples.ConvNet: the op computes the per-tensor input scale itself (on the host on CPU)
    conv = torch.nn.Conv2d(32, 64, 3, device=DEVICE)
    module = lowp_ops.nn.Int8Conv2d.from_float(conv, activation="relu")
    x = torch.randn(1, 32, 26, 26, device=DEVICE)
    with torch.no_grad():
        benchmark(synced(lambda: module(x)))
