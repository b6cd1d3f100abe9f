"""`catalog report`: the comparison report from the results store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from harness.catalog import (
    Catalog,
    CatalogError,
)
from harness.cli.common import (
    app,
    load_catalog_for,
    one_line_errors,
    stderr,
    stdout,
)


@app.command()
def report(
    ctx: typer.Context,
    results_paths: Annotated[list[Path] | None, typer.Option(
        "--results", metavar="PATH", help="Results file(s) to read; repeat for several "
        "(default: every reports/results/*.jsonl).", show_default=False)] = None,
    out: Annotated[Path, typer.Option(
        "--out", metavar="FOLDER", help="Folder of the report: index.md, index.html and the "
        "PNG plots (other files in it are kept).")] = Path("reports/latest"),
    models: Annotated[list[str] | None, typer.Option(
        "--models", metavar="MODEL[,MODEL...]", help="Only these models: zoo names or "
        "catalog ids, comma-separated or repeated (default: every model in the results).",
        show_default=False)] = None,
    command: Annotated[list[str] | None, typer.Option(
        "--command", metavar="TEXT", help="A command that made the results, written verbatim "
        "into the report before the commands the records carry (older records carry none); "
        "repeat for several.", show_default=False)] = None,
    title: Annotated[str | None, typer.Option(metavar="TEXT", help="The report's title.",
                                              show_default=False)] = None,
) -> None:
    """Write a comparison report from the results store: Markdown, HTML and PNG plots.

    Throughput, peak memory and MFU against sequence length (one line per model, peers dashed,
    one panel per mode), ours/peer ratios, quality tables and charts per task, the catalog's
    timeline, and the machine, versions, commands and flags behind every number. Results from
    different machines, devices or dtypes go into separate sections.
    """
    from harness.report import build_report, default_results

    catalog = load_catalog_for(ctx, warn=False)
    names = [_report_model(catalog, n.strip()) for ns in models or [] for n in ns.split(",")
             if n.strip()]
    with one_line_errors():
        made = build_report(results_paths or default_results(), out, models=names or None,
                            entries=catalog.entries, commands=command or [], title=title)
    for warning in made.warnings:
        stderr().print(f"[yellow]warning:[/] {escape(warning)}")
    table = Table(title=f"Report written to {escape(str(made.out))}", header_style="bold")
    table.add_column("file")
    table.add_column("size", justify="right")
    for path in made.files:
        table.add_row(escape(path.name), f"{path.stat().st_size / 1024:,.0f} KiB")
    stdout().print(table)
    stdout().print(f"{made.bench_cells} benchmark cell(s), {made.quality_scores} quality score(s) "
                 f"in {len(made.sections)} section(s) (one per machine, device and dtype):")
    for section in made.sections:
        stdout().print(f"  {escape(section)}")
    stdout().print(f"open {escape(str(made.out / 'index.html'))}")


def _report_model(catalog: Catalog, name: str) -> str:
    """The zoo name records carry for a catalog id (gpt-2 -> gpt); other names unchanged."""
    try:
        return catalog.get(name).zoo or name
    except CatalogError:
        return name
