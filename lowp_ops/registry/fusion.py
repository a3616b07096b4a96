"""Applying what graph.analyse found: BatchNorm folded into the conv before it, fused relu modules made
nn.Identity, and int8 hand-offs between static INT8 layers."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..nn.add import Add
from ..nn.pool import Int8MaxPool2d
from ..quant import QuantSpec
from .configs import LowpConfig
from .graph import Analysis, after_fold
from .handlers import QParams
from .swap import SwapReport, places, replace


def apply_fusions(model: nn.Module, analysis: Analysis, report: SwapReport) -> dict[str, str]:
    """Fold each BatchNorm2d of analysis.fusions into its conv (running statistics, so the model must be used for
    inference or with frozen BatchNorm statistics from here on) and replace it by nn.Identity (a timm
    BatchNormAct2d by its activation, where that is not fused: graph.after_fold), each fused activation module by
    nn.Identity; make each activation module of analysis.partly_fused run out of place; return the activation to
    fuse per layer (fqn -> "relu" / "relu6")."""
    names = places(model)
    # a BatchNorm may be folded into several layers (one after each): look them all up before replacing any
    batchnorms = {f.batchnorm: model.get_submodule(f.batchnorm) for f in analysis.fusions if f.batchnorm is not None}
    activations = {}
    for f in analysis.fusions:
        if f.batchnorm is not None:
            layer, bn = model.get_submodule(f.layer), batchnorms[f.batchnorm]
            layer.weight, layer.bias = fuse_conv_bn_weights(layer.weight, layer.bias, bn.running_mean,
                                                            bn.running_var, bn.eps, bn.weight, bn.bias)
            report.notes.append(f"folded {f.batchnorm} into {f.layer}")
        if f.activation != "none":
            activations[f.layer] = f.activation
    for name, bn in batchnorms.items():
        rest = after_fold(bn)
        replace(model, name, rest, names)
        if not isinstance(rest, nn.Identity):
            report.notes.append(f"{name}: its {type(rest).__name__} stays, after the conv it is folded into")
    for module in analysis.fused_modules:
        replace(model, module, nn.Identity(), names)
    # A relu module fused into the layer before some of its calls still runs there (for its other calls). In place
    # it would overwrite that layer's output, which the fused relu saved for backward (torchvision's BasicBlock
    # calls one nn.ReLU(inplace=True) after bn1 and after the residual add; QAT failed at the first backward).
    # Out of place it only costs a copy there: relu after relu changes nothing.
    for module in analysis.partly_fused:
        act = model.get_submodule(module)
        if getattr(act, "inplace", False):
            act.inplace = False
            report.notes.append(f"{module} runs out of place from now on: in place it would overwrite the output of "
                                f"the layers it is fused into, which their backward needs")
    return activations


def _symmetric(qparams: QParams, spec: QuantSpec) -> QParams:
    """The zero-point-0 grid covering the same range: int8 codes that a relu may clamp in place."""
    scale, zero_point = qparams
    hi = (spec.qmax - zero_point.float()) * scale
    lo = (spec.qmin - zero_point.float()) * scale
    return torch.maximum(hi.abs(), lo.abs()) / 127.0, torch.zeros_like(zero_point)


Reader = tuple[str, int]  # (module, port): a layer's input is port 0, an Add's operands 0 and 1


def int8_outputs(model: nn.Module, analysis: Analysis, configs: dict[str, LowpConfig],
                 inputs: dict[Reader, QParams], report: SwapReport, *, trained: bool) -> dict[str, QParams]:
    """producer fqn -> the (scale, zero_point) it requantizes its output to, for each of analysis.edges whose
    producer and readers all chain int8 (chain_int8; configs holds the Adds too) and have input qparams (`inputs`,
    per reader). The readers' input qparams become the producer's output qparams — those of its first reader
    (inputs is updated) — so that every reader reads the codes as they are; readers with other observers or specs
    leave the edge float. Through a relu they must have zero point 0 (relu clamps codes at 0): they are then made
    symmetric, unless `trained` (QAT), whose learned scales are kept and the edge left float. An Add takes int8 on
    both operands or neither, and writes int8 only when it takes it: edges into or out of an Add that would be half
    int8 are left float, until none is. Dropouts on a hand-off become nn.Identity (int8 codes pass, and the
    converted model is inference-only), max-pools Int8MaxPool2d (which pools the codes). Edges are those of the
    model with analysis.fusions applied (graph.analyse's contract)."""
    edges = {}
    for producer, edge in analysis.edges.items():
        layers = [producer, *(m for m, _ in edge.readers)]
        if not all(m in configs and configs[m].chain_int8 for m in layers) or \
                not all(r in inputs for r in edge.readers):
            continue
        first = inputs[edge.readers[0]]
        if trained and any(not (torch.equal(first[0], s) and torch.equal(first[1], z))
                           for s, z in (inputs[r] for r in edge.readers[1:])):
            continue  # QAT: each reader keeps the input scale it learned
        if len({(getattr(configs[m], "observer", None), configs[m].activation) for m, _ in edge.readers}) > 1:
            report.notes.append(f"{producer}'s readers {', '.join(m for m, _ in edge.readers)} observe their input "
                                f"differently (their configs differ): it hands them float")
            continue
        if edge.through_relu and int(first[1]) != 0 and trained:
            continue
        edges[producer] = edge
    adds = {m for m in configs if isinstance(model.get_submodule(m), Add)}
    while True:
        fed = {r for edge in edges.values() for r in edge.readers}
        half = [p for p, edge in edges.items() if (p in adds and not {(p, 0), (p, 1)} <= fed)
                or any(m in adds and (m, 1 - port) not in fed for m, port in edge.readers)]
        if not half:
            break
        for producer in half:
            del edges[producer]
    names, outputs = places(model), {}
    for producer, edge in edges.items():
        shared = inputs[edge.readers[0]]
        if edge.through_relu and int(shared[1]) != 0:
            shared = _symmetric(shared, configs[edge.consumer].activation)
        for reader in edge.readers:
            inputs[reader] = shared
        outputs[producer] = shared
        said = [m + (" (its second operand)" if port else "") for m, port in edge.readers]
        report.notes.append(f"{producer} hands int8 to {', '.join(said)}")
        for dropout in sorted(edge.dropouts):
            replace(model, dropout, nn.Identity(), names)
            report.notes.append(f"{dropout} -> Identity: int8 codes pass it, and dropout is the identity at "
                                f"inference (the converted model is inference-only)")
        # a lone pool before a Linear (a flatten between) writes its codes in the order flatten reads them: no copy
        # after it (Inductor's channels_last -> NCHW copy of seed ConvNet's pooled codes at batch 256: 1.7 ms)
        rows = len(edge.pools) == 1 and not edge.also and isinstance(model.get_submodule(edge.consumer), nn.Linear)
        for pool in sorted(edge.pools):
            module = model.get_submodule(pool)
            if not isinstance(module, Int8MaxPool2d):
                replace(model, pool, Int8MaxPool2d.from_float(module, channels_last=not rows), names)
                report.notes.append(f"{pool} -> Int8MaxPool2d: it max-pools the int8 codes it is handed"
                                    + (f", in the order {edge.consumer}'s flattened input reads them" if rows else ""))
    return outputs
