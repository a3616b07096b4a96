"""What the harness and the benchmark scripts share: the machine line and timing."""

from __future__ import annotations

import datetime
import platform
import subprocess

import torch

import lowp_ops


def machine() -> dict:
    """Card, clocks, driver and versions: the line that heads every report."""
    import triton

    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "triton": triton.__version__,
            "lowp": lowp_ops.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(card=p.name, sms=p.multi_processor_count, capability=f"{p.major}.{p.minor}")
        try:
            q = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
            info["nvidia_smi"] = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                                                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["nvidia_smi"] = "unavailable"
    else:
        info["card"] = "cpu (smoke run, no timing)"
    return info


def header(info: dict, title: str) -> list[str]:
    return [f"# {title} — {info['card']}, {info['date']}", "",
            f"torch {info['torch']}, triton {info['triton']}, lowp {info['lowp']}; "
            f"nvidia-smi: {info.get('nvidia_smi', '-')}. Timing: triton.testing.do_bench median (CUDA events, "
            f"L2 cleared before each repetition), inputs random and non-zero, each case checked before timing.", ""]


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
