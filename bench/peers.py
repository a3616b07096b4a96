"""The runtimes the CPU benchmark compares lowp with: ONNX Runtime and OpenVINO (with NNCF), installed by the
`peers` extra (`pip install -e ".[peers]"`), never by `dev`: CI runs without them.

Each builder returns {provider: module}. A module takes the torch tensors the PyTorch model takes and returns its
output as a float32 torch tensor, converting to and from numpy at the runtime's API as a user's code would, so
bench/cpu.py checks, times and scores it like its torch rows. A runtime whose packages cannot be imported gives no
rows and a reason (unavailable); one that imports but fails to export, quantize or compile gives rows that raise that
error when called, so the report shows it in the row.

    ONNX Runtime  the model exported by the TorchScript exporter (torch.onnx.export(dynamo=False), opset 17, dynamic
                  batch and sequence axes); sessions with intra_op_num_threads = torch threads, ORT_ENABLE_ALL
      ConvNet       "ort fp32"; "ort static QDQ": quantize_static, QDQ format, int8 per-channel weights, uint8
                    activations, MinMax on the calibration batches lowp calibrates on
      encoders      "ort fp32": the graph after onnxruntime.transformers' optimize_model (fused Attention,
                    SkipLayerNormalization, BiasGelu); "ort dynamic": quantize_dynamic of that graph, int8 weights
    OpenVINO      openvino.convert_model of the PyTorch model; compiled for "CPU" with INFERENCE_NUM_THREADS = torch
                  threads and PERFORMANCE_HINT LATENCY
      both          "openvino fp32" (INFERENCE_PRECISION_HINT f32); "openvino default" (the plugin's default hints:
                    bf16 on a CPU with avx512_bf16 or AMX); "openvino int8 (nncf)": nncf.quantize on the calibration
                    batches (model_type TRANSFORMER for encoders), compiled with the default hints
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import tempfile
import warnings
from collections.abc import Callable

import torch
from torch import nn

# The packages each runtime's rows import; a row is skipped, with the reason, when one of them cannot be.
RUNTIMES = {"ONNX Runtime": ("onnxruntime", "onnx"), "OpenVINO": ("openvino", "nncf")}

# The TorchScript exporter at opset 17 emits LayerNormalization as one op and attention as the MatMul / Softmax
# pattern that onnxruntime.transformers' optimizer fuses (MiniLM-L6 shape: 6 Attention, 12 SkipLayerNormalization,
# 6 BiasGelu with onnxruntime 1.32.0, 2026-12-06).
_OPSET = 17


@functools.cache
def unavailable(runtime: str) -> str | None:
    """Why `runtime` (a key of RUNTIMES) cannot run here, or None when all its packages import."""
    for package in RUNTIMES[runtime]:
        try:
            importlib.import_module(package)
        except Exception as e:  # noqa: BLE001 - missing, or broken beside this torch / numpy: either way, no rows
            return f"{runtime} rows skipped: {package} unavailable ({type(e).__name__}: {e})"
    return None


def versions() -> str:
    """The report's line of peer versions: 'onnxruntime 1.32.0, onnx 1.23.2, ...', 'unavailable' for a package
    that does not import."""
    out = []
    for package in (p for packages in RUNTIMES.values() for p in packages):
        try:
            out.append(f"{package} {importlib.import_module(package).__version__}")
        except Exception:  # noqa: BLE001 - the rows will say why
            out.append(f"{package} unavailable")
    return ", ".join(out)


@dataclasses.dataclass
class Graph:
    """What a runtime is given: module(*example) -> one float32 tensor, whose leading axes are the first input's
    dynamic axes. names: the inputs' names in forward's order; dynamic: {input name: {axis: axis name}}, the axes
    that vary between calls (batch, sequence)."""

    module: nn.Module
    example: tuple[torch.Tensor, ...]
    names: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]


class Runtime(nn.Module):
    """A model compiled by another runtime, called like the PyTorch model it came from: torch tensors in (as numpy,
    in Graph.names order), its first output out as a float32 torch tensor. An nn.Module, without parameters, so that
    lowp_ops.examples.accuracy can call .eval() on it."""

    def __init__(self, run: Callable[[dict], object], names: tuple[str, ...]) -> None:
        super().__init__()
        self._run, self._names = run, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out = self._run({name: x.numpy() for name, x in zip(self._names, inputs, strict=True)})
        return torch.from_numpy(out).float()


def _raising(e: Exception) -> Callable[..., torch.Tensor]:
    def fail(*_inputs):
        raise e
    return fail


def _rows(builders: list[tuple[str, tuple[str, ...], Callable[[], dict]]]) -> tuple[dict, list[str]]:
    """builders: (runtime, its provider names, build() -> {provider: Runtime}). Returns the rows of the runtimes that
    import, and a skip reason for each that does not; a build that raises gives its providers rows that raise."""
    rows, skipped = {}, []
    for runtime, providers, build in builders:
        reason = unavailable(runtime)
        if reason is not None:
            skipped.append(reason)
            continue
        try:
            # the TorchScript exporter is deprecated (DeprecationWarning), warns where tracing turns shapes into
            # constants (TracerWarning: the axes that matter are declared dynamic) and that it spells aten::index with
            # several ONNX ops (UserWarning); OpenVINO's conversion reads a deprecated transformers attribute
            # (FutureWarning); NNCF's statistics of the attention mask's -3.4e38 overflow (RuntimeWarning)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning, RuntimeWarning))
                warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx\.")
                warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
                rows.update(build())
        except Exception as e:  # noqa: BLE001 - a peer's failure is a result, reported in its rows
            rows.update({p: _raising(e) for p in providers})
    return rows, skipped


def _export(g: Graph, path: str) -> None:
    out_axes = g.dynamic[g.names[0]]
    torch.onnx.export(g.module, g.example, path, dynamo=False, opset_version=_OPSET, input_names=list(g.names),
                      output_names=["out"], dynamic_axes={**g.dynamic, "out": out_axes})


def _session(path: str) -> Runtime:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # the session holds the model in memory: the file can go with its temporary folder
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return Runtime(lambda feed: session.run(None, feed)[0], tuple(i.name for i in session.get_inputs()))


def _ort_static_qdq(g: Graph, calib: list[tuple[torch.Tensor, ...]]) -> dict[str, Runtime]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calib)

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {n: x.numpy() for n, x in zip(g.names, batch, strict=True)}

    with tempfile.TemporaryDirectory() as d:
        fp32, pre, qdq = (os.path.join(d, f) for f in ("fp32.onnx", "pre.onnx", "qdq.onnx"))
        _export(g, fp32)
        quant_pre_process(fp32, pre)  # shape inference + graph cleanup, as ORT's quantization guide asks first
        quantize_static(pre, qdq, Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return {"ort fp32": _session(fp32), "ort static QDQ": _session(qdq)}


def _ort_dynamic(g: Graph, num_heads: int, hidden_size: int) -> dict[str, Runtime]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory() as d:
        fp32, fused, dyn = (os.path.join(d, f) for f in ("fp32.onnx", "fused.onnx", "dynamic.onnx"))
        _export(g, fp32)
        optimize_model(fp32, model_type="bert", num_heads=num_heads, hidden_size=hidden_size).save_model_to_file(fused)
        # DefaultTensorType: ONNX shape inference gives the outputs of the fused com.microsoft ops no type, and
        # quantize_dynamic stops at the first MatMul fed by one ("Unable to find data type for weight_name")
        quantize_dynamic(fused, dyn, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        return {"ort fp32": _session(fused), "ort dynamic": _session(dyn)}


def _openvino(g: Graph, calib: list[tuple[torch.Tensor, ...]], transformer: bool) -> dict[str, Runtime]:
    import nncf
    import openvino as ov

    # the axes not declared dynamic stay static: the ConvNet's int8 convolutions found no CPU implementation with all
    # four input axes dynamic (openvino 2026.4.1: "No suitable implementations")
    shapes = [ov.PartialShape([-1 if axis in g.dynamic.get(name, {}) else n for axis, n in enumerate(x.shape)])
              for name, x in zip(g.names, g.example, strict=True)]
    model = ov.convert_model(g.module, example_input=g.example, input=shapes)
    dataset = nncf.Dataset(calib, lambda batch: {n: x.numpy() for n, x in zip(g.names, batch, strict=True)})
    extra = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    int8 = nncf.quantize(model, dataset, subset_size=len(calib), **extra)
    core = ov.Core()

    def compiled(m, hints: dict) -> Runtime:
        c = core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                          "PERFORMANCE_HINT": "LATENCY", **hints})
        return Runtime(lambda feed: c(feed)[0], g.names)

    return {"openvino fp32": compiled(model, {"INFERENCE_PRECISION_HINT": "f32"}),
            "openvino default": compiled(model, {}), "openvino int8 (nncf)": compiled(int8, {})}


_OPENVINO_ROWS = ("openvino fp32", "openvino default", "openvino int8 (nncf)")


def convnet(g: Graph, calib: list[tuple[torch.Tensor, ...]]) -> tuple[dict[str, nn.Module], list[str]]:
    """The peer rows of a CNN: ({provider: module}, skip reasons). calib: the input batches lowp calibrates on."""
    return _rows([("ONNX Runtime", ("ort fp32", "ort static QDQ"), lambda: _ort_static_qdq(g, calib)),
                  ("OpenVINO", _OPENVINO_ROWS, lambda: _openvino(g, calib, transformer=False))])


def encoder(g: Graph, ort_graph: Graph, calib: list[tuple[torch.Tensor, ...]], num_heads: int,
            hidden_size: int) -> tuple[dict[str, nn.Module], list[str]]:
    """The peer rows of a BERT-style encoder: ({provider: module}, skip reasons). ort_graph: the same model with
    eager attention (the optimizer fuses its MatMul / Softmax pattern into Attention; the SDPA export kept no
    Attention node); calib: a few input batches for NNCF (dynamic quantization needs none)."""
    return _rows([("ONNX Runtime", ("ort fp32", "ort dynamic"),
                   lambda: _ort_dynamic(ort_graph, num_heads, hidden_size)),
                  ("OpenVINO", _OPENVINO_ROWS, lambda: _openvino(g, calib, transformer=True))])
