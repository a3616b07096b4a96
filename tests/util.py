"""Assertion helpers shared by the tests."""

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """For integer outputs (int32 GEMM, quantized values) and quantize / requant: atol = rtol = 0."""
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if not torch.equal(actual, expected):
        diff = (actual.long() - expected.long()) if not actual.is_floating_point() else (actual - expected)
        bad = diff != 0
        raise AssertionError(f"{int(bad.sum())} of {bad.numel()} elements differ; max |diff| "
                             f"{diff.abs().max().item()}; first at {tuple(bad.nonzero()[0].tolist())}")


def rel_rms_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖₂ / ‖expected‖₂ in float64."""
    e = expected.double()
    return ((actual.double() - e).norm() / e.norm().clamp_min(1e-300)).item()


def int8(*shape, low=-128):
    return torch.randint(low, 128, shape, dtype=torch.int8)


def assert_float_gemm_close(out: torch.Tensor, ref64: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """A float GEMM result against its float64 reference, within the bound its arithmetic guarantees.

    Float32 accumulation in any order errs by at most K·u·(|a|·|b|) elementwise (u = 2^-24, the γ_K bound);
    the cast to the output dtype adds up to 2·u_out·|y| (u_out = 2^-11 fp16, 2^-8 bf16: one ulp, as the
    interpreter truncates to bfloat16 where the GPU rounds). Activations used here are 1.13-Lipschitz at most.
    """
    K = a.shape[1]
    u_out = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}[out.dtype]
    bound = 1.13 * K * 2.0**-24 * (a.double().abs() @ b.double().abs()) + 2 * u_out * ref64.abs() + 1e-30
    err = (out.double() - ref64).abs()
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"error reaches {worst:.2f}x the bound (max |err| {err.max().item():.3g})"


def assert_scales_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Dynamic scales: bitwise, NaN (a row holding NaN or ±inf) in the same places."""
    assert torch.equal(actual.isnan(), expected.isnan())
    assert_bitwise_equal(actual.nan_to_num(), expected.nan_to_num())


def e4m3_codes(*shape) -> torch.Tensor:
    """Random float8_e4m3fn values (CPU): uniform random bytes, so every sign, binade and subnormal is as likely as any
    other; the NaN codes 0x7F / 0xFF become 0x7E / 0xFE, ±448, so the largest magnitude occurs a few times per
    hundred."""
    bits = torch.randint(0, 256, shape, dtype=torch.uint8)
    return torch.where((bits & 0x7F) == 0x7F, bits - 1, bits).view(torch.float8_e4m3fn)


def e4m3_grid() -> torch.Tensor:
    """The 127 non-negative finite e4m3 values, ascending, float32 (0, the subnormals k·2^-9, ..., 448)."""
    return torch.arange(127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # code 0x7F is NaN


def e4m3_rounding_cases() -> dict[str, torch.Tensor]:
    """float32 inputs for quantizing with scale 1, by what they test, both signs: every finite value; every midpoint
    between neighbours (a tie, which goes to the even code); the float32 values just above and below each midpoint;
    448 and beyond (464 is the midpoint to the 480 that e4m3fn lacks); ±inf, NaN, -0 and negatives that round to
    -0."""
    grid = e4m3_grid()
    mid = (grid[:-1] + grid[1:]) / 2  # exact in float32

    def both(t):
        return torch.cat([t, -t])

    return {
        "values": both(grid),
        "midpoints": both(mid),
        "above midpoints": both(torch.nextafter(mid, torch.tensor(math.inf))),
        "below midpoints": both(torch.nextafter(mid, torch.tensor(0.0))),
        "beyond 448": both(torch.tensor([448.0, 463.9, 464.0, 464.1, 480.0, 1e4, 1e30, 3.4e38, math.inf])),
        "nan": torch.tensor([math.nan, -math.nan]),
        "to -0": torch.tensor([-0.0, -(2.0**-10), -(2.0**-11), -1e-30, -1e-45]),  # -2^-10: the tie 0 | 2^-9
    }


def assert_codes_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """FP8 codes, bit for bit (the byte of every element: -0 is not +0), except that any NaN code equals any other:
    e4m3 has two (0x7F, 0xFF) and which sign a NaN carries is not specified (the kernels write 0x7F; torch's cast
    keeps the sign of the NaN that x86 arithmetic produced)."""
    assert actual.dtype == expected.dtype and actual.dtype.itemsize == 1, (actual.dtype, expected.dtype)

    def canonical(t):
        return torch.where(t.float().isnan(), 0x7F, t.cpu().view(torch.uint8).int())

    assert_bitwise_equal(canonical(actual), canonical(expected))


def assert_fp8_gemm_close(out: torch.Tensor, ref: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                          a_scale: torch.Tensor, b_scale: torch.Tensor, *, u_acc: float = 2.0**-24) -> None:
    """out = activation((a · bᵀ) · a_scale · b_scale + bias) from a float32 accumulator summing in any order,
    against the reference (lowp_ops.reference.fp8_gemm: the exact sum rounded once), within the bound that
    arithmetic guarantees. a (M, K), b (N, K) float8_e4m3fn; a_scale (M,) or one element, b_scale (N,) or one.

    The accumulators differ by at most K·u_acc·Σ_k |a_k·b_k| (γ_K, u_acc = 2^-24 for float32; more for sm_90's fp8
    accumulator, kernels/gemm.py), scaled by |a_scale·b_scale|; each side's three float32 roundings of the
    epilogue (two scales, bias) add 4·2^-24 of the scaled magnitude each way; activations here are 1.13-Lipschitz at
    most; the cast to the output dtype adds up to 2·u_out·|ref| (one ulp either way). NaN positions must agree.
    """
    K = a.shape[1]
    u_out = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}[out.dtype]
    sa = a_scale.double().reshape(-1, 1) if a_scale.numel() != 1 else a_scale.double().reshape(())
    sb = b_scale.double().reshape(1, -1) if b_scale.numel() != 1 else b_scale.double().reshape(())
    magnitude = (a.double().abs() @ b.double().abs().T) * sa.abs() * sb.abs()
    ref64, out64 = ref.double(), out.double()
    assert torch.equal(out64.isnan(), ref64.isnan()), "NaN in different places"
    ref64, out64, magnitude = (t.nan_to_num(0.0) for t in (ref64, out64, magnitude))
    bound = (1.13 * (K * u_acc * magnitude + 8 * 2.0**-24 * (magnitude + ref64.abs())) + 2 * u_out * ref64.abs()
             + 1e-30)
    err = (out64 - ref64).abs()
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"error reaches {worst:.2f}x the bound (max |err| {err.max().item():.3g})"


def on(device, *tensors):
    """The tensors moved to device (None stays None), as a list to unpack into an op's arguments."""
    return [None if t is None else t.to(device) for t in tensors]


def reference_call(op, *args, **kwargs):
    """op on CPU copies of its tensor arguments, through the reference backend: the oracle for any device."""
    def cpu(v):
        return v.cpu() if isinstance(v, torch.Tensor) else v

    with reference_path():
        return op(*map(cpu, args), **{k: cpu(v) for k, v in kwargs.items()})


@contextlib.contextmanager
def reference_path():
    """Run the ops' reference path for a while (the oracle), whichever CPU backend the test selected."""
    import lowp_ops

    with lowp_ops.use_cpu_backend("reference"):
        yield


def assert_requant_equal(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Requantized int8 output vs the reference: bit-exact on CPU (no FMA contraction); on a GPU an FMA-contracted
    epilogue can land on the other side of a rounding tie, so at most 1 LSB on under 0.1 % of the elements."""
    if not out.is_cuda:
        assert_bitwise_equal(out, ref)
        return
    diff = (out.cpu().int() - ref.cpu().int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, (int(diff.max()), (diff > 0).float().mean().item())


def assert_onednn_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """oneDNN's fused conv epilogue vs the reference: its own order of float32 operations, so float outputs within 4
    float32 ulp of the largest output (three roundings each way) and requantized int8 within 1 LSB on at most 0.1 %
    of the elements (values at a rounding tie). Measured bit-exact so far (lowp_ops/cpu/conv.py)."""
    assert out.dtype == ref.dtype and out.is_contiguous(memory_format=torch.channels_last)
    if out.dtype == torch.int8:
        diff = (out.int() - ref.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() <= 1e-3, (int(diff.max()), int((diff > 0).sum()))
    else:
        ulp = torch.finfo(torch.float32).eps * ref.float().abs().amax()
        tol = 4 * ulp + torch.finfo(out.dtype).eps * ref.float().abs()  # and one rounding to a narrower dtype
        assert ((out.float() - ref.float()).abs() <= tol).all()


# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CONV_GEOMETRIES = {
    "3x3 pad1 13x13": (2, 5, 13, 13, 7, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    "1x1 7x7": (1, 37, 7, 7, 13, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    "1x1 1x1 image": (3, 16, 1, 1, 24, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    "3x2 strided dilated": (1, 16, 13, 11, 24, 3, 2, (2, 1), (1, 0), (1, 2), 1),
    "grouped": (2, 12, 7, 7, 18, 3, 3, (1, 1), (1, 1), (1, 1), 3),
    "depthwise": (2, 8, 7, 13, 8, 3, 3, (1, 1), (1, 1), (1, 1), 8),
    "depthwise x2 strided": (1, 6, 13, 7, 12, 3, 3, (2, 2), (1, 1), (1, 1), 6),
    "5x5 pad2 stride2": (1, 4, 13, 13, 9, 5, 5, (2, 2), (2, 2), (1, 1), 1),
    "kernel = input 7x7": (2, 3, 7, 7, 5, 7, 7, (1, 1), (0, 0), (1, 1), 1),
}


class SmallNet(nn.Module):
    """The seed ConvNet's shape at toy size: conv-bn-relu, conv, pool, flatten, fc-relu-dropout-fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.conv2(x), 2)
        x = torch.flatten(x, 1)
        return self.fc2(self.drop(F.relu(self.fc1(x))))


def trained_batchnorms(model: nn.Module) -> nn.Module:
    """model (eval mode) with every BatchNorm2d's statistics and affine drawn as after training: fresh ones (mean 0,
    var 1, weight 1, bias 0) are the identity, which would make folding them a test of nothing."""
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def static_int8(model: nn.Module, data, config=None, **prepare_kw) -> nn.Module:
    """model through lowp's static INT8 workflow: prepare (config: an Int8StaticConfig, default the default;
    prepare_kw: its other arguments), calibrate on data (a list of inputs), convert."""
    import lowp_ops

    prepared = lowp_ops.prepare(model, config, **prepare_kw)
    lowp_ops.calibrate(prepared, data, progress=False)
    return lowp_ops.convert(prepared)


RANKS = 2  # processes of the torch.distributed tests (gloo on CPU, NCCL where each has a GPU)


def spawn_ranks(fn, folder, timeout_s: float = 180.0) -> None:
    """fn(rank, str(folder)) on RANKS spawned processes, each in a gloo process group (a file rendezvous in folder:
    no network; collectives time out after 60 s); fails the test if they have not finished within timeout_s."""
    import time

    import pytest
    import torch.multiprocessing as mp

    context = mp.start_processes(_in_group, args=(str(folder), fn), nprocs=RANKS, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the ranks did not finish within {timeout_s:.0f} s")


def _in_group(rank: int, folder: str, fn) -> None:
    """A spawned rank: fn(rank, folder) in the process group, one thread (two ranks share the CI machine's two
    cores). Then, before the group goes: fn's objects are gone (a DDP or FSDP module left for interpreter exit
    destroyed gloo's threads out of order: "terminate called without an active exception", about 1 run in 10 under
    load) and every rank has finished talking (a barrier)."""
    import gc
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=RANKS,
                            timeout=timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        fn(rank, folder)
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
