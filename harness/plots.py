"""Figures: benchmark curves against sequence length, quality bar charts, the catalog's timeline
(the quality grids' figures are in harness.plots_grid), and what they share.

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


def tick_number(value: float, _pos=None) -> str:
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
                ax.xaxis.set_major_formatter(FuncFormatter(tick_number))
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
               ncols=legend_columns(fig, len(names)))
    centred_title(fig, title)
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
def legend_columns(fig: Figure, entries: int) -> int:
    """Columns enough for a legend of `entries` beside the panels to fit the figure's height
    (at 8 points an entry takes about 0.19 inch, the legend's title and frame about 0.6)."""
    rows = max(4, int((fig.get_figheight() - 0.6) / 0.19))
    return max(1, math.ceil(entries / rows))


def centred_title(fig: Figure, title: str) -> None:
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
