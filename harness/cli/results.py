"""`catalog results`: the records of the results store as a table, filtered, pivoted or
exported (csv, json, markdown)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from harness.cli.common import app, one_line_errors, stderr, stdout


class Kind(str, Enum):
    bench = "bench"
    quality = "quality"


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"


class Agg(str, Enum):
    mean = "mean"
    median = "median"
    min = "min"
    max = "max"
    sum = "sum"
    count = "count"
    first = "first"
    last = "last"


# What --out's suffix means when --format is not given.
SUFFIX_FORMATS = {".csv": Format.csv, ".json": Format.json, ".md": Format.markdown,
                  ".markdown": Format.markdown}


@app.command("results")
def results_command(
    results_paths: Annotated[list[Path] | None, typer.Option(
        "--results", metavar="PATH", help="Results file(s) to read; repeat for several "
        "(default: every reports/results/*.jsonl).", show_default=False)] = None,
    kind: Annotated[Kind | None, typer.Option(
        help="Only benchmark cells or only quality scores (and only that kind's fields).",
        show_default=False)] = None,
    where: Annotated[list[str] | None, typer.Option(
        metavar="FIELD=VALUE", help="Keep the records whose FIELD is VALUE (or one of "
        "VALUE,VALUE...); also !=, <, <=, >, >=. Repeat: all must hold. A list field (notes) "
        "matches when an item contains VALUE.", show_default=False)] = None,
    query: Annotated[str | None, typer.Option(
        metavar="EXPR", help="Keep the records for which a pandas expression is true, e.g. "
        "\"seqlen >= 1024 and status == 'ok'\".", show_default=False)] = None,
    columns: Annotated[list[str] | None, typer.Option(
        metavar="FIELD[,FIELD...]", help="The fields to show, in order (default: those that "
        "tell the records apart, then what was measured).", show_default=False)] = None,
    pivot: Annotated[str | None, typer.Option(
        metavar="ROWS:COLUMNS:VALUES", help="One row per ROWS, one column per COLUMNS, "
        "holding VALUES; each part a field or several, comma-separated, e.g. "
        "seqlen:model,impl:tokens_per_s.", show_default=False)] = None,
    agg: Annotated[Agg | None, typer.Option(
        help="How a pivot cell combines several records (without it, such a cell is an "
        "error).", show_default=False)] = None,
    ratios: Annotated[bool, typer.Option(
        "--ratios", help="Instead of the records, ours (impl zoo) against each peer measured "
        "alike: both tokens/s and the ratios. --where, --query, --columns and --pivot then "
        "apply to these pairs (e.g. --where peer=hf).")] = False,
    all_runs: Annotated[bool, typer.Option(
        "--all-runs", help="Keep earlier measurements of a cell (default: its latest).")] = False,
    fmt: Annotated[Format | None, typer.Option(
        "--format", help="table (the terminal), csv, json or markdown (default: from --out's "
        "suffix, else table).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", metavar="FILE", help="Write to FILE instead of the terminal.",
        show_default=False)] = None,
) -> None:
    """List, filter, pivot and export the records of the results store.

    Each benchmark cell or quality score is a row and each field a column, as in a pandas
    DataFrame (harness.results.load_frame). Examples:

    \b
      catalog results --where model=gpt --where mode=forward
      catalog results --pivot seqlen:model,impl:tokens_per_s --out speed.csv
      catalog results --ratios --where peer=hf --query "tokens_per_s_ratio < 1"
    """
    from harness import tables

    fmt = _format(fmt, out)
    options = tables.Options(
        kind=kind.value if kind else None, where=where or [], query=query, ratios=ratios,
        columns=[c.strip() for cs in columns or [] for c in cs.split(",") if c.strip()],
        pivot=pivot, agg=agg.value if agg else None, all_runs=all_runs)
    with one_line_errors():
        if out is not None:  # before the records are read
            _check_out(out)
        made = tables.build(results_paths or tables.default_results(), options)
    for warning in made.warnings:
        stderr().print(f"[yellow]warning:[/] {escape(warning)}")
    if fmt is Format.table:
        _print_table(made, ratios)
        return
    with one_line_errors():
        text = tables.export(made.frame, fmt.value)
        if out is None:
            sys.stdout.write(text)
            return
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
        except OSError as error:
            raise OSError(f"--out {out}: cannot write it ({error.strerror or error})") from None
    stdout().print(f"wrote {len(made.frame)} row(s) to {escape(str(out))}")


def _check_out(out: Path) -> None:
    """Refuse an --out that is a folder, or inside a file, naming which."""
    if out.is_dir():
        raise OSError(f"--out {out} is a folder; give a file")
    from harness.results import file_in_the_way

    taken = file_in_the_way(out.parent)
    if taken is not None:
        raise OSError(f"--out {out}: {taken} is a file, not a folder")


def _format(fmt: Format | None, out: Path | None) -> Format:
    if out is None:
        return fmt or Format.table
    if fmt is Format.table:
        _fail("--format table is for the terminal; write --out with --format csv, json or "
              "markdown")
    if fmt is None:
        if out.suffix.lower() not in SUFFIX_FORMATS:
            _fail(f"--out {out}: give --format csv, json or markdown (or a .csv, .json or .md "
                  "file)")
        return SUFFIX_FORMATS[out.suffix.lower()]
    return fmt


def _fail(message: str) -> None:
    with one_line_errors():
        raise ValueError(message)


def _print_table(made, ratios: bool) -> None:
    from harness import tables

    what = "pair(s)" if ratios else "record(s)"
    if made.frame.empty:
        stderr().print(f"no row: nothing of the {made.records} {what} read matches the options")
        return
    table = Table(header_style="bold", caption=f"{len(made.frame)} row(s) from {made.records} "
                  f"record(s)")
    for name, numeric in zip(made.frame.columns, tables.numeric_columns(made.frame),
                             strict=True):
        table.add_column(escape(str(name)), justify="right" if numeric else "left")
    for row in tables.display(made.frame):
        table.add_row(*(escape(cell) for cell in row))
    stdout().print(table)
