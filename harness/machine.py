"""Where and when a record was made: the machine, the software and the time that every record
carries (benchmark cells and quality scores alike)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def usable_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity, where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_seconds(cores: list[int], stat: Path = Path("/proc/stat")
                ) -> tuple[float, float, float] | None:
    """(busy, idle, stolen) CPU seconds of `cores` since boot, from the kernel's per-core
    counters: busy is user, nice, system, irq and softirq time (guest time is counted in user),
    idle is idle and iowait time, stolen is the time a hypervisor gave the cores' slots to
    other machines. None where the system keeps no /proc/stat (not Linux) or it lacks one of
    the cores."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    counters = {}
    for line in lines:
        name, *fields = line.split() or [""]
        if name.startswith("cpu") and name[3:].isdigit() and all(f.isdigit() for f in fields):
            counters[int(name[3:])] = [int(f) for f in fields] + [0] * (8 - len(fields))
    if not all(core in counters for core in cores):
        return None
    busy = sum(counters[c][i] for c in cores for i in (0, 1, 2, 5, 6))
    idle = sum(counters[c][i] for c in cores for i in (3, 4))
    stolen = sum(counters[c][7] for c in cores)
    return busy / ticks, idle / ticks, stolen / ticks


class LoadMeter:
    """How much of this process's cores other work took from it while it ran, in cores, over
    the wall time: the CPU time other processes ran on the cores, less what they could run
    without taking any from this process (the cores it left idle, or those beyond the
    `threads` it runs, whichever is more), plus the time a hypervisor stole. A benchmark cell
    takes the meter around its timed runs and a quality run around its training: on a quiet
    machine it reads near 0, and so it does for other work on cores the process does not use;
    one other busy process on the cores of a cell that runs a thread on each reads 0.6-1."""

    #: Shorter spans are not judged: the kernel counts CPU time in ticks (10 ms), so a short
    #: span's reading would be mostly rounding.
    MIN_SECONDS = 0.25

    def __init__(self, cores: list[int] | None = None, threads: int | None = None) -> None:
        self.cores = usable_cores() if cores is None else cores
        self.threads = len(self.cores) if threads is None else threads
        self._start = self._read()

    def _read(self) -> tuple[tuple[float, float, float] | None, float, float]:
        return cpu_seconds(self.cores), time.process_time(), time.perf_counter()

    def others(self) -> float | None:
        """Cores' worth of CPU time others took since the meter started (None: unknown, or a
        span under MIN_SECONDS)."""
        (before, own0, wall0), (after, own1, wall1) = self._start, self._read()
        wall = wall1 - wall0
        if before is None or after is None or wall < self.MIN_SECONDS:
            return None
        busy, idle, stolen = (b - a for a, b in zip(before, after, strict=True))
        others = max(0.0, busy - (own1 - own0))
        unused = max(idle, max(0, len(self.cores) - self.threads) * wall)
        return max(0.0, others - unused) / wall + max(0.0, stolen) / wall


# Other work taking this many cores' worth of a measurement's cores gets it a note: on a quiet
# machine the meter reads under 0.1.
BUSY_CORES = 0.25


def busy_note(contention: float | None, cores: int, during: str, so: str) -> str | None:
    """The note for a measurement whose cores other work shared (`contention` from LoadMeter
    at BUSY_CORES or more), or None."""
    if contention is None or contention < BUSY_CORES:
        return None
    whose = "the core's" if cores == 1 else f"the {cores} cores'"
    return (f"the machine was busy: other work took {contention:.2f} of {whose} time during "
            f"{during}; {so}")


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


def check_device(device: str, *, here: bool = True) -> str:
    """`device` (cpu, cuda or cuda:N) if this machine has it, else a ValueError that says what
    it has. `here=False` checks the name only: for work launched onto other machines (a Ray
    cluster's GPUs seen from a head node without one)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device; give cpu, cuda or "
                         "cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: give cpu, cuda or cuda:N")
    if here and parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {device}: no CUDA device on this machine; give cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device"
                             f"{'s' if count > 1 else ''}, cuda:0 to cuda:{count - 1}")
    return device


def out_of_memory(exc: BaseException) -> str | None:
    """What was refused when `exc` is a failed allocation ("an allocation of 37.3 GiB", or
    "an allocation" when the error does not say its size), else None. CUDA raises
    OutOfMemoryError; PyTorch's CPU allocator a RuntimeError that says it could not allocate."""
    import torch

    text = str(exc)
    if not (isinstance(exc, torch.OutOfMemoryError | MemoryError)
            or "can't allocate memory" in text or "not enough memory" in text):
        return None
    size = re.search(r"[Tt]ried to allocate (\d+) bytes", text)  # the CPU allocator's
    if size:
        return f"an allocation of {int(size.group(1)) / 2**30:.1f} GiB"
    size = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]iB)", text)  # CUDA's
    return f"an allocation of {size.group(1)}" if size else "an allocation"


# What runs, relative to the checkout: a change here (edited or new files) makes a record's
# revision "-dirty". Results files, reports and checkpoints are left out: a grid appends to a
# results file in the checkout as it goes, which would otherwise mark every later cell dirty.
CODE_PATHS = ("zoo", "harness", "catalog", "benchmarks", "pyproject.toml")


def provenance() -> dict[str, Any]:
    """The package version and git revision (with -dirty) every record carries."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("transformer-catalog")
    except PackageNotFoundError:
        package = None
    return {"version": package, "git": git_revision(Path(__file__).resolve().parents[1])}


def git_revision(root: Path) -> str | None:
    """HEAD's short hash in the checkout `root`, with "-dirty" when CODE_PATHS differ from it;
    None outside a checkout (an installed package) or without git."""
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                *CODE_PATHS], capture_output=True, text=True,
                               timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "")


def where(device: str) -> dict[str, Any]:
    """The record fields that say where it was made: CPU, GPU, cores, memory, torch, package
    version and git revision."""
    return {**machine_info(device), **provenance()}


def now() -> str:
    """The time a record is made, in UTC to the second (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
