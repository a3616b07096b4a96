"""What conversion needs to know about a model's dataflow: which BatchNorm and ReLU follow which layer (to fold and
fuse them) and which quantized layer feeds which (to hand int8 between them). analyse() is the entry point.

The graph comes from torch.export when an example input is given (it captures models whose Python control flow
torch.fx cannot trace: transformers' ResNet, BERT), else from a torch.fx symbolic trace. Either is read as one
module-call graph (_CallGraph): a node per call of a module kept opaque (a layer to convert, a torch.nn module such
as BatchNorm2d / ReLU / Dropout, timm's BatchNormAct2d, a lowp module) and a node per other op; the fusion and
hand-off rules run on that. A node inside a module call that only passes the call's input through (a cast, a view,
an in-place op) is that input to whoever reads it from outside the call (see _input_aliases): an int8 hand-off is
made only where every reader of the producer's output truly is a quantized layer, or an operand of a residual Add
(lowp_ops.nn.Add, which static prepare puts in: rewrite.py). Nothing is converted here: conversion still swaps
modules in the eager model, by name.

Everything is decided per call site. A module called at more than one place (a layer applied in a loop, one
instance filling two slots of an nn.Sequential) has one node per call, all named by the module's first name, but
only one set of weights and one output scale: a BatchNorm is folded into it, a relu fused into it or an int8
hand-off made from it only when every one of its calls agrees. Otherwise it keeps a float interface, and a note
says why.

Models that neither can capture still convert: layer by layer, folding only inside nn.Sequential (whose children
run one after another) and without int8 hand-offs; the notes say so, and why.
"""

from __future__ import annotations

import contextlib
import io
import operator
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nn.add import Add

_RELU_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
# Dropout is the identity at inference, and a converted model is inference-only (its int8 layers hold buffers, not
# parameters): convert replaces an nn.Dropout that int8 codes pass through by nn.Identity, so that .train() cannot
# make it scale int8 codes (which fails). Functional dropout is not int8-safe: it reads the module's training flag
# at run time, which convert cannot pin.
_DROPOUTS = (nn.Dropout, nn.Dropout2d)

# Op kinds. "safe": gives the same answer on int8 codes as on the real values they stand for, so an int8 tensor may
# flow through it unchanged; so does "relu", with a zero point of 0. "pool": an nn.MaxPool2d module, which max-pools
# codes once convert makes it lowp_ops.nn.Int8MaxPool2d (torch's own max-pool refuses int8 channels_last input, CUDA
# has none): a functional max_pool2d ends a hand-off, unless static prepare made it a module (rewrite.py). relu6
# clamps at 6, not at code 6: not safe.
_FX_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6",
                 torch.flatten: "safe", torch.reshape: "safe", operator.getitem: "safe"}
_FX_METHODS = {"relu": "relu", "relu_": "relu", "view": "safe", "reshape": "safe", "flatten": "safe",
               "contiguous": "safe"}
# The same list as aten ops (by name, overload aside), as torch.export records them; fx's getitem on a tensor
# (x[0], x[:, :4], x[idx]) is select / slice / index there.
_ATEN_OPS = {"relu": "relu", "relu_": "relu", "relu6": "relu6", "flatten": "safe", "reshape": "safe", "view": "safe",
             "_unsafe_view": "safe", "contiguous": "safe", "select": "safe", "slice": "safe", "index": "safe"}
# aten ops whose result is their first argument, or a cast, copy, view or fake-quantization of it (in-place ops too,
# by their trailing "_"): inside a module call, such a node may stand for the call's input (see _input_aliases)
_PASS_THROUGH = {"to", "_to_copy", "type_as", "contiguous", "clone", "detach", "alias", "lift_fresh_copy", "view",
                 "_unsafe_view", "reshape", "flatten", "expand", "squeeze", "unsqueeze", "permute", "transpose", "t",
                 "select", "slice", "fake_quantize_per_tensor_affine", "fake_quantize_per_channel_affine"}
# aten ops torch.export adds to check shapes and dtypes; they compute nothing, and would count as users
_CHECKS = ("_assert", "sym_constrain_range")


@dataclass
class Fusion:
    """layer (Conv2d or Linear) -> optional BatchNorm2d to fold -> optional relu / relu6 to fuse."""

    layer: str
    batchnorm: str | None = None
    activation: str = "none"


@dataclass
class Fusions:
    """The fusions whose call sites agree (see _agree)."""

    fusions: list[Fusion] = field(default_factory=list)
    # nn.ReLU / nn.ReLU6 modules every call of which is fused into the layer before it: to replace by nn.Identity.
    # One that also runs elsewhere stays (relu after a fused relu changes nothing), and so does a functional relu.
    fused_modules: list[str] = field(default_factory=list)
    # Those that stay, fused into the layer before some of their calls: to run out of place (see apply_fusions)
    partly_fused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Int8Edge:
    """A producer layer whose every call hands int8 codes to a call of `consumer` (its input `port`: an Add's second
    operand is 1), and to each of `also` ((module, port) pairs) where the same codes fan out to several readers (a
    residual block's input feeds its first conv and its add): one tensor, at one scale, for all (see _edges)."""

    consumer: str
    through_relu: bool  # a relu sits on some path: the codes' zero point must be 0
    dropouts: set[str] = field(default_factory=set)  # nn.Dropout modules on the paths, to replace by nn.Identity
    pools: set[str] = field(default_factory=set)  # nn.MaxPool2d modules on the paths, to make Int8MaxPool2d
    port: int = 0
    also: tuple[tuple[str, int], ...] = ()

    @property
    def readers(self) -> tuple[tuple[str, int], ...]:
        """Every (module, port) the codes go to, the consumer first."""
        return ((self.consumer, self.port), *self.also)


@dataclass(frozen=True)
class _Site:
    """What alone reads one call's output: a BatchNorm2d (after a conv), then a relu / relu6 (module or function)."""

    batchnorm: str | None = None
    activation: str = "none"
    activation_module: str | None = None


def is_batchnorm_act(module: nn.Module) -> bool:
    """Whether the module is timm's BatchNormAct2d (timm.layers.norm_act): a BatchNorm2d whose forward normalises,
    then runs its `drop` child (nn.Identity or a dropout), then its `act` child (an activation module, nn.Identity
    when apply_act=False). Known by its name and children, timm being optional: another subclass with other
    children may run something else after its normalisation, and stays opaque to lowp."""
    return isinstance(module, nn.BatchNorm2d) and type(module).__name__ == "BatchNormAct2d" \
        and all(isinstance(getattr(module, child, None), nn.Module) for child in ("drop", "act"))


def _inside(bn: nn.Module) -> str | None:
    """What a BatchNorm2d runs after its normalisation, for folding it: "none" (nothing: a BatchNorm2d, or a
    BatchNormAct2d whose drop and act are nn.Identity), "relu" / "relu6" (a BatchNormAct2d's act, fused with the
    fold), or None (a drop, or an act lowp does not fuse: it stays, after the folded conv; see after_fold)."""
    if not is_batchnorm_act(bn):
        return "none"
    if type(bn.drop) is not nn.Identity:  # dropout commutes with relu, not with relu6: one rule for both, not fused
        return None
    return "none" if type(bn.act) is nn.Identity else _RELU_MODULES.get(type(bn.act))


def after_fold(bn: nn.Module) -> nn.Module:
    """What takes a BatchNorm2d's place once it is folded into the conv before it: nn.Identity, or a
    BatchNormAct2d's drop and act where they are not fused (see _inside), in its order."""
    if _inside(bn) is not None:
        return nn.Identity()
    rest = [m for m in (bn.drop, bn.act) if type(m) is not nn.Identity]
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest)


def _bn_site(bn_name: str, bn: nn.Module) -> _Site | None:
    """The site of a layer whose BatchNorm2d is bn, when that settles it (an activation inside a BatchNormAct2d, or
    something kept after it); None when what follows the BatchNorm decides (a relu after it, or none)."""
    inside = _inside(bn)
    if inside == "none":
        return None
    return _Site(bn_name) if inside is None else _Site(bn_name, inside)


# ------------------------------------------------------------------------------------- the module-call graph


@dataclass(eq=False)  # compared and hashed by identity: two calls of one module are two nodes
class _Node:
    """One call of a module kept opaque, or one other op."""

    kind: str  # "layer" (to convert), "batchnorm", "relu", "relu6", "dropout", "pool", "safe", "other", "input",
    # "output"
    module: str | None = None  # the called module's first name; None for an op
    inputs: list[_Node] = field(default_factory=list)  # whose outputs it reads (parameters and buffers left out)
    users: list[_Node] = field(default_factory=list)  # who reads its output; the graph's output is one
    inplace: bool = False  # an op that writes its result into its input (torch.relu_, F.relu(x, inplace=True))


@dataclass
class _CallGraph:
    calls: dict[str, list[_Node]]  # module (first name) -> its calls, in execution order
    modules: dict[str, nn.Module]  # first name -> module


class _Tracer(fx.Tracer):
    """Keeps opaque torch's own modules (fx's default), the given module types (lowp's modules subclass nn.Linear /
    nn.Conv2d outside torch.nn, so fx would trace into them) and the layers to convert. The same rule picks the
    module calls out of a torch.export graph, so both graphs group ops alike."""

    def __init__(self, leaves: tuple[type, ...] = (), layers: set[str] | frozenset[str] = frozenset()):
        super().__init__()
        self.leaves, self.layers = leaves, layers

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # timm's BatchNormAct2d is a BatchNorm2d to fold, with its activation: one call, as an nn.BatchNorm2d is
        return isinstance(m, self.leaves) or qualname in self.layers or is_batchnorm_act(m) \
            or super().is_leaf_module(m, qualname)


def _module_kind(name: str, module: nn.Module, layers: set[str]) -> str:
    if name in layers:
        return "layer"
    if type(module) in _RELU_MODULES:  # exact type: a subclass may compute something else
        return _RELU_MODULES[type(module)]
    if isinstance(module, nn.BatchNorm2d):
        return "batchnorm"
    if isinstance(module, _DROPOUTS):
        return "dropout"
    if isinstance(module, nn.MaxPool2d) and not module.return_indices:
        return "pool"
    return "safe" if isinstance(module, (nn.Identity, nn.Flatten)) else "other"


def _link(graph: fx.Graph, owner: dict[fx.Node, _Node], modules: dict[str, nn.Module],
          aliases: dict[fx.Node, fx.Node] | None = None) -> _CallGraph:
    """Connect the _Nodes that own the graph's nodes (owner: graph node -> _Node; several nodes of one module call
    share one _Node; nodes without one are parameters, buffers and checks, not dataflow). aliases: a node of a
    module call that stands for the call's input (see _input_aliases) -> that input; whoever reads it from outside
    the call reads the input's owner."""
    aliases = aliases or {}
    for n in graph.nodes:
        dst = owner.get(n)
        if dst is None:
            continue
        for arg in n.all_input_nodes:
            src = owner.get(arg)
            if src is not dst and arg in aliases:
                src = owner[aliases[arg]]
            if src is None or src is dst:
                continue
            if src not in dst.inputs:
                dst.inputs.append(src)
            if dst not in src.users:
                src.users.append(dst)
    calls = defaultdict(list)
    for node in dict.fromkeys(owner.values()):  # distinct, in execution order
        if node.module is not None:
            calls[node.module].append(node)
    return _CallGraph(dict(calls), modules)


def _from_fx(graph: fx.Graph, modules: dict[str, nn.Module], layers: set[str]) -> _CallGraph:
    """The call graph of an fx trace (by _Tracer): each call_module node is one call."""
    owner: dict[fx.Node, _Node] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            module, src = modules[n.target], n.args[0] if n.args else None
            if isinstance(module, nn.Identity) and isinstance(src, fx.Node) and src in owner:
                owner[n] = owner[src]  # a no-op: torch.export records no node for it either
            else:
                owner[n] = _Node(_module_kind(n.target, module, layers), n.target)
        elif n.op == "call_function":
            inplace = n.target is torch.relu_ or n.kwargs.get("inplace") is True or \
                (n.target in (F.relu, F.relu6) and len(n.args) > 1 and n.args[1] is True)
            owner[n] = _Node(_FX_FUNCTIONS.get(n.target, "other"), inplace=inplace)
        elif n.op == "call_method":
            inplace = n.target.endswith("_") and not n.target.startswith("_")
            owner[n] = _Node(_FX_METHODS.get(n.target, "other"), inplace=inplace)
        elif n.op in ("placeholder", "output"):
            owner[n] = _Node("input" if n.op == "placeholder" else "output")
    return _link(graph, owner, modules)


def _normalise(path: str) -> str:
    """A module path as torch.export may spell it ("L['self'].layer1[0]", "L['self']._modules['layer1']") -> as
    named_modules() does ("layer1.0"). Non-strict export already gives the latter."""
    path = re.sub(r"\._modules\[['\"]([^'\"]*)['\"]\]", r".\1", path)
    path = re.sub(r"^L\[['\"]self['\"]\]", "", path)
    path = re.sub(r"\[['\"]?([^'\"\]]*)['\"]?\]", r".\1", path)
    return path.lstrip(".")


def _first_names(model: nn.Module) -> dict[str, str]:
    """Every name of every submodule -> its first name (the one named_modules() gives, as in core.places)."""
    first: dict[int, str] = {}
    return {name: first.setdefault(id(m), name) for name, m in model.named_modules(remove_duplicate=False) if name}


def _op_name(node: fx.Node) -> str | None:
    packet = getattr(node.target, "overloadpacket", None)  # an aten (or lowp) OpOverload
    return packet.__name__ if packet is not None else None


def _passes_input(node: fx.Node) -> bool:
    """Whether the node's result is its first argument, or a cast, copy, view or fake-quantization of it."""
    name = _op_name(node) or ""
    return (name in _PASS_THROUGH or (name.endswith("_") and not name.startswith("_"))) \
        and bool(node.args) and isinstance(node.args[0], fx.Node)


def _input_aliases(graph: fx.Graph, owner: dict[fx.Node, _Node]) -> dict[fx.Node, fx.Node]:
    """The nodes of module calls that stand for the call's input rather than its output -> that input (a node
    outside the call).

    x.to(dtype) returns x itself when x has that dtype already (so does an in-place op), and the export tracer then
    records every later use of x as a use of the .to node: a residual add after `y = self.a(x); self.b(y) + y`
    reads, in the graph, the cast a QATLinear b makes of its input inside its fake quantization, as though it read
    b's output. A node of a call that passes the call's input through (casts, copies, views, in-place ops, fake
    quantization: _passes_input) and is not the call's last node (its output; an nn.Flatten's one view, an inplace
    nn.ReLU's relu_) is the input, to whoever reads it from outside the call."""
    last = {}
    for n in graph.nodes:
        if n in owner:
            last[owner[n]] = n
    aliases: dict[fx.Node, fx.Node] = {}
    for n in graph.nodes:  # in execution order: an alias of an alias is resolved already
        call = owner.get(n)
        if call is None or call.module is None or last[call] is n or not _passes_input(n):
            continue
        src = aliases.get(n.args[0], n.args[0])
        if src in owner and owner[src] is not call:
            aliases[n] = src
    return aliases


def _from_export(program: torch.export.ExportedProgram, model: nn.Module, layers: set[str],
                 leaves: tuple[type, ...]) -> _CallGraph:
    """The call graph of an exported program. Each aten node's meta["nn_module_stack"] lists the modules whose
    forward it ran in, outermost first, as {key: (path, type)}; a key is unique per call ("lin", "lin@1", ...), the
    path is any of the module's names. A node belongs to the call of the outermost opaque module on its stack (the
    one fx would have kept whole); consecutive nodes with the same key are one call: one aten op for nn.Linear,
    several for a QATLinear. A module whose forward records no op (nn.Identity) is not in the graph at all.

    A getitem unpacks the node before it (a multi-output op, or a torch.no_grad / autocast region, which export
    records as one node running a subgraph): it is part of that node, whatever its own stack says. A layer called
    only inside such a region has no call here, so nothing is fused into it or handed to it or from it."""
    modules, first = dict(model.named_modules()), _first_names(model)
    opaque = _Tracer(leaves, layers).is_leaf_module
    user_inputs = set(program.graph_signature.user_inputs)
    owner: dict[fx.Node, _Node] = {}
    key, call = None, None
    for n in program.graph.nodes:
        if n.op == "placeholder":
            if n.name in user_inputs:  # the others are parameters, buffers and constants
                owner[n] = _Node("input")
            continue
        if n.op == "output":
            owner[n] = _Node("output")
            continue
        if n.op != "call_function" or (_op_name(n) or "").startswith(_CHECKS):
            continue
        if n.target is operator.getitem and isinstance(n.args[0], fx.Node) and n.args[0] in owner:
            owner[n] = owner[n.args[0]]
            continue
        here = None
        for k, (path, *_) in (n.meta.get("nn_module_stack") or {}).items():
            name = first.get(_normalise(path))  # None for the root ("")
            if name is not None and opaque(modules[name], name):
                here = k, name
                break
        if here is None:
            key = None
            name = _op_name(n) or ""
            owner[n] = _Node(_ATEN_OPS.get(name, "other"), inplace=name.endswith("_") and not name.startswith("_"))
        else:
            if here[0] != key:
                key, call = here[0], _Node(_module_kind(here[1], modules[here[1]], layers), here[1])
            owner[n] = call
    return _link(program.graph, owner, modules, _input_aliases(program.graph, owner))


# --------------------------------------------------------------------------------------- fusion and hand-off


def _single_user(node: _Node) -> _Node | None:
    return node.users[0] if len(node.users) == 1 else None


def _site(call: _Node, modules: dict[str, nn.Module]) -> _Site:
    bn, cur = None, call
    nxt = _single_user(cur)
    if isinstance(modules[call.module], nn.Conv2d) and nxt is not None and nxt.kind == "batchnorm" \
            and nxt.inputs == [cur]:
        bn, cur = nxt.module, nxt
        settled = _bn_site(bn, modules[bn])
        if settled is not None:
            return settled
        nxt = _single_user(cur)
    # A functional in-place relu stays in the model: after a fused relu it would rewrite in place the output that
    # relu saved for backward (QAT, Fp16Linear training fail there), so it is not fused.
    if nxt is None or nxt.kind not in ("relu", "relu6") or nxt.inputs != [cur] or nxt.inplace:
        return _Site(bn)
    return _Site(bn, nxt.kind, nxt.module)


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
            out.partly_fused.append(module)
            out.notes.append(f"{module} also runs after other ops: it stays, after the layers it is fused into")
    return out


def _fusions(graph: _CallGraph, layers: set[str]) -> Fusions:
    """For each layer in `layers`: the BatchNorm2d that alone reads a conv's output, then the relu that alone reads
    that, when every call of the layer is followed by the same ones (see _agree)."""
    sites = {layer: [_site(call, graph.modules) for call in graph.calls[layer]]
             for layer in sorted(layers) if graph.calls.get(layer)}
    return _agree(sites, {name: len(calls) for name, calls in graph.calls.items()})


def _reach(call: _Node, modules: dict[str, nn.Module], replaced: set[str]):
    """(readers, through_relu, dropouts, pools) when every path from this call's output reaches a call of a quantized
    layer — its only input, or an operand of a two-operand layer (an Add) — through int8-safe ops only, each of one
    input; readers: [(reader call, port)] in the order found. Else None. Modules in `replaced` (folded BatchNorms,
    fused relu modules) count as the nn.Identity they become."""
    readers, through_relu, dropouts, pools = [], False, set(), set()
    todo = [call]
    while todo:
        cur = todo.pop(0)
        if not cur.users:
            return None  # a path ending in no layer: the graph's output is a user, so this is a dead end
        for nxt in cur.users:
            if nxt.kind == "layer":
                add = isinstance(modules[nxt.module], Add)
                if add and len(nxt.inputs) == 2:
                    readers.append((nxt, nxt.inputs.index(cur)))
                elif not add and nxt.inputs == [cur]:
                    readers.append((nxt, 0))
                else:
                    return None
                continue
            if nxt.inputs != [cur]:
                return None
            if nxt.module is not None and nxt.module in replaced:
                pass
            elif nxt.kind == "relu":
                through_relu = True
            elif nxt.kind == "dropout":
                dropouts.add(nxt.module)
            elif nxt.kind == "pool":
                pools.add(nxt.module)
            elif nxt.kind != "safe":
                return None
            todo.append(nxt)
    return readers, through_relu, dropouts, pools


def _edges(graph: _CallGraph, layers: set[str], replaced: set[str]) -> tuple[dict[str, Int8Edge], list[str]]:
    """producer -> Int8Edge for the quantized layers that may hand int8 to the quantized layers reading their
    output: every call of the producer reaches, through int8-safe ops, calls of the same readers at the same ports,
    and every call of each reader reads a call of the producer there (so one output scale — the readers' input
    scale — serves every call of all). Also notes on layers called at several places that keep a float interface."""
    calls = graph.calls
    ends = {call: _reach(call, graph.modules, replaced) for layer in layers for call in calls.get(layer, ())}
    edges, notes = {}, []
    for producer in sorted(layers):
        found = [ends[call] for call in calls.get(producer, ())]
        if not found or all(end is None for end in found):
            continue
        readers = [] if found[0] is None else list(dict.fromkeys((c.module, port) for c, port in found[0][0]))
        # layers first: the first reader's observer gives the codes their scale, and a layer's is the one its
        # config chose
        readers.sort(key=lambda reader: isinstance(graph.modules[reader[0]], Add))
        shared = len(found) > 1 or any(len(calls[m]) > 1 for m, _ in readers)
        if any(end is None or {(c.module, p) for c, p in end[0]} != set(readers) for end in found):
            if shared:
                notes.append(f"{producer} is called at {len(found)} places whose outputs do not all go straight to "
                             f"the same quantized layers: its output stays float")
            continue
        partial = [m for m, port in readers
                   if {c for end in found for c, p in end[0] if c.module == m and p == port} != set(calls[m])]
        if partial:
            consumer = partial[0]
            notes.append(f"{consumer} is called at {len(calls[consumer])} places, not all reading {producer}: "
                         f"{producer} hands it float, and {consumer} keeps a float input")
            continue
        edges[producer] = Int8Edge(readers[0][0], any(end[1] for end in found), set().union(*(end[2] for end in found)),
                                   set().union(*(end[3] for end in found)), readers[0][1], tuple(readers[1:]))
    return edges, notes


def _why_unfolded(bn: str, graph: _CallGraph | None) -> str:
    """Why the BatchNorm2d called bn (first name) is not folded, read off the graph (None: none was read)."""
    if graph is None:
        return "no graph of the model was read, and in nn.Sequential order it does not follow a converted Conv2d alone"
    calls = graph.calls.get(bn, [])
    if not calls:
        return "the forward that was read does not call it (or calls it inside a torch.no_grad region)"
    for call in calls:
        src = call.inputs[0] if len(call.inputs) == 1 else None
        if src is None or src.module is None or not isinstance(graph.modules[src.module], nn.Conv2d):
            return f"it {'also ' * (len(calls) > 1)}runs where it does not read a Conv2d's output"
        if src.kind != "layer":
            return f"{src.module}, the Conv2d before it, is not converted"
        if src.users != [call]:
            return f"the output of {src.module}, the Conv2d before it, is read by more than it"
    return "a Conv2d before it is called at several places, not all followed by it (see the note on it)"


def _unfolded_notes(model: nn.Module, fusions: list[Fusion], graph: _CallGraph | None) -> list[str]:
    """A note for each BatchNorm of the model that is not folded, saying why: it stays, and runs as it did."""
    folded, notes = {f.batchnorm for f in fusions}, []
    for name, m in model.named_modules():  # first names, as everywhere else
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and name not in folded:
            why = (_why_unfolded(name, graph) if isinstance(m, nn.BatchNorm2d) else
                   "lowp folds a BatchNorm2d into the Conv2d before it, no other BatchNorm")
            notes.append(f"{name} ({type(m).__name__}) is not folded: {why}")
    return notes


def _sequential_fusions(model: nn.Module, layers: set[str]) -> Fusions:
    """The fusions of a model no graph was read of, from nn.Sequential order: a layer's call sites are the slots it
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
                settled = _bn_site(bn, kids[j - 1])
                if settled is not None:
                    sites[name].append(settled)
                    continue
            kind = _RELU_MODULES.get(type(kids[j])) if j < len(kids) else None
            sites[name].append(_Site(bn, kind, names[id(kids[j])]) if kind else _Site(bn))
    return _agree({layer: sites[layer] for layer in sorted(sites)}, slots)


# ------------------------------------------------------------------------------------------------- analyse


# (args, kwargs) of one model(*args, **kwargs) call: what torch.export needs to see a model's graph
Example = tuple[tuple, dict]


@dataclass
class Analysis:
    """What analyse found. source: which graph was read ("torch.export", "torch.fx" or "nn.Sequential");
    fusions / fused_modules / partly_fused as in Fusions; edges: producer -> Int8Edge (always empty for
    "nn.Sequential"); notes: what was not folded, fused or handed on, and why."""

    source: str
    fusions: list[Fusion] = field(default_factory=list)
    fused_modules: list[str] = field(default_factory=list)
    edges: dict[str, Int8Edge] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    partly_fused: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _untouched(model: nn.Module):
    """Put every module's attributes back as they were. Non-strict export runs the model's Python on fake tensors
    (fx on Proxies): real parameters and buffers are not written, but an attribute the forward assigns (a cache)
    would keep a fake tensor. Training flags, parameters, buffers and children come back too."""
    saved = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()]
    try:
        yield
    finally:
        for m, attrs, parameters, buffers, children in saved:
            m.__dict__.clear()
            m.__dict__.update(attrs)
            for now, then in ((m._parameters, parameters), (m._buffers, buffers), (m._modules, children)):
                now.clear()
                now.update(then)


def _export(model: nn.Module, example: Example) -> torch.export.ExportedProgram:
    """torch.export's graph before decompositions (aten.conv2d / linear / batch_norm / relu, nn_module_stack on
    each node), in the model's current mode, the model untouched."""
    args, kwargs = example
    # export prints the partial graph of a failed capture to stderr (torch/export/_trace.py, _log_export_wrapper):
    # hundreds of lines a user did not ask for; the failure goes into the notes instead. On success what was
    # written (warnings) is passed on.
    with _untouched(model), contextlib.redirect_stderr(io.StringIO()) as err:
        program = torch.export.export(model, tuple(args), dict(kwargs), strict=False)
    sys.stderr.write(err.getvalue())
    return program


def _why(error: Exception) -> str:
    """The exception's type and the first line of its message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__


def analyse(model: nn.Module, layers: set[str], *, example: Example | None = None,
            leaves: tuple[type, ...] = ()) -> Analysis:
    """The fusions and int8 edges of `layers` (first names, as named_modules() gives them, of the modules to
    convert), read off torch.export's graph when `example` ((args, kwargs) of one model call) is given and export
    captures the model, else off a torch.fx trace, else from nn.Sequential order; a note says why a graph was not
    read. `leaves`: module types to keep opaque (lowp's own modules), as torch's own modules are. A BatchNorm2d
    (and timm's BatchNormAct2d, with the relu inside it) is folded into the Conv2d whose output only it reads; the
    notes say why each BatchNorm that is not folded stays.

    Edges are as if the fusions were applied: a producer's int8 path starts after its folded BatchNorm and fused
    activation; a fused relu module (replaced by nn.Identity) is no relu on the path, a functional relu (it stays)
    is, so through_relu is True; a BatchNorm not folded ends the path. The model is not changed.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
    ...                             torch.nn.Conv2d(8, 8, 3)).eval()
    >>> found = analyse(model, {"0", "3"}, example=((torch.randn(1, 3, 16, 16),), {}))
    >>> found.source, found.fusions, found.fused_modules
    ('torch.export', [Fusion(layer='0', batchnorm='1', activation='relu')], ['2'])
    >>> found.edges  # 1 and 2 become nn.Identity: 0 hands int8 straight to 3
    {'0': Int8Edge(consumer='3', through_relu=False, dropouts=set(), pools=set(), port=0, also=())}
    """
    if example is not None and not (isinstance(example, tuple) and len(example) == 2
                                    and isinstance(example[0], (tuple, list)) and isinstance(example[1], dict)):
        raise TypeError(f"analyse: example must be (args, kwargs) of one model call, a tuple and a dict, got "
                        f"{type(example).__name__}")
    notes, graph, source = [], None, None
    if example is not None:
        try:
            program = _export(model, example)
        except Exception as e:  # export raises many types for what it cannot capture; any of them means "no graph"
            notes.append(f"torch.export could not capture the model ({_why(e)}): read with torch.fx instead")
        else:
            graph, source = _from_export(program, model, layers, leaves), "torch.export"
    if graph is None:
        try:
            with _untouched(model):
                traced = _Tracer(leaves, layers).trace(model)
        except Exception as e:  # likewise for fx and untraceable Python
            found = _sequential_fusions(model, layers)
            notes.append(f"the model could not be traced by torch.fx ({_why(e)}): BatchNorm / ReLU fused only inside "
                         f"nn.Sequential, and no int8 hand-off between layers")
            return Analysis("nn.Sequential", found.fusions, found.fused_modules, {},
                            notes + found.notes + _unfolded_notes(model, found.fusions, None), found.partly_fused)
        graph, source = _from_fx(traced, dict(model.named_modules()), layers), "torch.fx"
    found = _fusions(graph, layers)
    # what becomes nn.Identity: folded BatchNorms (a BatchNormAct2d's kept activation is no int8-safe op) and
    # fused relu modules
    replaced = {f.batchnorm for f in found.fusions
                if f.batchnorm is not None and _inside(model.get_submodule(f.batchnorm)) is not None}
    edges, edge_notes = _edges(graph, layers, replaced | set(found.fused_modules))
    return Analysis(source, found.fusions, found.fused_modules, edges,
                    notes + found.notes + edge_notes + _unfolded_notes(model, found.fusions, graph),
                    found.partly_fused)
