"""Figures: benchmark curves against sequence length, quality bar charts, the catalog's timeline.

Every function takes records of one comparable group (one machine, device and dtype: see
`harness.report`) and returns a `matplotlib.figure.Figure` (Agg, no pyplot state). A line is one
series of like cells: the same model, variant, implementation, batch and threads. Our
implementation is drawn solid and a peer's (Hugging Face, the rwkv package) dashed in the same
colour; a cell that failed or was skipped is an `x` on the bottom edge of its panel.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from harness.catalog import Entry, format_count

MODES = ("forward", "train", "generate")
MODE_TITLES = {
    "forward": "forward (prefill / encode)",
    "train": "train (forward, backward, AdamW step)",
    "generate": "generate (one token per step after a SEQLEN prompt)",
}
PEER_STYLES = {"zoo": "-", "hf": "--", "rwkv-pip": (0, (5, 2, 1, 2))}
SERIES_FIELDS = ("model", "variant", "impl", "batch", "threads")
# Data spanning at least this ratio (max / min) gets a log axis.
DECADE = 10.0


@dataclass(frozen=True)
class Curve:
    """One y quantity of the curve figures: the record field, its axis label and a scale."""

    field: str
    label: str
    scale: float = 1.0  # value shown = record value * scale


def series_key(rec: dict[str, Any]) -> tuple:
    return tuple(rec.get(name) for name in SERIES_FIELDS)


def series_labels(records: Sequence[dict[str, Any]]) -> dict[tuple, str]:
    """"gpt", "gpt (hf)", plus the variant, batch or threads where they differ between series."""
    keys = sorted({series_key(r) for r in records}, key=lambda k: tuple(map(str, k)))
    varying = [i for i in (1, 3, 4) if len({k[i] for k in keys}) > 1]
    labels = {}
    for k in keys:
        extras = [("" if i == 1 else "batch " if i == 3 else "threads ") + str(k[i])
                  for i in varying]
        if k[2] not in (None, "zoo"):
            extras.insert(0, k[2])
        labels[k] = k[0] + (f" ({', '.join(extras)})" if extras else "")
    return labels


def model_colors(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    models = sorted({str(r.get("model")) for r in records})
    return {m: f"C{i % 10}" for i, m in enumerate(models)}


def _spans_decades(values: Sequence[float]) -> bool:
    positive = [v for v in values if v and v > 0]
    return bool(positive) and max(positive) / min(positive) >= DECADE


def _number(value: float, _pos=None) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def curves_figure(records: Sequence[dict[str, Any]], rows: Sequence[Curve], title: str
                  ) -> Figure:
    """One panel per mode present (columns) and per quantity in `rows`: the quantity against
    sequence length, one line per series. The x axis is logarithmic (base 2); a y axis is
    logarithmic where its values span a decade or more."""
    modes = [m for m in MODES if any(r.get("mode") == m for r in records)]
    modes += sorted({str(r.get("mode")) for r in records} - set(modes))
    if not modes:
        raise ValueError("no benchmark records to plot")
    labels, colors = series_labels(records), model_colors(records)
    fig = Figure(figsize=(5.2 * len(modes) + 1.5, 3.9 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(modes), squeeze=False)
    failed_seen = False
    for row, curve in enumerate(rows):
        for col, mode in enumerate(modes):
            ax = axes[row][col]
            cells = [r for r in records if r.get("mode") == mode]
            plotted: list[float] = []
            seqlens = sorted({r["seqlen"] for r in cells if isinstance(r.get("seqlen"), int)})
            for key in sorted({series_key(r) for r in cells}, key=lambda k: labels[k]):
                line = sorted((r for r in cells if series_key(r) == key and r.get("seqlen")),
                              key=lambda r: r["seqlen"])
                ok = [r for r in line if r.get("status") == "ok" and r.get(curve.field)
                      is not None]
                style = PEER_STYLES.get(key[2], ":")
                color = colors[str(key[0])]
                if ok:
                    ys = [r[curve.field] * curve.scale for r in ok]
                    plotted += ys
                    ax.plot([r["seqlen"] for r in ok], ys, linestyle=style, marker="o",
                            markersize=4, color=color, label=labels[key])
                bad = [r["seqlen"] for r in line if r.get("status") != "ok"]
                if bad:
                    failed_seen = True
                    ax.plot(bad, [0.0] * len(bad), linestyle="", marker="x", markersize=9,
                            markeredgewidth=2, color=color, transform=ax.get_xaxis_transform(),
                            clip_on=False, zorder=5)
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
    fig.legend(handles, names, loc="outside right upper", fontsize=8, title="series")
    fig.suptitle(title)
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


def quality_figure(records: Sequence[dict[str, Any]], title: str, *,
                   baseline: float | None = None, chance: float | None = None) -> Figure:
    """A bar per record (one trained model) with its score on top and its parameter count under
    its name; the unigram byte baseline (bits per byte) or chance (accuracy) as a dashed line."""
    if not records:
        raise ValueError("no quality records to plot")
    metric = records[0].get("metric")
    colors = model_colors(records)
    seeds = {r.get("seed") for r in records}
    fig = Figure(figsize=(max(5.5, 1.3 * len(records) + 2.5), 4.6), layout="constrained")
    ax = fig.add_subplot()
    names = []
    for i, r in enumerate(records):
        ax.bar(i, r["value"], color=colors[str(r.get("model"))], edgecolor="black",
               linewidth=0.5, width=0.65)
        ax.annotate(f"{r['value']:.4g}", (i, r["value"]), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=8)
        params = f"{r['params']:,} params" if isinstance(r.get("params"), int) else ""
        seed = f", seed {r.get('seed')}" if len(seeds) > 1 else ""
        names.append(f"{r.get('model')} ({r.get('variant')}{seed})\n{params}")
    ax.set_xticks(range(len(records)), names, fontsize=8)
    ax.set_xlabel("model (variant) and parameters")
    ax.set_ylabel(QUALITY_LABELS.get(metric, str(metric)))
    top = max(r["value"] for r in records)
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
    if fmt not in supported:
        raise ValueError(f"{out}: unsupported image format {fmt!r}; use one of "
                         f"{', '.join(sorted(supported))}")
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
    os.close(handle)
    try:
        fig.savefig(tmp, format=fmt, dpi=150)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
