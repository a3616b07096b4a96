"""What the harness and the benchmark scripts share: the machine line and timing (CUDA events on the GPU,
time.perf_counter on the CPU)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import torch

import lowp_ops

# CPU features that decide which int8 / bf16 kernels oneDNN and torch can pick: VNNI is the int8 dot product
# (VPDPBUSD), AMX the tile units; without any of them lowp's native CPU backend falls back to its reference.
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
             "amx_bf16")


def cpu_info() -> dict:
    """The CPU line of a report: model name and the CPU_FLAGS it has (from /proc/cpuinfo), cores, torch threads."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if flags and name:
                    break
    except OSError:  # not Linux: the model name from platform, flags unknown
        pass
    return {"cpu": name, "cpu_flags": [f for f in CPU_FLAGS if f in flags], "cores": os.cpu_count(),
            "threads": torch.get_num_threads()}


def machine(device: str | None = None) -> dict:
    """Card (or CPU), clocks, driver and versions: the line that heads every report. device="cpu" stamps a CPU
    run (model, flags, cores, threads, transformers version); the default describes the GPU, or says that a run
    without one is a smoke run."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # the CPU benchmarks do not need Triton
        triton_version = "-"
    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "triton": triton_version,
            "lowp": lowp_ops.__version__, "python": platform.python_version()}
    if device == "cpu":
        info.update(cpu_info(), device="cpu", lowp_cpu_backend=lowp_ops.cpu_backend())
        info["card"] = info["cpu"]
        try:
            import transformers

            info["transformers"] = transformers.__version__
        except Exception:  # noqa: BLE001 - missing, or broken beside this torch: the BERT rows will say which
            info["transformers"] = "not installed"
    elif torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(card=p.name, sms=p.multi_processor_count, capability=f"{p.major}.{p.minor}")
        try:
            q = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
            info["nvidia_smi"] = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                                                capture_output=True, text=True, timeout=20, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["nvidia_smi"] = "unavailable"
    else:
        info["card"] = "cpu (smoke run, no timing)"
    return info


def header(info: dict, title: str) -> list[str]:
    if info.get("device") == "cpu":
        return [f"# {title} — {info['cpu']}, {info['date']}", "",
                (f"CPU flags: {', '.join(info['cpu_flags']) or 'none of ' + ', '.join(CPU_FLAGS)}; "
                 f"{info['cores']} cores, torch threads {info['threads']}. torch {info['torch']}, lowp {info['lowp']} "
                 f"(CPU backend {info['lowp_cpu_backend']}), transformers {info['transformers']}, python "
                 f"{info['python']}. Timing: wall clock (time.perf_counter), median of each row's calls after warm-up; "
                 f"the rows of a workload and batch take turns (bench/cpu.py), all in one process."), ""]
    return [f"# {title} — {info['card']}, {info['date']}", "",
            (f"torch {info['torch']}, triton {info['triton']}, lowp {info['lowp']}; "
             f"nvidia-smi: {info.get('nvidia_smi', '-')}. Timing: triton.testing.do_bench median (CUDA events, "
             f"L2 cleared before each repetition), inputs random and non-zero, each case checked before timing."), ""]


def bench_ms(fn, graph: bool = False) -> float:
    """Median milliseconds of fn() on the GPU; graph=True replays a CUDA graph (launch overhead removed)."""
    import triton.testing

    if graph:
        return triton.testing.do_bench_cudagraph(fn, return_mode="median")
    return triton.testing.do_bench(fn, return_mode="median")


def copy_bandwidth_tbps(device) -> float:
    """Device-to-device copy of 1 GiB, counting bytes read and written."""
    src = torch.randn(256 * 2**20, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / bench_ms(lambda: dst.copy_(src)) / 1e9
