"""Every workflow on the architectures people bring (tests/registry/zoo_models.py: transformers' vision and text
models and torchvision's blocks, tiny, random weights): no exception, the FP32 model's output dtype, an output
close to FP32's, and a lowp_report that names every layer left float with its reason.

    python tests/registry/test_zoo.py      # the model x workflow table of SQNR in dB (or the exception), as measured

Bounds, on outputs of random-weight models: INT8 and FP8 >= 20 dB (measured 23-40 dB on the layers that work, so
a layer that hands wrong data on, or a float activation cast to int8 codes, falls far below); FP16 >= 40 dB (its
rounding alone gives 65-80 dB); a QAT model as prepared (fake-quant, before training) is held to FP32 like INT8, and
the converted model is the model QAT trained, so it must match that one to >= 40 dB (a wrong hand-off reads -4 dB).
Training moves a model away from FP32 by design (three SGD steps move EfficientNet's FP32 model itself to -12 dB),
so the trained model is not held to FP32.

timm's EfficientNet-B0 (zoo_models.TimmEfficientNet: BatchNormAct2d, SiLU, squeeze-excitation, depthwise convs)
holds every bound (INT8 26-28 dB). transformers' EfficientNet, at these sizes and random weights, amplifies any
perturbation: Gaussian noise at 40 dB on its input leaves 22-36 dB at its logits (batches 0-5), where every other
vision model here keeps >= 36 dB. Its INT8 cells measure 8-22 dB over batches 0-11 (median 15.8), as a
fake-quantized simulation of the same per-tensor scheme does (median 15.3 over batches 0-7); no finer activation
scheme rescues it (simulated, median / worst of batches 0-7: per-channel int8 input to the depthwise convs
17.2 / 10.6 dB; per-image and per-channel there with per-pixel input to the 1x1 convs 20.6 / 11.5 dB). Its INT8
cells are expected failures (strict: a lowp change that lifts them must say so here).

A converted model's state_dict loads into another conversion and reproduces it exactly, and torch.export of it
gives its eager output exactly, for every model and workflow.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from dataclasses import dataclass

import pytest
import torch
import zoo_models
from torch import nn

import lowp_ops
from lowp_ops.quant import sqnr_db
from lowp_ops.registry.plan import LOWP_MODULES

WORKFLOWS = ("dynamic", "dynamic_example", "static", "qat", "fp8", "fp16")
MIN_DB = {"dynamic": 20.0, "dynamic_example": 20.0, "static": 20.0, "qat": 20.0, "fp8": 20.0, "fp16": 40.0}
QAT_MATCH_DB = 40.0
CALIBRATION_SEEDS = range(1, 5)  # 4 batches, none of them the evaluation batch (seed 0)
TRAINING_SEEDS = range(5, 8)  # 3 QAT steps


@dataclass
class Outcome:
    """One workflow on one model: the converted model, its output and FP32's on the evaluation batch, and for QAT
    the trained QAT model's output (what the converted model must reproduce) and the prepared one's (before training:
    what is held to FP32)."""

    model: nn.Module
    output: torch.Tensor
    expected: torch.Tensor
    qat_output: torch.Tensor | None = None
    prepared_output: torch.Tensor | None = None

    @property
    def sqnr_vs_fp32(self) -> float:
        return sqnr_db(self.expected, self.output if self.prepared_output is None else self.prepared_output)


def _call(name: str, model: nn.Module, seed: int) -> torch.Tensor:
    """The model's output on batch `seed`. Autograd stays on, as in a user's plain model(x): an in-place
    activation after a lowp layer must work there too."""
    zoo = zoo_models.MODELS[name]
    return zoo.output(model(**zoo.inputs(seed)))


@functools.cache
def _float(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The FP32 model (shared: every workflow converts a copy) and its output on the evaluation batch."""
    model = zoo_models.build(name)
    with torch.no_grad():
        return model, _call(name, model, 0)


def _layers() -> tuple[type, ...]:
    """Float layer types lowp converts, or must say why not: Linear, Conv2d and transformers' Conv1D (GPT-2's
    Linear with a transposed weight)."""
    from transformers.pytorch_utils import Conv1D

    return nn.Linear, nn.Conv2d, Conv1D


def _train_qat(name: str, qat: nn.Module) -> None:
    """A few SGD steps distilling the FP32 model: the QAT model learns, and stays near FP32 so that both its output
    and the converted model's can be held to FP32's."""
    teacher = _float(name)[0]
    optimizer = torch.optim.SGD(qat.parameters(), lr=1e-3)
    qat.train()
    for seed in TRAINING_SEEDS:
        with torch.no_grad():
            target = _call(name, teacher, seed)
        loss = nn.functional.mse_loss(_call(name, qat, seed), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    qat.eval()


@functools.cache
def run(name: str, workflow: str) -> Outcome:
    """`workflow` on the zoo model `name`, as a user calls it; exceptions propagate."""
    model, expected = _float(name)
    converted, qat_output, prepared_output = _convert(name, workflow, model)
    return Outcome(converted, _call(name, converted, 0).detach(), expected, qat_output, prepared_output)


def _convert(name: str, workflow: str, model: nn.Module, train: bool = True):
    """(converted model, the trained QAT model's output or None, the prepared QAT model's output or None); QAT
    converts the prepared model as it is when not `train`."""
    inputs = zoo_models.MODELS[name].inputs
    qat_output = prepared_output = None
    if workflow == "dynamic":
        converted = lowp_ops.quantize_dynamic(model)
    elif workflow == "dynamic_example":
        converted = lowp_ops.quantize_dynamic(model, example_inputs=inputs(0))
    elif workflow == "static":
        prepared = lowp_ops.prepare(model, lowp_ops.Int8StaticConfig())
        lowp_ops.calibrate(prepared, [inputs(seed) for seed in CALIBRATION_SEEDS], progress=False)
        converted = lowp_ops.convert(prepared)
    elif workflow == "qat":
        qat = lowp_ops.prepare_qat(model, example_inputs=inputs(0))
        with torch.no_grad():
            prepared_output = _call(name, qat, 0)
        if train:
            _train_qat(name, qat)
        with torch.no_grad():
            qat_output = _call(name, qat, 0)
        converted = lowp_ops.convert(qat)
    elif workflow == "fp8":
        converted = lowp_ops.quantize_dynamic(model, dtype=torch.float8_e4m3fn)
    elif workflow == "fp16":
        converted = lowp_ops.to_fp16(model)
    else:
        raise ValueError(f"unknown workflow {workflow!r}")
    return converted, qat_output, prepared_output


def _left_float(model: nn.Module) -> list[str]:
    """Names of the float Linear / Conv2d / Conv1D layers in a converted model (lowp's modules excluded)."""
    return [fqn for fqn, m in model.named_modules() if isinstance(m, _layers()) and not isinstance(m, LOWP_MODULES)]


@pytest.fixture(scope="module", autouse=True)
def _transformers():
    pytest.importorskip("transformers")
    yield
    _float.cache_clear()  # the module's models, freed for the tests after it
    run.cache_clear()


_CHAOTIC = pytest.mark.xfail(strict=True, reason="transformers' EfficientNet amplifies any perturbation: 8-22 dB "
                             "(module doc)")
CASES = [pytest.param(name, workflow, marks=_CHAOTIC if name == "efficientnet" and workflow in
                      ("dynamic", "dynamic_example", "static", "qat") else ())
         for name in zoo_models.MODELS for workflow in WORKFLOWS]


@pytest.mark.parametrize(("name", "workflow"), CASES, ids=[f"{n}-{w}" for n in zoo_models.MODELS for w in WORKFLOWS])
def test_zoo(name, workflow):
    got = run(name, workflow)
    assert got.output.dtype == got.expected.dtype, f"{name} {workflow}: FP32 model -> {got.output.dtype} output"
    report = got.model.lowp_report
    silent = [fqn for fqn in _left_float(got.model) if not report.skipped.get(fqn)]
    assert not silent, f"{name} {workflow}: left float without a reason in lowp_report: {silent}\n{report}"
    db = got.sqnr_vs_fp32
    assert db >= MIN_DB[workflow], f"{name} {workflow}: {db:.1f} dB against FP32 (at least {MIN_DB[workflow]})"
    if got.qat_output is not None:
        match = sqnr_db(got.qat_output, got.output)
        assert match >= QAT_MATCH_DB, f"{name}: converted vs its QAT model {match:.1f} dB (at least {QAT_MATCH_DB})"


@pytest.mark.parametrize("workflow", ("dynamic", "dynamic_example", "static", "qat"))
def test_timm_efficientnet_folds_every_batchnorm_act(workflow):
    """timm's BatchNormAct2d (a BatchNorm2d with its SiLU inside): every one folded into the conv before it, each
    fold in the report (issue 20: timm's efficientnet_b0 had 0 of 49 folded, the report silent)."""
    model = run("timm_efficientnet", workflow).model
    assert not [fqn for fqn, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert sum(note.startswith("folded ") for note in model.lowp_report.notes) == 13


ROUND_TRIPS = ("dynamic", "static", "qat", "fp8", "fp16")


@pytest.mark.parametrize("workflow", ROUND_TRIPS)
@pytest.mark.parametrize("name", zoo_models.MODELS)
def test_zoo_state_dict_and_export_reproduce_the_model(name, workflow):
    """A converted model's state_dict, loaded into the same workflow's conversion of other weights, and its
    torch.export program both give its output exactly (with the text models' KV cache off: transformers' cache
    objects are no pytree, for the float model too)."""
    got = run(name, workflow)
    float_model = _float(name)[0]
    other = copy.deepcopy(float_model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fresh = _convert(name, workflow, other, train=False)[0]
    fresh.load_state_dict(got.model.state_dict())
    with torch.no_grad():  # T5's float output itself differs in its last bits with and without grad
        assert torch.equal(_call(name, fresh, 0), _call(name, got.model, 0)), f"{name} {workflow}: state_dict"
        inputs = zoo_models.MODELS[name].inputs(0)
        if "use_cache" in inspect.signature(float_model.forward).parameters:
            inputs["use_cache"] = False
        program = torch.export.export(got.model, (), inputs)
        exported = zoo_models.MODELS[name].output(program.module()(**inputs))
        assert torch.equal(exported, zoo_models.MODELS[name].output(got.model(**inputs))), f"{name} {workflow}: export"


def test_zoo_checks_can_fail():
    """The report check and the SQNR bound catch what they are there for: a layer swapped back to float without a
    reason, and an output whose noise is a third of its signal (~10 dB)."""
    got = run("tv_resnet", "fp8")  # its convs stay float under FP8, with the reason
    assert "conv1" in _left_float(got.model) and got.model.lowp_report.skipped["conv1"]
    silent = copy.deepcopy(got.model)
    silent.fc = nn.Linear(16, 10)
    assert "fc" in _left_float(silent) and "fc" not in silent.lowp_report.skipped
    noisy = got.expected + got.expected.std() / 3 * torch.randn_like(got.expected)
    assert sqnr_db(got.expected, noisy) < MIN_DB["fp8"]


# ------------------------------------------------------------------------------------------------- the table


def _cell(name: str, workflow: str) -> str:
    """One cell of the table: SQNR against FP32 in dB (for QAT also the QAT model's, and the converted model's
    against it), in bold where a check fails; the exception's type where the workflow raises."""
    try:
        got = run(name, workflow)
    except Exception as error:  # the table reports every failure; the tests show its traceback
        return f"**{type(error).__name__}**"
    db = got.sqnr_vs_fp32
    text = "inf" if math.isinf(db) else f"{db:.1f}"
    bad = db < MIN_DB[workflow] or got.output.dtype != got.expected.dtype
    if got.output.dtype != got.expected.dtype:
        text += f" ({str(got.output.dtype).removeprefix('torch.')} out)"
    silent = [fqn for fqn in _left_float(got.model) if not got.model.lowp_report.skipped.get(fqn)]
    if silent:
        bad, text = True, text + f", {len(silent)} float layers unreported"
    if got.qat_output is not None:
        match = sqnr_db(got.qat_output, got.output)
        bad |= match < QAT_MATCH_DB
        text += f" (prepared; converted vs the trained QAT model: {match:.1f})"
    return f"**{text}**" if bad else text


def table() -> str:
    """The model x workflow table, markdown."""
    lines = ["| model | " + " | ".join(WORKFLOWS) + " |", "|---" * (len(WORKFLOWS) + 1) + "|"]
    for name in zoo_models.MODELS:
        lines.append(f"| {name} | " + " | ".join(_cell(name, w) for w in WORKFLOWS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.manual_seed(0)
    print(table())
