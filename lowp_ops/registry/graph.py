"""What conversion needs to know about a model's dataflow, read off a torch.fx trace: which BatchNorm and ReLU
follow which layer (to fold and fuse them) and which quantized layer feeds which (to hand int8 between them).

Everything is decided per call site. A module called at more than one place (a layer applied in a loop, one
instance filling two slots of an nn.Sequential) has one call_module node per call in the graph, all named by the
module's first name, but only one set of weights and one output scale: a BatchNorm is folded into it, a relu fused
into it or an int8 hand-off made from it only when every one of its calls agrees. Otherwise it keeps a float
interface, and a note says why.

Models that fx cannot trace (data-dependent control flow) still convert: layer by layer, folding only inside
nn.Sequential (whose children run one after another) and without int8 hand-offs; the report says so.
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

_RELUS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_RELU_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
# Ops that give the same answer on int8 codes as on the real values they stand for (with a zero point of 0 for
# relu), so an int8 tensor may flow through them unchanged. max_pool2d would qualify numerically, but its int8
# support on CUDA is unverified, so it ends an int8 hand-off for now. Dropout is the identity at inference, and a
# converted model is inference-only (its int8 layers hold buffers, not parameters): convert replaces an nn.Dropout
# that int8 codes pass through by nn.Identity, so that .train() cannot make it scale int8 codes (which fails).
# Functional dropout is not in the list: it reads the module's training flag at run time, which convert cannot pin.
_DROPOUTS = (nn.Dropout, nn.Dropout2d)
_SAFE_MODULES = (nn.Identity, nn.Flatten, nn.ReLU) + _DROPOUTS
_SAFE_FUNCTIONS = {torch.flatten, torch.reshape, F.relu, torch.relu, operator.getitem}
_SAFE_METHODS = {"view", "reshape", "flatten", "relu", "contiguous"}


@dataclass
class Fusion:
    """layer (Conv2d or Linear) -> optional BatchNorm2d to fold -> optional relu / relu6 to fuse."""

    layer: str
    batchnorm: str | None = None
    activation: str = "none"


@dataclass
class Fusions:
    """What find_fusions / sequential_fusions found."""

    fusions: list[Fusion] = field(default_factory=list)
    # nn.ReLU / nn.ReLU6 modules every call of which is fused into the layer before it: to replace by nn.Identity.
    # One that also runs elsewhere stays (relu after a fused relu changes nothing), and so does a functional relu.
    fused_modules: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Int8Edge:
    """A producer layer whose every call hands int8 codes to a call of `consumer` (see find_int8_edges)."""

    consumer: str
    through_relu: bool  # a relu sits on some path: the consumer's zero point must be 0
    dropouts: set[str] = field(default_factory=set)  # nn.Dropout modules on the paths, to replace by nn.Identity


@dataclass(frozen=True)
class _Site:
    """What alone reads one call's output: a BatchNorm2d (after a conv), then a relu / relu6 (module or function)."""

    batchnorm: str | None = None
    activation: str = "none"
    activation_module: str | None = None


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
    except Exception:  # noqa: BLE001 -- fx raises many types for untraceable Python; any of them means "no graph"
        return None


def _calls(graph: fx.Graph) -> dict[str, list[fx.Node]]:
    """Module name (its first name, as fx records it) -> its call_module nodes, in graph order."""
    calls = defaultdict(list)
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target].append(node)
    return calls


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


def _graph_site(node: fx.Node, modules: dict[str, nn.Module]) -> _Site:
    bn, cur = None, node
    nxt = _single_user(cur)
    if isinstance(modules[node.target], nn.Conv2d) and nxt is not None and nxt.op == "call_module" \
            and isinstance(modules[nxt.target], nn.BatchNorm2d):
        bn, cur = nxt.target, nxt
        nxt = _single_user(cur)
    kind = _relu_kind(nxt, modules) if nxt is not None else None
    if kind is None:
        return _Site(bn)
    return _Site(bn, kind, nxt.target if nxt.op == "call_module" else None)


def _agree(sites: dict[str, list[_Site | None]], uses: dict[str, int]) -> Fusions:
    """Fusions of the layers whose call sites all agree. sites: layer -> one _Site per call (None: a call whose
    followers are unknown); uses: module -> how many times it is called.

    A BatchNorm is folded only when every one of its calls follows a layer it is folded into (it becomes
    nn.Identity, so a call it served elsewhere would lose it); without it the relu after it does not follow the
    layer, so nothing is fused."""
    out, candidates = Fusions(), []
    for layer, calls in sites.items():
        first = calls[0]
        if any(s is None or (s.batchnorm, s.activation) != (first.batchnorm, first.activation) for s in calls):
            if len(calls) > 1:
                out.notes.append(f"{layer} is called at {len(calls)} places, not all followed by the same "
                                 f"BatchNorm / ReLU: nothing is folded or fused into it")
        elif first.batchnorm is not None or first.activation != "none":
            candidates.append((layer, calls))
    folded = Counter()
    for _, calls in candidates:
        folded.update(s.batchnorm for s in calls if s.batchnorm is not None)
    fused_calls = Counter()
    for layer, calls in candidates:
        bn = calls[0].batchnorm
        if bn is not None and folded[bn] != uses[bn]:
            out.notes.append(f"{bn} also runs apart from {layer}: it is not folded into {layer}")
            continue
        out.fusions.append(Fusion(layer, bn, calls[0].activation))
        fused_calls.update(s.activation_module for s in calls if s.activation_module is not None)
    for module, n in fused_calls.items():
        if n == uses[module]:
            out.fused_modules.append(module)
        else:
            out.notes.append(f"{module} also runs after other ops: it stays, after the layers it is fused into")
    return out


def find_fusions(graph: fx.Graph, modules: dict[str, nn.Module], layers: set[str]) -> Fusions:
    """For each layer in `layers`: the BatchNorm2d that alone reads a conv's output, then the relu that alone reads
    that, when every call of the layer is followed by the same ones (see _agree)."""
    calls = _calls(graph)
    sites = {layer: [_graph_site(node, modules) for node in calls[layer]] for layer in sorted(layers) if calls[layer]}
    return _agree(sites, {name: len(nodes) for name, nodes in calls.items()})


def sequential_fusions(model: nn.Module, layers: set[str]) -> Fusions:
    """find_fusions for a model fx cannot trace, from nn.Sequential order: a layer's call sites are the slots it
    fills, and its followers are the slots after it. A module that also fills a slot outside an nn.Sequential is
    called by code we cannot read, so nothing is fused into it."""
    names = {id(m): fqn for fqn, m in model.named_modules()}  # each module's first name, as everywhere else
    slots, sites = Counter(), defaultdict(list)
    for _, parent in model.named_modules():
        # _modules, not named_children(): that lists a module once even when it fills two slots
        kids = [m for m in parent._modules.values() if m is not None]
        for i, child in enumerate(kids):
            name = names[id(child)]
            slots[name] += 1
            if name not in layers:
                continue
            if not isinstance(parent, nn.Sequential):
                sites[name].append(None)
                continue
            bn, j = None, i + 1
            if isinstance(child, nn.Conv2d) and j < len(kids) and isinstance(kids[j], nn.BatchNorm2d):
                bn, j = names[id(kids[j])], j + 1
            kind = _RELU_MODULES.get(type(kids[j])) if j < len(kids) else None
            sites[name].append(_Site(bn, kind, names[id(kids[j])]) if kind else _Site(bn))
    return _agree({layer: sites[layer] for layer in sorted(sites)}, slots)


def _int8_safe(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _SAFE_MODULES)
    if node.op == "call_function":
        return node.target in _SAFE_FUNCTIONS
    return node.op == "call_method" and node.target in _SAFE_METHODS


def _hop(node: fx.Node, modules: dict[str, nn.Module], layers: set[str]):
    """(consumer call, through_relu, dropouts) when this call's output reaches a call of a quantized layer as its
    only input through int8-safe ops only, each used once; else None."""
    cur, through_relu, dropouts = node, False, set()
    while (nxt := _single_user(cur)) is not None:
        if nxt.op == "call_module" and nxt.target in layers:
            if nxt.args and nxt.args[0] is cur and len(nxt.all_input_nodes) == 1:
                return nxt, through_relu, dropouts
            return None
        if not _int8_safe(nxt, modules) or nxt.all_input_nodes != [cur]:
            return None
        through_relu |= _relu_kind(nxt, modules) is not None
        if nxt.op == "call_module" and isinstance(modules[nxt.target], _DROPOUTS):
            dropouts.add(nxt.target)
        cur = nxt
    return None


def find_int8_edges(graph: fx.Graph, modules: dict[str, nn.Module],
                    layers: set[str]) -> tuple[dict[str, Int8Edge], list[str]]:
    """producer -> Int8Edge for the quantized layers that may hand int8 to one other quantized layer: every call of
    the producer reaches a call of the consumer through int8-safe ops, and every call of the consumer reads a call
    of the producer (so one output scale — the consumer's input scale — serves every call of both). Also notes on
    layers called at several places that keep a float interface."""
    calls = _calls(graph)
    hops = {node: _hop(node, modules, layers) for layer in layers for node in calls[layer]}
    edges, notes = {}, []
    for producer in sorted(layers):
        ends = [hops[node] for node in calls[producer]]
        if not ends or all(end is None for end in ends):
            continue
        consumer = ends[0][0].target if ends[0] is not None else None
        shared = len(ends) > 1 or (consumer is not None and len(calls[consumer]) > 1)
        if any(end is None or end[0].target != consumer for end in ends):
            if shared:
                notes.append(f"{producer} is called at {len(ends)} places whose outputs do not all go straight to "
                             f"the same quantized layer: its output stays float")
            continue
        if {end[0] for end in ends} != set(calls[consumer]):
            notes.append(f"{consumer} is called at {len(calls[consumer])} places, not all reading {producer}: "
                         f"{producer} hands it float, and {consumer} keeps a float input")
            continue
        edges[producer] = Int8Edge(consumer, any(end[1] for end in ends), set().union(*(end[2] for end in ends)))
    return edges, notes


# (args, kwargs) of one model(*args, **kwargs) call: what torch.export needs to see a model's graph
Example = tuple[tuple, dict]


@dataclass
class Analysis:
    """What analyse found. source: which graph was read ("torch.export", "torch.fx" or "nn.Sequential");
    fusions / fused_modules as in Fusions; edges: producer -> Int8Edge (always empty for "nn.Sequential")."""

    source: str
    fusions: list[Fusion] = field(default_factory=list)
    fused_modules: list[str] = field(default_factory=list)
    edges: dict[str, Int8Edge] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def analyse(model: nn.Module, layers: set[str], *, example: Example | None = None,
            leaves: tuple[type, ...] = ()) -> Analysis:
    """The fusions and int8 edges of `layers` (fqns of the modules to convert). Provisional body (fx, then
    nn.Sequential order); the torch.export-based version replaces it."""
    graph = trace(model, leaves)
    if graph is None:
        found = sequential_fusions(model, layers)
        return Analysis("nn.Sequential", found.fusions, found.fused_modules, {},
                        ["the model could not be traced by torch.fx: BatchNorm / ReLU fused only inside "
                         "nn.Sequential, and no int8 hand-off between layers", *found.notes])
    modules = dict(model.named_modules())
    found = find_fusions(graph, modules, layers)
    edges, notes = find_int8_edges(graph, modules, layers)
    return Analysis("torch.fx", found.fusions, found.fused_modules, edges, found.notes + notes)
