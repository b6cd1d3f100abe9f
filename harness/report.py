"""Reports generated from the results store (and the catalog's timeline figure).

`build_report` reads JSON Lines results into a DataFrame (`harness.results.load_frame`), splits it
by machine, device and dtype (only like is compared with like), and writes `index.md`, a
self-contained `index.html` (the PNG plots embedded as data URIs) and the PNG plots from
`harness.plots`. Every section, table, ratio and plot is computed from that frame. The document
is built once as a list of blocks and rendered twice, to Markdown and to HTML.

Quality grids (cells with a validation score, see `harness.quality.selection`) get their own
sections: MQAR recall, learning-rate sensitivity, language modelling against training length,
length extrapolation and loss by token position, each at the learning rate chosen on
validation; the other quality scores keep the equal-budget tables.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from harness import results
from harness.catalog import Entry
from harness.document import Doc, slug
from harness.plots import COLOR_BY, save_figure, timeline_figure
from harness.quality import selection
from harness.quality.selection import METRIC_NAMES
from harness.report_grid import grids
from harness.results import file_in_the_way, matches, records_of
from harness.tables import DEFAULT_RESULTS, default_results

__all__ = ["COLOR_BY", "Report", "ReportError", "build_report", "default_results", "save_figure",
           "timeline_figure"]

# ------------------------------------------------------------------ the comparison report

class ReportError(ValueError):
    """A report that cannot be made as asked (nothing to report, a missing results file)."""


COMPARABLE = ("cpu", "gpu", "device", "dtype")  # records differing in these are never compared
ALONE = "alone"  # a record timed with the machine to itself (see `timing`)
DPI = 110


def _none(value: Any) -> Any:
    """A cell's value, with pandas' missing values as None."""
    return None if not isinstance(value, (list, dict)) and pd.isna(value) else value


@dataclass
class Section:
    """The records of one machine, device and dtype: compared with each other only."""

    key: tuple
    rows: pd.DataFrame

    @property
    def title(self) -> str:
        cpu, gpu, device, dtype, timing = (v or "unknown" for v in self.key)
        machine = f"{gpu} (host CPU {cpu})" if self.key[1] else cpu
        shared = "" if timing == ALONE else f" · timed with {timing}"
        return f"{machine} · {device} · {dtype}{shared}"

    @property
    def bench(self) -> pd.DataFrame:
        return self.rows[matches(self.rows["kind"], "bench")]

    @property
    def quality(self) -> pd.DataFrame:
        return self.rows[matches(self.rows["kind"], "quality")]

    @property
    def grid(self) -> pd.DataFrame:
        """The quality grids' cells (see harness.quality.selection.grid_rows)."""
        return selection.grid_rows(self.quality)

    @property
    def records(self) -> pd.DataFrame:
        """Benchmark cells first, then quality scores, each in the order read."""
        return pd.concat([self.bench, self.quality])


@dataclass
class Report:
    """What `build_report` wrote, and the figures it drew (by file name)."""

    out: Path
    files: list[Path]
    sections: list[str]
    warnings: list[str]
    bench_cells: int
    quality_scores: int
    figures: dict[str, Figure]


def load_results(paths: Sequence[Path | str], models: Sequence[str] | None = None
                 ) -> tuple[pd.DataFrame, list[str]]:
    """The report's records as a DataFrame (the latest of repeated measurements of a cell; a
    `source` column names each record's file) and warnings. Records a report cannot place (a
    benchmark cell with no mode or length, a quality record with no value) are left out with a
    warning."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise ReportError(f"no results file {', '.join(missing)}")
    df, warnings = results.load_frame(paths, all_runs=True)
    if df.empty:
        return df, warnings
    bench, quality = matches(df["kind"], "bench"), matches(df["kind"], "quality")
    no_model = df["model"].fillna("").eq("")
    # A failed grid cell has no score, and is kept: it counts in the learning-rate choice.
    failed_cell = df.index.isin(selection.grid_rows(df).index) & ~matches(df["status"], "ok")
    no_value = quality & df["value"].isna() & ~failed_cell
    no_cell = bench & (df["seqlen"].isna() | df["mode"].fillna("").eq(""))
    for r in records_of(df[no_model]):
        warnings.append(f"{r['source']}: skipped a {r['kind']} record with no model")
    for r in records_of(df[~no_model & no_value]):
        warnings.append(f"{r['source']}: skipped a quality record of {r['model']} with no value")
    for r in records_of(df[~no_model & no_cell]):
        warnings.append(f"{r['source']}: skipped a bench record of {r['model']} with no mode "
                        "or sequence length")
    df = df[~(no_model | no_value | no_cell)]
    if models:
        present = set(df["model"])
        warnings += [f"--models: no record of {m!r}" for m in models if m not in present]
        df = df[df["model"].isin(list(models))]
    df = df.assign(timing=timing(df))  # a timing taken beside other cells replaces no other
    kept = results.latest(df, also=("timing",)) if len(df) else df
    if len(kept) < len(df):
        warnings.append(f"{len(df) - len(kept)} earlier measurement(s) of the same cell "
                        "were replaced by the latest one")
    return kept, warnings


def timing(df: pd.DataFrame) -> pd.Series:
    """How each record's time was taken: ALONE, or "N cells at once (launcher)" for a
    benchmark cell (or a quality run on a wall-clock budget) that a launcher ran beside other
    cells (harness.launch). Such timings are never put on a plot or table with the others."""
    jobs = df["jobs"] if "jobs" in df else pd.Series(None, index=df.index, dtype=float)
    launcher = df["launcher"] if "launcher" in df else pd.Series(None, index=df.index)
    timed = matches(df["kind"], "bench") | df.get(
        "budget_seconds", pd.Series(None, index=df.index)).notna()
    shared = timed & jobs.fillna(1).gt(1)
    labels = [f"{int(j)} cells at once ({name})"
              for j, name in zip(jobs[shared], launcher[shared], strict=True)]
    out = pd.Series(ALONE, index=df.index, dtype=object)
    out[shared] = labels
    return out


def sections_of(df: pd.DataFrame) -> list[Section]:
    """Records grouped by machine (cpu, gpu), device, dtype and how they were timed, the
    largest group first."""
    if "timing" not in df:
        df = df.assign(timing=timing(df))
    sections = [Section(tuple(_none(v) for v in key), rows) for key, rows in
                df.groupby([*COMPARABLE, "timing"], dropna=False, sort=False)]
    return sorted(sections, key=lambda s: (-len(s.rows), tuple(map(str, s.key))))


def build_report(paths: Sequence[Path | str], out: Path | str, *,
                 models: Sequence[str] | None = None, entries: Sequence[Entry] | None = None,
                 commands: Sequence[str] = (), title: str | None = None,
                 now: datetime | None = None) -> Report:
    """Read the results files and write `out/index.md`, a self-contained `out/index.html` and
    the PNG plots next to them. Nothing is written when there is nothing to report (a
    ReportError says why); each file is replaced atomically and other files in `out` are kept.
    `entries` (the catalog) adds its timeline; `commands` are written verbatim, before the
    commands the records carry, as commands that made the results."""
    if not paths:
        raise ReportError(f"no results to report: {DEFAULT_RESULTS} holds no .jsonl file; run "
                          "`catalog bench` or `catalog quality` first, or pass --results")
    taken = file_in_the_way(Path(out))
    if taken is not None:  # before any plot is drawn
        raise ReportError(f"--out {out}: {taken} is a file; give a folder")
    df, warnings = load_results(paths, models)
    if df.empty:
        which = f" for {', '.join(models)}" if models else ""
        raise ReportError(f"no results to report{which} in {', '.join(map(str, paths))}; run "
                          "`catalog bench` or `catalog quality` first")
    now = now or datetime.now(timezone.utc)
    sections = sections_of(df)
    doc, figures = Doc(), {}
    doc.heading(1, title or "Transformer family: speed, memory and quality")
    bench = df[matches(df["kind"], "bench")]
    quality = df[matches(df["kind"], "quality")]
    failed = int((~matches(bench["status"], "ok")).sum())
    doc.para(f"Generated {now:%Y-%m-%d %H:%M} UTC from {len(bench)} benchmark cell(s)"
             f"{f' ({failed} failed or skipped)' if failed else ''} and {len(quality)} quality "
             f"score(s) in {', '.join(str(p) for p in paths)}. Results from different machines, "
             "devices or dtypes are in separate sections and never compared on one plot or line.")
    if len(sections) > 1 or entries:
        doc.bullets([(s.title, slug(f"{i}. {s.title}")) for i, s in enumerate(sections, 1)]
                    + ([("The family's timeline", "the-familys-timeline")] if entries else [])
                    + [("Method", "method")])
    names = _file_names(sections)
    for i, (section, name) in enumerate(zip(sections, names, strict=True), start=1):
        doc.heading(2, f"{i}. {section.title}")
        _machine(doc, section)
        if len(section.bench):
            _bench(doc, figures, section, name)
        if len(section.quality):
            _quality(doc, figures, section, name)
        if len(section.grid):
            grids(doc, figures, section, name, warnings)
        _flags(doc, section)
        _commands(doc, section, commands)
    if entries:
        try:
            figures["timeline.png"] = timeline_figure(entries)
        except ValueError as exc:
            warnings.append(f"timeline left out: {exc}")
        else:
            ours = sorted(df["model"].unique())
            doc.heading(2, "The family's timeline")
            doc.para("Date of first publication against the largest published size; the models "
                     f"the zoo runs are stars (this report measured: {', '.join(ours)}).")
            doc.image("timeline.png", "The Transformer family by date and size")
    _method(doc, warnings, grids=any(len(s.grid) for s in sections))
    images = {name: _png(fig) for name, fig in figures.items()}
    html = doc.html(images)
    markdown = doc.markdown()
    out = Path(out)
    written = [_write(out / name, data) for name, data in images.items()]
    written.append(_write(out / "index.md", markdown.encode()))
    written.append(_write(out / "index.html", html.encode()))
    return Report(out, written, [s.title for s in sections], warnings, len(bench), len(quality),
                  figures)


def _file_names(sections: Sequence[Section]) -> list[str]:
    """A file-name stem per section: cpu-float32, cuda-bfloat16, then -2, -3 for repeats."""
    stems, seen = [], Counter()
    for section in sections:
        shared = "" if section.key[4] == ALONE else "-shared"
        stem = re.sub(r"[^a-z0-9]+", "-", f"{section.key[2]}-{section.key[3]}{shared}".lower()
                      ).strip("-")
        seen[stem] += 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def _values(df: pd.DataFrame, name: str, fmt=str) -> str:
    """The distinct values of a column, formatted and sorted, as one line."""
    values = sorted(df[name].dropna().map(fmt).unique())
    return ", ".join(values) or "not recorded"


def _machine(doc: Doc, section: Section) -> None:
    records = section.records
    times = records["time"].dropna()
    threads = [f"{_values(rows, 'threads')} ({what})" for what, rows in
               (("benchmarks", section.bench), ("quality runs", section.quality)) if len(rows)]
    rows = [
        ("CPU", section.key[0] or "not recorded"), ("GPU", section.key[1] or "none"),
        ("device", section.key[2] or "not recorded"), ("dtype", section.key[3] or "not recorded"),
        ("threads", "; ".join(threads)), ("CPU cores", _values(records, "cores")),
        ("memory", _values(records, "ram_bytes", lambda b: f"{b / 2**30:.1f} GiB")),
        ("matrix-multiply peak (for MFU)",
         _values(section.bench, "peak_flops", lambda f: f"{f / 1e9:,.1f} GFLOP/s")),
        ("torch", _values(records, "torch")), ("transformer-catalog", _values(records, "version")),
        ("git revision", _values(records, "git")),
        ("measured", f"{times.min()} to {times.max()}" if len(times) else "not recorded"),
        ("results files", _values(records, "source")),
    ]
    doc.heading(3, "Machine and provenance")
    doc.table(["", "value"], [list(r) for r in rows])


def _mib(value: float | None) -> str:
    return f"{value / 2**20:,.1f}" if value is not None else ""


def _in_mode_order(mode: pd.Series) -> pd.Series:
    """A sort key: forward, train, generate, then any other mode."""
    from harness.plots import MODES

    return mode.map({m: i for i, m in enumerate(MODES)}).fillna(len(MODES))


def _bench_order(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells by model and variant, ours before the peers, then mode, batch, threads, length."""
    keys = cells.assign(_peer=~matches(cells["impl"], "zoo"), _mode=_in_mode_order(cells["mode"]))
    order = keys.sort_values(["model", "variant", "_peer", "impl", "_mode", "batch", "threads",
                              "seqlen"], kind="stable", na_position="first").index
    return cells.loc[order]


def _bench(doc: Doc, figures: dict[str, Figure], section: Section, stem: str) -> None:
    from harness import plots

    cells = _bench_order(section.bench)
    models = ", ".join(sorted(cells["model"].unique()))
    ok = cells[matches(cells["status"], "ok")]
    peak = ok["peak_mem_bytes"].max() if ok["peak_mem_bytes"].notna().any() else 0
    unit, scale = ("GiB", 2**-30) if peak >= 4 * 2**30 else ("MiB", 2**-20)
    where = f"{models} on {section.title}"
    plots_to_draw = [
        ("throughput", "Throughput", [plots.Curve("tokens_per_s", "tokens/s")],
         f"Throughput against sequence length: {where}",
         "Tokens processed per second (median of the timed runs); higher is better. "
         "Our implementations are solid lines, peers dashed."),
        ("memory", "Memory", [
            plots.Curve("peak_mem_bytes", f"peak memory ({unit})", scale),
            plots.Curve("act_mem_bytes", f"memory above the weights ({unit})", scale)],
         f"Peak memory against sequence length: {where}",
         "Top: the cell's peak memory (peak RSS of its process on CPU, max_memory_allocated on "
         "CUDA). Bottom: the part above the loaded weights: activations, the KV cache or the "
         "recurrent state. In generate mode an attention model's KV cache grows with the prompt; "
         "a recurrent model's state does not."),
        ("mfu", "Model FLOPs utilisation", [plots.Curve("mfu", "MFU (%)", 100.0)],
         f"MFU against sequence length: {where}",
         "Analytic model FLOPs per second over this machine's measured matrix-multiply peak "
         "for the dtype."),
    ]
    for name, heading, rows, fig_title, caption in plots_to_draw:
        # A quantity no successful cell measured gets no figure (all failed: draw the failures).
        if len(ok) and not ok[[row.field for row in rows]].notna().any(axis=None):
            continue
        file = f"{stem}-{name}.png"
        figures[file] = plots.curves_figure(cells, rows, fig_title)
        doc.heading(3, heading)
        doc.image(file, fig_title)
        doc.para(caption)
    ratios = _ratio_rows(cells)
    if ratios:
        doc.heading(3, "Ours against peer implementations")
        doc.para("The same weights measured in our implementation and a peer's, cell by cell; "
                 "a tokens/s ratio above 1 means ours is faster, a memory ratio below 1 that ours "
                 "needs less.")
        doc.table(["model", "variant", "mode", "seqlen", "peer", "ours tokens/s",
                   "peer tokens/s", "ours/peer tokens/s", "ours/peer peak memory"],
                  ratios, right=range(3, 9))
    doc.heading(3, "Benchmark cells")
    rows = []
    for r in records_of(cells):
        good = r["status"] == "ok"
        notes = [*(r["notes"] or []), *([r["error"]] if r["error"] else [])]
        rows.append([r["model"], str(r["variant"]), str(r["impl"]), str(r["mode"]),
                     str(r["seqlen"]), str(r["batch"]), str(r["threads"]), r["status"],
                     f"{r['tokens_per_s']:,.0f}" if good and r["tokens_per_s"] else "",
                     f"{r['ms_median']:,.2f} ± {r['ms_iqr']:,.2f}" if good and
                     r["ms_median"] is not None and r["ms_iqr"] is not None else "",
                     _mib(r["peak_mem_bytes"]), _mib(r["act_mem_bytes"]) if good else "",
                     f"{100 * r['mfu']:.1f}%" if good and r["mfu"] is not None else "",
                     f"{r['params']:,}" if isinstance(r["params"], int) else "",
                     "; ".join(map(str, notes))])
    doc.table(["model", "variant", "impl", "mode", "seqlen", "batch", "threads", "status",
               "tokens/s", "ms (median ± IQR)", "peak MiB", "above weights MiB", "MFU",
               "params", "notes"], rows, right=[4, 5, 6, 8, 9, 10, 11, 12, 13])


def _ratio_rows(cells: pd.DataFrame) -> list[list[str]]:
    """ours/peer for each cell measured ok by both (`results.ratios`), in the order of the
    peers' cells in the benchmark table."""
    pairs = results.ratios(cells)
    pairs = pairs[pairs["peer_tokens_per_s"].gt(0).fillna(False).astype(bool)]
    pairs = pairs.assign(_mode=_in_mode_order(pairs["mode"])).sort_values(
        ["model", "variant", "peer", "_mode", "batch", "threads", "seqlen"], kind="stable",
        na_position="first")
    return [[p["model"], str(p["variant"]), str(p["mode"]), str(p["seqlen"]), str(p["peer"]),
             f"{p['ours_tokens_per_s']:,.0f}", f"{p['peer_tokens_per_s']:,.0f}",
             f"{p['tokens_per_s_ratio']:.2f}x",
             # No ratio where a side has no peak (or a zero one).
             f"{p['peak_mem_ratio']:.2f}" if p["peak_mem_ratio"] not in (None, 0.0, float("inf"))
             else ""]
            for p in records_of(pairs)]


QUALITY_GROUP = ("impl", "task", "metric", "budget", "corpus", "tokenizer", "seqlen", "batch")


def _only_value(column: pd.Series) -> float | None:
    """The one value a column holds (None when it holds none, or several)."""
    values = column.dropna().unique()
    return float(values[0]) if len(values) == 1 else None


def _quality(doc: Doc, figures: dict[str, Figure], section: Section, stem: str) -> None:
    from harness import plots

    scores = section.quality
    is_eval = matches(scores["impl"], "lm-eval")
    is_grid = scores.index.isin(section.grid.index)
    trained = scores[~is_eval & ~is_grid].sort_values(["task", "model", "seed"], kind="stable",
                                                      na_position="first")
    if len(trained):
        doc.heading(3, "Quality at an equal budget")
        doc.para("Each model trained from scratch with the same budget, tokenizer, seed, "
                 "examples and data order, then scored on the held-out test split.")
    per_task: Counter = Counter()
    # One table and chart per comparison: the runs that share a task, metric, budget and data.
    for _, rows in trained.groupby(list(QUALITY_GROUP), dropna=False, sort=False):
        first = records_of(rows.head(1))[0]
        task, metric, budget, corpus = (first[k] for k in ("task", "metric", "budget", "corpus"))
        baseline, chance = _only_value(rows["baseline"]), _only_value(rows["chance"])
        where = (f"corpus {Path(str(corpus)).name}, {first['tokenizer']} tokenizer" if corpus
                 else "synthetic data")
        doc.heading(4, f"{task}: {METRIC_NAMES.get(metric, metric)}, budget {budget}, {where}, "
                       f"seqlen {first['seqlen']}, batch {first['batch']}")
        table = [[r["model"], str(r["variant"]), f"{r['value']:.4f}",
                  f"{r['params']:,}" if isinstance(r["params"], int) else "",
                  str(r["budget"]), f"{r['tokens']:,}" if isinstance(r["tokens"], int) else "",
                  str(r["steps"]),
                  f"{r['train_seconds']:,.0f} s" if r["train_seconds"] is not None else "",
                  f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "",
                  " ".join(str(r[k]) for k in ("device", "dtype") if r[k]), str(r["seed"]),
                  str(r["lr"]),
                  "; ".join(r["notes"] or [])]
                 for r in records_of(rows)]
        blank = [""] * 9  # the columns from params to lr
        if baseline is not None:
            table.append(["unigram byte baseline", "", f"{baseline:.4f}", *blank,
                          "byte frequencies of the training split: the bar to clear"])
        if chance is not None:
            table.append(["chance", "", f"{chance:.4f}", *blank,
                          "1 / pairs: a guess among the values the sequence holds"])
        # tokens/s and the precision: what a time budget bought each model, and on what
        doc.table(["model", "variant", metric, "params", "budget", "tokens", "steps",
                   "train time", "tokens/s", "device, dtype", "seed", "lr", "notes"], table,
                  right=[2, 3, 5, 6, 7, 8, 10, 11])
        file = f"{stem}-quality-{re.sub(r'[^a-z0-9]+', '-', str(task).lower())}"
        per_task[file] += 1
        file += f"-{per_task[file]}.png" if per_task[file] > 1 else ".png"
        fig_title = f"{task}: {METRIC_NAMES.get(metric, metric)} at a budget of {budget}"
        figures[file] = plots.quality_figure(
            rows, f"{fig_title}\n({where}, seqlen {first['seqlen']})", baseline=baseline,
            chance=chance)
        doc.image(file, fig_title)
    evals = scores[is_eval].sort_values(["model", "checkpoint", "task", "metric"],
                                        kind="stable", na_position="first")
    if len(evals):
        doc.heading(3, "lm-evaluation-harness")
        doc.para("Trained checkpoints scored by lm-evaluation-harness through this package's "
                 "`zoo` model adapter, on local tasks built from the checkpoint's held-out text.")
        doc.table(["model", "variant", "task", "metric", "value", "params", "max length",
                   "limit", "checkpoint"],
                  [[r["model"], str(r["variant"]), str(r["task"]), str(r["metric"]),
                    f"{r['value']:.4f}" if abs(r["value"]) < 1e5 else f"{r['value']:.3e}",
                    f"{r['params']:,}" if isinstance(r["params"], int) else "",
                    str(r["seqlen"] or ""), str(r["limit"] or "all"), str(r["checkpoint"])]
                   for r in records_of(evals)], right=[4, 5, 6])


def _cell(r: dict[str, Any]) -> str:
    """A record named in a line of text: gpt zoo forward 1024, rwkv lm, and a grid cell with
    what its grid varied: rwkv mqar d=64 seqlen 256 16 pairs lr 1e-3 seed 0."""
    if r["kind"] == "bench":
        return f"{r['model']} {r['impl']} {r['mode']} {r['seqlen']}"
    if r["val_value"] is not None or r["status"] != "ok":
        return " ".join([str(r["model"]), str(r["task"]),
                         *([f"d={r['width']}"] if r["width"] is not None else []),
                         f"seqlen {r['seqlen']}",
                         *([f"{r['kv_pairs']} pairs"] if r["kv_pairs"] is not None else []),
                         f"lr {selection.format_lr(r['lr'])}", f"seed {r['seed']}"])
    return f"{r['model']} {r['task']} {r['metric'] if r['impl'] == 'lm-eval' else ''}".strip()


FLAGGED_CELLS = 12  # cells named after a note; the rest are counted


def _some(cells: Sequence[str]) -> str:
    shown = ", ".join(cells[:FLAGGED_CELLS])
    return shown + (f" and {len(cells) - FLAGGED_CELLS} more" if len(cells) > FLAGGED_CELLS
                    else "")


def _flags(doc: Doc, section: Section) -> None:
    records = section.records
    named = records.assign(cell=[_cell(r) for r in records_of(records)])
    # Each note with the cells that carry it, notes in the order first met.
    by_note = (named[["notes", "cell"]].explode("notes").dropna(subset=["notes"])
               .groupby("notes", sort=False)["cell"].agg(list))
    bad = named[~matches(named["status"], "ok")]  # failed bench cells and failed grid cells
    doc.heading(3, "Flags")
    if by_note.empty and bad.empty:
        doc.para("No flags: every cell ran to completion and no number carries a note.")
        return
    doc.bullets([f"{note} (on {len(cells)} cell(s): {_some(cells)})"
                 for note, cells in by_note.items()]
                + [f"{r['cell']}: {r['status']}" + (f" ({r['error']})" if r["error"] else "")
                   for r in records_of(bad)])


def _commands(doc: Doc, section: Section, commands: Sequence[str]) -> None:
    """The commands given with the report, then those the records carry (in the order they
    were first run); records made before records carried their command are counted."""
    records = section.records
    carried = records[records["command"].notna()].sort_values("time", kind="stable",
                                                               na_position="last")
    lines = list(dict.fromkeys([*commands, *carried["command"].astype(str)]))
    doc.heading(3, "Commands")
    if lines:
        doc.para("The commands that made these results:")
        doc.code(lines)
    unrecorded = records[records["command"].isna()]
    if len(unrecorded):
        counts = unrecorded["kind"].value_counts()
        what = " and ".join(f"{counts[kind]} {name}" for kind, name in
                            (("bench", "benchmark cell(s)"), ("quality", "quality score(s)"))
                            if kind in counts)
        files = ", ".join(sorted(unrecorded["source"].unique()))
        doc.para(f"The command was not recorded for {what} in {files}: they were written "
                 "before records carried the command that made them"
                 + ("." if commands else "; `catalog report --command` can list it here."))


METHOD = (
    "Speed and memory: every cell (model, variant, implementation, mode, sequence length, "
    "batch, dtype, device) runs in a fresh process, so its peak memory is its own. After the "
    "warm-up runs the timed runs give the median time (and its interquartile range) and the "
    "tokens per second; generate mode times one decoded token per run after a prompt of the "
    "cell's length. Memory is the process's peak RSS on CPU and `max_memory_allocated` on CUDA; "
    "the part above the loaded weights is that peak less the memory held once the model was "
    "built. MFU divides the analytic model FLOPs per second (training counts 3x the forward) by "
    "the machine's matrix-multiply peak, measured once for the device, dtype and threads.",
    "Quality: the models of a comparison train from scratch at the same budget with the same "
    "tokenizer, seed, examples and data order (AdamW, warm-up, cosine decay), the `small` "
    "variants being parameter-matched; bits per byte are measured on the test split (the "
    "unigram byte baseline is what a model that ignores context would score), MQAR accuracy at "
    "the queries, MLM accuracy at the tokens of one common 15% masking.",
    "Flags: a number is flagged with its record's notes (a lengthened position table, a "
    "decoding workload, an MFU above 100%); a cell that ran out of memory, passed the memory "
    "budget or the time limit is listed with its status, and the longer lengths of that line "
    "were skipped.",
)


GRID_METHOD = (
    "Quality grids: every cell (model, width, sequence length, key-value pairs, learning rate, "
    "seed) trains from scratch and is scored on a validation and a test split. "
    "For each comparison point (every field but the learning rate and the seed) the learning "
    "rate with the best mean validation score over seeds is chosen, and the test score at that "
    "rate is reported as mean ± sample standard deviation (seeds); the test split takes no part "
    "in the choice. A failed cell (out of memory, over time, an error) is counted and never "
    "chosen. Extrapolation and loss-by-position curves are those of the chosen rate, averaged "
    "over its seeds."
)


def _method(doc: Doc, warnings: Sequence[str], grids: bool = False) -> None:
    doc.heading(2, "Method")
    for paragraph in METHOD:
        doc.para(paragraph)
    if grids:
        doc.para(GRID_METHOD)
    if warnings:
        doc.heading(3, "Notes on the data")
        doc.bullets(list(warnings))


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    """Replace `path` with `data` atomically (a temporary file in the same folder, renamed)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as error:  # named by the file asked for, not the temporary one
        raise OSError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
