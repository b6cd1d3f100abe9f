"""`catalog train`, `quality` and `eval`: equal-budget training and lm-eval."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.cli.common import (
    AddressOpt,
    JobsOpt,
    LauncherOpt,
    app,
    command_line,
    interrupts_raise,
    launcher_for,
    load_catalog_for,
    note_busy,
    one_line_errors,
    resolve_device,
    stderr,
    stdout,
    zoo_names,
)

if TYPE_CHECKING:  # the library is imported when a command runs: `catalog --help` needs no torch
    from harness.quality.spec import RunSpec

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
    "--batch-size",
    help="Sequences per step (default: lm 8 of 256 tokens, mlm 16, mqar 2,048 tokens: 32 of 64).",
    show_default=False)]
LrOpt = Annotated[float | None, typer.Option(help="Peak learning rate (default 1e-3).",
                                             show_default=False)]
EvalEveryOpt = Annotated[int, typer.Option(
    help="Steps between validation evaluations (and resumable saves).")]
MqarSeqlenOpt = Annotated[int, typer.Option(help="MQAR sequence length.")]
MqarPairsOpt = Annotated[int, typer.Option(help="MQAR key-value pairs per sequence.")]
MqarVocabOpt = Annotated[int, typer.Option(
    help="MQAR vocabulary (keys from the lower half, values from the upper). Zoology's "
         "figure uses 8192; 512 lets a CPU learn the lookup in minutes.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (cuda when present), cpu, cuda or cuda:N.")]
TrainDtypeOpt = Annotated[str, typer.Option(
    help="Training precision: float32, or bfloat16 (mixed: autocast over float32 weights; "
         "fast where the hardware has bfloat16 matrix units, slower on CPUs without them).")]
QualityResultsOpt = Annotated[Path, typer.Option(
    "--results", help="JSON Lines file the quality records are appended to.")]
ResumeOpt = Annotated[bool, typer.Option(
    help="Continue an interrupted run from its last save in the output folder; for several "
         "models, keep those it finished (their records in --results) and train the rest.")]
ForceOpt = Annotated[bool, typer.Option(help="Overwrite a finished checkpoint in the folder.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="FIELD=VALUE",
    help="Set a config field of every model on top of the variant's (repeatable), e.g. "
         "--set d_state=128; records name the variant with it (\"tiny d_state=128\").",
    show_default=False)]
QUALITY_RESULTS = Path("reports/results/quality.jsonl")

# What a run that shared its cores with other work should do (harness.cli.common.note_busy).
TRAIN_AGAIN = ("their tokens/s read low, and under a time budget so did their steps; train them "
               "again when the machine is quiet")


@app.command("train")
def train_model(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Zoo model or catalog id (gpt, rwkv, bert, ...).")],
    task: TaskOpt = "lm", budget: BudgetOpt = "5m", variant: VariantOpt = "small",
    seed: SeedOpt = 0, corpus: CorpusOpt = None, tokenizer: TokenizerOpt = "bytes",
    bpe_vocab: BpeVocabOpt = 8192, seqlen: SeqlenOpt = None, batch_size: BatchOpt = None,
    lr: LrOpt = None, eval_every: EvalEveryOpt = 50, mqar_seqlen: MqarSeqlenOpt = 64,
    mqar_kv_pairs: MqarPairsOpt = 4, mqar_vocab: MqarVocabOpt = 512, device: DeviceOpt = "auto",
    dtype: TrainDtypeOpt = "float32", settings: SetOpt = None,
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
    from harness.models import parse_overrides
    from harness.quality.spec import SET_BY_OPTIONS, RunSpec

    with one_line_errors():
        spec = RunSpec.from_options(
            task=task, budget=budget, variant=variant, seed=seed, corpus=corpus,
            tokenizer=tokenizer, bpe_vocab=bpe_vocab, seqlen=seqlen, batch_size=batch_size,
            lr=lr, eval_every=eval_every, mqar_seqlen=mqar_seqlen, mqar_kv_pairs=mqar_kv_pairs,
            mqar_vocab=mqar_vocab, device=resolve_device(device), dtype=dtype,
            overrides=parse_overrides(settings, SET_BY_OPTIONS))
    _train_and_record(ctx, [model], spec, out, several=False, resume=resume, force=force,
                      results_path=results_path)


def _numbers(option: str, text: str | None, kind: type = int) -> list:
    """"64,128" -> [64, 128] for a grid axis; a one-line error naming the option if not."""
    if text is None:
        return [None]
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"{option} {text!r}: give a number or a comma-separated list, e.g. "
                         f"{'1e-3,1e-2' if kind is float else '64,128'}")
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None and option not in PAIRED:  # the same cell twice
        raise ValueError(f"{option} {text!r}: {twice:g} is given twice")
    return values


# Lists paired one to one, as Zoology pairs them: a value may repeat (64,64 with 4,8).
PAIRED = ("--mqar-seqlen", "--mqar-kv-pairs")


@app.command()
def quality(
    ctx: typer.Context,
    models: Annotated[list[str], typer.Argument(
        metavar="MODEL...", help="Zoo models or catalog ids, trained one after the other.")],
    task: TaskOpt = "lm", budget: BudgetOpt = "5m",
    variant: Annotated[str | None, typer.Option(
        help="Catalog variant (default: small; tiny for mqar, Zoology's 2 layers at width "
             "64); small is parameter-matched.", show_default=False)] = None,
    seed: Annotated[str, typer.Option(help="Seed, or seeds (0,1,2): one cell per seed.")] = "0",
    corpus: CorpusOpt = None, tokenizer: TokenizerOpt = "bytes",
    bpe_vocab: BpeVocabOpt = 8192,
    seqlen: Annotated[str | None, typer.Option(
        help="Training length, or lengths (128,256,512): one cell per length (default: lm "
             "256, mlm 128).", show_default=False)] = None,
    batch_size: BatchOpt = None,
    lr: Annotated[str | None, typer.Option(
        help="Peak learning rate, or rates (1e-3,1e-2): one cell per rate, the best chosen on "
             "the validation split (default 1e-3).", show_default=False)] = None,
    width: Annotated[str | None, typer.Option(
        help="d_model, or widths (64,128): one cell per width, the variant's other fields kept.",
        show_default=False)] = None,
    eval_every: EvalEveryOpt = 50,
    mqar_seqlen: Annotated[str, typer.Option(
        help="MQAR sequence length, or lengths (64,128,256).")] = "64",
    mqar_kv_pairs: Annotated[str, typer.Option(
        help="MQAR key-value pairs, or counts (4,8,16): paired with --mqar-seqlen one to one, "
             "as Zoology pairs them, or every combination with --cross.")] = "4",
    cross: Annotated[bool, typer.Option(
        help="MQAR cells: every (seqlen, pairs) combination instead of pairs.")] = False,
    mqar_vocab: MqarVocabOpt = 512,
    extrapolate: Annotated[int | None, typer.Option(
        help="lm: also score the test text at 2T, 4T ... up to this length (Press et al.), "
             "and the loss by token position.", show_default=False)] = None,
    stride: Annotated[int | None, typer.Option(
        help="lm, with --extrapolate: also score with sliding windows moved by this many "
             "tokens.", show_default=False)] = None,
    device: DeviceOpt = "auto", dtype: TrainDtypeOpt = "float32", settings: SetOpt = None,
    grid: Annotated[bool, typer.Option(
        help="Run each model (and each cell of the axes above) in its own process, recorded "
             "as it ends and skipped on a rerun; implied by any list.")] = False,
    timeout: Annotated[float, typer.Option(help="Grid: seconds a cell may run.")] = 3600.0,
    launcher: LauncherOpt = "local", jobs: JobsOpt = None, address: AddressOpt = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder of the checkpoints, one subfolder per model or cell (default "
             "runs/quality-TASK).", show_default=False)] = None,
    resume: ResumeOpt = False, force: ForceOpt = False,
    results_path: QualityResultsOpt = QUALITY_RESULTS,
) -> None:
    """Train several models at an equal budget and compare them on one task.

    Every model gets the same tokenizer, budget, seed, examples and data order; the `small`
    variants are parameter-matched. Prints one row per model (and, for lm, the unigram byte
    baseline every model must beat). Lists of widths, lengths, learning rates or seeds make a
    grid: one process per cell, each recorded as it ends; each model's learning rate is then
    chosen on the validation split and its test score shown as mean and spread over seeds.
    """
    from harness.models import parse_overrides
    from harness.quality.run import check_resume_or_force
    from harness.quality.spec import SET_BY_OPTIONS, RunSpec

    with one_line_errors():
        seeds = _numbers("--seed", seed)
        lrs = _numbers("--lr", lr, float)
        widths = _numbers("--width", width)
        seqlens = _numbers("--seqlen", seqlen)
        mqar_lengths = _numbers("--mqar-seqlen", mqar_seqlen)
        mqar_pairs = _numbers("--mqar-kv-pairs", mqar_kv_pairs)
        spec = RunSpec.from_options(
            task=task, budget=budget, variant=variant or ("tiny" if task == "mqar" else "small"),
            seed=seeds[0], corpus=corpus, tokenizer=tokenizer, bpe_vocab=bpe_vocab,
            seqlen=seqlens[0], batch_size=batch_size, lr=lrs[0], eval_every=eval_every,
            mqar_seqlen=mqar_lengths[0], mqar_kv_pairs=mqar_pairs[0], mqar_vocab=mqar_vocab,
            # a Ray cluster's cells may have the GPU its head lacks
            device=resolve_device(device, here=launcher != "ray"), dtype=dtype,
            width=widths[0],
            extrapolate=extrapolate, stride=stride,
            overrides=parse_overrides(settings, SET_BY_OPTIONS))
        if task in ("lm", "seq2seq") and variant is None and widths == [None]:
            spec = _sized(ctx, models, spec, out or Path("runs") / f"quality-{task}")
            widths = [spec.width]  # every cell at the chosen width, not the variant's
        check_resume_or_force(resume, force)  # a grid too, which resumes by itself
        axes = (seeds, lrs, widths, seqlens, mqar_lengths, mqar_pairs)
        if grid or cross or any(len(axis) > 1 for axis in axes):
            from harness.quality.grid import parse_shapes

            if task == "mqar":
                shapes = parse_shapes(mqar_lengths, mqar_pairs, paired=not cross)
            else:
                shapes = [(T, None) for T in seqlens]
            _run_grid(ctx, models, spec, shapes=shapes, widths=widths, lrs=lrs, seeds=seeds,
                      out=out, timeout=timeout, force=force, results_path=results_path,
                      launch_options=(launcher, jobs, address))
            return
        if (launcher, jobs, address) != ("local", None, None):
            raise ValueError("--launcher, --jobs and --address spread a grid's cells: give a "
                             "list of seeds, rates, widths or lengths, or --grid")
    _train_and_record(ctx, models, spec, out, several=True, resume=resume, force=force,
                      results_path=results_path)


def _sized(ctx: typer.Context, models: list[str], spec: RunSpec, folder: Path) -> RunSpec:
    """The spec with a width chosen for its budget (harness.quality.sizing), said on stderr. A
    time budget's choice is kept in `folder`/sizing.json and reused by a run of the same
    models and settings (a resume, a grid's rerun), which must train the same sizes."""
    from harness.quality.model import check_model
    from harness.quality.sizing import keep_choice, kept_choice, size_for_budget, sizing_inputs
    from harness.quality.tokenizer import ByteTokenizer

    catalog = load_catalog_for(ctx, warn=False)
    names = zoo_names(catalog, models, False)
    # Each model's task and --set fields checked before sizing builds any of them.
    if any(check_model(name, spec, catalog) not in ("lm", "seq2seq") for name in names):
        return spec  # the encoders' mlm: keep the variant
    vocab = ByteTokenizer().vocab_size if spec.tokenizer == "bytes" else spec.bpe_vocab
    kept, inputs = folder / "sizing.json", sizing_inputs(names, spec, vocab)
    choice = kept_choice(kept, inputs) if spec.budget.seconds else None
    if choice is None:
        with stderr().status("choosing a model size for the budget"):
            choice = size_for_budget(names, spec, vocab, catalog)
        if spec.budget.seconds:
            keep_choice(kept, inputs, choice)
    stderr().print(escape(choice.reason))
    return dataclasses.replace(spec, width=choice.width, depth=True,
                               notes=(*spec.notes, choice.reason))


def _run_grid(ctx: typer.Context, models: list[str], spec: RunSpec, *, shapes, widths, lrs,
              seeds, out: Path | None, timeout: float, force: bool, results_path: Path,
              launch_options: tuple[str, int | None, str | None]) -> None:
    """Run the grid's cells one process each, with a progress bar, then print each model's
    test score at the learning rate chosen on validation."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from harness.quality.grid import Grid, check, run_grid
    from harness.quality.run import plan_runs

    catalog = load_catalog_for(ctx, warn=False)
    names = zoo_names(catalog, models, False)
    plan_runs(names, spec, None, several=True, resume=False, force=True, catalog=catalog)
    grid = Grid(names, spec, widths=widths, shapes=shapes, lrs=lrs, seeds=seeds,
                out=out or Path("runs") / f"quality-{spec.task}", results=results_path,
                timeout=timeout, force=force, catalog_dir=ctx.obj, command=command_line(ctx))
    check(grid)
    launcher, grid.threads = launcher_for(*launch_options, spec.device, grid.threads)
    if launcher.jobs > 1 and spec.budget.seconds:
        stderr().print(f"[yellow]note:[/] {launcher.jobs} cells at once on a wall-clock budget: "
                       "each cell's share of the machine decides what the budget buys it (a "
                       "token or FLOPs budget does not depend on it); the records say so")
    console = stderr()
    records = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("grid", total=len(grid.cells()))

        def on_event(event) -> None:
            if event.kind == "start":
                progress.update(bar, description=f"training {event.cell.label}")
                return
            rec = event.record
            progress.advance(bar)
            if event.resumed:
                shown = "already in the results file"
            elif rec.status == "ok":
                validation = "" if rec.val_value is None else \
                    f" (validation {rec.val_value:.4f})"
                shown = (f"{rec.metric} {rec.value:.4f}{validation}, {rec.steps} steps, "
                         f"{rec.wall_s:.0f} s")
            else:
                shown = f"[red]{rec.status}[/]: {escape(rec.error or '')}"
            console.print(f"{escape(event.cell.label)}: {shown}")

        try:
            with interrupts_raise():
                records = list(run_grid(grid, on_event, launcher))
        except KeyboardInterrupt:
            progress.stop()
            console.print("[yellow]interrupted[/]: finished cells are in the results file; "
                          "rerun the same command to run the rest (an unfinished "
                          "cell goes on from its last save)")
            raise typer.Exit(130) from None
    stdout().print(_grid_table(records))
    stdout().print(f"records appended to {escape(str(results_path))}")
    note_busy(records, "cells", TRAIN_AGAIN)


def _grid_table(records: list) -> Table:
    """Each model and cell: the test score at the learning rate with the best validation score
    (mean over seeds), its spread over seeds and the rates tried."""
    from harness import results
    from harness.quality.selection import select

    chosen = select(results.frame(records))
    rows = results.records_of(chosen)
    # The variant where it tells rows apart: several in the file, or --set fields.
    variants = {row.get("variant") for row in rows}
    with_variant = len(variants) > 1 or any(" " in str(v) for v in variants)
    table = Table(title="Quality grid (learning rate chosen on validation)", header_style="bold")
    columns = ("model", *(("variant",) if with_variant else ()), "width", "seqlen", "pairs",
               "metric", "test mean", "± std", "seeds", "lr chosen", "lrs tried", "validation",
               "failed")
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "variant", "metric")
                         else "right")
    for row in rows:
        table.add_row(*(_shown(row.get(name)) for name in (
            "model", *(("variant",) if with_variant else ()), "width", "seqlen", "kv_pairs",
            "metric", "test_mean", "test_std", "seeds", "lr", "lrs", "val_mean", "failed")))
    return table


def _shown(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _train_and_record(ctx: typer.Context, models: list[str], spec: RunSpec, out: Path | None,
                      *, several: bool, resume: bool, force: bool, results_path: Path) -> None:
    """Check every model, folder and the results file, prepare the data once, then train the
    models one after the other, appending each record as soon as its model is done."""
    from harness import results
    from harness.quality.data import prepare
    from harness.quality.distributed import init_distributed
    from harness.quality.run import check_finished_data, plan_runs, run_one

    catalog = load_catalog_for(ctx, warn=False)
    with one_line_errors():
        names = zoo_names(catalog, models, False)
        # Under torchrun each process takes its own GPU: the spec says which.
        device, rank = init_distributed(spec.device, os.environ)
        spec = dataclasses.replace(spec, device=device)
        plan = plan_runs(names, spec, out, several=several, resume=resume, force=force,
                         catalog=catalog, results_path=results_path)
        if rank == 0:
            results.check_writable(results_path)
        try:
            with interrupts_raise():
                data = prepare(spec, plan.tasks)
        except KeyboardInterrupt:
            stderr().print("[yellow]interrupted[/] while preparing the data; nothing was "
                           "trained")
            raise typer.Exit(130) from None
        check_finished_data(plan, data)
    is_main = rank == 0
    console = stderr() if is_main else Console(stderr=True, quiet=True)
    records = []
    for name, folder in plan.folders.items():
        if name in plan.finished:  # --resume: an earlier run of this command trained it
            records.append(plan.finished[name])
            console.print(f"{name}: finished by an earlier run, its record already in "
                          f"{escape(str(results_path))}")
            continue
        resumable = several and bool(records)  # --resume would keep the models done so far
        with one_line_errors(), _train_progress(console, name, spec, folder,
                                                resumable) as on_step:
            result = run_one(name, data, folder, resume=resume, on_step=on_step,
                             is_main=is_main, catalog=catalog, command=command_line(ctx))
        if not is_main:
            continue
        results.append(results_path, result.record)
        records.append(result.record)
        console.print(f"{name}: {result.record.metric} {result.record.value:.4f}; "
                      f"checkpoint {escape(str(result.checkpoint))}")
    if is_main:
        stdout().print(_quality_table(records, data.baseline))
        stdout().print(f"records appended to {escape(str(results_path))}")
        note_busy(records, "runs", TRAIN_AGAIN)


@contextmanager
def _train_progress(console: Console, name: str, spec: RunSpec, folder: Path,
                    resumable: bool) -> Iterator:
    """A progress bar over the budget (tokens or seconds) with the loss and learning rate; on
    Ctrl-C, what is saved in `folder` to resume from (`resumable`: models finished before)."""
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
            with interrupts_raise():
                yield on_step
        except KeyboardInterrupt:
            progress.stop()
            state = folder / "state.pt"
            if state.exists():
                console.print(f"[yellow]interrupted[/]: {name}'s training is saved in "
                              f"{escape(str(state))}; rerun with --resume to go on from there")
            elif resumable:
                console.print(f"[yellow]interrupted[/] before {name} trained a step; rerun "
                              "with --resume to keep the models finished before it")
            else:
                console.print(f"[yellow]interrupted[/] before {name} trained a step; nothing "
                              "to resume")
            raise typer.Exit(130) from None


def _quality_table(records: list, baseline: float | None) -> Table:
    table = Table(title="Quality (equal budget)", header_style="bold")
    for column in ("model", "variant", "width", "task", "metric", "value", "params", "tokens",
                   "steps", "train time", "tok/s", "notes"):
        table.add_column(column, justify="right" if column in (
            "width", "value", "params", "tokens", "steps", "train time", "tok/s") else "left")
    for r in records:
        table.add_row(r.model, r.variant, str(r.width or ""), r.task, r.metric, f"{r.value:.4f}",
                      f"{r.params:,}", f"{r.tokens:,}", str(r.steps),
                      f"{r.train_seconds:,.0f} s",
                      f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "",
                      escape("; ".join(r.notes)))
    if baseline is not None and any(r.metric == "bits_per_byte" for r in records):
        table.add_row("unigram bytes", "", "", "lm", "bits_per_byte", f"{baseline:.4f}", "", "", "",
                      "", "", "byte frequencies of the training split (the bar to clear)")
    return table


@app.command("eval")
def eval_checkpoint(
    ctx: typer.Context,
    checkpoint: Annotated[str, typer.Argument(
        metavar="CHECKPOINT",
        help="A checkpoint folder from `catalog train`, or a published decoder or T5 "
             "checkpoint: a Hugging Face folder or hub id (gpt2, owner/name; from the local "
             "Hugging Face cache, downloaded when not there; HF_HUB_OFFLINE=1: the cache only), "
             "scored with its own tokenizer.")],
    tasks: Annotated[str, typer.Option(
        help="Comma-separated local lm-eval tasks: zoo_heldout (bits per byte, perplexities of "
             "the held-out text), zoo_lastword (last-word cloze).")] = "zoo_heldout,zoo_lastword",
    corpus: Annotated[str | None, typer.Option(
        help="Corpus whose test split is evaluated: a UTF-8 file, a folder of .txt/.md/.rst "
             "files, or hf:NAME (online). Default: the one a `catalog train` checkpoint was "
             "trained on; for a published checkpoint, the Python standard library's "
             "documentation.", show_default=False)] = None,
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
    """Evaluate a checkpoint through lm-evaluation-harness (offline, `zoo` adapter).

    The tasks are built from the test split of the corpus and shipped with this package;
    lm-eval runs with `simple_evaluate`. For a `catalog train` checkpoint the harness's own
    bits per byte of the same text (saved at training time) is printed beside lm-eval's.
    """
    from harness import results
    from harness.quality.evaluate import EvalSpec, run_lm_eval

    with one_line_errors():
        spec = EvalSpec(checkpoint=checkpoint,
                        tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()),
                        corpus=corpus, batch_size=batch_size, max_length=max_length,
                        limit=limit, device=resolve_device(device))
        results.check_writable(results_path)
        evaluation = run_lm_eval(spec, command=command_line(ctx))
    for rec in evaluation.records:
        results.append(results_path, rec)
    own = evaluation.trained_scores.get("bits_per_byte")
    table = Table(title=f"lm-eval: {escape(str(checkpoint))}", header_style="bold")
    # The harness's own score exists for `catalog train` checkpoints only.
    columns = ("task", "metric", "lm-eval") + (
        ("harness", "lm-eval / harness") if own is not None else ())
    for column in columns:
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for task_name, metrics in evaluation.scores.items():
        for metric, value in metrics.items():
            same = metric == "bits_per_byte" and own is not None
            ours = (f"{own:.4f}" if same else "", f"{value / own:.4f}" if same else "")
            table.add_row(task_name, metric, _number(value), *(ours if own is not None else ()))
    stdout().print(table)
    stdout().print(f"records appended to {escape(str(results_path))}")


def _number(value) -> str:
    if not isinstance(value, float):
        return str(value)
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.3e}"
