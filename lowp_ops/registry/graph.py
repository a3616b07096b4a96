"""What conversion needs to know about a model's dataflow, read off a torch.fx trace: which BatchNorm and ReLU
follow which layer (to fold and fuse them) and which quantized layer feeds which (to hand int8 between them).

Models that fx cannot trace (data-dependent control flow) still convert: layer by layer, without folding outside
nn.Sequential and without int8 hand-offs; the report says so.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

_RELUS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_RELU_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
# Ops that give the same answer on int8 codes as on the real values they stand for (with a zero point of 0 for
# relu), so an int8 tensor may flow through them unchanged. max_pool2d would qualify numerically, but its int8
# support on CUDA is unverified, so it ends an int8 hand-off for now.
_SAFE_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.ReLU)
_SAFE_FUNCTIONS = {torch.flatten, torch.reshape, F.dropout, F.dropout2d, F.relu, torch.relu, operator.getitem}
_SAFE_METHODS = {"view", "reshape", "flatten", "relu", "contiguous"}


@dataclass
class Fusion:
    """layer (Conv2d or Linear) -> optional BatchNorm2d to fold -> optional relu / relu6 to fuse."""

    layer: str
    batchnorm: str | None = None
    activation: str = "none"
    activation_module: str | None = None  # an nn.ReLU to replace by Identity (a functional relu stays: idempotent)


class _Tracer(fx.Tracer):
    """Keeps the given module types opaque (torch's own layers already are; lowp's subclasses are not)."""

    def __init__(self, leaves: tuple[type, ...]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaves: tuple[type, ...] = ()) -> fx.Graph | None:
    """The model's fx graph, or None when it cannot be traced symbolically."""
    try:
        return _Tracer(leaves).trace(model)
    except Exception:  # fx raises many types for untraceable Python; any of them means "no graph"
        return None


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _relu_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    if node.op == "call_function":
        return _RELUS.get(node.target)
    if node.op == "call_method" and node.target == "relu":
        return "relu"
    if node.op == "call_module":
        return _RELU_MODULES.get(type(modules[node.target]))
    return None


def find_fusions(graph: fx.Graph, modules: dict[str, nn.Module], layers: set[str]) -> list[Fusion]:
    """For each layer in `layers`: the BatchNorm2d right after a conv (its only user) and the relu after that."""
    fusions = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in layers:
            continue
        fusion, cur = Fusion(node.target), node
        nxt = _single_user(cur)
        if isinstance(modules[node.target], nn.Conv2d) and nxt is not None and nxt.op == "call_module" \
                and isinstance(modules[nxt.target], nn.BatchNorm2d):
            fusion.batchnorm, cur = nxt.target, nxt
            nxt = _single_user(cur)
        kind = _relu_kind(nxt, modules) if nxt is not None else None
        if kind is not None:
            fusion.activation = kind
            fusion.activation_module = nxt.target if nxt.op == "call_module" else None
        if fusion.batchnorm or kind:
            fusions.append(fusion)
    return fusions


def _int8_safe(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _SAFE_MODULES)
    if node.op == "call_function":
        return node.target in _SAFE_FUNCTIONS
    return node.op == "call_method" and node.target in _SAFE_METHODS


def find_int8_edges(graph: fx.Graph, modules: dict[str, nn.Module], layers: set[str]) -> dict[str, tuple[str, bool]]:
    """producer -> (consumer, passes_a_relu) for quantized layers whose output reaches exactly one other quantized
    layer as its input through int8-safe ops only, each used once."""
    edges = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in layers:
            continue
        cur, through_relu = node, False
        while (nxt := _single_user(cur)) is not None:
            if nxt.op == "call_module" and nxt.target in layers:
                if nxt.args and nxt.args[0] is cur and len(nxt.all_input_nodes) == 1:
                    edges[node.target] = (nxt.target, through_relu)
                break
            if not _int8_safe(nxt, modules) or nxt.all_input_nodes != [cur]:
                break
            through_relu |= _relu_kind(nxt, modules) is not None
            cur = nxt
    return edges
