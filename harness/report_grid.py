"""The report's sections for quality grids (cells with a validation score, see
`harness.quality.selection`): MQAR recall as in Zoology's Figure 2, learning-rate sensitivity,
language modelling against training length, length extrapolation (Press et al.) and loss by
token position, each at the learning rate chosen on validation. `harness.report` calls `grids`
for every section of its document."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from harness import plots_grid
from harness.document import Doc
from harness.plots_grid import width_title
from harness.quality import selection
from harness.quality.selection import METRIC_NAMES
from harness.results import matches, records_of

_lr = selection.format_lr


_lr = selection.format_lr


def _score(mean: Any, std: Any, n: Any = None, digits: int = 3) -> str:
    """mean ± std (n): the spread over seeds where there are several, "" where no score."""
    if mean is None or pd.isna(mean):
        return ""
    text = f"{mean:.{digits}f}"
    if std is not None and not pd.isna(std):
        text += f" ± {std:.{digits}f}"
    return text + (f" ({n})" if n is not None else "")


def _group_score(r: dict[str, Any]) -> str:
    """A selected group's test score, or why it has none."""
    return _score(r["test_mean"], r["test_std"], r["seeds"]) if r["status"] == "ok" else (
        f"failed: {r['status']}")


def _chosen_lr(r: dict[str, Any]) -> str:
    return f"{_lr(r['lr'])} (of {r['lrs']})" if r["status"] == "ok" else "none"


# What may tell two series of one model apart, and how a series' name shows it.
SERIES = {"variant": str, "width": lambda w: f"d={w}", "seqlen": lambda n: f"trained at {n}",
          "budget": str, "batch": lambda b: f"batch {b}", "corpus": lambda c: Path(str(c)).name,
          "tokenizer": lambda t: f"{t} tokenizer"}


def _series(rows: pd.DataFrame, axes: Sequence[str]) -> pd.Series:
    """Each row's series name: its model, with any field of SERIES (not among `axes`, which
    the table or figure shows) that takes several values among the model's rows at one point
    of `axes`: "rwkv", "rwkv (d=128)"."""
    keys = ["model", "task", *axes]
    named = [name for name in SERIES if name not in axes and name in rows and len(rows) and
             rows.groupby(keys, dropna=False)[name].nunique(dropna=False).max() > 1]
    if not named:
        return rows["model"].astype(str)

    def shown(r: dict[str, Any], name: str) -> str:
        return f"{name} not set" if r[name] is None else SERIES[name](r[name])

    return pd.Series([f"{r['model']} ({', '.join(shown(r, n) for n in named)})"
                      for r in records_of(rows)], index=rows.index, dtype=object)


def _cell_name(r: dict[str, Any]) -> str:
    """A grid point without its model: d=64, (256, 16); or d=64, seqlen 512."""
    parts = [f"d={r['width']}"] if r["width"] is not None else []
    parts.append(f"({r['seqlen']}, {r['kv_pairs']})" if r["kv_pairs"] is not None
                 else f"seqlen {r['seqlen']}")
    return ", ".join(parts)


def _ordered(values) -> list:
    """Distinct values, sorted, the missing one last."""
    present = sorted({v for v in values if v is not None and not pd.isna(v)})
    return present + ([None] if any(v is None or pd.isna(v) for v in values) else [])


def grids(doc: Doc, figures: dict[str, Figure], section: Any, stem: str,  # report.Section
           warnings: list[str]) -> None:
    """The quality grids: MQAR recall, learning-rate sensitivity, language modelling against
    training length, length extrapolation and loss by position, each where records have it."""
    grid = section.grid
    unknown = grid["metric"].notna() & ~grid["metric"].isin(list(selection.DIRECTIONS))
    for metric in sorted(grid.loc[unknown, "metric"].astype(str).unique()):
        warnings.append(f"grid cells scored on {metric!r} left out of the grid sections: which "
                        "way is better is not known (harness.quality.selection.DIRECTIONS)")
    grid = grid[~unknown]
    if grid.empty:
        return
    chosen = selection.select(grid)
    mqar = chosen[matches(chosen["task"], "mqar")]
    lm = chosen[matches(chosen["task"], "lm")]
    if len(mqar):
        _recall(doc, figures, mqar, stem)
    _lr_sensitivity(doc, figures, grid, chosen, stem)
    if len(lm):
        _lm_lengths(doc, figures, lm, stem)
    lm_cells = grid[matches(grid["task"], "lm") | matches(grid["task"], "seq2seq")]
    points = selection.extrapolation(lm_cells)
    if len(points):
        _extrapolation(doc, figures, points, stem)
    bins, scores = selection.position_loss(grid)
    if len(scores):
        _position(doc, figures, bins, scores, stem)


def _recall(doc: Doc, figures: dict[str, Figure], groups: pd.DataFrame, stem: str) -> None:
    groups = groups.assign(label=_series(groups, ("width", "seqlen", "kv_pairs")))
    doc.heading(3, "MQAR recall")
    doc.para("Multi-query associative recall as in Zoology's Figure 2 (Arora et al. 2023): test "
             "accuracy at the queries for each (sequence length, key-value pairs), one table per "
             "width. Each score is at the learning rate chosen on the VALIDATION split (best "
             "mean validation accuracy over seeds), written mean ± std (seeds) over the seeds "
             "at that rate (sample standard deviation). Zoology chose each point's learning "
             "rate on the TEST set, with one seed, which can only raise its numbers: read them "
             "as an upper bound on ours. A point whose every run failed shows why. Chance is "
             "a guess among the values the sequence holds, 1 / pairs; a model that has not "
             "learnt that the answer is one of them scores below it, near one over the number "
             "of possible values (half the vocabulary).")
    for width in _ordered(list(groups["width"])):
        rows = groups[groups["width"].isna()] if width is None else groups[
            groups["width"].eq(width).fillna(False).astype(bool)]
        cells = sorted({(int(r["seqlen"]), int(r["kv_pairs"])) for r in records_of(rows)
                        if r["seqlen"] is not None and r["kv_pairs"] is not None})
        by_point = {(r["label"], r["seqlen"], r["kv_pairs"]): r for r in records_of(rows)}
        labels = list(dict.fromkeys(sorted(rows["label"])))
        headers = ["model", *(f"({n}, {p})" for n, p in cells)]
        right = range(1, len(headers))

        def table(fmt, labels=labels, cells=cells, by_point=by_point):
            return [[label, *(fmt(by_point[(label, *c)]) if (label, *c) in by_point else ""
                              for c in cells)] for label in labels]

        doc.heading(4, f"Test accuracy, {width_title(width)}")
        accuracy = table(_group_score)
        chance = {(r["seqlen"], r["kv_pairs"]): r["chance"] for r in records_of(rows)
                  if r["chance"] is not None}
        if chance:
            accuracy.append(["chance (1 / pairs)", *(f"{chance[c]:.3f}" if c in chance else ""
                                         for c in cells)])
        doc.table(headers, accuracy, right=right)
        doc.para("The learning rate chosen on validation (of the rates tried):")
        doc.table(headers, table(_chosen_lr), right=right)

    file = f"{stem}-mqar-recall.png"
    figures[file] = plots_grid.recall_figure(groups, "MQAR: test accuracy against key-value pairs "
                                                "(learning rate chosen on validation)")
    doc.image(file, "MQAR test accuracy against key-value pairs, one panel per width")


TASK_ORDER = {"mqar": 0, "lm": 1}  # the order of the grid sections


def _lr_sensitivity(doc: Doc, figures: dict[str, Figure], grid: pd.DataFrame,
                    chosen: pd.DataFrame, stem: str) -> None:

    curve = selection.lr_curve(grid)
    if curve.empty:
        return
    axes = ("width", "seqlen", "kv_pairs", "lr")
    curve = curve.assign(label=_series(curve, axes),
                         cell=[_cell_name(r) for r in records_of(curve)])
    chosen = chosen.assign(label=_series(chosen, axes[:-1]),
                           cell=[_cell_name(r) for r in records_of(chosen)])
    doc.heading(3, "Learning-rate sensitivity")
    doc.para("Validation and test score at each learning rate tried, mean over the seeds that "
             "ran (the number in brackets), and the rate chosen on validation. A rate can win "
             "on test and lose on validation: the choice never looks at test. Failed cells are "
             "counted; a rate whose cells all failed cannot be chosen.")
    tasks = sorted(curve["task"].unique(), key=lambda t: (TASK_ORDER.get(t, len(TASK_ORDER)),
                                                          str(t)))
    for task in tasks:
        rows = curve[curve["task"].isna()] if pd.isna(task) else curve[matches(curve["task"], task)]
        metric = str(rows["metric"].dropna().iloc[0]) if rows["metric"].notna().any() else ""
        picked = chosen[chosen["task"].eq(task).fillna(False).astype(bool)]
        lrs = _ordered(list(rows["lr"]))
        by_lr = {(r["label"], r["cell"], r["lr"]): r for r in records_of(rows)}
        lines = list(dict.fromkeys((r["label"], r["cell"]) for r in records_of(
            rows.sort_values(["label", "width", "seqlen", "kv_pairs"], kind="stable"))))
        best = {(r["label"], r["cell"]): r for r in records_of(picked)}

        def text(r: dict[str, Any] | None) -> str:
            if r is None:
                return ""
            out = (f"{r['val_mean']:.3f} / {r['test_mean']:.3f} ({r['seeds']})"
                   if r["seeds"] and r["test_mean"] is not None else
                   f"{r['val_mean']:.3f} / n/a ({r['seeds']})" if r["seeds"] else "")
            failed = f"{r['failed']} failed" if r["failed"] else ""
            return ", ".join(t for t in (out, failed) if t)

        doc.heading(4, f"{task}: {METRIC_NAMES.get(metric, metric)}, validation / test")
        doc.table(["model", "cell", *map(_lr, lrs), "chosen lr"],
                  [[label, cell, *(text(by_lr.get((label, cell, lr))) for lr in lrs),
                    _chosen_lr(best[(label, cell)]) if (label, cell) in best else ""]
                   for label, cell in lines], right=range(2, len(lrs) + 3))
        file = f"{stem}-lr-{re.sub(r'[^a-z0-9]+', '-', str(task).lower())}.png"
        figures[file] = plots_grid.lr_figure(
            rows, picked, f"{task}: {METRIC_NAMES.get(metric, metric)} against the learning "
                          "rate (validation solid, test dashed)")
        doc.image(file, f"{task}: validation and test score against the learning rate")


def _lm_lengths(doc: Doc, figures: dict[str, Figure], groups: pd.DataFrame, stem: str) -> None:

    groups = groups.assign(label=_series(groups, ("seqlen",)))
    lengths = [int(n) for n in _ordered(list(groups["seqlen"])) if n is not None]
    by_point = {(r["label"], r["seqlen"]): r for r in records_of(groups)}
    labels = list(dict.fromkeys(sorted(groups["label"])))
    doc.heading(3, "Language modelling against training length")
    doc.para("Test bits per byte of models trained at each length, at the learning rate chosen "
             "on validation, mean ± std (seeds); lower is better. The unigram byte baseline is "
             "what a model that ignores context scores.")
    headers = ["model", *map(str, lengths)]

    def table(fmt):
        return [[label, *(fmt(by_point[(label, n)]) if (label, n) in by_point else ""
                          for n in lengths)] for label in labels]

    rows = table(_group_score)
    baseline = {r["seqlen"]: r["baseline"] for r in records_of(groups)
                if r["baseline"] is not None}
    if baseline:
        rows.append(["unigram byte baseline", *(f"{baseline[n]:.3f}" if n in baseline else ""
                                                for n in lengths)])
    doc.table(headers, rows, right=range(1, len(headers)))
    doc.para("The learning rate chosen on validation (of the rates tried):")
    doc.table(headers, table(_chosen_lr), right=range(1, len(headers)))
    file = f"{stem}-lm-length.png"
    figures[file] = plots_grid.length_figure(groups, "Test bits per byte against training length\n"
                                                "(learning rate chosen on validation)")
    doc.image(file, "Test bits per byte against training length")


EVAL_MODES = {"nonoverlapping": "Nonoverlapping windows", "sliding": "Sliding window"}


def _extrapolation(doc: Doc, figures: dict[str, Figure], points: pd.DataFrame,
                   stem: str) -> None:

    points = points.assign(label=_series(points, ("seqlen", "mode_eval", "stride",
                                                  "eval_seqlen")))
    doc.heading(3, "Length extrapolation")
    doc.para("Test bits per byte at evaluation lengths other than the training length (Press "
             "et al. 2021), at the learning rate chosen on validation, mean ± std over seeds. "
             "Nonoverlapping windows score every token once, each window starting without "
             "context; a sliding window scores only the last `stride` tokens of each window, "
             "every one with at least the window less the stride as context. An "
             "encoder-decoder (seq2seq) reads the first half of each window and writes the "
             "second: each of its targets has at least half the window as context. n/a: the "
             "model cannot take that length (no point is drawn).")
    modes = list(dict.fromkeys((r["mode_eval"], r["stride"]) for r in records_of(
        points.sort_values(["mode_eval", "stride"], kind="stable", na_position="first"))))
    for mode, stride in modes:
        rows = points[points["mode_eval"].eq(mode).fillna(False).astype(bool)
                      & (points["stride"].isna() if stride is None else
                         points["stride"].eq(stride).fillna(False).astype(bool))]
        lengths = [int(n) for n in _ordered(list(rows["eval_seqlen"])) if n is not None]
        by_point = {(r["label"], r["seqlen"], r["eval_seqlen"]): r for r in records_of(rows)}
        lines = list(dict.fromkeys((r["label"], r["seqlen"]) for r in records_of(
            rows.sort_values(["label", "seqlen"], kind="stable"))))

        def text(r: dict[str, Any] | None) -> str:
            if r is None:
                return ""
            return "n/a" if r["bits_per_byte"] is None else _score(r["bits_per_byte"],
                                                                   r["bits_per_byte_std"])

        seeds = {(r["label"], r["seqlen"]): r["seeds"] for r in records_of(rows)
                 if r["seeds"]}
        how = EVAL_MODES.get(str(mode), str(mode)) + (f", stride {stride}" if stride else "")
        doc.heading(4, how)
        doc.table(["model", "trained at", "seeds", *map(str, lengths)],
                  [[label, str(trained), str(seeds.get((label, trained), "")),
                    *(text(by_point.get((label, trained, n))) for n in lengths)]
                   for label, trained in lines], right=range(1, len(lengths) + 3))
    # Each note once, with the evaluation lengths it applies to (in any mode).
    noted: dict[tuple, list[int]] = {}
    for r in records_of(points.sort_values("eval_seqlen", kind="stable")):
        if r["notes"]:
            lengths = noted.setdefault((r["label"], r["seqlen"], r["notes"]), [])
            lengths += [] if r["eval_seqlen"] in lengths else [r["eval_seqlen"]]
    if noted:
        doc.bullets([f"{label} trained at {trained}, at {', '.join(map(str, lengths))}: {note}"
                     for (label, trained, note), lengths in noted.items()])
    file = f"{stem}-extrapolation.png"
    figures[file] = plots_grid.extrapolation_figure(
        points, "Test bits per byte against evaluation length (learning rate chosen on "
                "validation)")
    doc.image(file, "Test bits per byte against evaluation length")


def _position(doc: Doc, figures: dict[str, Figure], bins: pd.DataFrame, scores: pd.DataFrame,
              stem: str) -> None:

    axes = ("eval_seqlen",)
    scores = scores.assign(label=_series(scores, axes))
    bins = bins.assign(label=_series(bins, (*axes, "start", "end")))
    doc.heading(3, "Loss by token position")
    doc.para("Mean test loss (nats per token) of the tokens at each position of the evaluation "
             "windows, in log-spaced bins of positions, at the learning rate chosen on "
             "validation, mean over seeds (as RWKV's Figure 6 plots it). The in-context-learning "
             "score (Olsson et al. 2022) is the loss late in the window minus the loss early in "
             "it: the more negative, the more the model gains from context.")
    order = scores.sort_values(["label", "seqlen", "eval_seqlen"], kind="stable")
    doc.table(["model", "trained at", "window", "windows", "mean loss", "ICL score", "seeds"],
              [[r["label"], str(r["seqlen"]), str(r["eval_seqlen"]),
                str(r["windows"]) if r["windows"] is not None else "",
                _score(r["mean_loss"], r["mean_loss_std"]),
                "n/a" if r["icl_score"] is None else _score(r["icl_score"], r["icl_score_std"]),
                str(r["seeds"])] for r in records_of(order)], right=range(1, 7))
    if len(bins):
        file = f"{stem}-position-loss.png"
        figures[file] = plots_grid.position_figure(bins, "Mean loss by token position (learning "
                                                    "rate chosen on validation)")
        doc.image(file, "Mean loss against token position")
