"""Reports generated from the results store (and the catalog's timeline figure).

`build_report` reads JSON Lines results (`harness.results`), groups them by machine, device and
dtype (only like is compared with like), and writes `index.md`, a self-contained `index.html`
(the PNG plots embedded as data URIs) and the PNG plots from `harness.plots`. The document is
built once as a list of blocks and rendered twice, to Markdown and to HTML.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from harness.catalog import Entry
from harness.document import Doc, slug
from harness.plots import COLOR_BY, save_figure, timeline_figure

__all__ = ["COLOR_BY", "Report", "ReportError", "build_report", "default_results", "save_figure",
           "timeline_figure"]

# ------------------------------------------------------------------ the comparison report

class ReportError(ValueError):
    """A report that cannot be made as asked (nothing to report, a missing results file)."""


DEFAULT_RESULTS = Path("reports/results")
COMPARABLE = ("cpu", "gpu", "device", "dtype")  # records differing in these are never compared
QUALITY_KEY = ("kind", "model", "variant", "impl", "task", "metric", "budget", "seed", "seqlen",
               "batch", "corpus", "tokenizer", "checkpoint", "limit", *COMPARABLE)
DPI = 110


def default_results(folder: Path | str = DEFAULT_RESULTS) -> list[Path]:
    """Every results file of the store: `reports/results/*.jsonl`."""
    return sorted(Path(folder).glob("*.jsonl"))


@dataclass
class Section:
    """The records of one machine, device and dtype: compared with each other only."""

    key: tuple
    bench: list[dict[str, Any]] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)

    @property
    def title(self) -> str:
        cpu, gpu, device, dtype = (v or "unknown" for v in self.key)
        machine = f"{gpu} (host CPU {cpu})" if self.key[1] else cpu
        return f"{machine} · {device} · {dtype}"

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.bench + self.quality


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
                 ) -> tuple[list[dict[str, Any]], list[str]]:
    """The report's records (the latest of repeated measurements of a cell) and warnings.
    Each record gets `_source`, the file it came from."""
    from harness.results import BENCH_KEY, load

    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise ReportError(f"no results file {', '.join(missing)}")
    records, warnings = [], []
    for path in paths:
        loaded = load([path])
        warnings += loaded.warnings
        for rec in (r.to_dict() for r in loaded.records):
            kind = rec.get("kind")
            if kind not in ("bench", "quality") or not rec.get("model"):
                warnings.append(f"{path}: skipped a record of kind {kind!r} (model "
                                f"{rec.get('model')!r}); expected bench or quality")
            elif kind == "quality" and not isinstance(rec.get("value"), (int, float)):
                warnings.append(f"{path}: skipped a quality record of {rec['model']} with no value")
            elif kind == "bench" and not (isinstance(rec.get("seqlen"), int) and rec.get("mode")):
                warnings.append(f"{path}: skipped a bench record of {rec['model']} with no mode "
                                "or sequence length")
            else:
                records.append({**rec, "_source": str(path)})
    if models:
        present = {r["model"] for r in records}
        warnings += [f"--models: no record of {m!r}" for m in models if m not in present]
        records = [r for r in records if r["model"] in models]
    latest: dict[tuple, dict[str, Any]] = {}
    for rec in records:  # later records (by time, then by order read) replace earlier ones
        k = tuple(rec.get(n) for n in (BENCH_KEY if rec["kind"] == "bench" else QUALITY_KEY))
        if k not in latest or str(rec.get("time") or "") >= str(latest[k].get("time") or ""):
            latest[k] = rec
    if len(latest) < len(records):
        warnings.append(f"{len(records) - len(latest)} earlier measurement(s) of the same cell "
                        "were replaced by the latest one")
    return list(latest.values()), warnings


def sections_of(records: Sequence[dict[str, Any]]) -> list[Section]:
    """Records grouped by machine (cpu, gpu), device and dtype, the largest group first."""
    groups: dict[tuple, Section] = {}
    for rec in records:
        k = tuple(rec.get(name) for name in COMPARABLE)
        section = groups.setdefault(k, Section(k))
        (section.bench if rec["kind"] == "bench" else section.quality).append(rec)
    return sorted(groups.values(), key=lambda s: (-len(s.records), tuple(map(str, s.key))))


def build_report(paths: Sequence[Path | str], out: Path | str, *,
                 models: Sequence[str] | None = None, entries: Sequence[Entry] | None = None,
                 commands: Sequence[str] = (), title: str | None = None,
                 now: datetime | None = None) -> Report:
    """Read the results files and write `out/index.md`, a self-contained `out/index.html` and
    the PNG plots next to them. Nothing is written when there is nothing to report (a
    ReportError says why); each file is replaced atomically and other files in `out` are kept.
    `entries` (the catalog) adds its timeline; `commands` are written verbatim as the commands
    that made the results."""
    if not paths:
        raise ReportError(f"no results to report: {DEFAULT_RESULTS} holds no .jsonl file; run "
                          "`catalog bench` or `catalog quality` first, or pass --results")
    records, warnings = load_results(paths, models)
    if not records:
        which = f" for {', '.join(models)}" if models else ""
        raise ReportError(f"no results to report{which} in {', '.join(map(str, paths))}; run "
                          "`catalog bench` or `catalog quality` first")
    now = now or datetime.now(timezone.utc)
    sections = sections_of(records)
    doc, figures = Doc(), {}
    doc.heading(1, title or "Transformer family: speed, memory and quality")
    bench = [r for r in records if r["kind"] == "bench"]
    quality = [r for r in records if r["kind"] == "quality"]
    failed = sum(r.get("status") != "ok" for r in bench)
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
        if section.bench:
            _bench(doc, figures, section, name)
        if section.quality:
            _quality(doc, figures, section, name)
        _flags(doc, section)
        _commands(doc, section, commands)
    if entries:
        try:
            figures["timeline.png"] = timeline_figure(entries)
        except ValueError as exc:
            warnings.append(f"timeline left out: {exc}")
        else:
            ours = sorted({r["model"] for r in records})
            doc.heading(2, "The family's timeline")
            doc.para("Date of first publication against the largest published size; the models "
                     f"the zoo runs are stars (this report measured: {', '.join(ours)}).")
            doc.image("timeline.png", "The Transformer family by date and size")
    _method(doc, warnings)
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
        stem = re.sub(r"[^a-z0-9]+", "-", f"{section.key[2]}-{section.key[3]}".lower()).strip("-")
        seen[stem] += 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def _values(records: Sequence[dict[str, Any]], name: str, fmt=str) -> str:
    values = sorted({fmt(r[name]) for r in records if r.get(name) is not None})
    return ", ".join(values) or "not recorded"


def _machine(doc: Doc, section: Section) -> None:
    records = section.records
    times = sorted(str(r["time"]) for r in records if r.get("time"))
    threads = [f"{_values(rs, 'threads')} ({what})" for what, rs in
               (("benchmarks", section.bench), ("quality runs", section.quality)) if rs]
    rows = [
        ("CPU", section.key[0] or "not recorded"), ("GPU", section.key[1] or "none"),
        ("device", section.key[2] or "not recorded"), ("dtype", section.key[3] or "not recorded"),
        ("threads", "; ".join(threads)), ("CPU cores", _values(records, "cores")),
        ("memory", _values(records, "ram_bytes", lambda b: f"{b / 2**30:.1f} GiB")),
        ("matrix-multiply peak (for MFU)",
         _values(section.bench, "peak_flops", lambda f: f"{f / 1e9:,.1f} GFLOP/s")),
        ("torch", _values(records, "torch")), ("transformer-catalog", _values(records, "version")),
        ("git revision", _values(records, "git")),
        ("measured", f"{times[0]} to {times[-1]}" if times else "not recorded"),
        ("results files", _values(records, "_source")),
    ]
    doc.heading(3, "Machine and provenance")
    doc.table(["", "value"], [list(r) for r in rows])


def _status(rec: dict[str, Any]) -> str:
    return rec.get("status") or "unknown"


def _mib(value: float | None) -> str:
    return f"{value / 2**20:,.1f}" if value is not None else ""


def _bench(doc: Doc, figures: dict[str, Figure], section: Section, stem: str) -> None:
    from harness import plots

    cells = sorted(section.bench, key=lambda r: (
        r["model"], str(r.get("variant")), r.get("impl") != "zoo", str(r.get("impl")),
        plots.MODES.index(r["mode"]) if r.get("mode") in plots.MODES else 9,
        r.get("batch") or 0, r.get("threads") or 0, r.get("seqlen") or 0))
    models = ", ".join(sorted({r["model"] for r in cells}))
    ok = [r for r in cells if _status(r) == "ok"]
    peak = max((r.get("peak_mem_bytes") or 0 for r in ok), default=0)
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
        if not any(r.get(row.field) is not None for r in ok for row in rows) and ok:
            continue
        file = f"{stem}-{name}.png"
        figures[file] = plots.curves_figure(cells, rows, fig_title)
        doc.heading(3, heading)
        doc.image(file, fig_title)
        doc.para(caption)
    ratios = _ratios(cells)
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
    for r in cells:
        good = _status(r) == "ok"
        notes = [*(r.get("notes") or []), *([r["error"]] if r.get("error") else [])]
        rows.append([r["model"], str(r.get("variant")), str(r.get("impl")), str(r.get("mode")),
                     str(r.get("seqlen")), str(r.get("batch")), str(r.get("threads")), _status(r),
                     f"{r['tokens_per_s']:,.0f}" if good and r.get("tokens_per_s") else "",
                     f"{r['ms_median']:,.2f} ± {r['ms_iqr']:,.2f}" if good and
                     r.get("ms_median") is not None and r.get("ms_iqr") is not None else "",
                     _mib(r.get("peak_mem_bytes")), _mib(r.get("act_mem_bytes")) if good else "",
                     f"{100 * r['mfu']:.1f}%" if good and r.get("mfu") is not None else "",
                     f"{r['params']:,}" if isinstance(r.get("params"), int) else "",
                     "; ".join(notes)])
    doc.table(["model", "variant", "impl", "mode", "seqlen", "batch", "threads", "status",
               "tokens/s", "ms (median ± IQR)", "peak MiB", "above weights MiB", "MFU",
               "params", "notes"], rows, right=[4, 5, 6, 8, 9, 10, 11, 12, 13])


def _ratios(cells: Sequence[dict[str, Any]]) -> list[list[str]]:
    """ours/peer per cell measured ok by both (same model, variant, mode, length, batch,
    threads)."""
    def like(r):
        return (r["model"], r.get("variant"), r.get("mode"), r.get("seqlen"), r.get("batch"),
                r.get("threads"))

    ok = [r for r in cells if _status(r) == "ok" and r.get("tokens_per_s")]
    ours = {like(r): r for r in ok if r.get("impl") == "zoo"}
    rows = []
    for r in ok:
        mine = ours.get(like(r))
        if r.get("impl") == "zoo" or mine is None:
            continue
        memory = (f"{mine['peak_mem_bytes'] / r['peak_mem_bytes']:.2f}"
                  if mine.get("peak_mem_bytes") and r.get("peak_mem_bytes") else "")
        rows.append([r["model"], str(r.get("variant")), str(r.get("mode")), str(r.get("seqlen")),
                     str(r.get("impl")), f"{mine['tokens_per_s']:,.0f}",
                     f"{r['tokens_per_s']:,.0f}",
                     f"{mine['tokens_per_s'] / r['tokens_per_s']:.2f}x", memory])
    return rows


QUALITY_GROUP = ("impl", "task", "metric", "budget", "corpus", "tokenizer", "seqlen", "batch")
METRIC_NAMES = {"bits_per_byte": "bits per byte", "mlm_accuracy": "masked-token accuracy",
                "accuracy": "accuracy"}


def _quality(doc: Doc, figures: dict[str, Figure], section: Section, stem: str) -> None:
    from harness import plots

    trained = [r for r in section.quality if r.get("impl") != "lm-eval"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in sorted(trained, key=lambda r: (str(r.get("task")), r["model"], str(r.get("seed")))):
        groups.setdefault(tuple(r.get(name) for name in QUALITY_GROUP), []).append(r)
    if trained:
        doc.heading(3, "Quality at an equal budget")
        doc.para("Each model trained from scratch with the same budget, tokenizer, seed, "
                 "examples and data order, then scored on the held-out test split.")
    per_task: Counter = Counter()
    for k, rs in groups.items():
        _, task, metric, budget, corpus, tokenizer, seqlen, batch = k
        baselines = {r.get("baseline") for r in rs} - {None}
        chances = {r.get("chance") for r in rs} - {None}
        baseline = baselines.pop() if len(baselines) == 1 else None
        chance = chances.pop() if len(chances) == 1 else None
        where = (f"corpus {Path(str(corpus)).name}, {tokenizer} tokenizer" if corpus
                 else "synthetic data")
        heading = (f"{task}: {METRIC_NAMES.get(metric, metric)}, budget {budget}, {where}, "
                   f"seqlen {seqlen}, batch {batch}")
        doc.heading(4, heading)
        rows = [[r["model"], str(r.get("variant")), f"{r['value']:.4f}",
                 f"{r['params']:,}" if isinstance(r.get("params"), int) else "",
                 str(r.get("budget")), f"{r['tokens']:,}" if isinstance(r.get("tokens"), int)
                 else "", str(r.get("steps", "")),
                 f"{r['train_seconds']:,.0f} s" if r.get("train_seconds") is not None else "",
                 str(r.get("seed")), str(r.get("lr")), "; ".join(r.get("notes") or [])]
                for r in rs]
        if baseline is not None:
            rows.append(["unigram byte baseline", "", f"{baseline:.4f}", "", "", "", "", "", "",
                         "", "byte frequencies of the training split: the bar to clear"])
        if chance is not None:
            rows.append(["chance", "", f"{chance:.4f}", "", "", "", "", "", "", "", ""])
        doc.table(["model", "variant", metric, "params", "budget", "tokens", "steps",
                   "train time", "seed", "lr", "notes"], rows, right=[2, 3, 5, 6, 7, 8, 9])
        file = f"{stem}-quality-{re.sub(r'[^a-z0-9]+', '-', str(task).lower())}"
        per_task[file] += 1
        file += f"-{per_task[file]}.png" if per_task[file] > 1 else ".png"
        fig_title = f"{task}: {METRIC_NAMES.get(metric, metric)} at a budget of {budget}"
        figures[file] = plots.quality_figure(rs, f"{fig_title}\n({where}, seqlen {seqlen})",
                                             baseline=baseline, chance=chance)
        doc.image(file, fig_title)
    evals = sorted((r for r in section.quality if r.get("impl") == "lm-eval"),
                   key=lambda r: (r["model"], str(r.get("checkpoint")), str(r.get("task")),
                                  str(r.get("metric"))))
    if evals:
        doc.heading(3, "lm-evaluation-harness")
        doc.para("Trained checkpoints scored by lm-evaluation-harness through this package's "
                 "`zoo` model adapter, on local tasks built from the checkpoint's held-out text.")
        doc.table(["model", "variant", "task", "metric", "value", "params", "max length",
                   "limit", "checkpoint"],
                  [[r["model"], str(r.get("variant")), str(r.get("task")), str(r.get("metric")),
                    f"{r['value']:.4f}" if abs(r["value"]) < 1e5 else f"{r['value']:.3e}",
                    f"{r['params']:,}" if isinstance(r.get("params"), int) else "",
                    str(r.get("seqlen") or ""), str(r.get("limit") or "all"),
                    str(r.get("checkpoint"))] for r in evals], right=[4, 5, 6])


def _cell(r: dict[str, Any]) -> str:
    if r["kind"] == "bench":
        return f"{r['model']} {r.get('impl')} {r.get('mode')} {r.get('seqlen')}"
    return f"{r['model']} {r.get('task')} {r.get('metric') if r.get('impl') == 'lm-eval' else ''}"


def _flags(doc: Doc, section: Section) -> None:
    notes: dict[str, list[str]] = {}
    for r in section.records:
        for note in r.get("notes") or []:
            notes.setdefault(note, []).append(_cell(r).strip())
    bad = [r for r in section.bench if _status(r) != "ok"]
    doc.heading(3, "Flags")
    if not notes and not bad:
        doc.para("No flags: every cell ran to completion and no number carries a note.")
        return
    doc.bullets([f"{note} (on {len(cells)} cell(s): {', '.join(cells)})"
                 for note, cells in notes.items()]
                + [f"{_cell(r)}: {_status(r)}" + (f" ({r['error']})" if r.get("error") else "")
                   for r in bad])


def _commands(doc: Doc, section: Section, commands: Sequence[str]) -> None:
    given = [*commands, *sorted({str(r["command"]) for r in section.records
                                 if r.get("command")})]
    doc.heading(3, "Commands")
    if given:
        doc.para("The commands that made these results:")
        doc.code(given)
    made = _bench_commands(section.bench) + _quality_commands(section.quality)
    if made:
        doc.para("Equivalent commands, reconstructed from the records (cells are appended to "
                 "the results file; a rerun measures only what is missing):")
        doc.code(made)


def _bench_commands(records: Sequence[dict[str, Any]]) -> list[str]:
    """One `catalog bench` per set of models run with the same options, lengths and modes."""
    runs: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        options = tuple(r.get(k) for k in ("variant", "batch", "device", "dtype", "threads",
                                           "warmup", "max_memory", "timeout_s", "_source"))
        runs.setdefault(options, {}).setdefault(r["model"], []).append(r)
    out = []
    for (variant, batch, device, dtype, threads, warmup, max_memory, timeout, source
         ), by_model in runs.items():
        alike: dict[tuple, list[str]] = {}  # (lengths, modes, peers) -> models
        for model, rs in sorted(by_model.items()):
            alike.setdefault((tuple(sorted({r["seqlen"] for r in rs})),
                              tuple(m for m in ("forward", "train", "generate")
                                    if any(r["mode"] == m for r in rs)),
                              tuple(sorted({str(r["impl"]) for r in rs} - {"zoo"}))),
                             []).append(model)
        rs = [r for rs in by_model.values() for r in rs]
        repeats = {r.get("repeat") for r in rs if r.get("mode") != "generate"} - {None}
        tokens = {r.get("repeat") for r in rs if r.get("mode") == "generate"} - {None}
        options = [f"--batch {batch}", f"--device {device}", f"--dtype {dtype}",
                   f"--threads {threads}",
                   *([f"--warmup {warmup}"] if warmup is not None else []),
                   *([f"--repeat {repeats.pop()}"] if len(repeats) == 1 else []),
                   *([f"--new-tokens {tokens.pop()}"] if len(tokens) == 1 else []),
                   *([f"--max-memory {max_memory / 2**30:g}G"] if max_memory else []),
                   *([f"--timeout {timeout:g}"] if timeout else []), f"--results {source}"]
        for (lengths, modes, peers), models in alike.items():
            out.append(" ".join(["catalog bench", *models, f"--variant {variant}",
                                 "--seqlen " + ",".join(map(str, lengths)),
                                 *(f"--mode {m}" for m in modes),
                                 *(f"--against {p}" for p in peers), *options]))
    return out


def _quality_commands(records: Sequence[dict[str, Any]]) -> list[str]:
    runs: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("impl") == "lm-eval":
            continue
        runs.setdefault(tuple(str(r.get(k)) for k in (
            "task", "variant", "budget_tokens", "budget_seconds", "seed", "seqlen", "batch", "lr",
            "tokenizer", "vocab_size", "corpus", "device", "mqar", "_source")), []).append(r)
    out = []
    for rs in runs.values():
        r = rs[0]
        task = "lm" if r.get("task") == "seq2seq" else r.get("task")
        budget = (f"{r['budget_tokens']}-tokens" if r.get("budget_tokens")
                  else f"{r['budget_seconds']:g}s" if r.get("budget_seconds") else r.get("budget"))
        mqar = r.get("mqar") or {}
        parts = ["catalog quality", *sorted({x["model"] for x in rs}), f"--task {task}",
                 f"--variant {r.get('variant')}", f"--budget {budget}", f"--seed {r.get('seed')}",
                 *([] if task == "mqar" else [f"--seqlen {r.get('seqlen')}"]),
                 f"--batch-size {r.get('batch')}",
                 f"--lr {r.get('lr')}", f"--device {r.get('device')}"]
        if task == "mqar":
            parts += [f"--mqar-seqlen {mqar.get('seqlen')}",
                      f"--mqar-kv-pairs {mqar.get('num_kv_pairs')}",
                      f"--mqar-vocab {mqar.get('vocab_size')}"]
        else:
            parts += [f"--tokenizer {r.get('tokenizer')}", f"--corpus {r.get('corpus')}"]
            if r.get("tokenizer") == "bpe":
                mask = r.get("task") == "mlm" and isinstance(r.get("vocab_size"), int)
                parts.append(f"--bpe-vocab {r.get('vocab_size') - mask}")
        out.append(" ".join(parts + [f"--results {r['_source']}"]))
    return out


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


def _method(doc: Doc, warnings: Sequence[str]) -> None:
    doc.heading(2, "Method")
    for paragraph in METHOD:
        doc.para(paragraph)
    if warnings:
        doc.heading(3, "Notes on the data")
        doc.bullets(list(warnings))


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    """Replace `path` with `data` atomically (a temporary file in the same folder, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
