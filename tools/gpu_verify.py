"""GPU bring-up in one device call (issue 22): staged checks that fit a 480-second limit by construction, each
stage writing everything so far to $OUT (gpu_verify.json and gpu_verify.md), so that a run cut short still returns
what ran.

    pip install -e . --no-deps --no-build-isolation     # or --install
    OUT=/some/dir python tools/gpu_verify.py [--budget 480]

The GPU machine has no network: pytest-xdist (pure Python) comes along as wheels, fetched here with
    pip download pytest-xdist execnet --no-deps -d .gpu-wheels
and carried with the working tree (the device tool's carry: [".gpu-wheels"]); setup installs them offline.

Stages (seconds of budget):
    0 setup     versions, GPU and SM count, which optional packages import (15)
    1 tests     the kernel and GPU tests on CUDA tensors, pytest-xdist where installed, full log to $OUT (150)
    2 large     tensors over 2^31 elements: int8 GEMM with A (524291, 4096), per-token quantize of fp16
                (524291, 4096), a 1x1 conv on (520, 64, 256, 256) channels_last; last rows / image exact (30)
    3 perf      lowp against its baseline in the same process, triton do_bench medians, the pass ratio beside (150)
    4 overhead  us per eager int8_linear call at M = 1 over 500 unsynchronized calls (30)
    5 compile   torch.compile(fullgraph=True) of a converted model, and dynamic=True at M = 3, 5, 9, 17 (60)
A stage whose budget is spent stops between items and says so; one that fails records the error and the next runs.
Without CUDA every stage after setup is skipped with the reason: tests/test_tools.py runs this dry run in CI.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {"setup": 15, "tests": 150, "large": 30, "perf": 150, "overhead": 30, "compile": 60}
OPTIONAL = ("triton", "cupy", "transformers", "torchao", "xdist")
# the GPU-only tests first: if the stage runs out of time, what it leaves out is what the CPU has run too
TESTS = ["tests/test_gpu.py", "tests/kernels", "tests/ops", "tests/nn/test_add_module.py"]


class Run:
    """The results so far, written to out after every stage (and every item of a long one)."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.deadline, self.results = out, time.monotonic() + budget, {"stages": {}}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def stage(self, name: str, fn) -> None:
        """Run fn(stage_deadline, record) within the stage's budget (and the run's), recording its outcome."""
        record = self.results["stages"].setdefault(name, {"items": []})
        started = time.monotonic()
        deadline = started + min(BUDGETS[name], max(self.left(), 0))
        try:
            record["status"] = fn(deadline, record) or "done"
        except Exception as error:  # a failed stage is a result; the next stage still runs
            record["status"] = "failed"
            record["error"] = "".join(traceback.format_exception_only(type(error), error)).strip()
            record["traceback"] = traceback.format_exc()[-4000:]
        record["seconds"] = round(time.monotonic() - started, 1)
        self.write()

    def write(self) -> None:
        (self.out / "gpu_verify.json").write_text(json.dumps(self.results, indent=2, default=str))
        (self.out / "gpu_verify.md").write_text(markdown(self.results))


def markdown(results: dict) -> str:
    lines = ["# lowp GPU verification", ""]
    for key, value in results.get("setup", {}).items():
        lines.append(f"- {key}: {value}")
    for name, record in results["stages"].items():
        lines += ["", f"## {name}: {record.get('status')} ({record.get('seconds', '?')} s)"]
        if "error" in record:
            lines.append(f"error: `{record['error']}`")
        if "reason" in record:
            lines.append(record["reason"])
        items = record["items"]
        if items:
            keys = list(dict.fromkeys(k for item in items for k in item))
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(item.get(k)) for k in keys) + " |" for item in items]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "" if value is None else str(value)


def _cuda(record: dict) -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    record["reason"] = "skipped: no CUDA device (a CPU dry run)"
    return False


# ------------------------------------------------------------------------------------------------------ stages
def setup(install: bool, wheels: Path):
    def stage(deadline, record):
        import torch

        info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
        if importlib.util.find_spec("xdist") is None and any(wheels.glob("pytest_xdist-*.whl")):
            done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links",
                                   str(wheels), "pytest-xdist"], capture_output=True, text=True,
                                  timeout=max(deadline - time.monotonic(), 1))
            info["xdist install"] = "ok" if done.returncode == 0 else done.stderr[-300:]
            importlib.invalidate_caches()
        if install:
            done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ".", "--no-deps",
                                   "--no-build-isolation"], cwd=ROOT, capture_output=True, text=True,
                                  timeout=max(deadline - time.monotonic(), 1))
            info["install"] = "ok" if done.returncode == 0 else done.stderr[-500:]
        for name in OPTIONAL:
            found = importlib.util.find_spec(name) is not None
            info[name] = (getattr(__import__(name), "__version__", "yes") if found and name != "xdist" else
                          "yes" if found else "no")
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=props.name, sm_count=props.multi_processor_count,
                        capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30))
        else:
            info["gpu"] = "none"
        RUN.results["setup"] = info
    return stage


def tests(deadline, record):
    if not _cuda(record):
        return "skipped"
    xdist = importlib.util.find_spec("xdist") is not None
    # -v: a line per test as it ends, so a log cut short by the budget still names every test run and failed
    command = [sys.executable, "-m", "pytest", "-v", "--tb=short", "-p", "no:cacheprovider", "--maxfail=25", "-rfE",
               *TESTS]
    if xdist:
        command[3:3] = ["-n", "4"]
    log = RUN.out / "tests.log"
    with open(log, "w") as f:
        try:
            done = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=max(deadline - time.monotonic(), 1))
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = "timed out"
    tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
    record["items"].append({"command": " ".join(command[1:]), "rc": code, "summary": tail[0] if tail else ""})
    return "done" if code == 0 else "failures"


def large(deadline, record):
    if not _cuda(record):
        return "skipped"
    import torch

    for name, fn in large_cases(524291, (520, 64, 256, 256), "cuda"):  # (524291, 4096): 2^31 + 12288 elements
        if time.monotonic() > deadline:
            record["items"].append({"case": name, "result": "not run: stage budget spent"})
            continue
        started = time.monotonic()
        try:
            result = "exact" if fn() else "MISMATCH"
        except Exception as error:
            result = f"error: {type(error).__name__}: {str(error)[:200]}"
        record["items"].append({"case": name, "result": result, "s": round(time.monotonic() - started, 1)})
        torch.cuda.empty_cache()
        RUN.write()


def large_cases(rows: int, image: tuple, device) -> list:
    """[(name, check)]: each check runs an op on a big tensor ((rows, 4096), an int8 image batch `image`) and
    compares its last rows / last image with the reference, True when exact. Small sizes make the CPU dry run."""
    import torch

    import lowp_ops
    from lowp_ops import reference

    def gemm():
        a = torch.randint(-128, 128, (rows, 4096), dtype=torch.int8, device=device)
        b = torch.randint(-128, 128, (16, 4096), dtype=torch.int8, device=device)
        y = lowp_ops.int8_mm(a, b)
        return torch.equal(y[-3:], (a[-3:].double() @ b.double().T).to(torch.int32))

    def quantize():
        x = torch.randn(rows, 4096, device=device, dtype=torch.float16)
        q, scale = lowp_ops.quantize_per_token(x)
        q_ref, s_ref = reference.quantize_rows(x[-3:].float())
        return torch.equal(q[-3:], q_ref) and torch.equal(scale.reshape(-1)[-3:], s_ref.reshape(-1))

    def conv():
        cl = torch.channels_last
        x = torch.randint(-128, 128, image, dtype=torch.int8, device=device).contiguous(memory_format=cl)
        w = torch.randint(-128, 128, (16, image[1], 1, 1), dtype=torch.int8, device=device).contiguous(memory_format=cl)
        y = lowp_ops.int8_conv2d(x, w, (1, 1), (0, 0), (1, 1), 1)
        return torch.equal(y[-1:], reference.int8_conv2d(x[-1:], w, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                                                         groups=1))

    return [(f"int8_mm A ({rows}, 4096) x (16, 4096)", gemm), (f"quantize_per_token fp16 ({rows}, 4096)", quantize),
            (f"int8_conv2d 1x1 {image} channels_last -> 16", conv)]


# (op, shape, lowp provider, baseline provider, pass ratio (baseline ms / lowp ms), CUDA graph)
PERF = [
    ("int8_mm", (4096, 4096, 4096), "lowp", "torch_int_mm", 1.0, False),
    ("int8_mm", (8192, 8192, 8192), "lowp", "torch_int_mm", 1.0, False),
    ("int8_mm", (2048, 11008, 4096), "lowp", "torch_int_mm", 1.0, False),
    ("int8_linear", (2048, 11008, 4096), "lowp", "torch_fp16", 1.3, False),
    ("int8_linear", (1, 11008, 4096), "lowp", "torch_fp16", 1.0, True),
    ("int8_linear", (16, 11008, 4096), "lowp", "torch_fp16", 1.0, True),
    ("fp16_mm", (8192, 8192, 8192), "lowp", "torch_fp16", 0.9, False),
    ("fp8_mm", (4096, 4096, 4096), "lowp_fast_accum", "torch_fp8_rowwise_fast", 0.8, False),
    ("fp8_mm", (4096, 4096, 4096), "lowp", "torch_fp8_rowwise", 0.7, False),
    ("quantize", (8192, 11008, 4096), "lowp", "copy", 0.7, False),
    ("int8_conv", (32, 64, 56, 56, 64, 3, 1, 1, 1), "lowp", "torch_fp16", 1.3, False),
    # the same with an input zero point: padding's correction (kernels/conv.py) should cost little
    ("int8_conv", (32, 64, 56, 56, 64, 3, 1, 1, 1), "lowp_affine", "lowp", 0.9, False),
]


def perf(deadline, record):
    if not _cuda(record):
        return "skipped"
    sys.path.insert(0, str(ROOT))
    import torch

    from bench._common import bench_ms
    from bench.cases import OPS
    from bench.harness import check
    from bench.providers import PROVIDERS

    for op, shape, mine, theirs, bar, graph in PERF:
        item = {"op": op, "shape": str(shape), "lowp": mine, "baseline": theirs, "bar": bar, "graph": graph}
        record["items"].append(item)
        if time.monotonic() > deadline:
            item["result"] = "not run: stage budget spent"
            continue
        try:
            problem = OPS[op].make(shape, "cuda")
            times = {}
            for name in (mine, theirs):
                fn = PROVIDERS[name].build(problem)
                if isinstance(fn, str):
                    raise RuntimeError(f"{name}: {fn}")
                ok, item[f"{name} check"] = check(problem, PROVIDERS[name], fn())
                if not ok and name == mine:
                    raise RuntimeError(f"WRONG output ({item[f'{name} check']})")
                times[name] = bench_ms(fn, graph=graph)
            item.update(lowp_ms=times[mine], baseline_ms=times[theirs], ratio=times[theirs] / times[mine])
            item["result"] = "PASS" if item["ratio"] >= bar else "below bar"
            del problem
            torch.cuda.empty_cache()
        except Exception as error:
            item["result"] = f"error: {type(error).__name__}: {str(error)[:200]}"
        RUN.write()
    record["chosen tiles"] = chosen_tiles()


def chosen_tiles() -> dict:
    """The autotuners' choices so far: {kernel: {key: config}}."""
    # the modules by name: lowp_ops.kernels' own attributes gemm / conv are the launchers
    gemm, conv = (importlib.import_module(f"lowp_ops.kernels.{name}") for name in ("gemm", "conv"))
    tuners = {f"gemm {k}": t for k, t in gemm._TUNED.items()}
    tuners["conv2d"] = conv._conv2d_tuned
    return {name: {str(k): str(v) for k, v in getattr(t, "cache", {}).items()} for name, t in tuners.items()}


def overhead(deadline, record):
    if not _cuda(record):
        return "skipped"
    record["items"].append({"call": "Int8Linear (1, 4096) x (4096, 4096)", "host us per call": host_us("cuda", 500),
                            "bar": "everything but the launches <= 10 us"})


def host_us(device, calls: int) -> float:
    """Host microseconds per eager Int8Linear call at M = 1 (4096 x 4096), over `calls` calls not synchronized."""
    import torch

    import lowp_ops

    layer = lowp_ops.nn.Int8Linear.from_float(torch.nn.Linear(4096, 4096)).to(device)
    x = torch.randn(1, 4096, device=device)
    for _ in range(20):  # tune, plan, warm
        layer(x)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(calls):
        layer(x)
    spent = (time.perf_counter() - started) / calls * 1e6
    if device == "cuda":
        torch.cuda.synchronize()
    return spent


def compile_stage(deadline, record):
    if not _cuda(record):
        return "skipped"
    for item in compile_checks("cuda"):
        record["items"].append(item)
        RUN.write()


def compile_checks(device) -> list[dict]:
    """A converted model under torch.compile(fullgraph=True) against eager, and under dynamic=True at M = 3, 5, 9,
    17 with the graphs counted (one expected)."""
    import torch

    import lowp_ops

    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256)).to(device)
    converted = lowp_ops.quantize_dynamic(model)
    x = torch.randn(8, 256, device=device)
    torch._dynamo.reset()
    close = torch.allclose(torch.compile(converted, fullgraph=True)(x), converted(x), rtol=1e-2, atol=1e-2)
    torch._dynamo.reset()
    graphs = []
    counting = torch.compile(converted, dynamic=True, backend=lambda gm, args: graphs.append(gm) or gm.forward)
    for m in (3, 5, 9, 17):
        counting(torch.randn(m, 256, device=device))
    return [{"case": "fullgraph", "result": "ok" if close else "MISMATCH"},
            {"case": "dynamic=True, M = 3, 5, 9, 17", "graphs": len(graphs),
             "result": "ok" if len(graphs) == 1 else "recompiled"}]


RUN: Run


def main(argv=None) -> int:
    global RUN
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-verify"), help="results folder (default $OUT)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run")
    parser.add_argument("--install", action="store_true", help="pip install -e . --no-deps first")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".gpu-wheels",
                        help="pytest-xdist wheels to install offline where it is missing")
    args = parser.parse_args(argv)
    RUN = Run(Path(args.out), args.budget)
    RUN.stage("setup", setup(args.install, args.wheels))
    for name, fn in (("tests", tests), ("large", large), ("perf", perf), ("overhead", overhead),
                     ("compile", compile_stage)):
        RUN.stage(name, fn)
    failed = [n for n, r in RUN.results["stages"].items() if r.get("status") in ("failed", "failures")]
    print((RUN.out / "gpu_verify.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
