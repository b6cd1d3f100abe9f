"""`catalog list`, `show`, `validate` and `timeline`: browsing the catalog."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from harness.catalog import (
    Catalog,
    Entry,
    check_variants,
    computed_params,
    format_count,
    sort_entries,
)
from harness.cli.common import (
    app,
    load_catalog_for,
    one_line_errors,
    stderr,
    stdout,
)


class ListFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    markdown = "markdown"


class ShowFormat(str, Enum):
    text = "text"
    json = "json"
    yaml = "yaml"


class SortKey(str, Enum):
    date = "date"
    name = "name"
    params = "params"


class ColorBy(str, Enum):
    family = "family"
    architecture = "architecture"



@app.command("list")
def list_models(
    ctx: typer.Context,
    family: Annotated[str | None, typer.Option(
        help="Architecture (encoder, decoder, encoder-decoder) or lineage family (BERT, GPT, "
             "T5, ...), case-insensitive.")] = None,
    task: Annotated[str | None, typer.Option(
        help="Pretraining or fine-tuning task, e.g. MLM, LM, DAE, 'instruction tuning'.")] = None,
    lab: Annotated[str | None, typer.Option(
        help="Part of the lab's name, case-insensitive, e.g. google.")] = None,
    since: Annotated[int | None, typer.Option(
        min=1900, max=2100, help="First year of publication to include.")] = None,
    until: Annotated[int | None, typer.Option(
        min=1900, max=2100, help="Last year of publication to include.")] = None,
    runnable: Annotated[bool | None, typer.Option(
        "--runnable/--not-runnable", help="Only models the zoo runs (or only those it does not).",
        show_default=False)] = None,
    query: Annotated[str | None, typer.Option(
        help="Free text: every word must appear in the name, extension or application.")] = None,
    sort: Annotated[SortKey, typer.Option(
        help="Sort by date, name, or largest published size.")] = SortKey.date,
    desc: Annotated[bool, typer.Option("--desc", help="Reverse the sort order.")] = False,
    fmt: Annotated[ListFormat, typer.Option("--format", help="Output format.")] = ListFormat.table,
) -> None:
    """List the catalog's models, filtered and sorted."""
    catalog = load_catalog_for(ctx)
    with one_line_errors():
        entries = catalog.select(family=family, task=task, lab=lab, since=since, until=until,
                                 runnable=runnable, query=query)
        entries = sort_entries(entries, sort.value, descending=desc)
    if fmt is ListFormat.json:
        sys.stdout.write(json.dumps([e.model_dump(mode="json") for e in entries], indent=2) + "\n")
    elif fmt is ListFormat.csv:
        sys.stdout.write(_csv(entries))
    elif fmt is ListFormat.markdown:
        sys.stdout.write(_markdown(entries))
    else:
        stdout().print(_table(entries, total=len(catalog.entries)))


def _row(entry: Entry) -> dict[str, str]:
    return {
        "id": entry.id,
        "name": entry.name,
        "family": entry.family,
        "architecture": entry.architecture,
        "tasks": "; ".join(entry.pretraining_task) + (" (fine-tuning)" if entry.fine_tuned else ""),
        "date": entry.date,
        "params": ", ".join(format_count(p.count) for p in entry.params),
        "lab": entry.lab,
        "zoo": entry.zoo or "",
    }


def _table(entries: Sequence[Entry], total: int) -> Table:
    table = Table(title="The Transformer family", caption=f"{len(entries)} of {total} models",
                  header_style="bold")
    for column in ("id", "name", "family", "architecture", "tasks", "date", "params", "lab", "zoo"):
        table.add_column(column, no_wrap=column in ("id", "date"))
    for entry in entries:
        table.add_row(*(escape(value) for value in _row(entry).values()))
    return table


def _csv(entries: Sequence[Entry]) -> str:
    buffer = io.StringIO()
    columns = ["id", "name", "family", "parent", "architecture", "pretraining_task", "fine_tuned",
               "date", "params", "max_params", "lab", "license", "paper_title", "paper_url", "zoo"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for e in entries:
        writer.writerow({
            "id": e.id, "name": e.name, "family": e.family, "parent": e.parent or "",
            "architecture": e.architecture, "pretraining_task": "; ".join(e.pretraining_task),
            "fine_tuned": str(e.fine_tuned).lower(), "date": e.date,
            "params": "; ".join(f"{p.label}={p.count}" for p in e.params),
            "max_params": e.max_params or "", "lab": e.lab, "license": e.license,
            "paper_title": e.paper.title, "paper_url": e.paper.url, "zoo": e.zoo or "",
        })
    return buffer.getvalue()


def _markdown(entries: Sequence[Entry]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    columns = ["id", "name", "family", "architecture", "tasks", "date", "params", "lab", "zoo"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in _row(e).values()) + " |" for e in entries]
    return "\n".join(lines) + "\n"


@app.command()
def show(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(
        metavar="MODEL", help="Model id (or name), e.g. roberta or RoBERTa.")],
    fmt: Annotated[ShowFormat, typer.Option("--format", help="Output format.")] = ShowFormat.text,
) -> None:
    """Show a model's card, lineage and variants.

    The card holds every field of the entry; the lineage its family root, the models it builds
    on and the other members of its family; runnable models add their zoo implementation and
    variants.
    """
    catalog = load_catalog_for(ctx)
    with one_line_errors():
        entry = catalog.get(model)
    if fmt is ShowFormat.json:
        sys.stdout.write(json.dumps(entry.model_dump(mode="json"), indent=2) + "\n")
    elif fmt is ShowFormat.yaml:
        sys.stdout.write(yaml.safe_dump(entry.model_dump(mode="json"), sort_keys=False,
                                        allow_unicode=True, width=100))
    else:
        _print_card(catalog, entry)


def _print_card(catalog: Catalog, entry: Entry) -> None:
    out = stdout()
    card = Table.grid(padding=(0, 2))
    card.add_column(style="bold", no_wrap=True)
    card.add_column()

    def field(label: str, value: str | None) -> None:
        if value:
            card.add_row(label, escape(value))

    field("id", entry.id)
    field("family", entry.family)
    field("architecture", entry.architecture)
    field("fine-tuning task" if entry.fine_tuned else "pretraining task",
          ", ".join(entry.pretraining_task))
    field("date", entry.date)
    sizes = ", ".join(f"{format_count(p.count)} ({p.label})" if p.label != format_count(p.count)
                      else format_count(p.count) for p in entry.params)
    field("parameters", "; ".join(filter(None, [sizes, entry.params_note])) or "not published")
    field("extension", entry.extension)
    field("application", entry.application)
    field("corpus", entry.corpus)
    field("license", entry.license)
    field("lab", entry.lab)
    field("paper", f"{entry.paper.title}\n{entry.paper.url}")
    field("link", entry.link)
    field("notes", entry.notes)
    out.print(f"\n[bold]{escape(entry.name)}[/]")
    out.print(card)

    lineage = Table.grid(padding=(0, 2))
    lineage.add_column(style="bold", no_wrap=True)
    lineage.add_column()
    root = catalog.family_root(entry)
    if root is None:
        described = f"{entry.family} (a grouping with no entry of its own)"
    elif root.id == entry.id:
        described = f"{entry.name} is the root of the {entry.family} family"
    else:
        described = f"{root.name} ({root.id})"
    lineage.add_row("family root", escape(described))
    chain = [entry, *catalog.ancestry(entry)]
    if len(chain) > 1:
        lineage.add_row("builds on", " <- ".join(escape(e.name) for e in chain))
    members = catalog.family_members(entry)
    lineage.add_row(f"family members ({len(members)})",
                    ", ".join(escape(e.name) for e in members) or "none other")
    out.print("\n[bold]Lineage[/]")
    out.print(lineage)

    if entry.zoo:
        computed = computed_params(entry)
        out.print(f"\n[bold]Runnable[/]: zoo implementation [bold]{escape(entry.zoo)}[/] "
                  f"(`zoo.build({entry.zoo!r}, VARIANT)`)")
        variants = Table("variant", "published params", "computed params",
                         "config (differences from the defaults)", header_style="bold")
        for name, variant in (entry.variants or {}).items():
            config = ", ".join(f"{k}={v}" for k, v in variant.config.items()) or "defaults"
            count = computed[name]
            variants.add_row(escape(name), format_count(variant.params),
                             f"{count:,}" if count is not None else "cannot build",
                             escape(config))
        out.print(variants)
        from harness.export import checkpoint_forms  # zoo.convert (torch): runnable cards only

        reads, writes = checkpoint_forms(entry.zoo)
        if reads or writes:
            out.print(f"Checkpoints: reads {' and '.join(reads)} (zoo.from_pretrained); "
                      f"catalog export writes {' or '.join(writes)}")
        else:
            out.print("Checkpoints: its `catalog train` folders only (transformers has no class "
                      "for it)")


@app.command()
def validate(ctx: typer.Context) -> None:
    """Check every entry; exit 1 on any problem.

    Reports every problem (file, field, what would be valid), schema and cross-entry checks
    alike (families, parents, variants), then a summary.
    """
    catalog = load_catalog_for(ctx, warn=False)
    problems = [*catalog.problems, *check_variants(catalog)]
    err = stderr()
    for problem in problems:
        err.print(f"[red]x[/] {escape(str(problem))}")
    files = len({p.file for p in problems})
    summary = (f"{len(catalog.entries)} valid entries in {catalog.root}; "
               f"{len(problems)} problem(s) in {files} file(s)")
    if problems:
        err.print(f"[bold red]{escape(summary)}[/]")
        raise typer.Exit(1)
    stdout().print(f"[green]ok[/]: {escape(summary)}")


@app.command()
def timeline(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(
        "--out", help="Image file to write (.png, .svg or .pdf).")] = Path("timeline.png"),
    color_by: Annotated[ColorBy, typer.Option(
        "--color-by", help="Colour points by lineage family or by architecture.")] = ColorBy.family,
    family: Annotated[str | None, typer.Option(
        help="Only this architecture or family (as in `catalog list --family`).")] = None,
) -> None:
    """Plot date against parameters (log scale).

    One labelled point per model at its largest published size, a bar spanning its smallest to
    largest size, runnable models as stars; models without a published size are left out.
    """
    from harness.report import save_figure, timeline_figure  # matplotlib: only when plotting

    catalog = load_catalog_for(ctx)
    with one_line_errors():
        entries = catalog.select(family=family)
        written = save_figure(timeline_figure(entries, color_by.value), out)
    plotted = sum(e.max_params is not None for e in entries)
    stdout().print(f"wrote {escape(str(written))}: {plotted} models plotted; "
                 f"{len(entries) - plotted} without a published size left out")
