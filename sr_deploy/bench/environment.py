"""The machine and software a figure was taken on, and how busy the machine was."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np


def _version_of(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    return None


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks used by this process) from /proc; None where there is no /proc."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
        own = Path("/proc/self/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    # user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
    ticks = [int(x) for x in fields[:8]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    # utime and stime are fields 14 and 15 of /proc/self/stat, i.e. 11 and 12 after the ")" that ends the name.
    return busy, int(own[11]) + int(own[12])


def foreign_cpu_load(window_s: float = 0.25) -> float | None:
    """How many CPUs other processes kept busy over a short window: the contention a timing will suffer.

    Unlike the load average, this leaves out this process itself, so a benchmark that just ran in the same
    process does not make the machine look busy.
    """
    before = _cpu_jiffies()
    if before is None:
        return None
    time.sleep(window_s)
    after = _cpu_jiffies()
    if after is None:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    others = (after[0] - before[0]) - (after[1] - before[1])
    return round(max(0.0, others / (hz * window_s)), 2)


def collect_environment() -> dict[str, Any]:
    """The machine and software a figure was taken on, including how loaded the machine was."""
    import torch

    gpu: dict[str, Any] | None = None
    if torch.cuda.is_available():
        idx = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        gpu = {
            "name": torch.cuda.get_device_name(idx),
            "compute_capability": f"{major}.{minor}",
            "driver": _nvidia_driver(),
            "cuda_runtime": torch.version.cuda,
        }
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    foreign = foreign_cpu_load()
    cpus = os.cpu_count() or 1
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": cpus,
        "torch_threads": torch.get_num_threads(),
        "load_average": load,
        "other_processes_cpus": foreign,
        # Busy when other processes hold a quarter of the CPUs: the timings then measure sharing too.
        "loaded_machine": bool(foreign is not None and foreign > 0.25 * cpus),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "srdeploy": _version_of("srdeploy"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "onnxruntime": _version_of("onnxruntime-gpu") or _version_of("onnxruntime"),
            "openvino": _version_of("openvino"),
            "tensorrt": _version_of("tensorrt"),
        },
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
