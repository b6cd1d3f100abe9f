"""The results store: one flat JSON record per line, appended and flushed record by record.

An interrupted run keeps every record it finished (each line is written whole, then flushed and
synced), and a reader skips a damaged line with a warning instead of failing. Benchmarks and
quality runs share the store; `kind` tells them apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("ok", "oom", "over_budget", "timeout", "error", "skipped")

# The names every record carries (DESIGN.md), so reports, scripts and pandas read every file alike.
FIELDS = (
    "kind", "model", "variant", "impl", "mode", "seqlen", "batch", "dtype", "device", "threads",
    "status", "tokens_per_s", "ms_median", "ms_iqr", "peak_mem_bytes", "act_mem_bytes",
    "flops_per_token", "mfu", "params", "task", "metric", "value", "torch", "version", "git",
    "cpu", "gpu", "time", "notes",
)
# What makes two benchmark records the same measurement (a rerun skips a cell with this key).
BENCH_KEY = ("kind", "model", "variant", "impl", "mode", "seqlen", "batch", "dtype", "device",
             "threads", "cpu", "gpu")

# Where the measured matmul peaks (MFU's denominators) are kept between runs: see
# harness.sweep.calibrate.
PEAK_CACHE = Path.home() / ".cache" / "transformer-catalog" / "matmul_peaks.json"


def record(**values: Any) -> dict[str, Any]:
    """A record with every standard field (None where not given), then any extra fields."""
    out = {name: values.pop(name, None) for name in FIELDS}
    if out["notes"] is None:
        out["notes"] = []
    out.update(values)
    return out


def key(rec: dict[str, Any], fields: Iterable[str] = BENCH_KEY) -> tuple:
    return tuple(rec.get(name) for name in fields)


def append(path: Path | str, rec: dict[str, Any]) -> None:
    """Append one record as one line, flushed and synced before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(rec, sort_keys=False, default=str)
    # A run killed while writing can leave a last line without its newline: start a new line
    # so that only that damaged line is lost, not this record too.
    torn = path.exists() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
    with open(path, "a", encoding="utf-8") as out:
        out.write(("\n" if torn else "") + line + "\n")
        out.flush()
        os.fsync(out.fileno())


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


@dataclass
class Loaded:
    records: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load(paths: Iterable[Path | str]) -> Loaded:
    """Every record of the given files (missing files are skipped); a line that is not a JSON
    object becomes a warning naming the file and line."""
    loaded = Loaded()
    for path in map(Path, paths):
        if not path.exists():
            continue
        with open(path, encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    loaded.warnings.append(f"{path}:{number}: skipped a damaged line ({exc.msg})")
                    continue
                if not isinstance(rec, dict):
                    loaded.warnings.append(f"{path}:{number}: skipped a line that is not a record")
                    continue
                loaded.records.append(rec)
    return loaded
