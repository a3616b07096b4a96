"""On a CUDA machine: the ops, modules and workflows on CUDA tensors (the Triton kernels) against the CPU path (the
reference) on the same data, and torch.compile generating code around the kernels. Skipped without CUDA."""

import importlib

import pytest
import torch
from torch import nn

import lowp_ops
from lowp_ops import quant
from lowp_ops.examples import ConvNet, accuracy, load_digits_28, train
from lowp_ops.nn import Int8Conv2d
from util import assert_requant_equal

pytestmark = pytest.mark.gpu


def test_conv_module_cuda_matches_cpu():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    x = torch.randn(4, 16, 13, 13)
    static = dict(activation="relu", input_scale=x.abs().max() / 127, output_scale=0.05)
    affine = dict(static, input_zero_point=torch.tensor([-20], dtype=torch.int32))  # padding's correction
    dynamic = dict(activation="relu", output_scale=0.05)  # the op computes its scale on the device, no host read
    for kwargs in (static, affine, dynamic):
        out_cpu = Int8Conv2d.from_float(conv, **kwargs)(x)
        assert_requant_equal(Int8Conv2d.from_float(conv.cuda(), **kwargs)(x.cuda()), out_cpu)
        conv.cpu()
    q = torch.ops.lowp.quantize_channels_last(x, torch.tensor([0.02]))
    assert torch.equal(torch.ops.lowp.quantize_channels_last(x.cuda(), torch.tensor([0.02], device="cuda")).cpu(), q)


@pytest.mark.parametrize("split_k", [None, 2, 4])  # None: whatever the autotuner picks (split or not)
@pytest.mark.parametrize("m", [1, 7, 16])
def test_int8_decode_split_k_exact_under_contention(m, split_k):
    # kernels/gemm.py's split K on a real GPU: hundreds of programs adding into the workspace at once, the last of
    # each tile finishing it; repeated launches on a workspace left zero by the previous one's (the autotuner's
    # trials do the same)
    from lowp_ops.kernels import int8_gemm

    a = torch.randint(-128, 128, (m, 4096), dtype=torch.int8)
    b = torch.randint(-128, 128, (11008, 4096), dtype=torch.int8)
    expected = (a.double() @ b.double().T).int()  # exact: |sums| <= 4096 · 2^14 = 2^26, far below 2^53
    config = None if split_k is None else dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=256, GROUP_M=8, num_warps=4,
                                               num_stages=4, SPLIT_K=split_k)
    a, b = a.cuda(), b.cuda()
    for _ in range(20):
        assert torch.equal(int8_gemm(a, b, config=config).cpu(), expected)
    # the workspace kept between calls is back to zero after them
    workspaces = importlib.import_module("lowp_ops.kernels.gemm")._WORKSPACES.values()
    assert all(not w.any() for w in workspaces) and (split_k is None or workspaces)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp16_mm_layouts_cuda(dtype):
    a = torch.randn(300, 200, device="cuda", dtype=dtype)
    b = torch.randn(200, 100, device="cuda", dtype=dtype)
    for x, y in ((a, b), (a, b.T.contiguous().T), (a.T.contiguous().T, b)):
        ref = x.float() @ y.float()
        out = torch.ops.lowp.fp16_mm(x, y, out_dtype=torch.float32)
        assert ((out - ref).norm() / ref.norm()).item() < 1e-3


def test_workflows_on_cuda_keep_accuracy_and_compile():
    tx, ty, vx, vy = (t.cuda() for t in load_digits_28())
    torch.manual_seed(0)
    model = ConvNet().cuda()
    train(model, tx, ty, epochs=2)
    base = accuracy(model, vx, vy)
    dynamic = lowp_ops.quantize_dynamic(model)
    prepared = lowp_ops.prepare(model, lowp_ops.Int8StaticConfig())
    lowp_ops.calibrate(prepared, [tx[:256]], progress=False)
    static = lowp_ops.convert(prepared)
    for q in (dynamic, static):
        assert abs(accuracy(q, vx, vy) - base) <= 1.0
    compiled = torch.compile(static, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(vx[:64]), static(vx[:64]), rtol=1e-3, atol=1e-3)
    h = lowp_ops.to_fp16(model)
    assert abs(accuracy(h, vx, vy) - base) <= 0.5
    assert quant.sqnr_db(model(vx[:64]), h(vx[:64]).float()) > 30


@pytest.mark.parametrize("mode", ["", "made in inference mode"])
@pytest.mark.parametrize("layer", ["linear dynamic", "linear static", "conv static"])
def test_eager_lane_on_cuda_launches_directly_without_host_syncs(layer, mode, monkeypatch):
    """A module's eager call on CUDA takes its lane (ops/_common.py, Lane): torch.library's dispatch skipped, the
    kernels launched without wrap_triton (~65 us a launch), the op's output; after the first call, which checks the
    scales (one device read each), no call synchronizes with the host — also for a module made (and run) inside
    torch.inference_mode, whose tensors it keeps as normal ones (nn/_base.py, _normal)."""
    with torch.inference_mode(bool(mode)):
        _lane_without_host_syncs(layer, monkeypatch)


def _lane_without_host_syncs(layer, monkeypatch):
    from lowp_ops.ops import _common, backends

    torch.manual_seed(0)
    if layer.startswith("linear"):
        module = lowp_ops.nn.Int8Linear.from_float(
            nn.Linear(256, 96).cuda(), **({"input_scale": 0.05} if "static" in layer else {}))
        x = torch.randn(1, 256, device="cuda")
    else:
        module = Int8Conv2d.from_float(nn.Conv2d(16, 32, 3, padding=1).cuda(), activation="relu", input_scale=0.05,
                                       output_scale=0.05)
        x = torch.randn(2, 16, 13, 13, device="cuda")
    with torch.no_grad():
        with monkeypatch.context() as through_the_op:
            through_the_op.setattr(_common, "_eager_plain", lambda x: False)
            expected = module(x)
        monkeypatch.setattr(backends, "wrap_triton", lambda kernel: pytest.fail("the lane wrapped a launch"))
        assert torch.equal(module(x), expected)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                y = module(x)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert torch.equal(y, expected)


def test_direct_op_calls_on_cuda_skip_the_dispatch_without_host_syncs(monkeypatch):
    """lowp_ops.int8_linear called directly (ops/_common.py, direct) takes the op's lane on CUDA too: the op's output,
    launched without wrap_triton, and no host sync after the first call."""
    from lowp_ops.ops import backends

    torch.manual_seed(0)
    qw = quant.quantize_tensor(torch.randn(96, 256, device="cuda"), quant.per_channel(axis=0))
    args = (torch.randn(1, 256, device="cuda"), qw.qdata, qw.scale.reshape(-1), torch.randn(96, device="cuda"))
    expected = torch.ops.lowp.int8_linear(*args, activation="relu")
    monkeypatch.setattr(backends, "wrap_triton", lambda kernel: pytest.fail("the direct call wrapped a launch"))
    assert torch.equal(lowp_ops.int8_linear(*args, activation="relu"), expected)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            y = lowp_ops.int8_linear(*args, activation="relu")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(y, expected)


def test_int8_add_module_on_cuda_launches_directly_without_host_syncs(monkeypatch):
    """nn.Int8Add on CUDA: the op's output (its Triton kernel), its checks (which read the scales) once, then no host
    sync and no wrap_triton per call."""
    from lowp_ops.ops import backends

    add = lowp_ops.nn.Int8Add(a_scale=0.02, b_scale=0.03, a_zero_point=3, b_zero_point=-7, output_scale=0.04,
                              output_zero_point=-5, activation="relu").cuda()
    a = torch.randint(-128, 128, (2, 16, 13, 13), dtype=torch.int8, device="cuda")
    a = a.contiguous(memory_format=torch.channels_last)
    b = torch.randint(-128, 128, (2, 16, 13, 13), dtype=torch.int8, device="cuda")
    expected = torch.ops.lowp.int8_add(a, b, *add._operands())
    monkeypatch.setattr(backends, "wrap_triton", lambda kernel: pytest.fail("Int8Add wrapped a launch"))
    assert torch.equal(add(a, b), expected)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            y = add(a, b)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(y, expected)
