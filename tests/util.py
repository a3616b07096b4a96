"""Assertion helpers shared by the tests."""

import torch


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
