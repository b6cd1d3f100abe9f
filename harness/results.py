"""Results: one declared schema per kind of record, an append-only JSON Lines store, and a
pandas DataFrame of any set of result files.

Every record is flat and carries the same standard names (DESIGN.md), so that reports, scripts
and pandas read every file alike; each kind adds its own fields:

  BenchRecord    a benchmark cell: speed, memory and MFU of one (model, impl, mode, length, ...)
  QualityRecord  a quality score: a model trained at an equal budget and tested, or a trained
                 checkpoint scored by lm-evaluation-harness (`impl` "lm-eval")

A record is built with its fields by name: a mistyped or unknown name is an error, not a silent
None. Each record also carries the `command` that made it.

The store: one record per line, appended, flushed and synced record by record, so that an
interrupted run keeps every record it finished; a reader skips a damaged line (or one that does
not match the schema) with a warning naming the file and line instead of failing.
"""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    import pandas as pd

STATUSES = ("ok", "oom", "over_budget", "timeout", "error", "skipped")
Status = Literal["ok", "oom", "over_budget", "timeout", "error", "skipped"]


class Record(BaseModel):
    """The names every record carries (None where they do not apply to its kind)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: str
    model: str
    variant: str | None = None
    impl: str | None = None  # zoo | zoo-compiled | hf | rwkv-pip | lm-eval
    mode: str | None = None  # forward | train | generate | eval
    seqlen: int | None = None
    batch: int | None = None
    dtype: str | None = None
    device: str | None = None
    threads: int | None = None
    status: Status = "ok"
    tokens_per_s: float | None = None
    ms_median: float | None = None
    ms_iqr: float | None = None
    peak_mem_bytes: int | None = None
    act_mem_bytes: int | None = None
    flops_per_token: float | None = None
    mfu: float | None = None
    params: int | None = None
    task: str | None = None
    metric: str | None = None
    value: float | None = None
    torch: str | None = None
    version: str | None = None
    git: str | None = None
    cpu: str | None = None
    gpu: str | None = None
    cores: int | None = None  # of the machine
    ram_bytes: int | None = None  # of the machine
    time: str | None = None  # ISO 8601, UTC
    notes: list[str] = Field(default_factory=list)
    command: str | None = None  # the command line that made the record
    # Where and beside what the cell ran, set when a launcher ran several cells at once
    # (harness.launch); None for a cell that had the machine to itself, one after another.
    launcher: str | None = None  # local | ray
    jobs: int | None = None  # cells the launcher allowed at once
    host: str | None = None  # the machine that ran the cell
    cpus: list[int] | None = None  # the cores the cell was pinned to
    co_running: int | None = None  # the most other cells in flight while it ran (0: alone)

    def to_dict(self) -> dict[str, Any]:
        """The record as written to the store: every field, in declaration order."""
        return self.model_dump(mode="json")


class BenchRecord(Record):
    """One benchmark cell (see harness.sweep): measured, failed, or skipped after a failure."""

    kind: Literal["bench"] = "bench"
    peak_flops: float | None = None  # the matmul peak MFU is measured against
    warmup: int | None = None
    repeat: int | None = None  # timed runs (generate: timed tokens)
    max_memory: int | None = None  # the budget a cell was stopped at, in bytes
    timeout_s: float | None = None
    error: str | None = None
    wall_s: float | None = None
    routes: list[str] | None = None  # the zoo's speed routes applied (None: not recorded)
    # Cores' worth of CPU time other work took from the cell's cores during its timed runs
    # (harness.machine.LoadMeter; None: not measured, or timed runs under a second).
    contention: float | None = None
    # Set on a record read back from the results file by a resumed sweep; never written.
    resumed: bool = Field(default=False, exclude=True)


class QualityRecord(Record):
    """A quality score: equal-budget training then testing (`impl` zoo), or an lm-eval score of
    a trained checkpoint (`impl` lm-eval, `mode` eval)."""

    kind: Literal["quality"] = "quality"
    budget: str | None = None
    budget_tokens: int | None = None
    budget_seconds: float | None = None
    tokens: int | None = None
    steps: int | None = None
    train_seconds: float | None = None
    test_seconds: float | None = None
    seed: int | None = None
    lr: float | None = None
    tokenizer: str | None = None
    vocab_size: int | None = None
    corpus: str | None = None
    scores: dict[str, float] | None = None
    final_train_loss: float | None = None
    baseline: float | None = None  # unigram bits per byte of the test split (lm, seq2seq)
    chance: float | None = None  # accuracy of a uniform guess (mqar)
    mqar: dict[str, Any] | None = None
    checkpoint: str | None = None
    limit: int | None = None  # lm-eval: examples per task (None: all)
    routes: list[str] | None = None  # the zoo's speed routes the training ran with
    contention: float | None = None  # cores' worth others took while it trained (LoadMeter)
    # Grids (quality against length): what a cell varied, and what it was chosen and scored on.
    budget_flops: float | None = None  # a compute budget: training FLOPs (analytic, at seqlen)
    width: int | None = None  # d_model, when the cell set it (the variant's other fields kept)
    kv_pairs: int | None = None  # MQAR: key-value pairs per sequence
    val_value: float | None = None  # the headline metric on the validation split, at the end
    stopped_early: bool | None = None  # training stopped once validation passed the target
    error: str | None = None  # why a cell failed (status oom, timeout or error)
    wall_s: float | None = None  # the cell's whole process, preparation and test included
    # Bits per byte of the test text at several evaluation lengths (Press et al.): one dict per
    # (eval_seqlen, stride) with bits_per_byte None (n/a) where the model cannot take the length.
    extrapolation: list[dict[str, Any]] | None = None
    # Mean loss by token position of the evaluation windows, log-binned, and the late-minus-early
    # in-context-learning score (Olsson et al.); see harness.quality.curves. One dict per window
    # length (the training length, then the longest the model takes); a single dict in records
    # written before 2026-12-05.
    position_loss: list[dict[str, Any]] | dict[str, Any] | None = None


KINDS: dict[str, type[Record]] = {"bench": BenchRecord, "quality": QualityRecord}
FIELDS = tuple(Record.model_fields)  # the standard names, in order

# What makes two records the same measurement: a rerun of a sweep skips a bench cell with
# this key, and a report keeps the latest record of each key.
BENCH_KEY = ("kind", "model", "variant", "impl", "mode", "seqlen", "batch", "dtype", "device",
             "threads", "cpu", "gpu", "routes")
QUALITY_KEY = ("kind", "model", "variant", "impl", "task", "metric", "budget", "seed", "seqlen",
               "batch", "corpus", "tokenizer", "checkpoint", "limit", "cpu", "gpu", "device",
               "dtype", "lr", "width", "kv_pairs")
KEYS = {"bench": BENCH_KEY, "quality": QUALITY_KEY}


def parse(data: dict[str, Any]) -> Record:
    """The typed record of a dict read from a store (pydantic's ValidationError when it does
    not match its kind's schema; ValueError for an unknown kind)."""
    kind = data.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected {' or '.join(KINDS)}")
    return KINDS[kind].model_validate(data)


def key(rec: Record, fields: Iterable[str] | None = None) -> tuple:
    """The fields that identify `rec`'s measurement (its kind's key by default); lists (the
    routes) as tuples, so that a key can be looked up."""
    return tuple(hashable(getattr(rec, name, None)) for name in fields or KEYS[rec.kind])


def hashable(value: Any) -> Any:
    """`value` with lists as tuples and mappings as sorted item tuples, so that pandas can
    group, count and compare a column that holds them (the routes, the scores)."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, hashable(v)) for k, v in value.items()))
    return value


def limit_raised(previous: Record, timeout: float | None,
                 max_memory: int | None) -> bool:
    """Whether a cell recorded as out of time or memory (under --max-memory) ran under a
    smaller limit than `timeout` / `max_memory` now give it: a rerun then tries it again."""
    if previous.status == "timeout":
        before = getattr(previous, "timeout_s", None) or previous.wall_s
        return before is not None and timeout is not None and timeout > before
    if previous.status in ("oom", "over_budget"):
        before = getattr(previous, "max_memory", None)  # None: the machine's own memory
        return before is not None and (max_memory is None or max_memory > before)
    return False


# --- the store ---------------------------------------------------------------------------------


def file_in_the_way(path: Path) -> Path | None:
    """The file (not a folder) at `path` or at one of its parents, which stops a folder being
    made there; None when there is none."""
    taken = next((p for p in (path, *path.parents) if p.exists()), None)
    return taken if taken is not None and not taken.is_dir() else None


def check_writable(path: Path | str) -> None:
    """Refuse a results path that cannot be appended to, before anything is measured: an
    OSError whose message names the path and why. Opens the file for appending (creating its
    folder) and removes it again if it did not exist."""
    path = Path(path)
    if path.is_dir():
        raise OSError(f"results file {path} is a folder; give a .jsonl file")
    existed = path.exists()
    if existed and not path.is_file():  # a device or pipe: reading it back may never end
        raise OSError(f"results file {path} is not a regular file; give a .jsonl file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise OSError(f"results file {path} cannot be written: {exc.strerror or exc}") from None
    if not existed:
        path.unlink(missing_ok=True)


def append(path: Path | str, rec: Record) -> None:
    """Append one record as one line, flushed and synced before returning. Several sweeps may
    append to one file at once: each holds an exclusive lock on the file (flock) while it
    writes its line, in one write, so that no line is lost, torn or interleaved."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(rec.to_dict(), sort_keys=False)
    with open(path, "ab") as out, _locked(out):
        # A run killed while writing can leave a last line without its newline: start a new
        # line so that only that damaged line is lost, not this record too.
        torn = out.seek(0, os.SEEK_END) > 0 and _last_byte(path) != b"\n"
        out.write((("\n" if torn else "") + line + "\n").encode("utf-8"))
        out.flush()
        os.fsync(out.fileno())


@contextmanager
def _locked(file) -> Iterator[None]:
    """An exclusive advisory lock on an open file, where the system has flock (not Windows:
    there one writer at a time is the user's care)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


@dataclass
class Loaded:
    records: list[Record] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # the file of each record
    warnings: list[str] = field(default_factory=list)


def load(paths: Iterable[Path | str]) -> Loaded:
    """Every record of the given files (missing files are skipped). A line that is not JSON,
    not a record of a known kind, or not valid for its kind's schema becomes a warning naming
    the file, the line and the field."""
    loaded = Loaded()
    for path in map(Path, paths):
        if not path.exists():
            continue
        with open(path, encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    loaded.warnings.append(f"{where}: skipped a damaged line ({exc.msg})")
                    continue
                if not isinstance(data, dict):
                    loaded.warnings.append(f"{where}: skipped a line that is not a record")
                    continue
                try:
                    rec = parse(data)
                except ValidationError as exc:
                    loaded.warnings.append(f"{where}: skipped a record that does not match the "
                                           f"{data['kind']} schema ({_first_error(exc)})")
                    continue
                except ValueError as exc:
                    loaded.warnings.append(f"{where}: skipped a record of {exc}")
                    continue
                loaded.records.append(rec)
                loaded.sources.append(str(path))
    return loaded


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    name = ".".join(str(p) for p in error["loc"])
    more = f"; {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
    if error["type"] == "extra_forbidden":
        return f"unknown field {name!r}{more}"
    return f"field {name!r}: {error['msg']}{more}"


# --- pandas ------------------------------------------------------------------------------------


def frame(records: Sequence[Record], sources: Sequence[str] | None = None) -> pd.DataFrame:
    """The records as a DataFrame: one row per record, one column per field (the standard names
    first, then each kind's own, then `source` when `sources` are given). Each column's dtype
    comes from the schema, as pandas' nullable dtypes: an integer field with gaps stays
    integer, a float field stays float even when its values happen to be whole."""
    import pandas as pd

    dtypes: dict[str, str] = {}
    for kind in (Record, *KINDS.values()):
        for name, info in kind.model_fields.items():
            if name not in dtypes and not info.exclude:
                dtypes[name] = _pandas_dtype(info.annotation)
    rows = [rec.model_dump() for rec in records]
    df = pd.DataFrame.from_records(rows, columns=list(dtypes)).astype(dtypes)
    if sources is not None:
        df["source"] = pd.array(list(sources), dtype="string")
    return df


def _pandas_dtype(annotation: Any) -> str:
    """The nullable pandas dtype of a schema field: Int64, Float64, string, or object (lists
    and dicts)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = [t for t in typing.get_args(annotation) if t is not type(None)] if union else [
        annotation]
    kinds = {str if typing.get_origin(t) is Literal else t for t in members}
    return {frozenset({str}): "string", frozenset({int}): "Int64",
            frozenset({float}): "Float64"}.get(frozenset(kinds), "object")


def latest(df: pd.DataFrame, also: Sequence[str] = ()) -> pd.DataFrame:
    """Each measurement's latest record (by `time`, then by order read): a cell measured again
    replaces its earlier records; `also` names columns that must match too. Rows keep their
    original order."""
    keep = []
    for kind, rows in df.groupby("kind", sort=False):
        fields = [*KEYS[str(kind)], *also]
        ordered = rows[fields].map(hashable).assign(
            _time=rows["time"].fillna("").astype(str)).sort_values("_time", kind="stable")
        unique = ordered.drop_duplicates(subset=fields, keep="last")
        keep += list(unique.index)
    return df.loc[sorted(keep)]


def load_frame(paths: Iterable[Path | str], *, all_runs: bool = False
               ) -> tuple[pd.DataFrame, list[str]]:
    """(DataFrame of every record in `paths`, with its `source` file; warnings). Unless
    `all_runs`, only each measurement's latest record is kept (see `latest`)."""
    loaded = load(paths)
    df = frame(loaded.records, loaded.sources)
    warnings = list(loaded.warnings)
    if not all_runs and len(df):
        kept = latest(df)
        if len(kept) < len(df):
            warnings.append(f"{len(df) - len(kept)} earlier measurement(s) of the same cell "
                            "were replaced by the latest one")
        df = kept
    return df, warnings


def matches(column: pd.Series, value: str) -> pd.Series:
    """A row mask: `column` equals `value` (a missing value is not equal)."""
    return column.eq(value).fillna(False).astype(bool)


def records_of(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of `df` as plain dicts, missing values as None (pandas' NA is not falsy-safe)."""
    import pandas as pd

    out = []
    for row in df.to_dict("records"):
        out.append({k: (None if not isinstance(v, (list, dict)) and pd.isna(v) else v)
                    for k, v in row.items()})
    return out


# Bench records of the same measurement in two implementations: compared in a ratio.
LIKE = ("model", "variant", "mode", "seqlen", "batch", "threads", "dtype", "device", "cpu",
        "gpu")


def ratios(df: pd.DataFrame) -> pd.DataFrame:
    """ours / peer for every bench cell measured ok both by the zoo (`impl` zoo) and by another
    implementation with everything else alike (LIKE): one row per such pair, with the
    implementation as `peer`, both throughputs, `tokens_per_s_ratio` (above 1: ours is faster)
    and `peak_mem_ratio` (below 1: ours needs less; missing where a side has no peak)."""
    import pandas as pd

    columns = [*LIKE, "peer", "ours_tokens_per_s", "peer_tokens_per_s", "tokens_per_s_ratio",
               "peak_mem_ratio"]
    if df.empty or "kind" not in df:
        return pd.DataFrame(columns=columns)
    ok = df[(df["kind"] == "bench") & (df["status"] == "ok") & df["tokens_per_s"].notna()]
    keep = [*LIKE, "impl", "tokens_per_s", "peak_mem_bytes"]
    ours = ok.loc[ok["impl"] == "zoo", keep]
    theirs = ok.loc[ok["impl"] != "zoo", keep]
    pairs = ours.merge(theirs, on=list(LIKE), suffixes=("_ours", "_peer"))
    pairs = pairs.assign(
        peer=pairs["impl_peer"], ours_tokens_per_s=pairs["tokens_per_s_ours"],
        peer_tokens_per_s=pairs["tokens_per_s_peer"],
        tokens_per_s_ratio=pairs["tokens_per_s_ours"] / pairs["tokens_per_s_peer"],
        peak_mem_ratio=(pairs["peak_mem_bytes_ours"].astype("Float64")
                        / pairs["peak_mem_bytes_peer"].astype("Float64")))
    return pairs[columns].reset_index(drop=True)


# Where the measured matmul peaks (MFU's denominators) are kept between runs, by default.
def default_peak_cache() -> Path:
    return Path.home() / ".cache" / "transformer-catalog" / "matmul_peaks.json"
