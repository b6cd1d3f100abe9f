"""Figures: benchmark curves against sequence length, quality bar charts, the catalog's timeline.

The benchmark and quality figures take a DataFrame of records (`harness.results.frame`) of one
comparable group (one machine, device and dtype: see `harness.report`) and return a
`matplotlib.figure.Figure` (Agg, no pyplot state). A line is one series of like cells: the same
model, variant, implementation, batch and threads. Our implementation is drawn solid and a
peer's (Hugging Face, the rwkv package) dashed in the same colour; a cell that failed or was
skipped is an `x` on the bottom edge of its panel.
"""

from __future__ import annotations

import math
import os
import tempfile
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from harness.catalog import Entry, format_count
from harness.quality.selection import format_lr
from harness.results import hashable, records_of

if TYPE_CHECKING:
    import pandas as pd

MODES = ("forward", "train", "generate")
MODE_TITLES = {
    "forward": "forward (prefill / encode)",
    "train": "train (forward, backward, AdamW step)",
    "generate": "generate (one token per step after a SEQLEN prompt)",
}
PEER_STYLES = {"zoo": "-", "hf": "--", "rwkv-pip": (0, (5, 2, 1, 2))}
SERIES_FIELDS = ("model", "variant", "impl", "batch", "threads")
SERIES_MARKERS = ("o", "s", "^", "D", "v", "P")
# Data spanning at least this ratio (max / min) gets a log axis.
DECADE = 10.0


@dataclass(frozen=True)
class Curve:
    """One y quantity of the curve figures: the record field, its axis label and a scale."""

    field: str
    label: str
    scale: float = 1.0  # value shown = record value * scale


def series_labels(cells: pd.DataFrame) -> pd.Series:
    """Each row's series name: "gpt", "gpt (hf)", plus the variant, batch or threads where
    they differ between the series of `cells`, and the zoo's speed routes where its cells were
    measured with different ones (`--routes`): the routes a series ran without, "gpt (no ffn,
    loss)", or "gpt (no routes)"."""
    import pandas as pd

    varying = [name for name in ("variant", "batch", "threads")
               if cells[name].nunique(dropna=False) > 1]
    prefixes = {"variant": "", "batch": "batch ", "threads": "threads "}
    fields = [*SERIES_FIELDS, *(["routes"] if "routes" in cells else [])]
    ours = cells["impl"].isna() | (cells["impl"] == "zoo")
    # Per model (each takes its own routes): those its zoo cells took, where they differ.
    every_route: dict[str, list[str]] = {}
    if "routes" in cells:
        for model, taken in cells.loc[ours, "routes"].groupby(cells.loc[ours, "model"]):
            if taken.map(hashable).nunique(dropna=False) > 1:
                every_route[str(model)] = list(dict.fromkeys(
                    r for routes in taken if isinstance(routes, list) for r in routes))

    def label(row: dict) -> str:
        extras = [prefixes[name] + str(row[name]) for name in varying]
        if row["impl"] not in (None, "zoo"):
            extras.insert(0, row["impl"])
        elif str(row["model"]) in every_route:
            routes = row["routes"] if isinstance(row["routes"], list) else []
            without = [r for r in every_route[str(row["model"])] if r not in routes]
            if without:
                extras.append("no " + (", ".join(without) if routes else "routes"))
        return str(row["model"]) + (f" ({', '.join(extras)})" if extras else "")

    labels = [label(row) for row in records_of(cells[fields])]
    return pd.Series(labels, index=cells.index, dtype=object)


def series_markers(cells: pd.DataFrame) -> dict[str, str]:
    """A marker per series: the color is the model's, so a model's series (its variants, its
    routes, its peers) differ by marker too, in the order of their names."""
    markers, seen = {}, {}
    for series, model in sorted(set(zip(cells["series"], cells["model"].astype(str),
                                        strict=True))):
        markers[series] = SERIES_MARKERS[seen.get(model, 0) % len(SERIES_MARKERS)]
        seen[model] = seen.get(model, 0) + 1
    return markers


def model_colors(cells: pd.DataFrame) -> dict[str, str]:
    """A color per model: matplotlib's ten default colors, or for more models the twenty of
    its tab20 map, so that no two of up to twenty models share one."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    models = sorted(cells["model"].astype(str).unique())
    if len(models) <= 10:
        return {m: f"C{i}" for i, m in enumerate(models)}
    tab20 = colormaps["tab20"]
    return {m: to_hex(tab20(i % 20)) for i, m in enumerate(models)}


def _spans_decades(values: Sequence[float]) -> bool:
    positive = [v for v in values if v and v > 0]
    return bool(positive) and max(positive) / min(positive) >= DECADE


def _number(value: float, _pos=None) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def curves_figure(cells: pd.DataFrame, rows: Sequence[Curve], title: str) -> Figure:
    """One panel per mode present (columns) and per quantity in `rows`: the quantity against
    sequence length, one line per series. The x axis is logarithmic (base 2); a y axis is
    logarithmic where its values span a decade or more."""
    present = set(cells["mode"].dropna().astype(str))
    modes = [m for m in MODES if m in present] + sorted(present - set(MODES))
    if not modes:
        raise ValueError("no benchmark records to plot")
    colors = model_colors(cells)
    # Only cells with a length can sit on a length axis.
    cells = cells[cells["seqlen"].notna()].assign(series=series_labels(cells))
    markers = series_markers(cells)
    ok = (cells["status"] == "ok").fillna(False).astype(bool)
    fig = Figure(figsize=(5.2 * len(modes) + 1.5, 3.9 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(modes), squeeze=False)
    failed_seen = False
    for row, curve in enumerate(rows):
        for col, mode in enumerate(modes):
            ax = axes[row][col]
            in_mode = (cells["mode"] == mode).fillna(False).astype(bool)
            plotted: list[float] = []
            seqlens = sorted(cells.loc[in_mode, "seqlen"].unique())
            for label, line in cells[in_mode].sort_values("seqlen").groupby("series"):
                model = str(line["model"].iloc[0])
                style = PEER_STYLES.get(line["impl"].iloc[0], ":")
                marker = markers[label]
                good = line[ok[line.index] & line[curve.field].notna()]
                if len(good):
                    ys = [float(v) * curve.scale for v in good[curve.field]]
                    plotted += ys
                    ax.plot(list(good["seqlen"]), ys, linestyle=style, marker=marker,
                            markersize=4, color=colors[model], label=label)
                bad = list(line.loc[~ok[line.index], "seqlen"])
                if bad:
                    failed_seen = True
                    ax.plot(bad, [0.0] * len(bad), linestyle="", marker="x", markersize=9,
                            markeredgewidth=2, color=colors[model],
                            transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)
            ax.set_xscale("log", base=2)
            if seqlens:
                ax.set_xticks(seqlens)
                ax.xaxis.set_major_formatter(FuncFormatter(_number))
                ax.xaxis.set_minor_formatter(NullFormatter())
                if len(seqlens) == 1:
                    ax.set_xlim(seqlens[0] / 1.5, seqlens[0] * 1.5)
            log_y = _spans_decades(plotted)
            if log_y:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(_number_or_small))
                ax.yaxis.set_minor_formatter(FuncFormatter(
                    _minor_labels(max(plotted) / min(v for v in plotted if v > 0))))
            else:
                ax.set_ylim(bottom=0, top=max(plotted, default=1) * 1.15 or 1)
                ax.yaxis.set_major_formatter(FuncFormatter(_number_or_small))
            ax.set_xlabel("sequence length (tokens, log scale)")
            ax.set_ylabel(curve.label.removesuffix(")") + ", log scale)" if log_y and
                          curve.label.endswith(")") else curve.label + (" (log scale)" * log_y))
            ax.set_title(MODE_TITLES.get(mode, mode), fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            if not plotted:
                ax.text(0.5, 0.5, "no successful cell", ha="center", va="center",
                        transform=ax.transAxes, color="#777777")
    handles, names = [], []
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            if name not in names:
                handles.append(handle)
                names.append(name)
    if failed_seen:
        handles.append(Line2D([], [], linestyle="", marker="x", color="black"))
        names.append("failed or skipped cell (see the table)")
    fig.legend(handles, names, loc="outside right upper", fontsize=8, title="series",
               ncols=_legend_columns(fig, len(names)))
    _title(fig, title)
    return fig


def _number_or_small(value: float, _pos=None) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _minor_labels(span: float):
    """Label the 2s and 5s between the powers of ten when the axis spans less than two
    decades (otherwise the powers of ten alone)."""
    def label(value: float, _pos=None) -> str:
        lead = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
        return _number_or_small(value) if span < 100 and lead in (2, 5) else ""

    return label


QUALITY_LABELS = {
    "bits_per_byte": "bits per byte on the test split (lower is better)",
    "mlm_accuracy": "accuracy at the masked tokens (higher is better)",
    "accuracy": "accuracy at the queries (higher is better)",
}


def quality_figure(scores: pd.DataFrame, title: str, *,
                   baseline: float | None = None, chance: float | None = None) -> Figure:
    """A bar per row of `scores` (one trained model) with its score on top and its parameter
    count under its name; the unigram byte baseline (bits per byte) or chance (accuracy) as a
    dashed line."""
    if scores.empty:
        raise ValueError("no quality records to plot")
    records = records_of(scores)
    metric = records[0]["metric"]
    colors = model_colors(scores)
    several_seeds = scores["seed"].nunique(dropna=False) > 1
    fig = Figure(figsize=(max(5.5, 1.3 * len(records) + 2.5), 4.6), layout="constrained")
    ax = fig.add_subplot()
    names = []
    for i, r in enumerate(records):
        ax.bar(i, r["value"], color=colors[str(r["model"])], edgecolor="black",
               linewidth=0.5, width=0.65)
        ax.annotate(f"{r['value']:.4g}", (i, r["value"]), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=8)
        params = f"{r['params']:,} params" if isinstance(r["params"], int) else ""
        seed = f", seed {r['seed']}" if several_seeds else ""
        names.append(f"{r['model']} ({r['variant']}{seed})\n{params}")
    ax.set_xticks(range(len(records)), names, fontsize=8)
    ax.set_xlabel("model (variant) and parameters")
    ax.set_ylabel(QUALITY_LABELS.get(metric, str(metric)))
    top = float(scores["value"].max())
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1,
                   label=f"unigram byte baseline: {baseline:.3f} bits/byte")
        top = max(top, baseline)
    if chance is not None:
        ax.axhline(chance, color="black", linestyle=":", linewidth=1,
                   label=f"chance: {chance:.3g}")
        top = max(top, chance)
    if metric in ("accuracy", "mlm_accuracy"):
        top = max(top, 1.0 / 1.15)
    ax.set_ylim(0, top * 1.15 or 1)
    ax.grid(True, axis="y", alpha=0.3)
    if baseline is not None or chance is not None:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


# ---------------------------------------------------------------- quality grids
#
# The grid figures take the frames of `harness.quality.selection` (one row per cell group, or per
# group and learning rate, or per point of a curve) with a `label` column: the series' name
# (the model, with what else tells its lines apart). Colours follow the model.

GRID_LABELS = {
    "bits_per_byte": "bits per byte (lower is better)",
    "accuracy": "accuracy at the queries (higher is better)",
    "mlm_accuracy": "accuracy at the masked tokens (higher is better)",
}
ACCURACY_METRICS = ("accuracy", "mlm_accuracy")  # between 0 and 1: a fixed axis


def _grid_axes(count: int, width: float = 4.2, height: float = 3.3, columns: int = 4,
               extra: float = 2.2) -> tuple[Figure, list]:
    """A figure of `count` panels, at most `columns` a row, with room for a legend."""
    ncols = max(1, min(columns, count))
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(width * ncols + extra, height * nrows + 0.8), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def _legend_columns(fig: Figure, entries: int) -> int:
    """Columns enough for a legend of `entries` beside the panels to fit the figure's height
    (at 8 points an entry takes about 0.19 inch, the legend's title and frame about 0.6)."""
    rows = max(4, int((fig.get_figheight() - 0.6) / 0.19))
    return max(1, math.ceil(entries / rows))


def _title(fig: Figure, title: str) -> None:
    """The figure's title, centred over its panels and wrapped to their width, so that it keeps
    clear of a legend beside them (a title centred on the whole figure runs into it)."""
    text = fig.suptitle(textwrap.fill(title, 46))
    fig.draw_without_rendering()  # lays the panels out beside the legend
    panels = [ax.get_position() for ax in fig.axes if ax.get_visible()]
    if not panels:
        return
    left, right = min(p.x0 for p in panels), max(p.x1 for p in panels)
    longest = max(text.get_text().splitlines(), key=len)
    per_char = text.get_window_extent().width / max(len(longest), 1)
    width = (right - left) * fig.get_figwidth() * fig.dpi
    text.set_text(textwrap.fill(title, max(20, int(width / per_char))))
    text.set_x((left + right) / 2)


def _legend(fig: Figure, axes: Sequence, title: str, extra: Sequence[tuple] = ()) -> None:
    """One legend for the figure: every named line once, then `extra` (handle, name) pairs."""
    handles, names = [], []
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            if name not in names:
                handles.append(handle)
                names.append(name)
    for handle, name in extra:
        handles.append(handle)
        names.append(name)
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize=8, title=title,
                   ncols=_legend_columns(fig, len(names)))


def _log2_ticks(ax, values: Sequence[float], labels: Sequence[str] | None = None) -> None:
    values = sorted(set(values))
    ax.set_xscale("log", base=2)
    if values:
        ax.set_xticks(values, labels if labels is not None else [_number(v) for v in values])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks([], minor=True)
        if len(values) == 1:
            ax.set_xlim(values[0] / 1.5, values[0] * 1.5)


def _failed_marks(ax, xs: Sequence[float], color: str) -> None:
    """A failed point: an x on the bottom edge of the panel, never a value."""
    ax.plot(xs, [0.0] * len(xs), linestyle="", marker="x", markersize=9, markeredgewidth=2,
            color=color, transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)


FAILED_HANDLE = (Line2D([], [], linestyle="", marker="x", color="black"),
                 "no ok cell (see the table)")


def width_title(width) -> str:
    """A panel's or table's width: "width (d_model) 64"."""
    return "width not set" if width is None else f"width (d_model) {width}"


def recall_figure(groups: pd.DataFrame, title: str) -> Figure:
    """MQAR, as Zoology's Figure 2 reads: test accuracy at the chosen learning rate (mean over
    seeds, the bar their spread) against the number of key-value pairs (log axis), one line per
    series and one panel per width. Each tick names its pairs and, below, the sequence length;
    a series measured at several lengths for the same pairs gets a line per length. A group with
    no ok cell is an x on the bottom edge; chance is dotted."""
    if groups.empty:
        raise ValueError("no MQAR groups to plot")
    colors = model_colors(groups)
    rows = records_of(groups)
    widths = sorted({r["width"] for r in rows}, key=lambda w: (w is None, w or 0))
    fig, axes = _grid_axes(len(widths))
    chance_seen = failed_seen = False
    for ax, width in zip(axes, widths, strict=True):
        mine = [r for r in rows if r["width"] == width]
        lengths_of = {}
        for r in mine:
            lengths_of.setdefault(r["kv_pairs"], set()).add(r["seqlen"])
        split = any(len(v) > 1 for v in lengths_of.values())
        lines: dict[str, list[dict]] = {}
        for r in mine:
            name = r["label"] + (f", seqlen {r['seqlen']}" if split else "")
            lines.setdefault(name, []).append(r)
        for name, points in lines.items():
            points.sort(key=lambda r: (r["kv_pairs"] or 0, r["seqlen"] or 0))
            color = colors[str(points[0]["model"])]
            good = [r for r in points if r["test_mean"] is not None and r["kv_pairs"]]
            if good:
                ax.errorbar([r["kv_pairs"] for r in good], [r["test_mean"] for r in good],
                            yerr=[r["test_std"] or 0.0 for r in good], marker="o",
                            markersize=4, capsize=3, color=color, label=name)
            bad = [r["kv_pairs"] for r in points if r["test_mean"] is None and r["kv_pairs"]]
            if bad:
                failed_seen = True
                _failed_marks(ax, bad, color)
        chance = sorted({(r["kv_pairs"], r["chance"]) for r in mine
                         if r["chance"] is not None and r["kv_pairs"]})
        if chance:
            chance_seen = True
            # a short dash at each point too: one point alone draws no line
            ax.plot(*zip(*chance, strict=True), linestyle=":", color="black", linewidth=1,
                    marker="_", markersize=14)
        pairs = sorted(p for p in lengths_of if p)
        labels = None if split else [f"{p}\n({'/'.join(map(str, sorted(lengths_of[p])))})"
                                     for p in pairs]
        _log2_ticks(ax, pairs, labels)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("key-value pairs" + ("" if split else " (sequence length)") + ", log scale")
        ax.set_ylabel("test accuracy (higher is better)")
        ax.set_title(width_title(width), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    chance_handle = Line2D([], [], linestyle=":", color="black", marker="_", markersize=14)
    extra = [(chance_handle, "chance")] if chance_seen else []
    _legend(fig, axes, "series", extra + ([FAILED_HANDLE] if failed_seen else []))
    _title(fig, title)
    return fig


def lr_figure(curve: pd.DataFrame, chosen: pd.DataFrame, title: str) -> Figure:
    """Learning-rate sensitivity: one panel per cell (`cell` column), the validation (solid)
    and test (dashed) score against the learning rate (log axis), one colour per series; the
    rate chosen on validation is a star. A rate whose cells all failed is an x on the bottom
    edge."""
    if curve.empty:
        raise ValueError("no learning-rate curves to plot")
    colors = model_colors(curve)
    rows = records_of(curve)
    picked = {(r["cell"], r["label"]): r["lr"] for r in records_of(chosen)}
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    metric = rows[0]["metric"]
    fig, axes = _grid_axes(len(cells), width=3.8, height=3.0)
    failed_seen = False
    for ax, name in zip(axes, cells, strict=True):
        mine = [r for r in rows if r["cell"] == name]
        for label in dict.fromkeys(r["label"] for r in mine):
            points = sorted((r for r in mine if r["label"] == label), key=lambda r: r["lr"] or 0)
            color = colors[str(points[0]["model"])]
            good = [r for r in points if r["val_mean"] is not None and r["lr"]]
            if good:
                ax.plot([r["lr"] for r in good], [r["val_mean"] for r in good], marker="o",
                        markersize=4, color=color, label=f"{label}: validation")
                tested = [r for r in good if r["test_mean"] is not None]
                ax.plot([r["lr"] for r in tested], [r["test_mean"] for r in tested],
                        marker="s", markersize=3, linestyle="--", color=color, alpha=0.7,
                        label=f"{label}: test")
            best = [r for r in good if r["lr"] == picked.get((name, label))]
            if best:
                ax.plot([best[0]["lr"]], [best[0]["val_mean"]], marker="*", markersize=13,
                        linestyle="", color=color, markeredgecolor="black", zorder=4)
            bad = [r["lr"] for r in points if r["val_mean"] is None and r["lr"]]
            if bad:
                failed_seen = True
                _failed_marks(ax, bad, color)
        ax.set_xscale("log")
        rates = sorted({r["lr"] for r in mine if r["lr"]})
        ax.set_xticks(rates, [format_lr(v) for v in rates], fontsize=8)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel(GRID_LABELS.get(metric, str(metric)), fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        if metric in ACCURACY_METRICS:
            ax.set_ylim(0, 1.05)
    extra = [(Line2D([], [], marker="*", markersize=11, linestyle="", color="white",
                     markeredgecolor="black"), "chosen on validation")]
    if failed_seen:
        extra.append((FAILED_HANDLE[0], "every cell failed at this rate"))
    _legend(fig, axes, "series", extra)
    _title(fig, title)
    return fig


def length_figure(groups: pd.DataFrame, title: str) -> Figure:
    """Language modelling against training length: test bits per byte at the chosen learning
    rate (mean over seeds, the bar their spread) against the training length (log axis), one
    line per series; the unigram byte baseline is dashed. A group with no ok cell is an x on
    the bottom edge."""
    if groups.empty:
        raise ValueError("no language-modelling groups to plot")
    colors = model_colors(groups)
    rows = records_of(groups)
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    failed_seen = False
    for label in dict.fromkeys(r["label"] for r in rows):
        points = sorted((r for r in rows if r["label"] == label), key=lambda r: r["seqlen"] or 0)
        color = colors[str(points[0]["model"])]
        good = [r for r in points if r["test_mean"] is not None and r["seqlen"]]
        if good:
            ax.errorbar([r["seqlen"] for r in good], [r["test_mean"] for r in good],
                        yerr=[r["test_std"] or 0.0 for r in good], marker="o", markersize=4,
                        capsize=3, color=color, label=label)
        bad = [r["seqlen"] for r in points if r["test_mean"] is None and r["seqlen"]]
        if bad:
            failed_seen = True
            _failed_marks(ax, bad, color)
    baselines = sorted({(r["seqlen"], r["baseline"]) for r in rows
                        if r["baseline"] is not None and r["seqlen"]})
    if len({b for _, b in baselines}) == 1:
        ax.axhline(baselines[0][1], color="black", linestyle="--", linewidth=1,
                   label=f"unigram byte baseline: {baselines[0][1]:.3f}")
    elif baselines:
        ax.plot(*zip(*baselines, strict=True), color="black", linestyle="--", linewidth=1,
                label="unigram byte baseline")
    _log2_ticks(ax, [r["seqlen"] for r in rows if r["seqlen"]])
    ax.set_xlabel("training length (tokens, log scale)")
    ax.set_ylabel("test bits per byte (lower is better)")
    ax.grid(True, which="major", alpha=0.3)
    _legend(fig, [ax], "series", [FAILED_HANDLE] if failed_seen else [])
    ax.set_title(title, fontsize=10)
    return fig


def extrapolation_figure(points: pd.DataFrame, title: str) -> Figure:
    """Length extrapolation (Press et al.): test bits per byte against the evaluation length
    (log axis), one line per series; one panel per training length (columns) and evaluation
    mode (rows: nonoverlapping windows, a sliding window of a stride). The training length is
    a dotted vertical line. A length a model cannot take (n/a) is a gap in its line, no point."""
    if points.empty:
        raise ValueError("no extrapolation points to plot")
    colors = model_colors(points)
    rows = records_of(points)
    modes = list(dict.fromkeys((r["mode_eval"], r["stride"]) for r in rows))
    trained = sorted({r["seqlen"] for r in rows}, key=lambda n: (n is None, n or 0))
    fig = Figure(figsize=(4.4 * len(trained) + 2.2, 3.5 * len(modes) + 0.8),
                 layout="constrained")
    grid = fig.subplots(len(modes), len(trained), squeeze=False)
    axes = []
    for i, (mode, stride) in enumerate(modes):
        for j, length in enumerate(trained):
            ax = grid[i][j]
            axes.append(ax)
            mine = [r for r in rows if (r["mode_eval"], r["stride"]) == (mode, stride)
                    and r["seqlen"] == length]
            for label in dict.fromkeys(r["label"] for r in mine):
                line = sorted((r for r in mine if r["label"] == label),
                              key=lambda r: r["eval_seqlen"])
                # n/a: NaN, which matplotlib leaves out (a gap), never a value.
                ys = [math.nan if r["bits_per_byte"] is None else r["bits_per_byte"]
                      for r in line]
                ax.plot([r["eval_seqlen"] for r in line], ys, marker="o", markersize=4,
                        color=colors[str(line[0]["model"])], label=label)
            if length:
                ax.axvline(length, color="#777777", linestyle=":", linewidth=1)
            _log2_ticks(ax, [r["eval_seqlen"] for r in mine])
            ax.set_xlabel("evaluation length (tokens, log scale)")
            ax.set_ylabel("test bits per byte (lower is better)", fontsize=8)
            how = (f"sliding window, stride {stride}" if mode == "sliding"
                   else "nonoverlapping windows" if mode == "nonoverlapping" else str(mode))
            ax.set_title(f"trained at {length}; {how}", fontsize=9)
            ax.grid(True, which="major", alpha=0.3)
    _legend(fig, axes, "series", [(Line2D([], [], linestyle=":", color="#777777"),
                                   "training length")])
    _title(fig, title)
    return fig


def position_figure(bins: pd.DataFrame, title: str) -> Figure:
    """Loss by token position: mean loss (nats) of each log-spaced bin of positions, at the
    bin's midpoint (log axis), one line per series, one panel per evaluation length."""
    if bins.empty:
        raise ValueError("no loss-by-position curves to plot")
    colors = model_colors(bins)
    rows = records_of(bins)
    lengths = sorted({r["eval_seqlen"] for r in rows}, key=lambda n: (n is None, n or 0))
    fig, axes = _grid_axes(len(lengths), width=5.0, height=3.8, columns=3)
    for ax, length in zip(axes, lengths, strict=True):
        mine = [r for r in rows if r["eval_seqlen"] == length]
        for label in dict.fromkeys(r["label"] for r in mine):
            line = sorted((r for r in mine if r["label"] == label), key=lambda r: r["position"])
            ax.plot([r["position"] for r in line],
                    [math.nan if r["loss"] is None else r["loss"] for r in line], marker="o",
                    markersize=3, color=colors[str(line[0]["model"])], label=label)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_number))
        ax.set_xlabel("token position (bin midpoint, log scale)")
        ax.set_ylabel("mean loss (nats per token)")
        ax.set_title(f"evaluation windows of {length} tokens", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    _legend(fig, axes, "series")
    _title(fig, title)
    return fig


# ---------------------------------------------------------------- the catalog's timeline

COLOR_BY = ("family", "architecture")
# (dx, dy, alignment) in points, cycled so that neighbours in the same month overlap less.
_LABEL_OFFSETS = ((5, 6, "left"), (5, -11, "left"), (-5, 6, "right"), (-5, -11, "right"))


def _decimal_year(entry: Entry) -> float:
    year, month = (int(part) for part in entry.date.split("-"))
    return year + (month - 0.5) / 12


def timeline_figure(entries: Sequence[Entry], color_by: str = "family") -> Figure:
    """Date of first publication against the largest published size (log scale), one labelled
    point per model; a vertical bar spans a model's smallest to largest published size, and
    models the zoo runs are drawn as stars. Entries without a published size are left out."""
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by must be one of {', '.join(COLOR_BY)}, not {color_by!r}")
    plotted = [e for e in entries if e.max_params is not None]
    if not plotted:
        raise ValueError("none of the selected entries has a published size to plot")
    # Ten well-separated colours for the largest groups; the small ones share a grey.
    sizes = Counter(getattr(e, color_by) for e in plotted)
    order = sorted(sizes, key=lambda g: (-sizes[g], g.casefold()))
    colors = {group: f"C{i}" if i < 10 else "#d0d0d0" for i, group in enumerate(order)}
    others = order[10:]

    fig = Figure(figsize=(15, 9), layout="constrained")
    ax = fig.add_subplot()
    for i, entry in enumerate(sorted(plotted, key=lambda e: (e.date, e.name))):
        x, color = _decimal_year(entry), colors[getattr(entry, color_by)]
        counts = [p.count for p in entry.params]
        if len(counts) > 1:
            ax.vlines(x, min(counts), max(counts), colors=color, alpha=0.35, linewidth=3)
        ax.scatter(x, entry.max_params, s=140 if entry.runnable else 45, color=color,
                   marker="*" if entry.runnable else "o", edgecolors="black",
                   linewidths=0.8 if entry.runnable else 0.3, zorder=3)
        dx, dy, align = _LABEL_OFFSETS[i % len(_LABEL_OFFSETS)]
        ax.annotate(entry.name, (x, entry.max_params), xytext=(dx, dy), ha=align,
                    textcoords="offset points", fontsize=7.5, color="#222222")

    ax.set_yscale("log")
    ax.set_xlabel("date of first publication (year)")
    ax.set_ylabel("parameters (largest published size, log scale)")
    ax.yaxis.set_major_formatter(lambda value, _pos: format_count(int(value)) if value >= 1 else "")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title(f"The Transformer family: {len(plotted)} models by date and size, "
                 f"coloured by {color_by}")
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[g], label=f"{g} ({sizes[g]})")
               for g in order[:10]]
    if others:
        handles.append(Line2D([], [], marker="o", linestyle="", color="#d0d0d0",
                              label=f"other: {', '.join(others)}"))
    handles.append(Line2D([], [], marker="*", linestyle="", markersize=11, color="white",
                          markeredgecolor="black", label="runnable in the zoo"))
    ax.legend(handles=handles, title=color_by, loc="upper left", fontsize=8, ncols=2)
    years = [_decimal_year(e) for e in plotted]
    ax.set_xlim(min(years) - 0.4, max(years) + 0.6)
    return fig


def save_figure(fig: Figure, out: Path | str) -> Path:
    """Write `fig` to `out` (format from the suffix), atomically: a failed write leaves any
    existing file untouched."""
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower()
    supported = fig.canvas.get_supported_filetypes()
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the image's file name, e.g. "
                         f"{out / 'timeline.png'}")
    if fmt not in supported:
        raise ValueError(f"{out}: unsupported image format {fmt!r}; use one of "
                         f"{', '.join(sorted(supported))}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
    except OSError as error:  # named by the file asked for, not the temporary one
        raise OSError(f"cannot write {out}: {error.strerror or error}") from None
    os.close(handle)
    try:
        fig.savefig(tmp, format=fmt, dpi=150)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
