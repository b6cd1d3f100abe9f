"""A benchmark sweep: plan the cells, run each in a fresh process, write one record per cell.

Each cell runs in `python -m harness.bench.cell` so that its memory is its own; this process watches
it: over `max_memory` (peak RSS on CPU) or past `timeout` it is killed and recorded as
`over_budget` or `timeout`; killed by the system (the kernel's OOM killer) or out of memory
inside, `oom`. After such a failure the longer lengths of that model, impl and mode are
recorded as `skipped` and the sweep goes on. Records are appended to the results file as each
cell ends, so an interrupted sweep keeps what it finished and a rerun resumes: it measures what
the file lacks, keeps a failed length's longer ones skipped, and tries a failed cell again only
when its limit (--timeout, --max-memory) is now larger.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import launch, results
from harness.bench.implementations import COMPILED, OURS, PEERS
from harness.bench.peak import PEAK_METHOD
from harness.bench.workload import DTYPES, MODES, Cell, decoding_models
from harness.machine import check_device, machine_info, provenance

if TYPE_CHECKING:
    from harness.catalog import Catalog

FAILURES = ("oom", "over_budget", "timeout")
CELL_MODULE = "harness.bench.cell"


class SweepError(ValueError):
    """A sweep that cannot start as asked; the message says which argument is wrong."""


def parse_seqlens(text: str) -> list[int]:
    """"512,1024" -> [512, 1024]; "512..4096" -> [512, 1024, 2048, 4096] (doubling)."""
    text = text.strip()
    try:
        if ".." in text:
            low, high = (int(part) for part in text.split(".."))
            if low <= 0 or high < low:
                raise ValueError
            lengths = []
            while low <= high:
                lengths.append(low)
                low *= 2
            return lengths
        lengths = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        lengths = []
    if not lengths or lengths[0] <= 0:
        raise SweepError(f"--seqlen {text!r}: give positive lengths, e.g. 8192, 512,1024,2048 "
                         "or the doubling range 512..16384")
    return lengths


def parse_bytes(text: str | None) -> int | None:
    """"8G" -> 8 GiB, "500M" -> 500 MiB, "1024" -> bytes."""
    if text is None:
        return None
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in units else (raw, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = -1
    if not math.isfinite(value) or value < 1:
        raise SweepError(f"--max-memory {text!r}: give a size such as 8G, 500M or 1.5G")
    return int(value)


@dataclass
class Sweep:
    models: list[str]
    variant: str = "small"
    modes: list[str] = field(default_factory=lambda: ["forward"])
    seqlens: list[int] = field(default_factory=lambda: [1024])
    batch: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None
    warmup: int = 1
    repeat: int = 3
    new_tokens: int = 16
    max_memory: int | None = None
    timeout: float = 600.0
    against: list[str] = field(default_factory=list)
    compile: bool = False  # also measure the zoo model under torch.compile ("zoo-compiled")
    fast: bool = True  # the zoo's CPU speed routes (zoo.fast); False: its plain PyTorch path
    routes: list[str] | None = None  # where fast, only these routes (None: every one)
    force: bool = False
    results: Path = Path("reports/results/bench.jsonl")
    command: str | None = None  # the command line that asked for the sweep, for its records
    # Config fields by model that take the place of the catalog variant's: a checkpoint's sizes
    # (`catalog bench --checkpoint`), with `variant` then naming the checkpoint.
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)

    def unsupported(self) -> list[tuple[str, str]]:
        """(model, mode) pairs of the sweep that the model cannot run: generate on encoders."""
        import zoo

        return [(m, "generate") for m in self.models if "generate" in self.modes
                and not hasattr(zoo.load_class(m), "generate")]

    def cells(self, catalog: Catalog | None = None) -> list[Cell]:
        """Model by model, mode by mode, shortest length first (so that a failure can skip the
        longer ones), and at each length ours then each peer's, one after the other: the cells
        of a ratio are measured minutes apart at most, under the same load of a shared machine.
        Modes a model cannot run are left out (see `check`). Each cell carries its variant's
        config fields from `catalog` (default: the shipped one), or the sweep's own fields for
        its model."""
        from harness.models import variant_fields

        out = []
        left_out = set(self.unsupported())
        for model in self.models:
            fields = self.fields.get(model) or variant_fields(model, self.variant, catalog)
            impls = [OURS] + ([COMPILED] if self.compile else []) + [
                peer for peer in self.against if model in PEERS.get(peer, ())]
            for mode in [m for m in self.modes if (model, m) not in left_out]:
                for seqlen in self.seqlens:
                    for impl in impls:
                        out.append(Cell(model, self.variant, impl, mode, seqlen, self.batch,
                                        self.dtype, self.device, self.threads, self.warmup,
                                        self.repeat, self.new_tokens, self.max_memory,
                                        fields, self.fast, self.routes))
        return out


def check(sweep: Sweep, catalog: Catalog | None = None) -> None:
    """Refuse, before running anything, what cannot work: unknown models, modes a model lacks,
    peers none of the models has, bad numbers, a device this machine does not have, a variant
    `catalog` (default: the shipped one) does not have, a results file that cannot be written."""
    import zoo
    from harness.models import variant_fields

    unknown = [m for m in sweep.models if m not in zoo.REGISTRY]
    if unknown:
        raise SweepError(f"unknown model {unknown[0]!r}; runnable models: "
                         f"{', '.join(sorted(zoo.REGISTRY))} (or --all)")
    for mode in sweep.modes:
        if mode not in MODES:
            raise SweepError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    for model in sweep.models:  # a model that can run none of the modes asked is an error
        if all((model, mode) in sweep.unsupported() for mode in sweep.modes):
            raise SweepError(f"{model} is an encoder and cannot generate; generate mode "
                             f"is for {decoding_models()}")
    for peer in sweep.against:
        if peer not in PEERS:
            raise SweepError(f"unknown peer {peer!r}; valid: {', '.join(PEERS)}")
        if not set(PEERS[peer]) & set(sweep.models):
            raise SweepError(f"--against {peer} has no peer for {', '.join(sweep.models)}; "
                             f"it covers {', '.join(PEERS[peer])}")
    if sweep.dtype not in DTYPES:
        raise SweepError(f"unknown dtype {sweep.dtype!r}; valid: {', '.join(DTYPES)}")
    for name in ("batch", "repeat", "new_tokens"):
        if getattr(sweep, name) < 1:
            raise SweepError(f"--{name.replace('_', '-')} must be at least 1")
    if sweep.warmup < 0:
        raise SweepError(f"--warmup must be at least 0, not {sweep.warmup}")
    if not math.isfinite(sweep.timeout) or sweep.timeout <= 0:
        raise SweepError(f"--timeout must be a number of seconds above 0, not {sweep.timeout:g}")
    if sweep.threads is not None and sweep.threads < 1:
        raise SweepError(f"--threads must be at least 1, not {sweep.threads}")
    try:
        check_device(sweep.device)
    except ValueError as error:
        raise SweepError(str(error)) from None
    for model in sweep.models:  # the variant must exist (the error lists the valid ones)
        if model not in sweep.fields:
            variant_fields(model, sweep.variant, catalog)
    try:  # a measurement must never be made only to be lost
        results.check_writable(sweep.results)
    except OSError as error:
        raise SweepError(str(error)) from None


def peak_label(device: str, dtype: str, threads: int | None) -> str:
    """The key of a matmul peak in the cache: the machine, device, dtype and threads, and on
    the CPU the instruction set torch runs and the kernel the zoo's linears take: a processor's
    name ("AMD EPYC") covers hosts with and without AVX-512, whose peaks differ twofold."""
    from zoo import fast

    info = machine_info(device)
    label = (f"{info['cpu']}|{info['gpu']}|{device}|{dtype}|threads={threads or 'default'}"
             f"|method={PEAK_METHOD}")
    if not device.startswith("cuda"):
        label += f"|isa={fast.cpu_capability()}|kernel={fast.many_rows_kernel()}"
    return label


def calibrate(device: str, dtype: str, threads: int | None, cache: Path,
              force: bool = False) -> float:
    """The matrix-multiply peak (FLOP/s) of this machine for (device, dtype, threads), measured
    once and cached in `cache` (JSON) for later sweeps."""
    label = peak_label(device, dtype, threads)
    try:
        peaks = json.loads(cache.read_text()) if cache.exists() else {}
    except (OSError, json.JSONDecodeError):
        peaks = {}
    if label in peaks and not force:
        return peaks[label]
    status, result = launch.spawn(launch.Job(("--calibrate", device, dtype, str(threads or 0)),
                                             CELL_MODULE, 300))
    if status != "ok":
        raise SweepError(f"could not measure the matmul peak: {result.get('error')}")
    peaks[label] = result["peak_flops"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(peaks, indent=2))
    return peaks[label]


@dataclass
class Event:
    """What the sweep reports as it goes: a cell about to start, or its record."""

    kind: str  # "start" | "done"
    cell: Cell
    record: dict[str, Any] | None = None
    index: int = 0
    total: int = 0


def run(sweep: Sweep, peak_cache: Path, on_event: Callable[[Event], None] = lambda e: None,
        catalog: Catalog | None = None, launcher: launch.Local | launch.Ray | None = None
        ) -> Iterator[results.BenchRecord]:
    """Run the sweep, yielding each cell's record once it is appended to the results file
    (cells measured before first, then the others as they end). Variants are read from
    `catalog` (default: the shipped one); cells run on `launcher` (default: one after another
    on this machine)."""
    check(sweep, catalog)
    import torch

    info = {**machine_info(sweep.device), **provenance(), "torch": torch.__version__}
    peak = calibrate(sweep.device, sweep.dtype, sweep.threads, peak_cache)
    done = {} if sweep.force else {
        results.key(r): r for r in results.load([sweep.results]).records
        if isinstance(r, results.BenchRecord)}
    cells = sweep.cells(catalog)
    planned, to_run = {}, []
    failed_at: dict[tuple, tuple[str, int]] = {}  # (model, impl, mode): its shortest failure
    for index, cell in enumerate(cells, start=1):
        rec = results.BenchRecord(
            model=cell.model, variant=cell.variant, impl=cell.impl, mode=cell.mode,
            seqlen=cell.seqlen, batch=cell.batch, dtype=cell.dtype, device=cell.device,
            threads=cell.threads or torch.get_num_threads(), cpu=info["cpu"], gpu=info["gpu"],
            torch=info["torch"], version=info["version"], git=info["git"],
            cores=info["cores"], ram_bytes=info["ram_bytes"], peak_flops=peak,
            warmup=cell.warmup, repeat=cell.new_tokens if cell.mode == "generate" else cell.repeat,
            max_memory=sweep.max_memory, timeout_s=sweep.timeout, command=sweep.command,
            routes=routes(cell))
        previous = done.get(results.key(rec))
        if previous is not None and results.limit_raised(previous, sweep.timeout,
                                                         sweep.max_memory):
            previous = None  # it failed at a limit this sweep raises: try it again
        if previous is not None and previous.status == "skipped" \
                and (cell.model, cell.impl, cell.mode) not in failed_at:
            previous = None  # the failure that skipped it is being tried again
        if previous is not None:  # measured before with the same key: not again (see --force)
            previous = previous.model_copy(update={"resumed": True})
            _note_failure(failed_at, cell, previous.status)  # the longer lengths stay skipped
            on_event(Event("done", cell, previous, index, len(cells)))
            yield previous
        else:
            planned[index] = rec
            to_run.append((index, cell))

    def job_of(item: tuple[int, Cell]) -> launch.Job | str:
        index, cell = item
        line = (cell.model, cell.impl, cell.mode)
        if line in failed_at:  # a shorter length of this line failed: not this one either
            why, length = failed_at[line]
            return f"skipped: {why} at seqlen {length}"
        on_event(Event("start", cell, None, index, len(cells)))
        return launch.Job((json.dumps(asdict(cell)),), CELL_MODULE, sweep.timeout,
                          sweep.max_memory if cell.device == "cpu" else None)

    for outcome in launch.execute(launcher or launch.Local(), to_run, job_of):
        index, cell = outcome.item
        status, result = outcome.status, outcome.result
        if status == "oom" and sweep.max_memory and cell.device != "cpu":
            status = "over_budget"  # the CUDA allocator was capped at the budget
        _note_failure(failed_at, cell, status)
        flops_per_s = result.pop("flops_per_s", None)
        measured = {name: result[name] for name in _MEASURED if result.get(name) is not None}
        rec = planned[index].model_copy(update={
            **measured, "status": status, "mfu": flops_per_s / peak if flops_per_s else None,
            **launch.record_fields(outcome.placement),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        if status == "skipped":
            rec.notes = [result["skipped"]]
        rec = results.BenchRecord.model_validate(rec.model_dump())  # check what the cell sent
        if rec.mfu is not None and rec.mfu > 1:
            rec.notes.append("MFU above 100%: the cached matmul peak looks too low (measured "
                             "on a busy machine?); run `catalog bench --calibrate`")
        results.append(sweep.results, rec)
        on_event(Event("done", cell, rec, index, len(cells)))
        yield rec


def _note_failure(failed_at: dict[tuple, tuple[str, int]], cell: Cell, status: str) -> None:
    """Keep the shortest length at which a line (model, impl, mode) failed."""
    line = (cell.model, cell.impl, cell.mode)
    if status in FAILURES and (line not in failed_at or cell.seqlen < failed_at[line][1]):
        failed_at[line] = (status, cell.seqlen)


@functools.cache
def _routes_of(model: str, fields: str, chosen: tuple[str, ...] | None) -> tuple[str, ...]:
    from harness.models import build
    from zoo import fast

    built = build(model, overrides=json.loads(fields), device="meta", fast=True,
                  routes=None if chosen is None else list(chosen))
    return fast.applied(built.model)


def routes(cell: Cell) -> list[str] | None:
    """The zoo speed routes (zoo.fast) the cell's model will take, known before it runs (part
    of what identifies a measurement): every route that applies to the model for the eager zoo
    cell (or those of them the sweep chose), none for the plain model or under torch.compile,
    None for a peer."""
    if cell.impl in PEERS:
        return None
    if cell.impl != OURS or not cell.fast:
        return []
    chosen = None if cell.routes is None else tuple(cell.routes)
    return list(_routes_of(cell.model, json.dumps(cell.fields, sort_keys=True), chosen))


# What a cell's process reports (harness.bench.cell.measure), by record field.
_MEASURED = ("params", "tokens_per_s", "ms_median", "ms_iqr", "peak_mem_bytes", "act_mem_bytes",
             "flops_per_token", "notes", "threads", "error", "wall_s", "routes", "contention")
