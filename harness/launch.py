"""Where a sweep's cells run: one after another on this machine (the default), several at once
on this machine (`--launcher local --jobs N`), or as tasks on a Ray cluster (`--launcher ray`).

Whichever launcher runs it, a cell is `python -m MODULE ORDER` in a process of its own (so its
memory is its own), watched for its time and peak memory by `CellProcess`, and what it printed
last is its result. The sweep itself (harness.sweep for benchmarks, harness.quality.grid for
quality grids) stays in the calling process: it decides which cells to run, turns each outcome
into a record and appends it to the results file, so there is one writer per sweep whatever
runs the cells, and a rerun resumes from the file whichever launcher wrote it.

    local, jobs 1   cells one after another with the whole machine: exclusive timings.
    local, jobs N   N cells at once. On the CPU each is pinned to its own share of the cores
                    (disjoint, so that no two cells fight for a core) and told to use that many
                    threads; on CUDA each gets one GPU (slot i takes GPU i mod the GPU count, so
                    N above the count puts several small cells on a GPU).
    ray             each cell a Ray task asking for its CPUs (and GPU); the task starts the
                    cell's process on whichever node Ray picks. Ray is an optional extra.

Every outcome carries where and beside what the cell ran (`Placement`): timings taken while
other cells ran are marked as such in the records, and the report keeps them apart.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from harness.bench.memory import current_rss
from harness.machine import usable_cores

LAUNCHERS = ("local", "ray")
POLL_S = 0.05  # how often a running cell's time and memory are checked
# Ctrl-C: how long the cells still running get to end on their own (a training cell saves the
# step under way) before they are killed.
STOP_GRACE_S = 10.0

T = TypeVar("T")


class LaunchError(ValueError):
    """A launcher that cannot start as asked; the message names the option that is wrong."""


@dataclass(frozen=True)
class Job:
    """One cell to run: `python -m module *argv`, stopped past `timeout` seconds or (on the
    CPU) past `max_rss` bytes of resident memory."""

    argv: tuple[str, ...]
    module: str
    timeout: float
    max_rss: int | None = None


@dataclass
class Placement:
    """Where a cell ran and beside how many others: what a timing needs to be read right."""

    launcher: str
    jobs: int  # cells the launcher allowed at once
    host: str | None = None
    cpus: list[int] | None = None  # the cores the cell was pinned to (None: not pinned)
    gpu: str | None = None  # the GPU index it was given (CUDA_VISIBLE_DEVICES)
    co_running: int = 0  # the most other cells in flight while it ran (0: it ran alone)


@dataclass
class Outcome(Generic[T]):
    item: T
    status: str  # ok | oom | over_budget | timeout | error | skipped
    result: dict[str, Any]
    placement: Placement | None = None  # None for a skipped item


# --- one cell's process ------------------------------------------------------------------------

class CellProcess:
    """`python -m MODULE *ARGV` started now, its output kept in temporary files (a pipe would
    block a chatty cell while nobody reads it), checked by `poll` for time and memory."""

    def __init__(self, job: Job, env: dict[str, str] | None = None,
                 cpus: list[int] | None = None):
        self.job = job
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", job.module, *job.argv],
                                     stdout=self._out, stderr=self._err,
                                     env={**os.environ, **(env or {})})
        if cpus:  # before Python has started the cell's threads, which inherit it
            try:
                os.sched_setaffinity(self.proc.pid, cpus)
            except (OSError, AttributeError):
                pass
        self.start = time.monotonic()
        self.peak = 0

    def poll(self) -> tuple[str, dict[str, Any]] | None:
        """None while the cell runs; once it ended or was stopped, (status, result)."""
        if self.proc.poll() is None:
            rss = current_rss(self.proc.pid) or 0
            self.peak = max(self.peak, rss)
            if self.job.max_rss is not None and rss > self.job.max_rss:
                self.kill()
                return "over_budget", {
                    "error": f"peak RSS passed the budget of {self.job.max_rss / 2**30:.2f} GiB "
                             f"(reached {self.peak / 2**30:.2f} GiB)",
                    "peak_mem_bytes": self.peak, "wall_s": self.wall}
            if self.wall > self.job.timeout:
                self.kill()
                return "timeout", {"error": f"still running after {self.job.timeout:g} s",
                                   "wall_s": self.wall}
            return None
        return self._finished()

    @property
    def wall(self) -> float:
        return time.monotonic() - self.start

    def stop(self) -> None:
        """SIGTERM: a training cell ends after its step, saved. (Not SIGINT: the cell may have
        had one from the terminal's Ctrl-C already, and a second stops training at once.)"""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def _finished(self) -> tuple[str, dict[str, Any]]:
        wall = self.wall
        stdout, stderr = (_read(f) for f in (self._out, self._err))
        last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
        try:
            result = json.loads(last)
        except json.JSONDecodeError:
            result = None
        code = self.proc.returncode
        if code == -9 or (code and result is None and "Killed" in stderr):
            return "oom", {"error": "killed by the system (out of memory)", "wall_s": wall}
        if not isinstance(result, dict):
            tail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {code}"
            return "error", {"error": f"the cell process failed: {tail}", "wall_s": wall}
        result["wall_s"] = wall
        return result.pop("status", "error"), result


def _read(file) -> str:
    file.seek(0)
    text = file.read().decode("utf-8", errors="replace")
    file.close()
    return text


def spawn(job: Job, env: dict[str, str] | None = None,
          cpus: list[int] | None = None) -> tuple[str, dict[str, Any]]:
    """Run one cell to its end here and return (status, result); Ctrl-C takes it down too."""
    cell = CellProcess(job, env, cpus)
    try:
        while (done := cell.poll()) is None:
            time.sleep(POLL_S)
    except BaseException:
        cell.kill()
        raise
    return done


# --- launchers ---------------------------------------------------------------------------------

class Local:
    """Cells as processes of this machine, `jobs` at a time (see the module docstring)."""

    name = "local"

    def __init__(self, jobs: int = 1, device: str = "cpu", threads: int | None = None):
        if jobs < 1:
            raise LaunchError(f"--jobs must be at least 1, not {jobs}")
        self.jobs = jobs
        self.slots = _slots(jobs, device, threads)
        self._running: dict[int, tuple[Any, CellProcess, Placement]] = {}

    def has_room(self) -> bool:
        return len(self._running) < self.jobs

    def busy(self) -> bool:
        return bool(self._running)

    def submit(self, item: Any, job: Job) -> None:
        slot = next(i for i in range(self.jobs) if i not in self._running)
        env, cpus, gpu = self.slots[slot]
        placement = Placement(self.name, self.jobs, socket.gethostname(), cpus, gpu,
                              co_running=len(self._running))
        for _, _, other in self._running.values():
            other.co_running = max(other.co_running, len(self._running))
        self._running[slot] = (item, CellProcess(job, env, cpus), placement)

    def wait(self) -> list[Outcome]:
        """Block until at least one running cell ends; return the ones that did."""
        while True:
            done = []
            for slot, (item, cell, placement) in list(self._running.items()):
                polled = cell.poll()
                if polled is not None:
                    del self._running[slot]
                    done.append(Outcome(item, *polled, placement))
            if done or not self._running:
                return done
            time.sleep(POLL_S)

    def close(self) -> None:
        """Stop every cell still running (Ctrl-C, or the sweep ended early): each is sent
        SIGTERM and given STOP_GRACE_S seconds to end (a training cell saves the step under
        way, so that a rerun resumes it; a benchmark cell ends at once), then killed."""
        cells = [cell for _, cell, _ in self._running.values()]
        for cell in cells:
            cell.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        while any(cell.proc.poll() is None for cell in cells) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        for cell in cells:
            cell.kill()
        self._running.clear()


def _slots(jobs: int, device: str, threads: int | None
           ) -> list[tuple[dict[str, str], list[int] | None, str | None]]:
    """(environment, pinned cores, GPU) of each of `jobs` slots."""
    if jobs == 1:
        return [({}, None, None)]  # today's sequential sweep: the whole machine, as before
    if device.startswith("cuda"):
        if device != "cuda":
            raise LaunchError(f"--jobs {jobs} with --device {device}: give --device cuda; the "
                              "launcher gives each cell its own GPU")
        gpus = _visible_gpus()
        if not gpus:
            raise LaunchError(f"--jobs {jobs} on cuda: no CUDA GPU is visible")
        return [({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]}, None, gpus[i % len(gpus)])
                for i in range(jobs)]
    cores = usable_cores()
    if jobs > len(cores):
        raise LaunchError(f"--jobs {jobs} on the CPU needs {jobs} cores, one per cell at least; "
                          f"this sweep may use {len(cores)}")
    share = len(cores) // jobs
    if threads and threads > share:
        raise LaunchError(f"--threads {threads} with --jobs {jobs}: each cell has {share} of "
                          f"the {len(cores)} cores; give --threads {share} or fewer, or fewer jobs")
    slots = []
    for i in range(jobs):
        mine = cores[i * share:(i + 1) * share]
        count = str(threads or share)
        slots.append(({"OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count}, mine, None))
    return slots


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def cores_per_job(jobs: int) -> int:
    """The cores each of `jobs` local CPU cells is pinned to."""
    return max(1, len(usable_cores()) // jobs)


class Ray:
    """Cells as Ray tasks (`ray.init(address)`: a running cluster, or a local one started
    here when address is None). Each task asks for `cpus` CPUs and `gpus` GPUs and runs the
    cell's process on its node; `jobs` caps the tasks in flight (default: as many as the
    cluster's CPUs, or GPUs, hold)."""

    name = "ray"

    def __init__(self, address: str | None = None, jobs: int | None = None, cpus: int = 1,
                 gpus: float = 0, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise LaunchError("--launcher ray needs Ray: pip install 'transformer-catalog[ray]'"
                              " (or pip install ray)") from None
        self._ray = ray
        self._started = not ray.is_initialized()
        self._running: dict[Any, tuple[Any, Placement, float]] = {}  # what close() cancels
        try:
            if self._started:
                ray.init(address=address, num_cpus=num_cpus if address is None else None,
                         include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                         configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise LaunchError(f"--address {address}: could not reach a Ray cluster "
                              f"({str(error).splitlines()[0]})") from None
        total = ray.cluster_resources()
        capacity = int(total.get("GPU", 0) // gpus) if gpus else int(total.get("CPU", 1) // cpus)
        if capacity < 1:
            self.close()
            raise LaunchError(f"the Ray cluster has {total.get('CPU', 0):g} CPUs and "
                              f"{total.get('GPU', 0):g} GPUs; a cell asks for {cpus} CPU(s) and "
                              f"{gpus:g} GPU(s)")
        self.jobs = jobs or capacity
        self._task = ray.remote(_ray_cell).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        self._cpus = cpus

    def has_room(self) -> bool:
        return len(self._running) < self.jobs

    def busy(self) -> bool:
        return bool(self._running)

    def submit(self, item: Any, job: Job) -> None:
        ref = self._task.remote(job, self._cpus)
        placement = Placement(self.name, self.jobs, co_running=len(self._running))
        for _, other, _ in self._running.values():
            other.co_running = max(other.co_running, len(self._running))
        self._running[ref] = (item, placement, time.monotonic())

    def wait(self) -> list[Outcome]:
        ray = self._ray
        ready, _ = ray.wait(list(self._running), num_returns=1)
        done = []
        for ref in ready:
            item, placement, submitted = self._running.pop(ref)
            try:
                status, result, where = ray.get(ref)
                placement.host, placement.gpu = where["host"], where["gpu"]
            except ray.exceptions.RayError as error:  # the worker died, or the task failed
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                status, result = "error", {
                    "error": f"the Ray worker running the cell failed: "
                             f"{type(error).__name__}: {reason}"[:400],
                    "wall_s": time.monotonic() - submitted}
            done.append(Outcome(item, status, result, placement))
        return done

    def close(self) -> None:
        for ref in list(self._running):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # already finished or its worker already gone
                pass
        self._running.clear()
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def _ray_cell(job: Job, cpus: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A Ray task: run the cell's process on this node, with threads for the CPUs asked for
    (Ray has already set CUDA_VISIBLE_DEVICES for the GPUs it gave the task)."""
    env = {"OMP_NUM_THREADS": str(cpus), "MKL_NUM_THREADS": str(cpus)}
    status, result = spawn(job, env)
    where = {"host": socket.gethostname(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES") or None}
    return status, result, where


def record_fields(placement: Placement | None) -> dict[str, Any]:
    """The record fields that say where and beside what a cell ran (none for a skipped cell,
    or one run by the default launcher: one cell at a time, the whole machine)."""
    if placement is None or (placement.launcher == "local" and placement.jobs == 1):
        return {}
    return {"launcher": placement.launcher, "jobs": placement.jobs, "host": placement.host,
            "cpus": placement.cpus, "co_running": placement.co_running}


def make(name: str, jobs: int | None, device: str, threads: int | None = None,
         address: str | None = None) -> Local | Ray:
    """The launcher of the command-line options --launcher, --jobs, --address."""
    if name not in LAUNCHERS:
        raise LaunchError(f"--launcher {name!r}: choose {' or '.join(LAUNCHERS)}")
    if jobs is not None and jobs < 1:
        raise LaunchError(f"--jobs must be at least 1, not {jobs}")
    if name == "local":
        if address:
            raise LaunchError("--address is for --launcher ray")
        return Local(jobs or 1, device, threads)
    gpus = 1 if device.startswith("cuda") else 0
    return Ray(address, jobs, cpus=threads or 1, gpus=gpus)


def execute(launcher: Local | Ray, items: Iterable[T],
            job_of: Callable[[T], Job | str]) -> Iterator[Outcome[T]]:
    """Run the items' jobs, as many at once as the launcher has room for, yielding each
    outcome as it ends. `job_of(item)` is called only when there is room for the item, so that
    it can decide from what ended before: it returns the Job to run, or why the item is
    skipped (a string; yielded at once with status "skipped"). The launcher is closed at the
    end, and on Ctrl-C or an early exit every cell still running is stopped."""
    queue = iter(items)
    exhausted = False
    try:
        while True:
            while not exhausted and launcher.has_room():
                item = next(queue, _END)
                if item is _END:
                    exhausted = True
                    break
                job = job_of(item)
                if isinstance(job, str):
                    yield Outcome(item, "skipped", {"skipped": job})
                else:
                    launcher.submit(item, job)
            if not launcher.busy():
                return
            yield from launcher.wait()
    finally:
        launcher.close()


_END = object()
