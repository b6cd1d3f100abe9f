"""The quality grids' figures (harness.report_grid): MQAR recall against key-value pairs,
learning-rate sensitivity, bits per byte against training length, length extrapolation and
loss by token position.

They take the frames of `harness.quality.selection` (one row per cell group, or per group and
learning rate, or per point of a curve) with a `label` column: the series' name (the model,
with what else tells its lines apart). Colours follow the model, as in harness.plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from harness.plots import centred_title, legend_columns, model_colors, tick_number
from harness.quality.selection import format_lr
from harness.results import records_of

if TYPE_CHECKING:
    import pandas as pd

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
                   ncols=legend_columns(fig, len(names)))


def _log2_ticks(ax, values: Sequence[float], labels: Sequence[str] | None = None) -> None:
    values = sorted(set(values))
    ax.set_xscale("log", base=2)
    if values:
        ax.set_xticks(values, labels if labels is not None else [tick_number(v) for v in values])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks([], minor=True)
        if len(values) == 1:
            ax.set_xlim(values[0] / 1.5, values[0] * 1.5)


def _failed_marks(ax, xs: Sequence[float], color: str) -> None:
    """A failed point: an x on the bottom edge of the panel, never a value."""
    ax.plot(xs, [0.0] * len(xs), linestyle="", marker="x", markersize=9, markeredgewidth=2,
            color=color, transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)


def _scores(ax, points: list[dict], x: str, color: str, label: str) -> bool:
    """One series of test scores, mean with its std as error bars, against the field `x`; a
    point with no ok cell as a failed mark. Returns whether there was one."""
    good = [r for r in points if r["test_mean"] is not None and r[x]]
    if good:
        ax.errorbar([r[x] for r in good], [r["test_mean"] for r in good],
                    yerr=[r["test_std"] or 0.0 for r in good], marker="o", markersize=4,
                    capsize=3, color=color, label=label)
    bad = [r[x] for r in points if r["test_mean"] is None and r[x]]
    if bad:
        _failed_marks(ax, bad, color)
    return bool(bad)


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
            failed_seen = _scores(ax, points, "kv_pairs", color, name) or failed_seen
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
    centred_title(fig, title)
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
    centred_title(fig, title)
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
        failed_seen = _scores(ax, points, "seqlen", color, label) or failed_seen
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
    centred_title(fig, title)
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
        ax.xaxis.set_major_formatter(FuncFormatter(tick_number))
        ax.set_xlabel("token position (bin midpoint, log scale)")
        ax.set_ylabel("mean loss (nats per token)")
        ax.set_title(f"evaluation windows of {length} tokens", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    _legend(fig, axes, "series")
    centred_title(fig, title)
    return fig
