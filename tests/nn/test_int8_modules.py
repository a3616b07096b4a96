"""lowp_ops.nn: what the modules promise beyond their ops — constructor checks, casts, checkpoint loading,
whole-model pickling, nn.Conv2d / nn.Linear input forms, and the dynamic conv's non-finite input rule."""

import copy
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowp_ops
from lowp_ops import Int8StaticConfig, QATConfig, quant
from lowp_ops.nn import Fp8Linear, Fp16Linear, Int8Conv2d, Int8Linear, QATConv2d, QATLinear
from lowp_ops.nn.int8 import _Int8Module
from util import assert_bitwise_equal

NAN, INF = float("nan"), float("inf")


def _linear(**kw) -> Int8Linear:
    torch.manual_seed(0)
    return Int8Linear.from_float(nn.Linear(16, 8), **kw)


def _conv(**kw) -> Int8Conv2d:
    torch.manual_seed(0)
    return Int8Conv2d.from_float(nn.Conv2d(3, 8, 3, padding=1), **kw)


_STATIC_INT8_OUT = {"input_scale": 0.03, "input_zero_point": -5, "output_scale": 0.05, "output_zero_point": 7}


class _Net(nn.Module):
    """conv-relu-conv-flatten-linear: the smallest model that converts to both INT8 modules and hands int8 on."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv2(F.relu(self.conv1(x))), 1))


def _net() -> _Net:
    torch.manual_seed(0)
    return _Net().eval()


def _re_shape(shape) -> str:
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def _image(n=2) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6)


# ------------------------------------------------------------------------------------- pickling and copies


def _qat(make):
    torch.manual_seed(0)
    layer = make()
    layer.train()
    layer(_image() if isinstance(layer, nn.Conv2d) else torch.randn(4, 16))  # the observer has data to save
    return layer.eval()


def _static_net():
    prepared = lowp_ops.prepare(_net(), Int8StaticConfig())
    lowp_ops.calibrate(prepared, [_image(4) for _ in range(2)], progress=False)
    return lowp_ops.convert(prepared)


_MODELS = {  # name -> (build, input)
    "Int8Linear": (lambda: _linear(activation="gelu"), lambda: torch.randn(4, 16)),
    "Int8Linear-static-int8-out": (lambda: _linear(**_STATIC_INT8_OUT), lambda: torch.randn(4, 16)),
    "Int8Conv2d-dynamic": (lambda: _conv(activation="relu"), _image),
    "Int8Conv2d-static-int8-out": (lambda: _conv(**_STATIC_INT8_OUT), _image),
    "Fp16Linear": (lambda: Fp16Linear.from_linear(nn.Linear(16, 8), activation="relu"), lambda: torch.randn(4, 16)),
    "QATLinear": (lambda: _qat(lambda: QATLinear.from_float(nn.Linear(16, 8), quant.per_channel(0),
                                                            QATConfig().activation)), lambda: torch.randn(4, 16)),
    "QATConv2d": (lambda: _qat(lambda: QATConv2d.from_float(nn.Conv2d(3, 8, 3), quant.per_channel(0),
                                                            QATConfig().activation, "relu")), _image),
    "quantize_dynamic": (lambda: lowp_ops.quantize_dynamic(_net()), _image),
    "prepare-calibrate-convert": (_static_net, _image),
}


def _torch_save_load(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


_COPIES = {"torch.save": _torch_save_load, "pickle": lambda m: pickle.loads(pickle.dumps(m)),
           "deepcopy": copy.deepcopy}


@pytest.mark.parametrize("how", list(_COPIES))
@pytest.mark.parametrize("name", list(_MODELS))
def test_whole_model_save_load_pickle_and_deepcopy(name, how):
    build, make_input = _MODELS[name]
    model, x = build(), make_input()
    expected = model(x)
    again = _COPIES[how](model)
    assert again is not model and type(again) is type(model)
    assert_bitwise_equal(again(x), expected)
    layers = [(m, n) for m, n in zip(model.modules(), again.modules(), strict=True) if isinstance(m, _Int8Module)]
    assert bool(layers) == (name not in ("Fp16Linear", "QATLinear", "QATConv2d"))
    for old, new in layers:  # the derived Σ weight (not in the state_dict) comes back too
        assert (old.weight_sum is None) == (new.weight_sum is None) == (old.input_zero_point is None)
        if old.weight_sum is not None:
            assert_bitwise_equal(new.weight_sum, old.weight_sum)
    if isinstance(model, Int8Conv2d):
        assert again.qweight.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------- casts


def _fp8_linear(**kwargs):
    torch.manual_seed(0)
    return Fp8Linear.from_float(nn.Linear(16, 8), **kwargs)


# the cast rules live in the quantized-module base (lowp_ops/nn/_base.py): one test for every scheme
@pytest.mark.parametrize("build, make_input", [(_linear, lambda: torch.randn(4, 16)),
                                               (lambda **kw: _conv(activation="relu6", **kw), _image),
                                               (_fp8_linear, lambda: torch.randn(4, 16))],
                         ids=["int8 linear", "int8 conv", "fp8 linear"])
def test_casts_set_the_output_dtype_and_float_undoes_them(build, make_input):
    m, x = build(), make_input()
    weight_dtype = m.qweight.dtype
    y32, y16 = m(x), m(x.half())
    assert y32.dtype == torch.float32 and y16.dtype == torch.float16  # as built: follow the input
    assert m(x.double()).dtype == torch.float64
    assert_bitwise_equal(m(x.double()), y32.double())  # x is float32-exact, and float64 is computed in float32
    m.half()
    assert m.qweight.dtype == weight_dtype and m.weight_scale.dtype == m.bias.dtype == torch.float32
    assert m.weight.dtype == torch.float16  # the float weight it stands for: what .half() makes of a float layer
    assert m(x).dtype == torch.float16 and "output=float16" in repr(m)
    m.to("cpu")  # a device move is no dtype cast: the layer keeps returning float16
    assert m(x).dtype == torch.float16
    assert m.bfloat16()(x).dtype == torch.bfloat16
    m.float()  # back to exactly the behaviour before the casts
    assert_bitwise_equal(m(x), y32)
    assert_bitwise_equal(m(x.half()), y16)
    m.double()
    assert m.qweight.dtype == weight_dtype and m.weight_scale.dtype == torch.float32
    assert_bitwise_equal(m(x), y32.double())
    assert_bitwise_equal(m(x.half()), build(out_dtype=torch.float32)(x.half()).double())  # not rounded to float16
    m.to(torch.float32)
    assert_bitwise_equal(m(x.half()), y16)


def test_float_cast_returns_to_the_built_output_dtype_and_int8_output_stays():
    m = _linear(out_dtype=torch.bfloat16)
    assert m.half().float()(torch.randn(4, 16)).dtype == torch.bfloat16
    q = _conv(**_STATIC_INT8_OUT)
    x = _image()
    expected = q(x)
    assert expected.dtype == torch.int8
    assert_bitwise_equal(q.half()(x), expected)
    assert_bitwise_equal(q.double()(x.double()), expected)


def test_cast_to_a_non_float_dtype_is_refused():
    m = _linear()
    with pytest.warns(UserWarning), pytest.raises(TypeError, match="Int8Linear: cannot cast to torch.complex64"):
        m.to(torch.complex64)
    with pytest.raises(TypeError, match="Int8Conv2d: out_dtype must be None .* got torch.int32"):
        _conv(out_dtype=torch.int32)


# ------------------------------------------------------------------------------------ checkpoint loading


def test_loading_a_float_model_state_dict_is_refused():
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(16, 8))
    q = lowp_ops.quantize_dynamic(float_model)
    before = q[0].qweight.clone()
    with pytest.raises(ValueError, match=r"Int8Linear '0': checkpoint '0.weight' has dtype float32 but this layer "
                                         r"stores int8 \(qweight\); a float model's state_dict cannot be loaded into "
                                         r"a quantized one.*lowp_ops.quantize_dynamic.*not load_state_dict"):
        q.load_state_dict(float_model.state_dict(), strict=False)
    assert_bitwise_equal(q[0].qweight, before)


def _fill(value, dtype=None):
    return lambda t: torch.full_like(t, value, dtype=dtype)


@pytest.mark.parametrize("key, edit, message", [
    ("qweight", _fill(300, torch.int32), "'qweight' has dtype int32 but this layer stores int8"),
    ("weight_scale", lambda t: t.double(), "'weight_scale' has dtype float64 but this layer stores float32"),
    ("bias", lambda t: t.int(), "'bias' has dtype int32 but this layer stores a float dtype"),
    ("input_scale", lambda t: t.half(), "'input_scale' has dtype float16 but this layer stores float32"),
    ("input_zero_point", lambda t: t.long(), "'input_zero_point' has dtype int64 but this layer stores int32"),
    ("output_zero_point", lambda t: t.to(torch.int8), "'output_zero_point' has dtype int8 .* stores int32"),
    ("input_zero_point", _fill(200), r"'input_zero_point' must hold int8 codes in \[-128, 127\], got \[200\]"),
    ("output_zero_point", _fill(-129), r"'output_zero_point' must hold int8 codes in \[-128, 127\], got \[-129\]"),
    ("weight_scale", _fill(NAN), r"'weight_scale' must hold finite positive normal float32 scales .*\[nan"),
    ("input_scale", _fill(0.0), r"'input_scale' must hold finite positive normal float32 scales .*\[0.0\]"),
    ("input_scale", _fill(-0.5), r"'input_scale' must hold .*\[-0.5\]"),
    ("output_scale", _fill(INF), r"'output_scale' must hold .*\[inf\]"),
    ("output_scale", _fill(2.0**-127), r"'output_scale' must hold finite positive normal float32 scales"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else "")
@pytest.mark.parametrize("build", [_linear, _conv], ids=["linear", "conv"])
def test_checkpoint_with_wrong_dtypes_or_values_is_refused(build, key, edit, message):
    saved = build(**_STATIC_INT8_OUT)
    state = saved.state_dict()
    state[key] = edit(state[key])
    fresh = build(**_STATIC_INT8_OUT)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=f"{type(fresh).__name__} '\\(root\\)': checkpoint {message}"):
        fresh.load_state_dict(state, strict=False)
    for k, v in fresh.state_dict().items():  # refused before anything was copied
        assert_bitwise_equal(v, before[k])


@pytest.mark.parametrize("assign", [False, True])
def test_conv_checkpoint_loads_into_channels_last_and_refreshes_weight_sum(assign):
    saved = _conv(**_STATIC_INT8_OUT)
    torch.manual_seed(3)
    fresh = Int8Conv2d.from_float(nn.Conv2d(3, 8, 3, padding=1), **_STATIC_INT8_OUT)
    fresh.load_state_dict(saved.state_dict(), assign=assign)
    assert fresh.qweight.is_contiguous(memory_format=torch.channels_last)
    assert_bitwise_equal(fresh.weight_sum, saved.weight_sum)
    x = _image()
    assert_bitwise_equal(fresh(x), saved(x))


# ------------------------------------------------------------------------------------ constructor checks


@pytest.mark.parametrize("kwargs, message", [
    ({"input_scale": 0.1, "input_zero_point": 3.7}, r"'input_zero_point' must be an integer in \[-128, 127\].*3.7"),
    ({"input_scale": 0.1, "input_zero_point": torch.tensor(2.5)}, r"'input_zero_point' must be an integer.*2.5"),
    ({"input_scale": 0.1, "input_zero_point": 128}, r"'input_zero_point' must be an integer in \[-128, 127\]"),
    ({"output_scale": 0.1, "output_zero_point": -129}, r"'output_zero_point' must be an integer in \[-128, 127\]"),
    ({"input_scale": 0.1, "input_zero_point": torch.tensor([1, 2])}, "'input_zero_point' must be one value"),
    ({"input_scale": torch.tensor([0.1, 0.2])}, "'input_scale' must be one value"),
    ({"input_scale": 0.0}, "'input_scale' must be a finite positive normal float32 scale"),
    ({"input_scale": -0.5}, "'input_scale' must be a finite positive normal float32 scale"),
    ({"input_scale": NAN}, "'input_scale' must be a finite positive normal float32 scale"),
    ({"output_scale": INF}, "'output_scale' must be a finite positive normal float32 scale"),
    ({"output_scale": 1e39}, r"'output_scale' must be .* got 1e\+39 \(inf in float32\)"),  # overflows float32
    ({"input_scale": 2.0**-127}, "'input_scale' must be a finite positive normal float32 scale"),  # subnormal
])
@pytest.mark.parametrize("cls", [Int8Linear, Int8Conv2d])
def test_constructors_refuse_bad_scales_and_zero_points(cls, kwargs, message):
    weight = torch.randn(4, 8) if cls is Int8Linear else torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match=f"{cls.__name__}: argument {message}"):
        cls(weight, **kwargs)


def test_constructors_take_integral_zero_points_and_the_smallest_normal_scale():
    m = Int8Linear(torch.randn(4, 8), input_scale=torch.tensor(2.0**-126), input_zero_point=-128.0,
                   output_scale=0.5, output_zero_point=torch.tensor(127, dtype=torch.int64))
    assert m.input_zero_point.dtype == m.output_zero_point.dtype == torch.int32
    assert m.input_zero_point.tolist() == [-128] and m.output_zero_point.tolist() == [127]
    assert m.input_scale.tolist() == [2.0**-126] and m.input_scale.dtype == torch.float32


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_weights_are_refused(bad):
    linear, conv = nn.Linear(8, 4), nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        linear.weight[2, 5] = bad
        conv.weight[1, 0, 2, 1] = bad
    with pytest.raises(ValueError, match=r"Int8Linear: weight holds 1 NaN / inf value\(s\), first at index \(2, 5\)"):
        Int8Linear.from_float(linear)
    with pytest.raises(ValueError, match=r"Int8Conv2d: weight holds 1 NaN / inf .* index \(1, 0, 2, 1\)"):
        Int8Conv2d.from_float(conv, input_scale=0.1)
    with pytest.raises(ValueError, match="Int8Linear: weight holds"):
        lowp_ops.quantize_dynamic(nn.Sequential(linear))


# ------------------------------------------------------------------------------ input forms (nn.* parity)


def test_conv_takes_stride_padding_dilation_as_nn_conv2d_does():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2)
    x = torch.randn(2, 3, 9, 9)
    m = Int8Conv2d(conv.weight, conv.bias, stride=2, padding=1, dilation=2)
    assert (m.stride, m.padding, m.dilation) == ((2, 2), (1, 1), (2, 2))
    assert_bitwise_equal(m(x), Int8Conv2d.from_float(conv)(x))
    assert m(x).shape == conv(x).shape
    for padding in ("same", "valid"):
        ref = nn.Conv2d(3, 4, 3, padding=padding, dilation=2)
        assert Int8Conv2d(ref.weight, ref.bias, padding=padding, dilation=2)(x).shape == ref(x).shape
    with pytest.raises(ValueError, match="Int8Conv2d: padding must be an int, a pair, 'valid' or 'same'"):
        Int8Conv2d(conv.weight, padding="full")


@pytest.mark.parametrize("kwargs", [{}, _STATIC_INT8_OUT], ids=["dynamic", "static-int8-out"])
def test_conv_takes_an_unbatched_input(kwargs):
    m = _conv(**kwargs)
    x = torch.randn(3, 7, 5)
    y = m(x)
    assert y.shape == (8, 7, 5)
    assert_bitwise_equal(y, m(x[None])[0])
    if m.output_scale is not None:  # an unbatched int8 hand-off to the next static layer
        nxt = Int8Conv2d(torch.randn(4, 8, 3, 3), input_scale=m.output_scale, input_zero_point=m.output_zero_point)
        assert_bitwise_equal(nxt(y), nxt(y[None])[0])


@pytest.mark.parametrize("shape", [(7, 5), (1, 4, 7, 5), (1, 1, 3, 7, 5)])
def test_conv_input_of_the_wrong_shape_is_refused_by_name(shape):
    with pytest.raises(ValueError, match=r"Int8Conv2d: input must be \(N, C, H, W\) or unbatched \(C, H, W\) with "
                                         rf"C = in_channels = 3, got shape {_re_shape(shape)}"):
        _conv()(torch.randn(shape))


def test_linear_takes_any_strides_and_refuses_wrong_features_by_name():
    m = _linear(activation="relu")
    x = torch.randn(16, 4).t()  # (4, 16), stride 4 along the features: nn.Linear takes it
    assert_bitwise_equal(m(x), m(x.contiguous()))
    assert m(torch.randn(16)).shape == (8,)
    for shape in [(4, 15), ()]:
        with pytest.raises(ValueError, match=rf"Int8Linear: input must be \(\.\.\., in_features=16\), got shape "
                                             rf"{_re_shape(shape)}"):
            m(torch.randn(shape))


# --------------------------------------------------- dynamic conv: the op quantizes, non-finite input poisons all


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy: inf · 0
@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
def test_dynamic_conv_non_finite_input_poisons_every_output(bad, device):
    # the op's rule (tests/ops/test_nonfinite.py holds every case); here through the module's casts and int8 output
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3).to(device)
    x = torch.randn(2, 3, 6, 6, device=device)
    x[1, 2, 3, 4] = bad  # in the second image only: one scale serves the call, so the first is poisoned too
    for bias in (conv.bias, None):
        m = Int8Conv2d(conv.weight, bias, activation="relu")
        for dtype in (torch.float32, torch.float16, torch.float64):
            y = m(x.to(dtype))
            assert y.dtype == dtype and y.isnan().all(), (bias is None, dtype, y.isnan().sum())
    q = Int8Conv2d(conv.weight, conv.bias, activation="relu6", output_scale=0.05, output_zero_point=3)
    assert_bitwise_equal(q(x), torch.full((2, 4, 4, 4), 3, dtype=torch.int8, device=device))


@pytest.mark.parametrize("with_bias", [True, False])
def test_dynamic_conv_finite_input_is_the_per_tensor_recipe(with_bias):
    """Bit for bit the absmax scale, quantize, conv: the poison term costs finite inputs nothing."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=with_bias)
    m = Int8Conv2d.from_float(conv, activation="relu")
    x = torch.randn(2, 3, 6, 6) * 3
    amax = x.abs().max()
    scale = quant.choose_qparams(-amax, amax, quant.per_tensor())[0].reshape(1)
    assert math.isclose(scale.item(), amax.item() / 127, rel_tol=1e-6)
    q = lowp_ops.quantize_channels_last(x, scale)
    expected = lowp_ops.int8_conv2d(q, m.qweight, (1, 1), (0, 0), (1, 1), 1, scale, m.weight_scale, m.bias,
                                    activation="relu", out_dtype=torch.float32)
    assert_bitwise_equal(m(x), expected)


def test_dynamic_conv_poisons_under_torch_compile_too():
    """Inductor folds `x * 0` to 0, NaN or not: the poison must be built so that compiling keeps it."""
    torch.manual_seed(0)
    m = Int8Conv2d(torch.randn(4, 3, 3, 3), None, activation="relu")
    x = torch.randn(1, 3, 5, 5)
    bad = x.clone()
    bad[0, 1, 2, 3] = NAN
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)
    assert_bitwise_equal(compiled(x), m(x))
    assert compiled(bad).isnan().all()


@pytest.mark.parametrize("kwargs", [{}, _STATIC_INT8_OUT], ids=["dynamic", "static-int8-out"])
def test_conv_takes_an_empty_batch(kwargs):
    """N = 0: the dynamic absmax of no elements is 0 (torch.aminmax raises on it), the output is empty."""
    m = Int8Conv2d(torch.randn(4, 3, 3, 3), torch.randn(4), padding=1, **kwargs)
    y = m(torch.randn(0, 3, 5, 5))
    assert y.shape == (0, 4, 5, 5) and y.dtype == (torch.int8 if kwargs else torch.float32)


def test_tied_int8_weights_stay_one_tensor_through_a_device_move():
    """nn.Module moves each module's buffers on its own; tied INT8 weights must not come out as two copies."""
    a = nn.Linear(8, 8)
    model = nn.Sequential(a, nn.ReLU(), nn.Linear(8, 8))
    model[2].weight = a.weight
    q = lowp_ops.quantize_dynamic(model)
    assert q[0].qweight is q[2].qweight
    moved = q.to("meta")  # a real move (new tensors) without a GPU
    assert moved[0].qweight.device.type == "meta" and moved[0].weight.device.type == "meta"
    assert moved[0].qweight is moved[2].qweight and moved[0].weight_scale is moved[2].weight_scale
    assert moved[0].bias is not moved[2].bias  # untied buffers stay separate


# ------------------------------------------------------------------------------------------ inference only


@pytest.mark.parametrize("build, make_input", [(_linear, lambda: torch.randn(4, 16)), (_conv, _image),
                                               (_fp8_linear, lambda: torch.randn(2, 3, 16))],
                         ids=["Int8Linear", "Int8Conv2d", "Fp8Linear"])
def test_backward_says_the_layer_is_inference_only_and_names_prepare_qat(build, make_input):
    m = build()
    model = nn.Sequential(m, nn.ReLU(inplace=True))  # in-place after the layer: the forward still runs
    x = make_input().requires_grad_()
    y = model(x)
    with pytest.raises(RuntimeError, match=rf"{type(m).__name__} and this op are inference-only: .* "
                                           rf"lowp_ops.prepare_qat\(model\)"):
        y.sum().backward()
