"""The `catalog` command: parse the arguments, call one library function, render with rich."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.catalog import (
    Catalog,
    CatalogError,
    Entry,
    check_variants,
    computed_params,
    format_count,
    load_catalog,
    sort_entries,
)

app = typer.Typer(
    name="catalog",
    help="Browse the Transformer model family (Amatriain's catalog plus the models this "
    "project runs): list and filter it, read a model's card, validate the data, plot its timeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
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


USAGE_ERROR = 2  # bad input (unknown id, bad filter value): as click does for usage errors


def _out() -> Console:
    # A pipe gets a wide table rather than rich's default of 80 columns.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _err() -> Console:
    # soft_wrap: an error stays one line however long, so it can be grepped and parsed.
    return Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn the library's errors into `error: ...` on stderr and a non-zero exit."""
    try:
        yield
    except (CatalogError, ValueError, OSError) as exc:
        _err().print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(USAGE_ERROR) from None


@app.callback()
def _options(
    ctx: typer.Context,
    catalog_dir: Annotated[
        Path | None,
        typer.Option(
            "--catalog-dir",
            envvar="TRANSFORMER_CATALOG_DIR",
            help="Folder of catalog YAML files to read instead of the shipped catalog.",
        ),
    ] = None,
) -> None:
    ctx.obj = catalog_dir


def _load(ctx: typer.Context, warn: bool = True) -> Catalog:
    with _one_line_errors():
        catalog = load_catalog(ctx.obj)
    if warn and catalog.problems:
        files = sorted({p.file.name for p in catalog.problems})
        _err().print(
            f"[yellow]warning:[/] {len(catalog.problems)} problem(s) in {', '.join(files)}; "
            "malformed entries are left out. Run `catalog validate` for details."
        )
    return catalog


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
    catalog = _load(ctx)
    with _one_line_errors():
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
        _out().print(_table(entries, total=len(catalog.entries)))


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
    catalog = _load(ctx)
    with _one_line_errors():
        entry = catalog.get(model)
    if fmt is ShowFormat.json:
        sys.stdout.write(json.dumps(entry.model_dump(mode="json"), indent=2) + "\n")
    elif fmt is ShowFormat.yaml:
        sys.stdout.write(yaml.safe_dump(entry.model_dump(mode="json"), sort_keys=False,
                                        allow_unicode=True, width=100))
    else:
        _print_card(catalog, entry)


def _print_card(catalog: Catalog, entry: Entry) -> None:
    out = _out()
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


@app.command()
def validate(ctx: typer.Context) -> None:
    """Check every entry; exit 1 on any problem.

    Reports every problem (file, field, what would be valid), schema and cross-entry checks
    alike (families, parents, variants), then a summary.
    """
    catalog = _load(ctx, warn=False)
    problems = [*catalog.problems, *check_variants(catalog)]
    err = _err()
    for problem in problems:
        err.print(f"[red]x[/] {escape(str(problem))}")
    files = len({p.file for p in problems})
    summary = (f"{len(catalog.entries)} valid entries in {catalog.root}; "
               f"{len(problems)} problem(s) in {files} file(s)")
    if problems:
        err.print(f"[bold red]{escape(summary)}[/]")
        raise typer.Exit(1)
    _out().print(f"[green]ok[/]: {escape(summary)}")


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

    catalog = _load(ctx)
    with _one_line_errors():
        entries = catalog.select(family=family)
        written = save_figure(timeline_figure(entries, color_by.value), out)
    plotted = sum(e.max_params is not None for e in entries)
    _out().print(f"wrote {escape(str(written))}: {plotted} models plotted; "
                 f"{len(entries) - plotted} without a published size left out")


class Mode(str, Enum):
    forward = "forward"
    train = "train"
    generate = "generate"


class Peer(str, Enum):
    hf = "hf"
    rwkv_pip = "rwkv-pip"


PEAK_CACHE = Path.home() / ".cache" / "transformer-catalog" / "matmul_peaks.json"


@app.command()
def bench(
    ctx: typer.Context,
    models: Annotated[list[str] | None, typer.Argument(
        metavar="MODEL...", help="Zoo models (rwkv, gpt, bert, roberta, mosaic-bert, pangu-pi, "
        "transformer) or catalog ids that run one (gpt-2, mosaicbert).", show_default=False)
    ] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Every runnable model.")] = False,
    variant: Annotated[str, typer.Option(help="Catalog variant (tiny, small, or a published "
                                              "size such as 169m or gpt2-medium).")] = "small",
    seqlen: Annotated[str, typer.Option(
        help="Sequence length(s): 8192, a list 512,1024,2048 or a doubling range 512..16384.")
    ] = "1024",
    mode: Annotated[list[Mode] | None, typer.Option(
        help="forward (prefill/encode), train (forward + backward + optimizer step) or generate "
             "(decode after a prompt of SEQLEN tokens); repeat the option for several.",
        show_default="forward")] = None,
    batch: Annotated[int, typer.Option(help="Sequences per batch.")] = 1,
    device: Annotated[str, typer.Option(help="auto (cuda when present), cpu, cuda or cuda:N.")
                      ] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    threads: Annotated[int | None, typer.Option(
        help="CPU threads per cell (default: torch's default).", show_default=False)] = None,
    warmup: Annotated[int, typer.Option(help="Untimed runs before timing.")] = 1,
    repeat: Annotated[int, typer.Option(help="Timed runs per cell (forward, train).")] = 3,
    new_tokens: Annotated[int, typer.Option(help="Timed tokens per cell in generate mode.")] = 16,
    max_memory: Annotated[str | None, typer.Option(
        help="Memory budget per cell, e.g. 8G: a cell whose peak passes it is stopped and "
             "recorded as over_budget.", show_default=False)] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per cell before it is stopped.")
                       ] = 600.0,
    against: Annotated[list[Peer] | None, typer.Option(
        help="Also measure a peer implementation with the same weights and print ours/theirs: "
             "hf (Hugging Face: bert, gpt, roberta, rwkv) or rwkv-pip (the official package).",
        show_default=False)] = None,
    results_path: Annotated[Path, typer.Option(
        "--results", help="JSON Lines file the records are appended to.")
    ] = Path("reports/results/bench.jsonl"),
    force: Annotated[bool, typer.Option(
        help="Measure again cells already in the results file.")] = False,
    calibrate: Annotated[bool, typer.Option(
        help="Measure this machine's matrix-multiply peak again (used for MFU).")] = False,
) -> None:
    """Measure throughput, latency, peak memory and MFU against sequence length.

    Every cell (model, mode, length, ...) runs in a fresh process; its record is appended to
    the results file as soon as it ends, and a rerun skips cells already measured. A cell that
    runs out of memory, passes --max-memory or --timeout is recorded as such, the longer
    lengths of that model are skipped, and the sweep goes on.
    """
    from harness import sweep as sweeps

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    catalog = _load(ctx, warn=False)
    with _one_line_errors():
        names = _zoo_names(catalog, models or [], all_models)
        if calibrate:
            peak = sweeps.calibrate(device, dtype, threads, PEAK_CACHE, force=True)
            _out().print(f"matrix-multiply peak on {device}, {dtype}: {peak / 1e9:,.1f} GFLOP/s "
                         f"(cached in {PEAK_CACHE})")
            if not names:
                return
        if not names:
            raise sweeps.SweepError("name at least one model (e.g. `catalog bench rwkv`), or --all")
        plan = sweeps.Sweep(
            models=names, variant=variant, modes=[m.value for m in mode or [Mode.forward]],
            seqlens=sweeps.parse_seqlens(seqlen), batch=batch, dtype=dtype, device=device,
            threads=threads, warmup=warmup, repeat=repeat, new_tokens=new_tokens,
            max_memory=sweeps.parse_bytes(max_memory), timeout=timeout,
            against=[p.value for p in against or []], force=force, results=results_path,
            catalog_dir=str(ctx.obj) if ctx.obj else None)
        sweeps.check(plan)
    for model, unsupported_mode in plan.unsupported():
        _err().print(f"[yellow]note:[/] {model} cannot run {unsupported_mode} mode; "
                     "those cells are left out")
    records = _run_with_progress(plan, sweeps)
    _out().print(_bench_table(records, sweeps.ratios(records)))
    _out().print(f"records appended to {escape(str(results_path))}")


def _zoo_names(catalog: Catalog, names: list[str], all_models: bool) -> list[str]:
    """Zoo model names from zoo names or catalog ids (gpt-2 -> gpt), in the order given."""
    import zoo

    if all_models:
        return sorted(zoo.REGISTRY)
    out = []
    for name in names:
        if name not in zoo.REGISTRY:
            try:
                entry = catalog.get(name)
            except CatalogError:
                entry = None
            if entry is None or not entry.zoo:
                raise CatalogError(f"unknown model {name!r}; runnable models: "
                                   f"{', '.join(sorted(zoo.REGISTRY))} (or --all)")
            name = entry.zoo
        if name not in out:
            out.append(name)
    return out


def _run_with_progress(plan, sweeps) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    records: list[dict] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=_err(), transient=False) as progress:
        task = progress.add_task("benchmark", total=len(plan.cells()))

        def on_event(event) -> None:
            c = event.cell
            label = f"{c.model} {c.impl} {c.mode} seqlen {c.seqlen}"
            if event.kind == "start":
                progress.update(task, description=f"running {label}")
            else:
                status = event.record["status"] + (" (earlier run)" if event.record.get("resumed")
                                                   else "")
                progress.update(task, advance=1, description=f"{label}: {status}")

        try:
            for rec in sweeps.run(plan, PEAK_CACHE, on_event):
                records.append(rec)
        except KeyboardInterrupt:
            progress.stop()
            _err().print(f"[yellow]interrupted[/]: {len(records)} record(s) kept in "
                         f"{escape(str(plan.results))}")
            raise typer.Exit(130) from None
        except sweeps.SweepError as exc:
            progress.stop()
            _err().print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(USAGE_ERROR) from None
    return records


def _bench_table(records: list[dict], ratios: dict) -> Table:
    table = Table(title="Benchmark", header_style="bold")
    for column in ("model", "impl", "mode", "seqlen", "status", "tokens/s", "ms (median ± IQR)",
                   "peak mem", "above weights", "MFU", "ours/peer tok/s", "notes"):
        table.add_column(column, justify="right" if column not in ("model", "impl", "mode",
                                                                    "status", "notes") else "left")
    for r in records:
        ok = r["status"] == "ok"
        ratio = ""
        if r["impl"] != "zoo" and (r["model"], r["mode"], r["seqlen"], r["impl"]) in ratios:
            value = ratios[(r["model"], r["mode"], r["seqlen"], r["impl"])]["tokens_per_s"]
            ratio = f"{value:.2f}x"
        notes = [*r.get("notes", [])] + ([r["error"]] if r.get("error") else [])
        if r.get("resumed"):
            notes.append("from an earlier run")
        table.add_row(
            r["model"], r["impl"], r["mode"], str(r["seqlen"]),
            r["status"] if ok else f"[red]{r['status']}[/]",
            f"{r['tokens_per_s']:,.0f}" if ok else "",
            f"{r['ms_median']:,.1f} ± {r['ms_iqr']:,.1f}" if ok else "",
            _gib(r.get("peak_mem_bytes")), _gib(r.get("act_mem_bytes")) if ok else "",
            f"{100 * r['mfu']:.1f}%" if ok and r.get("mfu") else "", ratio,
            escape("; ".join(notes)))
    return table


def _gib(value: int | None) -> str:
    return f"{value / 2**30:.2f} GiB" if value else ""


# ---------------------------------------------------------------------------- quality

# Options shared by `train` and `quality`: everything a comparison holds fixed.
TaskOpt = Annotated[str, typer.Option(
    help="lm (decoders; the encoder-decoder runs it as seq2seq), seq2seq, mlm (encoders) or "
         "mqar (decoders).")]
BudgetOpt = Annotated[str, typer.Option(
    help="Training budget per model: a time (90s, 5m, 1h) or tokens (500K-tokens, 20M-tokens).")]
VariantOpt = Annotated[str, typer.Option(help="Catalog variant; small is parameter-matched.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the initialisation and the data order.")]
CorpusOpt = Annotated[str | None, typer.Option(
    help="Text for lm/mlm/seq2seq: a UTF-8 file or a folder of .txt/.md/.rst files, or "
         "hf:NAME (online). Default: the Python standard library's documentation.",
    show_default=False)]
TokenizerOpt = Annotated[str, typer.Option(
    help="bytes, or bpe (byte-level BPE trained on the training split; see --bpe-vocab).")]
BpeVocabOpt = Annotated[int, typer.Option(help="Vocabulary of --tokenizer bpe.")]
SeqlenOpt = Annotated[int | None, typer.Option(
    help="Training length in tokens (default: lm/seq2seq 256, mlm 128, mqar --mqar-seqlen).",
    show_default=False)]
BatchOpt = Annotated[int | None, typer.Option(
    "--batch-size", help="Sequences per step (default: lm 8, mlm 16, mqar 32).",
    show_default=False)]
LrOpt = Annotated[float | None, typer.Option(help="Peak learning rate (default 1e-3).",
                                             show_default=False)]
EvalEveryOpt = Annotated[int, typer.Option(
    help="Steps between validation evaluations (and resumable saves).")]
MqarSeqlenOpt = Annotated[int, typer.Option(help="MQAR sequence length.")]
MqarPairsOpt = Annotated[int, typer.Option(help="MQAR key-value pairs per sequence.")]
MqarVocabOpt = Annotated[int, typer.Option(help="MQAR vocabulary.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda when present), cpu, cuda or cuda:N.")]
QualityResultsOpt = Annotated[Path, typer.Option(
    "--results", help="JSON Lines file the quality records are appended to.")]
ResumeOpt = Annotated[bool, typer.Option(
    help="Continue an interrupted run from its last save in the output folder.")]
ForceOpt = Annotated[bool, typer.Option(help="Overwrite a finished checkpoint in the folder.")]
QUALITY_RESULTS = Path("reports/results/quality.jsonl")


@app.command("train")
def train_model(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Zoo model or catalog id (gpt, rwkv, bert, ...).")],
    task: TaskOpt = "lm", budget: BudgetOpt = "5m", variant: VariantOpt = "small",
    seed: SeedOpt = 0, corpus: CorpusOpt = None, tokenizer: TokenizerOpt = "bytes",
    bpe_vocab: BpeVocabOpt = 8192, seqlen: SeqlenOpt = None, batch_size: BatchOpt = None,
    lr: LrOpt = None, eval_every: EvalEveryOpt = 50, mqar_seqlen: MqarSeqlenOpt = 64,
    mqar_kv_pairs: MqarPairsOpt = 4, mqar_vocab: MqarVocabOpt = 8192, device: DeviceOpt = "auto",
    out: Annotated[Path | None, typer.Option(
        help="Checkpoint folder (default runs/MODEL-TASK-VARIANT-seedN).", show_default=False)
    ] = None,
    resume: ResumeOpt = False, force: ForceOpt = False,
    results_path: QualityResultsOpt = QUALITY_RESULTS,
) -> None:
    """Train one model from scratch on a task and save its checkpoint and quality record.

    The checkpoint folder gets config.json, model.safetensors and tokenizer.json (what
    `catalog eval` and lm-eval's `zoo` model read). Under torchrun the model trains data
    parallel (gloo on CPU, nccl on GPU) with the same global batch and data order.
    """
    _quality(ctx, [model], task, budget, variant, seed, corpus, tokenizer, bpe_vocab, seqlen,
             batch_size, lr, eval_every, (mqar_seqlen, mqar_kv_pairs, mqar_vocab), device, out,
             resume, force, results_path, compare=False)


@app.command()
def quality(
    ctx: typer.Context,
    models: Annotated[list[str], typer.Argument(
        metavar="MODEL...", help="Zoo models or catalog ids, trained one after the other.")],
    task: TaskOpt = "lm", budget: BudgetOpt = "5m", variant: VariantOpt = "small",
    seed: SeedOpt = 0, corpus: CorpusOpt = None, tokenizer: TokenizerOpt = "bytes",
    bpe_vocab: BpeVocabOpt = 8192, seqlen: SeqlenOpt = None, batch_size: BatchOpt = None,
    lr: LrOpt = None, eval_every: EvalEveryOpt = 50, mqar_seqlen: MqarSeqlenOpt = 64,
    mqar_kv_pairs: MqarPairsOpt = 4, mqar_vocab: MqarVocabOpt = 8192, device: DeviceOpt = "auto",
    out: Annotated[Path | None, typer.Option(
        help="Folder of the checkpoints, one subfolder per model (default runs/quality-TASK).",
        show_default=False)] = None,
    resume: ResumeOpt = False, force: ForceOpt = False,
    results_path: QualityResultsOpt = QUALITY_RESULTS,
) -> None:
    """Train several models at an equal budget and compare them on one task.

    Every model gets the same tokenizer, budget, seed, examples and data order; the `small`
    variants are parameter-matched. Prints one row per model (and, for lm, the unigram byte
    baseline every model must beat).
    """
    _quality(ctx, models, task, budget, variant, seed, corpus, tokenizer, bpe_vocab, seqlen,
             batch_size, lr, eval_every, (mqar_seqlen, mqar_kv_pairs, mqar_vocab), device, out,
             resume, force, results_path, compare=True)


def _quality(ctx, models, task, budget, variant, seed, corpus, tokenizer, bpe_vocab, seqlen,
             batch_size, lr, eval_every, mqar_args, device, out, resume, force, results_path,
             compare) -> None:
    import os

    from harness import results
    from harness.quality import run as runs
    from harness.quality.tasks import MQARConfig
    from harness.quality.train import parse_budget

    catalog = _load(ctx, warn=False)
    with _one_line_errors():
        names = _zoo_names(catalog, models, False)
        device, rank = runs.init_distributed(_resolve_device(device), os.environ)
        mqar_seqlen, mqar_pairs, mqar_vocab = mqar_args
        spec = runs.RunSpec(
            task=task, budget=parse_budget(budget), variant=variant, seed=seed, corpus=corpus,
            tokenizer=tokenizer, bpe_vocab=bpe_vocab, seqlen=seqlen, batch_size=batch_size,
            lr=lr, eval_every=eval_every, device=device,
            mqar=MQARConfig(vocab_size=mqar_vocab, seqlen=mqar_seqlen, num_kv_pairs=mqar_pairs),
            catalog_dir=str(ctx.obj) if ctx.obj else None)
        tasks_needed = {runs.check_model(name, spec) for name in names}
        folders = {name: runs.run_folder(out, name, spec, several=compare) for name in names}
        for folder in folders.values():
            runs.check_folder(folder, resume=resume, force=force)
        data = runs.prepare(spec, tasks_needed)
    is_main = rank == 0
    console = _err() if is_main else Console(stderr=True, quiet=True)
    records = []
    for name in names:
        with _one_line_errors(), _train_progress(console, name, spec) as on_step:
            result = runs.run_one(name, data, folders[name], resume=resume, on_step=on_step,
                                  is_main=is_main)
        if not is_main:
            continue
        results.append(results_path, result.record)
        records.append(result.record)
        console.print(f"{name}: {result.record['metric']} {result.record['value']:.4f}; "
                      f"checkpoint {escape(str(result.checkpoint))}")
    if is_main:
        _out().print(_quality_table(records, data.baseline))
        _out().print(f"records appended to {escape(str(results_path))}")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@contextmanager
def _train_progress(console: Console, name: str, spec) -> Iterator:
    """A progress bar over the budget (tokens or seconds) with the loss and learning rate."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    total = spec.budget.tokens or spec.budget.seconds
    with Progress(TextColumn(f"training {name}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}% {task.fields[status]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        bar = progress.add_task(name, total=total, status="")

        def on_step(history, lr: float) -> None:
            done = history.tokens if spec.budget.tokens else history.seconds
            progress.update(bar, completed=min(done, total),
                            status=f"step {history.steps} loss {history.losses[-1]:.3f} "
                                   f"lr {lr:.1e}")

        try:
            yield on_step
        except KeyboardInterrupt:
            progress.stop()
            console.print("[yellow]interrupted[/]: the last save is kept; rerun with --resume")
            raise typer.Exit(130) from None


def _quality_table(records: list[dict], baseline: float | None) -> Table:
    table = Table(title="Quality (equal budget)", header_style="bold")
    for column in ("model", "variant", "task", "metric", "value", "params", "tokens", "steps",
                   "train time", "notes"):
        table.add_column(column, justify="right" if column in (
            "value", "params", "tokens", "steps", "train time") else "left")
    for r in records:
        table.add_row(r["model"], r["variant"], r["task"], r["metric"], f"{r['value']:.4f}",
                      f"{r['params']:,}", f"{r['tokens']:,}", str(r["steps"]),
                      f"{r['train_seconds']:,.0f} s", escape("; ".join(r.get("notes", []))))
    if baseline is not None and any(r["metric"] == "bits_per_byte" for r in records):
        table.add_row("unigram bytes", "", "lm", "bits_per_byte", f"{baseline:.4f}", "", "", "",
                      "", "byte frequencies of the training split (the bar to clear)")
    return table


@app.command("eval")
def eval_checkpoint(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder from `catalog train`.")],
    tasks: Annotated[str, typer.Option(
        help="Comma-separated local lm-eval tasks: zoo_heldout (bits per byte, perplexities of "
             "the held-out text), zoo_lastword (last-word cloze).")] = "zoo_heldout,zoo_lastword",
    corpus: Annotated[str | None, typer.Option(
        help="Corpus whose test split is evaluated (default: the one the checkpoint was "
             "trained on).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")
                          ] = 8,
    max_length: Annotated[int | None, typer.Option(
        help="Longest sequence fed to the model (default: its training length).",
        show_default=False)] = None,
    limit: Annotated[int | None, typer.Option(help="Examples per task (a quick check).",
                                              show_default=False)] = None,
    device: DeviceOpt = "auto",
    results_path: QualityResultsOpt = QUALITY_RESULTS,
) -> None:
    """Evaluate a trained checkpoint through lm-evaluation-harness (offline, `zoo` adapter).

    The tasks are built from the test split of the checkpoint's corpus and shipped with this
    package; lm-eval runs with `simple_evaluate`. For bits per byte the harness's own score of
    the same text (saved at training time) is printed beside lm-eval's.
    """
    import os
    from datetime import datetime, timezone

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task data is local files
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # rich prints; not tqdm
    os.environ.setdefault("TQDM_DISABLE", "1")
    from harness import results
    from harness.quality import run as runs

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    device = _resolve_device(device)
    with _one_line_errors():
        scores, meta = runs.evaluate_with_lm_eval(
            checkpoint, names, corpus, limit, device=device, batch_size=batch_size,
            max_length=max_length)
    where = {"device": device, "dtype": "float32", "threads": torch_threads(),
             **runs.machine(device)}
    own = (meta.get("scores") or {}).get("bits_per_byte")
    table = Table(title=f"lm-eval: {escape(str(checkpoint))}", header_style="bold")
    for column in ("task", "metric", "lm-eval", "harness", "lm-eval / harness"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for task_name, metrics in scores.items():
        for metric, value in metrics.items():
            same = metric == "bits_per_byte" and own is not None
            table.add_row(task_name, metric, _number(value), f"{own:.4f}" if same else "",
                          f"{value / own:.4f}" if same else "")
            if isinstance(value, (int, float)):
                results.append(results_path, results.record(
                    kind="quality", model=meta.get("zoo"), variant=meta.get("variant"),
                    impl="lm-eval", mode="eval", seqlen=max_length or meta.get("seqlen"),
                    status="ok", task=task_name, metric=metric, value=value,
                    params=meta.get("params"), checkpoint=str(checkpoint),
                    corpus=corpus or meta.get("corpus"), limit=limit, **where,
                    time=datetime.now(timezone.utc).isoformat(timespec="seconds")))
    _out().print(table)
    _out().print(f"records appended to {escape(str(results_path))}")


def _number(value) -> str:
    if not isinstance(value, float):
        return str(value)
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.3e}"


# ----------------------------------------------------------------------------- report

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
        "into the report; repeat for several.", show_default=False)] = None,
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

    catalog = _load(ctx, warn=False)
    names = [_report_model(catalog, n.strip()) for ns in models or [] for n in ns.split(",")
             if n.strip()]
    with _one_line_errors():
        made = build_report(results_paths or default_results(), out, models=names or None,
                            entries=catalog.entries, commands=command or [], title=title)
    for warning in made.warnings:
        _err().print(f"[yellow]warning:[/] {escape(warning)}")
    table = Table(title=f"Report written to {escape(str(made.out))}", header_style="bold")
    table.add_column("file")
    table.add_column("size", justify="right")
    for path in made.files:
        table.add_row(escape(path.name), f"{path.stat().st_size / 1024:,.0f} KiB")
    _out().print(table)
    _out().print(f"{made.bench_cells} benchmark cell(s), {made.quality_scores} quality score(s) "
                 f"in {len(made.sections)} section(s) (one per machine, device and dtype):")
    for section in made.sections:
        _out().print(f"  {escape(section)}")
    _out().print(f"open {escape(str(made.out / 'index.html'))}")


def _report_model(catalog: Catalog, name: str) -> str:
    """The zoo name records carry for a catalog id (gpt-2 -> gpt); other names unchanged."""
    try:
        return catalog.get(name).zoo or name
    except CatalogError:
        return name


def main() -> None:
    app()


if __name__ == "__main__":
    main()
