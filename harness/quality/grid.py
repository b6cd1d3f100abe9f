"""Quality grids: one training cell per (model, width, length, pairs, learning rate, seed), each
in its own process, like a benchmark cell.

    grid = Grid(["gpt", "rwkv"], base=RunSpec(task="mqar", ...), widths=[64, 128],
                shapes=[(64, 4), (128, 8)], lrs=[1e-3, 1e-2], seeds=[0, 1])
    for event in run_grid(grid): ...

A cell's process prepares its data, trains, validates and tests (harness.quality.run.run_one)
and prints its record; this process appends it to the results file as soon as it arrives, so
that a killed grid loses only the cells it was running, and of those only the steps since
their last save (a rerun resumes them). A rerun skips every cell the results
file already holds (`force` runs them again), except a cell that ran out of time when
`timeout` is now larger. A cell that runs out of memory, time or goes
wrong is recorded with its status (`oom`, `timeout`, `over_budget`, `error`) and the reason,
and the grid goes on. Learning rates are chosen afterwards, on the validation scores the
records carry (harness.quality.selection), never on the test.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import launch, results
from harness.machine import out_of_memory
from harness.models import set_texts
from harness.quality.spec import OutOfMemory, QualityError, RunSpec
from harness.results import QualityRecord

# What identifies a cell in the results file: a record with these values is that cell's.
CELL_MODULE = "harness.quality.cell"  # `python -m` of one cell (harness.launch runs it)
CELL_FIELDS = ("model", "variant", "task", "width", "seqlen", "kv_pairs", "lr", "seed",
               "budget", "batch", "corpus", "tokenizer", "dtype", "device")


@dataclass(frozen=True)
class Cell:
    """One training run of a grid: `model` trained and scored as `spec` says, its checkpoint
    in `folder`."""

    model: str
    spec: RunSpec
    folder: Path

    @property
    def label(self) -> str:
        spec, parts = self.spec, [self.model]
        if spec.width is not None:
            parts.append(f"d{spec.width}")
        if spec.task == "mqar":
            parts.append(f"T{spec.mqar.seqlen}-K{spec.mqar.num_kv_pairs}")
        else:
            parts.append(f"T{spec.train_config.seqlen}")
        parts += [f"lr{spec.train_config.lr:g}", f"seed{spec.seed}"]
        parts += set_texts(spec.overrides)  # --set: its own folder
        return "-".join(parts)


@dataclass
class Grid:
    """The axes of a grid; every combination is one cell. `shapes` are the lengths of the
    cells: (seqlen, key-value pairs) for MQAR, (seqlen, None) for the other tasks; None in
    `widths` or `lrs` keeps the variant's width or the task's default learning rate."""

    models: list[str]
    base: RunSpec
    widths: list[int | None] = field(default_factory=lambda: [None])
    shapes: list[tuple[int | None, int | None]] = field(default_factory=lambda: [(None, None)])
    lrs: list[float | None] = field(default_factory=lambda: [None])
    seeds: list[int] = field(default_factory=lambda: [0])
    out: Path = Path("runs/grid")
    results: Path = Path("reports/results/quality.jsonl")
    timeout: float = 3600.0  # seconds per cell
    max_memory: int | None = None  # bytes of resident memory per cell
    threads: int | None = None  # torch threads in a cell (None: torch's default, every core)
    force: bool = False
    catalog_dir: Path | None = None
    command: str | None = None

    def cells(self) -> list[Cell]:
        """Model by model, width by width, shortest length first, then learning rate and seed."""
        out = []
        for model, width, (seqlen, pairs), lr, seed in itertools.product(
                self.models, self.widths, self.shapes, self.lrs, self.seeds):
            if width is None:  # the variant's, named so that tables and records say it
                width = self._variant_width(model)
            spec = dataclasses.replace(self.base, width=width, lr=lr, seed=seed)
            if spec.task == "mqar":
                spec = dataclasses.replace(spec, mqar=dataclasses.replace(
                    spec.mqar, seqlen=seqlen or spec.mqar.seqlen,
                    num_kv_pairs=pairs or spec.mqar.num_kv_pairs))
            elif seqlen is not None:
                spec = dataclasses.replace(spec, seqlen=seqlen)
            cell = Cell(model, spec, Path())
            out.append(dataclasses.replace(cell, folder=self.out / cell.label))
        return out


    def _variant_width(self, model: str) -> int | None:
        from harness.models import config_field_names, variant_fields

        catalog = None
        if self.catalog_dir is not None:
            from harness.catalog import load_catalog

            catalog = load_catalog(Path(self.catalog_dir))
        fields = variant_fields(model, self.base.variant, catalog)
        if "d_model" not in config_field_names(model):
            return None
        if "d_model" in fields:
            return fields["d_model"]
        import zoo

        return zoo.load_class(model).config_class().d_model


def parse_shapes(seqlens: list[int], pairs: list[int], paired: bool
                 ) -> list[tuple[int, int]]:
    """MQAR's (seqlen, pairs) cells: element by element when `paired` (Zoology's pairing,
    (64, 4), (128, 8) ...), else every combination that fits (4 * pairs <= seqlen)."""
    if paired:
        if len(seqlens) != len(pairs):
            raise QualityError(f"--mqar-seqlen gives {len(seqlens)} lengths and --mqar-kv-pairs "
                               f"{len(pairs)} counts; paired cells need as many of each (or "
                               "pass --cross for every combination)")
        return list(zip(seqlens, pairs, strict=True))
    shapes = [(T, K) for T in seqlens for K in pairs if 4 * K <= T]
    if not shapes:
        raise QualityError("no --mqar-seqlen is long enough for any --mqar-kv-pairs "
                           "(a sequence of T tokens holds at most T / 4 pairs)")
    return shapes


def check(grid: Grid) -> None:
    """Refuse, before any cell runs, a grid whose cells cannot all start or save: every cell's
    spec is valid (RunSpec checks its own fields), the checkpoints' folder can be made and the
    results file can be written."""
    from harness.quality.run import check_out

    if not math.isfinite(grid.timeout) or grid.timeout <= 0:
        raise QualityError(f"--timeout must be a number of seconds above 0, not {grid.timeout:g}")
    for cell in grid.cells():
        RunSpec.from_dict(cell.spec.to_dict())  # MQAR shapes that do not fit fail here
    check_out(grid.out)  # every cell would train, then fail to save
    try:
        results.check_writable(grid.results)
    except OSError as error:
        raise QualityError(str(error)) from None


def identity(rec: QualityRecord | Cell) -> tuple:
    """The values of CELL_FIELDS for a record, or those a cell's record will have."""
    if isinstance(rec, Cell):
        spec, config = rec.spec, rec.spec.train_config
        values = {"model": rec.model, "variant": spec.variant_label, "task": spec.task,
                  "width": spec.width, "seqlen": config.seqlen,
                  "kv_pairs": spec.mqar.num_kv_pairs if spec.task == "mqar" else None,
                  "lr": config.lr, "seed": spec.seed, "budget": str(spec.budget),
                  "batch": config.batch_size, "dtype": spec.dtype, "device": spec.device,
                  "tokenizer": spec.tokenizer if spec.task != "mqar" else None,
                  "corpus": _corpus_name(spec)}
        return tuple(values[name] for name in CELL_FIELDS)
    tokenizer = rec.tokenizer if rec.task != "mqar" else None
    return tuple(tokenizer if name == "tokenizer" else getattr(rec, name)
                 for name in CELL_FIELDS)


def _corpus_name(spec: RunSpec) -> str | None:
    """The corpus name a record of `spec` carries (None for MQAR: it has no text)."""
    if spec.task == "mqar":
        return None
    from harness.quality.tasks import corpus_name

    return corpus_name(spec.corpus)


@dataclass
class Event:
    """A cell about to start ("start"), or done with its record ("done"; `resumed` when the
    results file already held it)."""

    kind: str
    cell: Cell
    index: int
    total: int
    record: QualityRecord | None = None
    resumed: bool = False


def run_grid(grid: Grid, on_event: Callable[[Event], None] = lambda e: None,
             launcher: launch.Local | launch.Ray | None = None) -> Iterator[QualityRecord]:
    """Run every cell not already in the results file, each in its own process on `launcher`
    (default: one after another on this machine), appending each record as it arrives; yield
    the records (the ones found first, then the others as they end)."""
    check(grid)
    done: dict[tuple, QualityRecord] = {}
    if not grid.force:
        for rec in results.load([grid.results]).records:
            if isinstance(rec, QualityRecord) and rec.impl == "zoo" and rec.mode == "train" \
                    and not results.limit_raised(rec, grid.timeout, grid.max_memory):
                done[identity(rec)] = rec
    cells = grid.cells()
    to_run = []
    for index, cell in enumerate(cells, start=1):
        found = done.get(identity(cell))
        if found is not None:
            on_event(Event("done", cell, index, len(cells), found, resumed=True))
            yield found
        else:
            to_run.append((index, cell))

    def job_of(item: tuple[int, Cell]) -> launch.Job:
        index, cell = item
        on_event(Event("start", cell, index, len(cells)))
        order = {"model": cell.model, "spec": cell.spec.to_dict(), "folder": str(cell.folder),
                 "catalog_dir": str(grid.catalog_dir) if grid.catalog_dir else None,
                 "threads": grid.threads, "command": grid.command, "force": grid.force}
        return launch.Job((json.dumps(order),), CELL_MODULE, grid.timeout, grid.max_memory)

    for outcome in launch.execute(launcher or launch.Local(), to_run, job_of):
        index, cell = outcome.item
        rec = _record(cell, outcome.status, outcome.result)
        for name, value in launch.record_fields(outcome.placement).items():
            setattr(rec, name, value)
        results.append(grid.results, rec)
        on_event(Event("done", cell, index, len(cells), rec))
        yield rec


def _record(cell: Cell, status: str, result: dict[str, Any]) -> QualityRecord:
    """The cell's record: the one its process sent, or one that says how it failed."""
    if status == "ok":
        rec = QualityRecord.model_validate(result["record"])
        rec.wall_s = round(result["wall_s"], 1)
        return rec
    from harness.machine import now, where

    spec = cell.spec
    values = dict(zip(CELL_FIELDS, identity(cell), strict=True))
    return QualityRecord(
        **values, impl="zoo", mode="train", status=status,
        error=result.get("error") or "the cell failed", wall_s=round(result["wall_s"], 1),
        metric={"mqar": "accuracy", "mlm": "mlm_accuracy"}.get(spec.task, "bits_per_byte"),
        budget_tokens=spec.budget.tokens, budget_seconds=spec.budget.seconds,
        budget_flops=spec.budget.flops, checkpoint=str(cell.folder), time=now(),
        mqar=dataclasses.asdict(spec.mqar) if spec.task == "mqar" else None,
        notes=[f"{status}: {result.get('error') or 'the cell failed'}"],
        **where(spec.device))


def cell_main(argv: list[str]) -> int:
    """`python -m harness.quality.cell ORDER`: run one cell and print its record (or its
    error) as the last line of stdout, as JSON."""
    order = json.loads(argv[0])
    try:
        import torch

        if order.get("threads"):
            torch.set_num_threads(order["threads"])
        record = _run_cell(order)
        payload = {"status": "ok", "record": record.to_dict()}
    except OutOfMemory as error:  # run_one's, which says what ran out
        payload = {"status": "oom", "error": str(error)}
    except (QualityError, ValueError, OSError) as error:
        payload = {"status": "error", "error": str(error)}
    except (MemoryError, RuntimeError) as error:  # a failed allocation outside run_one's
        refused = out_of_memory(error)
        payload = {"status": "error" if refused is None else "oom",
                   "error": f"out of memory ({refused} refused)" if refused
                   else (str(error).splitlines() or [type(error).__name__])[0]}
    sys.stdout.write("\n" + json.dumps(payload) + "\n")
    sys.stdout.flush()
    return 0


def _run_cell(order: dict[str, Any]) -> QualityRecord:
    from harness.quality.data import prepare
    from harness.quality.run import run_one
    from harness.quality.train import UnusableState

    catalog = None
    if order.get("catalog_dir"):
        from harness.catalog import load_catalog

        catalog = load_catalog(Path(order["catalog_dir"]))
    spec = RunSpec.from_dict(order["spec"])
    data = prepare(spec, {spec.task})
    folder = Path(order["folder"])
    # A cell an earlier grid left unfinished goes on from its last save (unless --force): the
    # state must be of this cell's very options, else the cell starts again.
    resume = (folder / "state.pt").exists() and not order.get("force")
    try:
        result = run_one(order["model"], data, folder, catalog=catalog, resume=resume,
                         command=order.get("command"))
    except UnusableState:
        result = run_one(order["model"], data, folder, catalog=catalog,
                         command=order.get("command"))
    return result.record
