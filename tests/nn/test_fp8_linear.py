"""lowp_ops.nn.Fp8Linear: accuracy against the float layer, the ops it calls, input forms, the casts and
checkpoints it shares with the INT8 modules (nn/_base.py), constructor checks, torch.compile.

Most tests run the native CPU backend (fast); test_kernels_match_the_reference runs the Triton kernels (interpreted
on CPU tensors, or on the GPU). The ops' own numerics are tests/ops/test_fp8_ops.py's.
"""

import copy
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowp_ops
from lowp_ops import quant
from lowp_ops.nn import Fp8Linear, Int8Linear
from util import assert_bitwise_equal, assert_fp8_gemm_close, reference_path

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
FP8 = torch.float8_e4m3fn
NAN, INF = math.nan, math.inf
PER_CHANNEL, PER_TENSOR = quant.Fp8Spec(granularity="per_channel", axis=0), quant.Fp8Spec()
lowp = torch.ops.lowp
# The accumulator's unit roundoff in the GEMM bound: float32 on CPU; on sm_90 the fp8 wgmma keeps about 14 bits of
# each BLOCK_K slice's sum (as tests/ops/test_fp8_ops.py: DeepSeek-V3 technical report, arXiv 2412.19437).
U_ACC = 2.0**-13 if HAS_CUDA else 2.0**-24
# Two e4m3 roundings (x and w), each a relative noise of variance 2^-6 / 24 for values spread over a binade
# (Δ = 2^(e-3) on [2^e, 2^(e+1)): -31.9 dB), add up to about -28.9 dB on a dot product. Measured 28.4-29.7 dB over
# 30 seeds on M=67, K=45, N=37 (randn x, nn.Linear's init), all four weight / input schemes; 27 leaves 1.4 dB.
SQNR_DB = 27.0


def _linear(in_features=45, out_features=37) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features).to(DEVICE)


def _x(*shape) -> torch.Tensor:
    return torch.randn(*(shape or (67, 45)), device=DEVICE)


def _layer(**kw) -> Fp8Linear:
    return Fp8Linear.from_float(_linear(), **kw)


_STATIC = {"input_scale": 4.0 / 448}  # randn's |x| stays below 4 at these sizes: nothing saturates
_SCHEMES = {"per-channel-dynamic": {}, "per-tensor-dynamic": {"weight_spec": PER_TENSOR},
            "per-channel-static": _STATIC, "per-tensor-static": {"weight_spec": PER_TENSOR, **_STATIC}}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """e4m3 codes as their bytes (torch.equal compares NaN codes as unequal floats), other tensors as they are."""
    return t.view(torch.uint8) if t.dtype == FP8 else t


def _re(text: str) -> str:
    return text.replace("(", r"\(").replace(")", r"\)")


# ------------------------------------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("scheme", list(_SCHEMES))
def test_accuracy_against_the_float_layer_and_the_op_it_calls(scheme):
    kw = _SCHEMES[scheme]
    lin, x = _linear(), _x()
    m = Fp8Linear.from_float(lin, **kw)
    assert m.qweight.dtype == FP8 and m.qweight.shape == (37, 45) and m.weight_scale.dtype == torch.float32
    assert m.weight_scale.shape == ((1,) if "per-tensor" in scheme else (37,))
    assert (m.input_scale is None) == ("dynamic" in scheme) and m.static == ("static" in scheme)
    y = m(x)
    assert y.dtype == torch.float32 and y.shape == (67, 37)
    assert quant.sqnr_db(lin(x), y) > SQNR_DB
    # the weight as quant.quantize_tensor makes it, and the op called with it
    qw = quant.quantize_tensor(lin.weight.detach(), kw.get("weight_spec", PER_CHANNEL))
    assert_bitwise_equal(_bits(m.qweight), _bits(qw.qdata))
    assert_bitwise_equal(y, lowp.fp8_linear(x, qw.qdata, qw.scale.reshape(-1), lin.bias.detach(), m.input_scale))


@pytest.mark.parametrize("activation", ["relu", "relu6", "gelu"])
def test_activation_is_fused(activation):
    lin, x = _linear(), _x() * 3  # relu6 clamps some outputs
    fused, plain = _layer(activation=activation), _layer()
    act = {"relu": F.relu, "relu6": F.relu6, "gelu": F.gelu}[activation]
    assert quant.sqnr_db(act(lin(x)), fused(x)) > SQNR_DB
    if activation != "gelu":  # a clamp of the same float32 value; gelu's erf is the backend's own
        assert_bitwise_equal(fused(x), act(plain(x)))
    assert f"activation={activation}" in repr(fused)


@pytest.fixture(params=["native", "triton"])
def backend(request):
    """The native CPU backend, or the Triton kernels (interpreted on CPU tensors; on the GPU when there is one)."""
    if request.param == "triton":
        request.getfixturevalue("kernels_on_cpu")
        yield
        return
    if HAS_CUDA:
        pytest.skip("the native backend runs CPU tensors; on a GPU the kernels run")
    with lowp_ops.use_cpu_backend("native"):
        yield


@pytest.mark.parametrize("scheme", ["per-channel-dynamic", "per-tensor-static"])
def test_kernels_match_the_reference(backend, scheme):
    """The module's op calls, through the backend, within the bound of float32 accumulation of the reference."""
    m, x = _layer(activation="relu", **_SCHEMES[scheme]), _x(13, 45)
    out = m(x)
    with reference_path():
        ref = m.cpu()(x.cpu())
        a, a_scale = (lowp.quantize_per_token(x.cpu(), dtype=FP8) if not m.static else
                      (lowp.quantize_per_tensor(x.cpu(), m.input_scale, dtype=FP8), m.input_scale))
    assert_fp8_gemm_close(out.cpu(), ref, a, m.qweight, a_scale, m.weight_scale, u_acc=U_ACC)


def test_fast_accum_reaches_the_op():
    m = _layer(use_fast_accum=True)
    assert m.use_fast_accum and "use_fast_accum=True" in repr(m)
    exported = torch.export.export(m, (_x(2, 45),))
    (call,) = [n for n in exported.graph.nodes if n.target is lowp.fp8_linear.default]
    assert call.args[-1] is True or call.kwargs.get("use_fast_accum") is True


# ---------------------------------------------------------------------------------------------- input forms


def test_input_dtypes_strides_and_shapes():
    m = _layer()
    x = _x(13, 45)
    y32 = m(x)
    assert m(x.half()).dtype == torch.float16 and m(x.bfloat16()).dtype == torch.bfloat16
    assert_bitwise_equal(m(x.double()), y32.double())  # x is float32-exact, and float64 is computed in float32
    xt = x.t().contiguous().t()  # stride 13 along the features: nn.Linear takes it
    assert_bitwise_equal(m(xt), y32)
    assert_bitwise_equal(m(x.reshape(13, 1, 45)), y32.reshape(13, 1, 37))
    assert m(x[0]).shape == (37,)
    for shape in [(4, 44), ()]:
        with pytest.raises(ValueError, match=rf"Fp8Linear: input must be \(\.\.\., in_features=45\), got shape "
                                             rf"{_re(str(shape))}"):
            m(torch.randn(shape, device=DEVICE))


def test_e4m3_input_needs_the_static_scale_it_was_quantized_with():
    x = _x(13, 45)
    static = _layer(**_STATIC)
    q = lowp.quantize_per_tensor(x, static.input_scale, dtype=FP8)
    assert_bitwise_equal(static(q), static(x))  # the same numbers, quantized beforehand
    with pytest.raises(ValueError, match="Fp8Linear: an e4m3 input needs a static input_scale"):
        _layer()(q)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy: inf · 0
def test_non_finite_input():
    """NaN poisons its row; ±inf poisons its row when the row's scale is dynamic, and saturates to ±448 · scale when
    the scale is static (lowp_ops/ops/fp8.py)."""
    x = _x(4, 45)
    x[1, 3], x[2, 7] = NAN, INF
    dynamic, static = _layer(), _layer(**_STATIC)
    y = dynamic(x)
    assert y[1].isnan().all() and y[2].isnan().all() and y[[0, 3]].isfinite().all()
    y = static(x)
    assert y[1].isnan().all() and y[[0, 2, 3]].isfinite().all()
    saturated = x.clone()
    saturated[2, 7] = 448 * static.input_scale.item()
    assert_bitwise_equal(y[2], static(saturated)[2])


# ---------------------------------------------------------------------------------------- casts and moves


def test_casts_keep_the_e4m3_weight_and_refuse_non_float_dtypes():
    # the cast rules themselves are tested for every scheme in tests/nn/test_int8_modules.py
    m, x = _layer(), _x(13, 45)
    assert m.half().qweight.dtype == FP8 and m(x).dtype == torch.float16
    assert _layer(out_dtype=torch.bfloat16).half().float()(x).dtype == torch.bfloat16
    with pytest.warns(UserWarning), pytest.raises(TypeError, match="Fp8Linear: cannot cast to torch.complex64"):
        m.to(torch.complex64)


def test_tied_weights_stay_one_tensor_through_a_device_move():
    a = nn.Linear(8, 8)
    model = nn.Sequential(a, nn.ReLU(), nn.Linear(8, 8))
    model[2].weight = a.weight
    q = lowp_ops.quantize_dynamic(model, dtype=FP8)
    assert type(q[0]) is Fp8Linear and q[0].qweight is q[2].qweight
    moved = q.to("meta")  # a real move (new tensors) without a GPU
    assert moved[0].qweight.device.type == "meta" and moved[0].qweight.dtype == FP8
    assert moved[0].qweight is moved[2].qweight and moved[0].weight_scale is moved[2].weight_scale
    assert moved[0].bias is not moved[2].bias


def _torch_save_load(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("copy_", [_torch_save_load, lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy],
                         ids=["torch.save", "pickle", "deepcopy"])
def test_whole_module_save_load_pickle_and_deepcopy(copy_):
    m, x = _layer(activation="gelu", **_STATIC), _x(13, 45)
    again = copy_(m)
    assert again is not m and type(again) is Fp8Linear and again.qweight.dtype == FP8
    assert_bitwise_equal(again(x), m(x))


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("scheme", ["per-channel-dynamic", "per-tensor-static"])
def test_state_dict_round_trip_through_safetensors(scheme):
    safetensors = pytest.importorskip("safetensors.torch")
    m, x = _layer(**_SCHEMES[scheme]), _x(13, 45)
    state = safetensors.load(safetensors.save({k: v.cpu() for k, v in m.state_dict().items()}))
    assert state["qweight"].dtype == FP8 and state["weight_scale"].dtype == torch.float32
    assert set(state) == {"qweight", "weight_scale", "bias"} | ({"input_scale"} if m.static else set())
    torch.manual_seed(1)
    fresh = Fp8Linear.from_float(nn.Linear(45, 37), **_SCHEMES[scheme]).to(DEVICE)  # other weights, same scheme
    fresh.load_state_dict(state)
    assert_bitwise_equal(fresh(x), m(x))


def _fill(value, dtype=None):
    return lambda t: torch.full_like(t, value, dtype=dtype)


@pytest.mark.parametrize("key, edit, message", [
    ("qweight", lambda t: t.float().to(torch.int8), "'qweight' has dtype int8 but this layer stores float8_e4m3fn; "
                                                    "it was not saved from a lowp FP8 layer"),
    ("weight_scale", lambda t: t.double(), "'weight_scale' has dtype float64 but this layer stores float32"),
    ("bias", lambda t: t.int(), "'bias' has dtype int32 but this layer stores a float dtype"),
    ("input_scale", lambda t: t.half(), "'input_scale' has dtype float16 but this layer stores float32"),
    ("weight_scale", _fill(NAN), r"'weight_scale' must hold finite positive normal float32 scales .*\[nan"),
    ("input_scale", _fill(0.0), r"'input_scale' must hold finite positive normal float32 scales .*\[0.0\]"),
    ("input_scale", _fill(2.0**-127), r"'input_scale' must hold finite positive normal float32 scales"),
    ("qweight", _fill(NAN), r"'qweight' must hold finite e4m3 values, got 1665 NaN code\(s\), first at index \(0, 0\)"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else "")
def test_checkpoint_with_wrong_dtypes_or_values_is_refused(key, edit, message):
    state = _layer(**_STATIC).state_dict()
    state[key] = edit(state[key])
    fresh = _layer(**_STATIC)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=f"Fp8Linear '\\(root\\)': checkpoint {message}"):
        fresh.load_state_dict(state, strict=False)
    for k, v in fresh.state_dict().items():  # refused before anything was copied
        assert_bitwise_equal(_bits(v), _bits(before[k]))


def test_checkpoint_of_another_scheme_or_shape_is_refused():
    static, dynamic = _layer(**_STATIC), _layer()
    with pytest.raises(ValueError, match=r"Fp8Linear '\(root\)': the checkpoint has 'input_scale' but this layer "
                                         r"lacks it: it was converted with another scheme \(dynamic vs static\)"):
        dynamic.load_state_dict(static.state_dict())
    with pytest.raises(ValueError, match="the checkpoint lacks 'input_scale' but this layer has it"):
        static.load_state_dict(dynamic.state_dict())
    with pytest.raises(ValueError, match=r"checkpoint qweight has shape \(37, 45\) but this layer's is \(3, 45\)"):
        Fp8Linear(torch.randn(3, 45)).load_state_dict(dynamic.state_dict())
    int8 = Int8Linear.from_float(_linear())
    with pytest.raises(ValueError, match="Fp8Linear '0': checkpoint '0.qweight' has dtype int8 but this layer stores "
                                         "float8_e4m3fn; it was not saved from a lowp FP8 layer"):
        nn.Sequential(dynamic).load_state_dict(nn.Sequential(int8).state_dict())
    with pytest.raises(ValueError, match="Int8Linear '\\(root\\)': checkpoint 'qweight' has dtype float8_e4m3fn but "
                                         "this layer stores int8; it was not saved from a lowp INT8 layer"):
        int8.load_state_dict(dynamic.state_dict())


# ------------------------------------------------------------------------------------- constructor checks


@pytest.mark.parametrize("kwargs, error, message", [
    ({"input_scale": 0.0}, ValueError, "argument 'input_scale' must be a finite positive normal float32 scale"),
    ({"input_scale": -0.5}, ValueError, "argument 'input_scale' must be a finite positive normal float32 scale"),
    ({"input_scale": NAN}, ValueError, "argument 'input_scale' must be a finite positive normal float32 scale"),
    ({"input_scale": 1e39}, ValueError, r"argument 'input_scale' must be .* got 1e\+39 \(inf in float32\)"),
    ({"input_scale": 2.0**-127}, ValueError, "argument 'input_scale' must be a finite positive normal"),
    ({"input_scale": torch.tensor([0.1, 0.2])}, ValueError, "argument 'input_scale' must be one value"),
    ({"activation": "tanh"}, ValueError, "activation must be one of"),
    ({"out_dtype": torch.int8}, TypeError, "out_dtype must be None .* got torch.int8; FP8 layers return float"),
    ({"weight_spec": quant.per_channel(axis=0)}, ValueError, "weight_spec must be an e4m3 Fp8Spec per output channel"),
    ({"weight_spec": quant.Fp8Spec(format="e5m2")}, ValueError, "weight_spec must be an e4m3 Fp8Spec"),
    ({"weight_spec": quant.Fp8Spec(granularity="per_token")}, ValueError, "weight_spec must be an e4m3 Fp8Spec"),
    ({"use_fast_accum": 1}, TypeError, "use_fast_accum must be a bool, got int"),
    ({"bias": torch.randn(5)}, ValueError, r"bias must have shape \(4,\) \(one per output channel\), got \(5,\)"),
])
def test_constructor_refuses_bad_arguments_by_name(kwargs, error, message):
    with pytest.raises(error, match=f"Fp8Linear: {message}"):
        Fp8Linear(torch.randn(4, 8), **kwargs)


def test_constructor_refuses_weights_it_cannot_quantize():
    with pytest.raises(ValueError, match=r"Fp8Linear: weight must be \(out_features, in_features\), got shape "
                                         r"\(4, 8, 1\)"):
        Fp8Linear(torch.randn(4, 8, 1))
    not_float = {"torch.float8_e4m3fn": torch.randn(4, 8).to(FP8), "torch.int8": torch.ones(4, 8, dtype=torch.int8),
                 "list": [[1.0] * 8]}
    for got, weight in not_float.items():
        with pytest.raises(TypeError, match=f"Fp8Linear: weight must be the float weight to quantize, got {got}$"):
            Fp8Linear(weight)
    weight = torch.randn(4, 8)
    weight[2, 5] = INF
    with pytest.raises(ValueError, match=r"Fp8Linear: weight holds 1 NaN / inf value\(s\), first at index \(2, 5\); "
                                         r"an e4m3 weight scale cannot represent them"):
        Fp8Linear(weight)
    for int8_only in ("input_zero_point", "output_scale", "output_zero_point"):  # FP8 has no zero point nor fp8 output
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{int8_only}'"):
            Fp8Linear(torch.randn(4, 8), input_scale=0.1, **{int8_only: 1})


def test_constructor_takes_a_scale_tensor_and_the_smallest_normal_scale():
    m = Fp8Linear(torch.randn(4, 8), input_scale=torch.tensor(2.0**-126, dtype=torch.float64))
    assert m.input_scale.tolist() == [2.0**-126] and m.input_scale.dtype == torch.float32
    assert m.bias is None and "bias=False" in repr(m) and "static e4m3" in repr(m)


# --------------------------------------------------------------------------------------------- torch.compile


def test_compile_fullgraph_matches_eager():
    model = nn.Sequential(_layer(activation="relu"), nn.Dropout(0.0), Fp8Linear(torch.randn(5, 37, device=DEVICE),
                                                                                 input_scale=0.05)).eval()
    x = _x(13, 45)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    # the same ops on the same data (on CUDA the same Triton kernels; on CPU inductor compiles the native backend's
    # float32 arithmetic, which it keeps bit for bit, torch 2.13): equal, not close
    assert_bitwise_equal(compiled(x), model(x))
