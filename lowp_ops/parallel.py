"""Tensor-parallel lowp layers: parallel styles for torch.distributed.tensor.parallel.parallelize_module.

    from lowp_ops.parallel import ColwiseParallel, RowwiseParallel
    parallelize_module(model, mesh, {"mlp.gate": ColwiseParallel(), "mlp.up": ColwiseParallel(),
                                     "mlp.down": RowwiseParallel()})

torch's ColwiseParallel / RowwiseParallel take nn.Linear and nn.Embedding only; these take lowp's Int8Linear
(dynamic or static) and Fp8Linear (column-wise) as well, and hand any other module to torch's style of the same
name, so one plan covers a model whose layers lowp converted in part. On a 1-D device mesh of R ranks, each rank
keeps its slice of the layer as plain tensors (the layer's memory divided by R):

- Column-wise: the weight's rows (out_features / R output channels), their scales and bias. The input is the whole
  x on every rank (quantized per token where the layer is dynamic: each rank computes the same codes); the epilogue
  (bias, activation, int8 requantization) runs on the rank's channels; the output is the rank's slice of the
  output features (a plain tensor, as torch's style gives with use_local_output=True).
- Row-wise (Int8Linear): the weight's columns (in_features / R). The input is the rank's slice of x's features (the
  column-wise layer's output before it, float or int8 codes). A dynamic layer's per-token scale is the whole row's:
  its range is all-reduced (one value per token) before quantizing, so every rank quantizes with the scale one
  process would use and the codes are the same. Each rank dequantizes its int32 partial sum with that scale and the
  weight's, the float partial sums are all-reduced, and then bias and activation apply (and int8 requantization for
  a layer handing int8 on): the single-process output within float32 reduction-order error.

A layer whose sliced dimension does not divide by R, or a row-wise Fp8Linear, is refused with what to do instead.
The layers keep their class; a parallelized model is for inference (lowp's layers are), one process per rank.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel as _TorchColwise
from torch.distributed.tensor.parallel import ParallelStyle
from torch.distributed.tensor.parallel import RowwiseParallel as _TorchRowwise

from . import quant, reference
from .nn import Fp8Linear, Int8Linear
from .ops.int8 import int8_linear, int8_mm

__all__ = ["ColwiseParallel", "RowwiseParallel"]


def _slice(module: nn.Module, mesh, dim: int, what: str) -> tuple[int, int, object]:
    """(this rank's first index, count, process group) of module's `dim` (0: out_features, 1: in_features) on a
    1-D mesh; refuses a size the mesh does not divide."""
    if mesh.ndim != 1:
        raise ValueError(f"lowp_ops.parallel: {type(module).__name__} takes a 1-D device mesh, got {mesh.ndim}-D; "
                         f"pass the tensor-parallel sub-mesh (mesh['tp'])")
    size, ranks = module.qweight.shape[dim], mesh.size()
    if size % ranks:
        raise ValueError(f"lowp_ops.parallel: {type(module).__name__}'s {what} ({size}) does not divide into "
                         f"{ranks} ranks; leave this layer out of the plan (it then runs whole on every rank)")
    count = size // ranks
    return mesh.get_local_rank() * count, count, mesh.get_group()


def _local(x):
    """x as this rank's plain tensor (a DTensor from a torch-parallelized layer before: its local shard)."""
    return x.to_local() if isinstance(x, DTensor) else x


def _local_input(module: nn.Module, args: tuple) -> tuple:
    """A column-wise layer's input: the whole x on every rank (a DTensor's full tensor)."""
    x = args[0]
    return (x.full_tensor() if isinstance(x, DTensor) else x, *args[1:])


class ColwiseParallel(ParallelStyle):
    """Shard a layer's output features across the mesh (see the module docstring); torch's ColwiseParallel for
    anything but lowp's Int8Linear / Fp8Linear, with these arguments."""

    def __init__(self, **torch_kwargs) -> None:
        super().__init__()
        self.torch_kwargs = torch_kwargs

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        if not isinstance(module, (Int8Linear, Fp8Linear)):
            return _TorchColwise(**self.torch_kwargs)._apply(module, device_mesh)
        first, count, _ = _slice(module, device_mesh, 0, "out_features")
        rows = slice(first, first + count)
        module.qweight = module.qweight[rows].contiguous()
        if module.weight_scale.numel() > 1:  # per output channel
            module.weight_scale = module.weight_scale[rows].contiguous()
        if module.bias is not None:
            module.bias = module.bias[rows].contiguous()
        if isinstance(module, Int8Linear):
            module._refresh_weight_sum()
        module.out_features = count
        module.register_forward_pre_hook(_local_input)
        return module


class RowwiseParallel(ParallelStyle):
    """Shard a layer's input features across the mesh and sum the ranks' partial outputs (see the module
    docstring); torch's RowwiseParallel for anything but lowp's Int8Linear, with these arguments."""

    def __init__(self, **torch_kwargs) -> None:
        super().__init__()
        self.torch_kwargs = torch_kwargs

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        if isinstance(module, Fp8Linear):
            raise ValueError("lowp_ops.parallel: RowwiseParallel does not take an Fp8Linear (its per-token e4m3 "
                             "scales are not reduced across ranks); shard it column-wise, or keep it whole")
        if not isinstance(module, Int8Linear):
            return _TorchRowwise(**self.torch_kwargs)._apply(module, device_mesh)
        first, count, group = _slice(module, device_mesh, 1, "in_features")
        module.qweight = module.qweight[:, first:first + count].contiguous()
        module._refresh_weight_sum()
        module.in_features = count
        module.forward = functools.partial(_rowwise_forward, module, group)
        return module


def _rowwise_forward(module: Int8Linear, group, x: torch.Tensor) -> torch.Tensor:
    """A row-wise Int8Linear's call: x (..., in_features / R) float or int8 codes -> (..., out_features), the sum
    of every rank's partial product, then the layer's bias, activation and output dtype."""
    x = _local(x)
    lead, given = x.shape[:-1], x.dtype
    x = x.reshape(-1, x.shape[-1])
    if x.dtype == torch.int8:  # codes handed on by the layer before, at this layer's static input scale
        y = int8_mm(x, module.qweight, module.input_scale, module.weight_scale, None, module.input_zero_point,
                    module.weight_sum, out_dtype=torch.float32)
    elif module.static:
        y = int8_linear(x.float(), module.qweight, module.weight_scale, None, module.input_scale,
                        module.input_zero_point, module.weight_sum, out_dtype=torch.float32)
    else:  # per token, each row's range over every rank's features: the scale one process would use
        spec = reference.INT8_PER_TOKEN
        lo, hi = quant.reduce_minmax(x.float(), spec)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
        scale, zero_point = quant.choose_qparams(lo, hi, spec)
        codes = quant.quantize(x.float(), scale, zero_point, spec)
        y = int8_mm(codes, module.qweight, scale, module.weight_scale, out_dtype=torch.float32)
    dist.all_reduce(y, group=group)
    if module.bias is not None:
        y = y + module.bias
    y = reference.activation(y, module.activation).reshape(*lead, -1)
    if module.output_scale is not None:  # the layer hands int8 codes on
        zero_point = module.output_zero_point if module.output_zero_point is not None else torch.zeros(
            (), dtype=torch.int32)
        return quant.quantize(y, module.output_scale.reshape(()), zero_point.reshape(()), reference.INT8_AFFINE)
    return y.to(module.out_dtype or (given if given.is_floating_point else torch.float32))
