"""What every torch.ops.lowp registration shares: argument checks and reshaping (dispatch: backends.py)."""

from __future__ import annotations

import functools
import inspect
import math
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

from .._validate import (
    FLOAT_DTYPES,
    check_activation,
    check_k_contiguous,
    check_param,
    check_scale,
    check_tensor,
    check_zero_point,
    dtype_names,
    fail,
    fp8_supported,
)
from ..cpu import gemm as cpu_gemm
from ..cpu import native, support
from ..cpu.support import plain_eager, traced
from .backends import cpu_backend


def flat(t: Tensor | None) -> Tensor | None:
    """Per-row / per-column / per-tensor parameters as the contiguous 1-D vectors the kernels index."""
    if t is None or (t.ndim == 1 and t.is_contiguous()):  # a module's scales already are: no view ops per call
        return t
    return t.reshape(-1).contiguous()


def rows(x: Tensor) -> tuple[int, int]:
    """x (..., K) viewed as a matrix: (M, K) with M the product of the leading dims."""
    return math.prod(x.shape[:-1]), x.shape[-1]


def check_matrix_input(op: str, name: str, x: Tensor, dtypes) -> None:
    check_tensor(op, name, x, dtypes)
    if x.ndim < 1:
        fail(op, f"argument '{name}' must have at least 1 dim (..., K), got a 0-d tensor")
    check_k_contiguous(op, name, x)


def check_linear_operands(op: str, names: tuple[str, str], a: Tensor, b: Tensor, a_dtypes,
                          b_dtype: torch.dtype) -> tuple[int, int, int]:
    """a (..., K) of a_dtypes and b (N, K) of b_dtype (nn.Linear's weight layout), both K-contiguous, on one
    device -> (M, N, K), M the product of a's leading dims."""
    check_matrix_input(op, names[0], a, a_dtypes)
    check_tensor(op, names[1], b, (b_dtype,), ndim=2, like=(names[0], a))
    M, K = rows(a)
    if b.shape[1] != K:
        fail(op, f"argument '{names[1]}' must be (N, K) with K = {names[0]}.shape[-1] = {K}, got shape "
                 f"{tuple(b.shape)}")
    check_k_contiguous(op, names[1], b)
    return M, b.shape[0], K


def check_out_dtype(op: str, out_dtype: torch.dtype, allowed, name: str = "out_dtype") -> torch.dtype:
    if out_dtype not in allowed:
        fail(op, f"argument '{name}' must be {dtype_names(allowed)}, got {out_dtype}", TypeError)
    return out_dtype


def check_int8_output(op: str, out_dtype, scales: dict, others: dict, activation: str) -> torch.dtype:
    """The output dtype of an op on int8 input (int8_mm, int8_conv2d): None means int32 without scales and float32
    with them; int32 is the raw accumulator and takes no epilogue argument; other dtypes need both scales.
    scales / others: argument name -> tensor or None."""
    if out_dtype is None:
        out_dtype = torch.int32 if all(v is None for v in scales.values()) else torch.float32
    check_out_dtype(op, out_dtype, (torch.int32, torch.int8) + FLOAT_DTYPES)
    if out_dtype == torch.int32:
        given = [n for n, v in {**scales, **others}.items() if v is not None] + ["activation"] * (activation != "none")
        if given:
            fail(op, f"out_dtype int32 returns the raw accumulator, so {', '.join(given)} cannot apply; "
                     f"ask for a float or int8 out_dtype")
    for name, t in scales.items():
        if t is None and out_dtype != torch.int32:
            fail(op, f"argument '{name}' is required for out_dtype {dtype_names([out_dtype])}")
    return out_dtype


def check_zero_point_sums(op: str, name: str, sums, zero_point: str, zp, like, N: int) -> None:
    """b_sum / weight_sum: int32 (N,) = Σ_k weight[n, k], which only the zero point `zero_point` uses."""
    check_param(op, name, sums, like, (torch.int32,), [(N,)], "Σ_k of each of the N weight rows", one=False)
    if sums is not None and zp is None:
        fail(op, f"argument '{name}' only serves the zero-point correction; give '{zero_point}' too or leave it out")


def check_epilogue(op: str, like, N: int, bias, activation: str, out_dtype, out_scale, out_zero_point) -> None:
    """The arguments every int8 op's epilogue takes under the same names; like: (name, tensor) of the first
    operand, whose device they must share."""
    check_activation(op, activation)
    check_param(op, "bias", bias, like, FLOAT_DTYPES, [(N,)], "one value per output column", one=False)
    if out_dtype == torch.int8 and out_scale is None:
        fail(op, "out_dtype int8 requantizes the output and needs 'out_scale' (float32, one element)")
    if out_dtype != torch.int8 and (out_scale is not None or out_zero_point is not None):
        fail(op, f"'out_scale' / 'out_zero_point' only apply to out_dtype int8, got out_dtype {out_dtype}")
    check_scale(op, "out_scale", out_scale, like, what="the per-tensor output scale")
    check_zero_point(op, "out_zero_point", out_zero_point, like, what="the per-tensor output zero point")


def check_fp8_device(op: str, name: str, t: Tensor) -> None:
    """FP8 on CUDA needs FP8 Tensor Cores and conversions: sm_89 (Ada) or newer (Triton's float8e4nv)."""
    if not fp8_supported(t.device):
        major, minor = torch.cuda.get_device_capability(t.device)
        fail(op, f"argument '{name}' is on {torch.cuda.get_device_name(t.device)} (sm_{major}{minor}): float8_e4m3fn "
                 f"needs sm_89 or newer (Ada, Hopper); use the int8 ops there")


def check_static_qparams(op: str, x: Tensor, scale: Tensor, zero_point: Tensor | None) -> None:
    """A per-tensor scale (float32, one element, finite and normal; required) and zero point (int32, one element,
    in [-128, 127])."""
    check_scale(op, "scale", scale, ("x", x), required=True)
    check_zero_point(op, "zero_point", zero_point, ("x", x))


def _signature(args: tuple) -> tuple[tuple, list[Tensor]] | None:
    """What an op's validation depends on: x's dtype, shape, strides and device, and for every other argument its
    value, or for a tensor its identity, version (an in-place write moves the version), data, shape and strides
    (`t.data = other` changes them and not the version); with the tensors. None
    where a tensor has no version counter (made under torch.inference_mode, so its writes go unseen) or is not a
    plain tensor."""
    x = args[0]
    key, tensors = [x.dtype, x.shape, x.stride(), x.device], []
    for a in args[1:]:
        if isinstance(a, Tensor):
            if type(a) is not Tensor or a.is_inference():
                return None
            key.append((id(a), a._version, a.data_ptr(), a.shape, a.stride()))
            tensors.append(a)
        else:
            key.append(a)
    return tuple(key), tensors


def _eager_plain(x) -> bool:
    """Whether a call on x runs eagerly on a plain CPU or CUDA tensor, with nothing that must see the op: no
    autograd through it (its backward says the op is inference-only), no tracing (torch.compile / export put the op
    in their graphs, torch.jit.trace records the aten ops it sees), no dispatch or torch-function mode (fake
    tensors, FlopCounterMode, proxies), no tensor subclass or functorch wrapper. On CUDA the lane also keeps value
    checks (a device read each) to one per signature: no host sync in the steady state."""
    return (type(x) is Tensor and x.device.type in ("cpu", "cuda")
            and not (x.requires_grad and torch.is_grad_enabled())
            and not torch.compiler.is_compiling() and not torch._C._len_torch_dispatch_stack()
            and not torch._C._is_torch_function_mode_enabled() and torch._C._get_tracing_state() is None
            and not torch._C._functorch.is_functorch_wrapped_tensor(x))


# owner.__dict__ keys: PLAN, the native plan a Lane made at the owner's last validated call (checked against each
# call's arguments); TRUSTED, that plan where the owner vouches for its arguments (trust_plan, run_plan)
PLAN, TRUSTED = "_lowp_plan", "_lowp_trusted_plan"


def forget_plans(owner: object) -> None:
    """Drop the native plans an owner holds: before pickling or copying it (a plan is a C++ object), when it moves
    or replaces its tensors (a plan holds those it was made for), when an attribute changes (trusted plans)."""
    owner.__dict__.pop(PLAN, None)
    owner.__dict__.pop(TRUSTED, None)


def trust_plan(owner: object, trusted: bool) -> None:
    """After a call through a Lane: let run_plan use the plan it made (or kept), or not. The owner vouches that
    every argument but x is the same as in that call until it calls forget_plans (a module: until an attribute is
    set, or its tensors moved; in-place writes the plan sees itself), and that what it does around the op is
    nothing for an x the plan serves (no cast of x or of the output)."""
    owner.__dict__[TRUSTED] = (owner.__dict__.get(PLAN) or None) if trusted else None  # False: declined


def run_plan(owner: object, x) -> Tensor | None:
    """The owner's trusted plan on x alone, or None where there is none or it does not serve x: a batch-1 module's
    whole call in C++. native.cpp's Plan.run_x checks the held tensors' versions and _eager_plain's conditions itself
    (Plan::plain), all but torch.compile's, which only Python sees. The native backend may have been switched off
    since the plan was made (use_cpu_backend)."""
    if torch.compiler.is_compiling() or cpu_backend() != "native":
        return None
    plan = owner.__dict__.get(TRUSTED)
    return None if plan is None else plan.run_x(x)


class Lane:
    """An op's eager shortcut for the module that calls it with the same constant arguments every time (its own
    weight, scales, zero points, geometry): the op's body directly, without torch.library's dispatch (autograd
    and Python kernels, ~40 us a call), and its validation run once per signature (_signature) rather than on every
    call. The result is the op's own: the same body, on arguments the same checks passed. Anything _eager_plain
    refuses, or a signature it cannot stamp, goes through the op.

    Under the native CPU backend, once validation has passed, the owner also gets a plan (native.cpp's Plan, in
    owner.__dict__[PLAN]): the arguments after x held in C++, each call checked there to be the same objects at
    the same versions, and the backend's route for the call run there — quantize, im2col, torch._int_mm, the
    epilogue, the same C++ and ATen functions the Python route calls. A call the plan does not serve (a route
    through oneDNN, gelu, a changed argument) comes back None and takes the path below. A module that vouches for
    its arguments (trust_plan) runs the plan on x alone (run_plan): Int8Linear (1, 64) x (64, 64) 37 -> 5.3 us a
    call on the CI machine, 2026-12-06. A plan holds its tensors: its owner drops it (forget_plans) when it moves
    or replaces them.

    op: the torch.ops.lowp op; check(*args) -> the output dtype (None resolved), raising on bad arguments, as the
    op does first (it may take only the op's leading arguments); body(*args) the rest of the op, with out_dtype
    resolved; plan: the op's number in native.cpp's Plan.make, None for an op without a plan. Lanes are remembered
    per owner (the module) for its last signature, with weak references to the argument tensors: an id is a
    tensor's only while it lives, and a lane must not keep a module's old weights alive after .to(device) replaced
    them."""

    def __init__(self, op, check: Callable, body: Callable, plan: int | None = None) -> None:
        self.op, self.check, self.body, self.plan = op, check, body, plan
        self.out_index = list(inspect.signature(body).parameters).index("out_dtype")
        self.checked = len(inspect.signature(check).parameters)  # the op's leading arguments check() takes
        # owner -> (signature, output dtype, weak references to the signature's tensors)
        self._validated: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(self, owner: object, *args) -> Tensor:
        if not _eager_plain(args[0]):
            return self.op(*args)
        native_backend = args[0].device.type == "cpu" and _native_backend()
        direct = type(owner) is _DirectCalls
        # the plan: a native.cpp Plan, False where Plan.make declined these arguments, None (absent) after
        # forget_plans or before the first call; for a direct call, the plan made for its weight (args[1]), which
        # direct() has run already
        plan = (owner.plans.get(id(args[1])) if direct else owner.__dict__.get(PLAN)) if native_backend else None
        if plan and plan.op == self.plan and not direct:
            y = plan.run(args)
            if y is not None:
                return y
        signed = _signature(args)
        if signed is None:
            return self.op(*args)
        key, tensors = signed
        seen = self._validated.get(owner)
        if seen is None or seen[0] != key or any(ref() is not t for ref, t in zip(seen[2], tensors, strict=True)):
            seen = (key, self.check(*args[:self.checked]), tuple(weakref.ref(t) for t in tensors))
            self._validated[owner] = seen
            plan = None  # made for other arguments
        if native_backend and self.plan is not None and direct and plan is None:  # held weakly: the caller's tensors
            made = owner.keep(id(args[1]), native.load().Plan.make(self.plan, args, seen[1],
                                                                    cpu_gemm._QLINEAR_MIN_WEIGHT, weak=True))
            y = made.run(args) if made else None
            if y is not None:
                return y
        elif native_backend and self.plan is not None and not direct and (
                plan is None or (plan and plan.op != self.plan)):
            owner.__dict__[PLAN] = native.load().Plan.make(self.plan, args, seen[1],
                                                           cpu_gemm._QLINEAR_MIN_WEIGHT) or False
        i = self.out_index
        outer, plain_eager.on = getattr(plain_eager, "on", False), True
        try:
            return self.body(*args[:i], seen[1], *args[i + 1:])
        finally:
            plain_eager.on = outer


class _DirectCalls:
    """The owner Lane sees for one op's direct calls (direct): its last validated signature, and native plans that
    hold the caller's tensors weakly (native.cpp's Plan.make(weak=True): a kept plan must not keep them alive), one
    per weight for the last WEIGHTS weights (a model's layers called in turn), each run only on the very tensors
    it was made for, at the versions it saw."""

    WEIGHTS = 64

    def __init__(self) -> None:
        self.plans: dict[int, object] = {}

    def keep(self, weight_id: int, plan):
        """plan (None: declined, kept as False so it is not asked again) for the weight with this id."""
        if len(self.plans) >= self.WEIGHTS and weight_id not in self.plans:
            del self.plans[next(iter(self.plans))]  # the oldest
        self.plans[weight_id] = plan or False
        return plan


_REQUIRED = object()


def direct(lane: Lane) -> Callable:
    """lowp_ops.<op>: the op (torch.ops.lowp.<op>), except that a plain eager call (_eager_plain) takes its lane —
    the op's own validation and body without torch.library's dispatch, ~40 us a call — and a call on tensors it has
    seen runs the native plan kept for them (_DirectCalls) without leaving C++: int8_linear on (1, 64) x (64, 64)
    56 us through the op, 5.5 with a kept plan, F.linear 3.0-3.2 (bench/results/cpu-2026-12-06.md, CI machine). The
    output is the op's, bit for bit; a call the lane does not take (autograd, tracing, a mode, an argument the op
    does not know) is the op's call."""
    schema = lane.op._opoverload._schema.arguments
    defaults = tuple(a.default_value if a.has_default_value() else _REQUIRED for a in schema)
    position = {a.name: i for i, a in enumerate(schema)}
    required = sum(d is _REQUIRED for d in defaults)  # the leading ones: a schema's defaults trail
    assert all(d is _REQUIRED for d in defaults[:required]), "a required argument after one with a default"

    def bind(args: tuple, kwargs: dict) -> tuple | None:
        """All the op's arguments by position, or None where the op must say what is wrong with them."""
        given = len(args)
        if given >= len(defaults):
            return args if given == len(defaults) and not kwargs else None
        if not kwargs:
            return args + defaults[given:] if given >= required else None
        tail = list(defaults[given:])
        for name, value in kwargs.items():
            i = position.get(name, -1) - given
            if i < 0:  # unknown, or also given by position
                return None
            tail[i] = value
        missing = any(v is _REQUIRED for v in tail[:required - given])  # `in` would compare tensors
        return None if missing else args + tuple(tail)

    owner = _DirectCalls()

    @functools.wraps(lane.op)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():  # what Dynamo traces: the op
            return lane.op(*args, **kwargs)
        full = bind(args, kwargs)
        if full is None:
            return lane.op(*args, **kwargs)
        plan = owner.plans.get(id(full[1])) if _native_backend() else None
        if plan:  # it checks x as _eager_plain would (Plan::plain) and that the rest are the tensors it was made for
            y = plan.run(full)
            if y is not None:
                return y
        return lane(owner, *full)  # which sends a call it does not take (_eager_plain) to the op

    return call


def _native_backend() -> bool:
    """Whether CPU calls run the native backend with its C++ passes (where plans run)."""
    return cpu_backend() == "native" and support.missing() is None and native.load() is not None


# ------------------------------------------------------------------------------------ the native backend in graphs
# torch.compile and torch.export trace a triton_op's body with fake tensors, where the native CPU launchers have no
# data to work on (and oneDNN's prepack no fake kernel): traced as they are, they would put torch-op stand-ins (the
# reference's float64 arithmetic, for the conv) in the graph. So on the native backend an op's body is one opaque
# graph op, lowp_cpu::<op> (the op's schema and fake), whose CPU kernel runs the body when the compiled model runs:
# the same C++ and ATen calls as eager, and for the int8 GEMM ops the native plan (native.cpp's Plan, made per call,
# ~2-4 us) where one serves. Defined with torch.library's low-level API: a Python kernel costs ~3 us a call there,
# a custom_op ~10 us (CI machine, 2026-12-06). No autograd: the lowp ops around them have their own.
_GRAPH_LIB = torch.library.Library("lowp_cpu", "DEF")


def in_graphs(op, body: Callable, fake: Callable, plan: int | None = None) -> Callable:
    """body, the triton_op `op`'s work after validation (out_dtype resolved), as the op should call it: directly,
    or while torch.compile / torch.export trace a CPU call on the native backend, as lowp_cpu::<op>, which runs body
    (after a native plan, for a plan op: Lane's numbering) when the graph runs. fake: the op's fake, whose defaults
    fill the trailing arguments the dispatcher leaves out."""
    schema = str(op._opoverload._schema)  # "lowp::name(...) -> ..."
    name = schema[len("lowp::"):schema.index("(")]
    _GRAPH_LIB.define(schema[len("lowp::"):])
    defaults = tuple(p.default for p in inspect.signature(fake).parameters.values())
    out_index = list(inspect.signature(fake).parameters).index("out_dtype") if plan is not None else None

    def kernel(*args):
        args = args + defaults[len(args):]
        if plan is not None and _native_backend():
            made = native.load().Plan.make(plan, args, args[out_index], cpu_gemm._QLINEAR_MIN_WEIGHT)
            y = made.run_x(args[0]) if made else None
            if y is not None:
                return y
        outer, plain_eager.on = getattr(plain_eager, "on", False), True
        try:
            return body(*args)
        finally:
            plain_eager.on = outer

    _GRAPH_LIB.impl(name, kernel, "CPU")
    torch.library.register_fake(f"lowp_cpu::{name}", fake, lib=_GRAPH_LIB)
    graph_op = getattr(torch.ops.lowp_cpu, name).default

    @functools.wraps(body)
    def run(*args):
        x = args[0]
        if x.device.type == "cpu" and cpu_backend() == "native" and traced(x):
            return graph_op(*args)
        return body(*args)

    return run


# ----------------------------------------------------------------------------- a lowp module's whole call in graphs
# Under torch.compile, a lowp op's graph op (above) takes the module's weight, scales, zero points and bias as graph
# inputs: Dynamo guards each one and Inductor's wrapper checks its size and strides on every call, and the op's
# Python kernel parses them and makes its plan again. For the seed ConvNet at batch 1 that is ~140 us of a compiled
# call's ~310 (eager: ~165; CI machine, 2026-12-06). So on the native CPU backend a lowp module's whole call is
# one graph op, lowp_cpu::module(x, call, size, dtype, channels_last): x and a handle to the module (a torch.library
# opaque reference, guarded by its type alone). Its kernel is the module's eager call, where the module's plan runs
# on x alone; its fake is the output the module promised while traced (size, dtype, layout), computed there from
# what Dynamo reads of the module and so guards. torch.export keeps the ops (a graph it saves cannot hold a module).
CALL = "_lowp_call"  # a module's ModuleCall, in its __dict__
try:  # torch's opaque objects: torch 2.13 has them; older versions may lack them or spell them otherwise
    from torch._opaque_base import OpaqueBase
except ImportError:  # pragma: no cover
    OpaqueBase = object


class ModuleCall(OpaqueBase):
    """A lowp module as its graph op holds it: a weak reference (a compiled graph must not keep a module alive).
    Made with the module and never copied or pickled with it (WholeCall)."""

    def __init__(self, module) -> None:
        self.module = weakref.ref(module)


def _module_kernel(x, call, size, dtype, channels_last):
    y = call.module().forward(x)  # eager here: the graph runs, nothing traces
    if y.dtype != dtype or list(y.shape) != list(size):  # Inductor checks sizes and strides, not the dtype
        raise RuntimeError(f"lowp: {type(call.module()).__name__} returned {y.dtype} {tuple(y.shape)} where its "
                           f"compiled graph expects {dtype} {tuple(size)}: recompile after changing the module")
    return y


def _module_fake(x, call, size, dtype, channels_last):
    return torch.empty(size, dtype=dtype, device=x.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _define_module_op() -> bool:
    """Register ModuleCall and define lowp_cpu::module; False where this torch cannot (compiled graphs then hold the
    per-op graph ops)."""
    try:
        from torch._library.opaque_object import get_opaque_type_name, register_opaque_type

        register_opaque_type(ModuleCall, typ="reference")
        _GRAPH_LIB.define(f"module(Tensor x, {get_opaque_type_name(ModuleCall)} call, SymInt[] size, "
                          f"ScalarType dtype, bool channels_last) -> Tensor")
    except (ImportError, AttributeError, TypeError, ValueError, RuntimeError):  # pragma: no cover - older torch
        return False
    _GRAPH_LIB.impl("module", _module_kernel, "CPU")
    torch.library.register_fake("lowp_cpu::module", _module_fake, lib=_GRAPH_LIB)
    return True


_MODULE_OP = _define_module_op()


@torch.compiler.assume_constant_result
def _whole_calls() -> bool:
    """Whether this process can put whole module calls in graphs: torch's opaque objects and the native backend's
    C++ passes (fixed for the process; which backend is in force is read where the call is traced)."""
    return _MODULE_OP and support.missing() is None and native.load() is not None


class WholeCall:
    """Mixin for a lowp module whose call can be one graph op under torch.compile (see above); the module says its
    output size, _output_size(x) -> tuple, read while traced. It holds its ModuleCall from construction (Dynamo must
    find it, not make it) and drops it when copied or pickled: a copy gets its own."""

    def _init_whole_call(self) -> None:
        if _MODULE_OP:
            self.__dict__[CALL] = ModuleCall(self)

    def __getstate__(self):
        state = super().__getstate__()
        if CALL in state:
            state = dict(state)
            del state[CALL]
        return state

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self._init_whole_call()

    def _whole_call(self, x: Tensor, dtype: torch.dtype, channels_last: bool = False) -> Tensor | None:
        """The module's call on x as one graph op, returning _output_size(x) dtype, channels_last or contiguous:
        while torch.compile (not torch.export) traces a CPU call on the native backend without autograd. None
        elsewhere: the caller goes on (eager, or the ops traced one by one)."""
        call = getattr(self, CALL, None)
        if (call is None or not torch.compiler.is_compiling() or torch.compiler.is_exporting()
                or x.device.type != "cpu" or cpu_backend() != "native" or (x.requires_grad and torch.is_grad_enabled())
                or not _whole_calls()):
            return None
        return torch.ops.lowp_cpu.module(x, call, list(self._output_size(x)), dtype, channels_last)
