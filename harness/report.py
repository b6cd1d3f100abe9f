"""Figures and reports generated from the catalog (and, later, from benchmark results)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.catalog import Entry, format_count

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
