"""lowp_ops.examples: the seed ConvNet (lowp_ops.examples.ConvNet) on real digits, and mixed-precision training
with loss scaling on CPU."""

import torch

from lowp_ops.examples import ConvNet, load_digits_28, mixed_precision, train, underflow_count
from lowp_ops.nn import Fp16Linear


def test_digits_split_is_fixed_and_standardized():
    tx, ty, vx, vy = load_digits_28()
    assert tx.shape == (1438, 1, 28, 28) and vx.shape == (359, 1, 28, 28)
    assert set(ty.tolist()) == set(range(10))
    assert abs(tx.mean().item()) < 1e-4 and abs(tx.std().item() - 1) < 1e-4
    assert torch.equal(load_digits_28()[3], vy)


def test_convnet_and_its_mixed_precision_copy():
    model = ConvNet()
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.allclose(out.exp().sum(1), torch.ones(3))
    mp = mixed_precision(model)
    assert isinstance(mp.fc1, Fp16Linear) and isinstance(mp.fc2, Fp16Linear)
    assert isinstance(model.fc1, torch.nn.Linear) and type(mp.conv1) is torch.nn.Conv2d
    assert mp.fc1.weight.dtype == torch.float32 and torch.equal(mp.fc1.weight, model.fc1.weight)


def test_loss_scaling_prevents_fp16_gradient_underflow():
    tx, ty, _, _ = load_digits_28()
    torch.manual_seed(0)
    fp32 = ConvNet()
    train(fp32, tx, ty, max_steps=15)  # a little training: gradients shrink as the loss does
    mp = mixed_precision(fp32)
    x, y = tx[:256], ty[:256]
    unscaled, live = underflow_count(fp32, mp, x, y, loss_scale=1.0)
    scaled, _ = underflow_count(fp32, mp, x, y, loss_scale=2.0**16)  # GradScaler's initial scale
    assert unscaled > 50, unscaled  # without scaling, float16 flushes real gradient values to zero ...
    assert scaled * 20 < unscaled, (scaled, unscaled)  # ... and the scale keeps them representable
    assert live > 10**6


def test_mixed_precision_training_with_grad_scaler_learns():
    tx, ty, _, _ = load_digits_28()
    torch.manual_seed(0)
    mp = mixed_precision(ConvNet())
    scaler = torch.amp.GradScaler("cpu")
    curve = train(mp, tx[:512], ty[:512], epochs=3, scaler=scaler)
    assert curve[-1] < 0.7 * curve[0], curve
    assert scaler.get_scale() >= 1.0 and all(torch.isfinite(p).all() for p in mp.parameters())


def test_every_scheme_on_real_digits_meets_its_accuracy_target():
    from lowp_ops.examples.evaluation import compare_schemes, dispatched_ops

    acc, models = compare_schemes(epochs=3)
    assert acc["fp32"] > 90
    assert abs(acc["int8 dynamic"] - acc["fp32"]) <= 1.0, acc
    assert abs(acc["int8 static"] - acc["fp32"]) <= 1.0, acc
    assert abs(acc["int8 qat"] - acc["fp32"]) <= 0.5 or acc["int8 qat"] > acc["fp32"], acc
    assert abs(acc["fp16"] - acc["fp32"]) <= 0.5, acc
    # every Linear / Conv2d of the converted models runs on torch.ops.lowp
    ops = dispatched_ops(models["int8 static"], load_digits_28()[2][:4])
    assert ops["lowp.int8_conv2d"] == 2 and ops["lowp.int8_linear"] + ops["lowp.int8_mm"] == 2
    assert not {k for k in ops if k in ("aten.linear", "aten.addmm", "aten.mm", "aten.convolution")}
