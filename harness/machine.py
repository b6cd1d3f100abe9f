"""Where and when a record was made: the machine, the software and the time that every record
carries (benchmark cells and quality scores alike)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What every record carries about where it was measured."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = None
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    gpu = None
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": ram, "gpu": gpu,
            "torch": torch.__version__}


def provenance() -> dict[str, Any]:
    """The package version and git revision (with -dirty) every record carries."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("transformer-catalog")
    except PackageNotFoundError:
        package = None
    git = None
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            git = out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": package, "git": git}


def where(device: str) -> dict[str, Any]:
    """The record fields that say where it was made: CPU, GPU, cores, memory, torch, package
    version and git revision."""
    return {**machine_info(device), **provenance()}


def now() -> str:
    """The time a record is made, in UTC to the second (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
