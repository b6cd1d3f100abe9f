"""`catalog bench`: speed and memory sweeps of the zoo models (and their peers)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from harness import results
from harness.cli.common import (
    USAGE_ERROR,
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
from zoo.registry import REGISTRY


class Mode(str, Enum):
    forward = "forward"
    train = "train"
    generate = "generate"


class Peer(str, Enum):
    hf = "hf"
    rwkv_pip = "rwkv-pip"




def _choices(given: list[str] | None, allowed: type[Enum], option: str) -> list[str]:
    """An option's values, each comma-separated list split, every value one of `allowed`'s."""
    from harness.sweep import SweepError

    values = [v.strip() for text in given or [] for v in text.split(",") if v.strip()]
    names = [member.value for member in allowed]
    for value in values:
        if value not in names:
            raise SweepError(f"{option} {value!r}: expected {', '.join(names[:-1])} or "
                             f"{names[-1]}")
    return list(dict.fromkeys(values))


def _routes(given: list[str] | None, plain: bool) -> list[str] | None:
    """--routes' names, each one of zoo.fast.ROUTES; None when not given (every route)."""
    from harness.sweep import SweepError
    from zoo.fast import ROUTES

    if not given:
        return None
    if plain:
        raise SweepError("--routes and --plain: choose one (--plain takes no route)")
    names = [v.strip() for text in given for v in text.split(",") if v.strip()]
    for name in names:
        if name not in ROUTES:
            raise SweepError(f"--routes {name!r}: expected {', '.join(ROUTES)}")
    return list(dict.fromkeys(names))


@app.command()
def bench(
    ctx: typer.Context,
    models: Annotated[list[str] | None, typer.Argument(
        metavar="MODEL...", help=f"Zoo models ({', '.join(REGISTRY)}) or catalog ids that run "
        "one (gpt-2, mosaicbert).", show_default=False)
    ] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Every runnable model.")] = False,
    variant: Annotated[str, typer.Option(help="Catalog variant (tiny, small, or a published "
                                              "size such as 169m or gpt2-medium).")] = "small",
    seqlen: Annotated[str, typer.Option(
        help="Sequence length(s): 8192, a list 512,1024,2048 or a doubling range 512..16384.")
    ] = "1024",
    mode: Annotated[list[str] | None, typer.Option(
        metavar="MODE[,MODE...]",
        help="forward (prefill/encode), train (forward + backward + optimizer step) or generate "
             "(decode after a prompt of SEQLEN tokens); comma-separated or repeated for several.",
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
    against: Annotated[list[str] | None, typer.Option(
        metavar="PEER[,PEER...]",
        help="Also measure a peer implementation with the same weights and print ours/theirs: "
             "hf (Hugging Face: albert, bart, bert, bloom, ctrl, gpt, gpt-j, gpt-neo, gpt-neox, "
             "llama, mamba, mamba2, opt, roberta, rwkv, t5) or rwkv-pip (the official package: "
             "rwkv, rwkv5, rwkv6, rwkv7).",
        show_default=False)] = None,
    compile_model: Annotated[bool, typer.Option(
        "--compile", help="Also measure each zoo model under torch.compile, beside the eager "
                          "one, as impl zoo-compiled (compiled during the warm-up runs).")
    ] = False,
    results_path: Annotated[Path, typer.Option(
        "--results", help="JSON Lines file the records are appended to.")
    ] = Path("reports/results/bench.jsonl"),
    force: Annotated[bool, typer.Option(
        help="Measure again cells already in the results file.")] = False,
    calibrate: Annotated[bool, typer.Option(
        help="Measure this machine's matrix-multiply peak again (used for MFU).")] = False,
    plain: Annotated[bool, typer.Option(
        "--plain", help="Time the zoo models' plain PyTorch path, without their CPU speed "
                        "routes (zoo.fast: split matrix products, fused activations, the compiled "
                        "WKV and selective-scan loops); records list the routes each cell "
                        "took.")] = False,
    routes: Annotated[list[str] | None, typer.Option(
        "--routes", help="Take only these of the zoo's CPU speed routes (comma-separated, "
                         "repeatable: linear, ffn, wkv, wkv5, wkv7, scan, alibi, dropout, "
                         "loss; default every one), to see what each buys; records list the "
                         "routes each cell took, so each choice is a measurement of its own.",
        show_default=False)] = None,
    checkpoint: Annotated[str | None, typer.Option(
        help="Take the model and its sizes from a published checkpoint instead of a catalog "
             "variant: a folder, a weights file or a Hugging Face hub id (e.g. gpt2: the "
             "shape of GPT-2 small). Its config.json and the shapes in its weight files' "
             "headers give the config; the weights are not loaded: the model is randomly "
             "initialised, as timings do not depend on the values (a folder with config.json "
             "alone is sized with transformers' class for it). MODEL, if given, overrides the "
             "detected zoo model. Records name the variant checkpoint:CHECKPOINT.",
        show_default=False)] = None,
    settings: Annotated[list[str] | None, typer.Option(
        "--set", metavar="FIELD=VALUE",
        help="Set a config field of every model on top of the variant's or the checkpoint's "
             "(repeatable), e.g. --set window=512 or --set n_kv_head=2; records name the variant "
             "with it (\"small window=512\"), so each setting is a cell of its own.",
        show_default=False)] = None,
    launcher: LauncherOpt = "local", jobs: JobsOpt = None, address: AddressOpt = None,
) -> None:
    """Measure throughput, latency, peak memory and MFU against sequence length.

    Every cell (model, mode, length, ...) runs in a fresh process; its record is appended to
    the results file as soon as it ends, and a rerun skips cells already measured. A cell that
    runs out of memory, passes --max-memory or --timeout is recorded as such, the longer
    lengths of that model are skipped, and the sweep goes on; a rerun with a larger
    --max-memory or --timeout tries it again.
    """
    from harness import sweep as sweeps

    catalog = load_catalog_for(ctx, warn=False)
    peak_cache = results.default_peak_cache()
    with one_line_errors():
        device = resolve_device(device)  # before --calibrate measures on it
        names = zoo_names(catalog, models or [], all_models)
        fields = {}
        if checkpoint is not None:
            names, variant, fields = _checkpoint_sizes(ctx, checkpoint, names, all_models)
        if settings:
            variant, fields = _with_settings(catalog, names, variant, fields, settings)
        if calibrate:
            peak = sweeps.calibrate(device, dtype, threads, peak_cache, force=True)
            stdout().print(f"matrix-multiply peak on {device}, {dtype}: {peak / 1e9:,.1f} GFLOP/s "
                         f"(cached in {peak_cache})")
            if not names:
                return
        if not names:
            raise sweeps.SweepError("name at least one model (e.g. `catalog bench rwkv`), or --all")
        plan = sweeps.Sweep(
            models=names, variant=variant,
            modes=_choices(mode, Mode, "--mode") or [Mode.forward.value],
            seqlens=sweeps.parse_seqlens(seqlen), batch=batch, dtype=dtype, device=device,
            threads=threads, warmup=warmup, repeat=repeat, new_tokens=new_tokens,
            max_memory=sweeps.parse_bytes(max_memory), timeout=timeout,
            against=_choices(against, Peer, "--against"), compile=compile_model, fast=not plain,
            routes=_routes(routes, plain),
            force=force, results=results_path, command=command_line(ctx), fields=fields)
        sweeps.check(plan, catalog)
    for model, unsupported_mode in plan.unsupported():
        stderr().print(f"[yellow]note:[/] {model} cannot run {unsupported_mode} mode; "
                     "those cells are left out")
    with one_line_errors():
        runner, plan.threads = launcher_for(launcher, jobs, address, device, threads)
    if runner.jobs > 1:
        stderr().print(f"[yellow]note:[/] {runner.jobs} cells at once ({runner.name}): their "
                       "timings are taken beside each other and marked so in the records")
    records = _run_with_progress(plan, sweeps, catalog, peak_cache, runner)
    order = {(c.model, c.impl, c.mode, c.seqlen): i for i, c in enumerate(plan.cells(catalog))}
    records.sort(key=lambda r: order.get((r.model, r.impl, r.mode, r.seqlen), len(order)))
    stdout().print(_bench_table(records))
    stdout().print(f"records appended to {escape(str(results_path))}")
    note_busy(records, "cells", "their timings read low; measure them again (--force) when the "
                                "machine is quiet")



def _checkpoint_sizes(ctx: typer.Context, checkpoint: str, names: list[str], all_models: bool
                      ) -> tuple[list[str], str, dict[str, dict]]:
    """(models, variant label, fields by model) of `--checkpoint`: its zoo model (or the one
    MODEL names) and config fields, read without its weights."""
    import zoo
    from harness.pretrained import checkpoint_fields, checkpoint_label
    from harness.sweep import SweepError

    if all_models or len(names) > 1:
        raise SweepError("--checkpoint benchmarks one model: name at most one MODEL (to "
                         "override the detected one), without --all")
    if getattr(ctx.get_parameter_source("variant"), "name", None) == "COMMANDLINE":
        raise SweepError("--variant and --checkpoint both give the model's sizes: use one")
    name, fields = checkpoint_fields(checkpoint, names[0] if names else None)
    params = zoo.build(name, device="meta", fast=False, **fields).num_params()
    stderr().print(f"{escape(checkpoint)}: zoo model {name}, {params:,} parameters, randomly "
                   "initialised (the checkpoint's sizes, not its weights)")
    return [name], checkpoint_label(checkpoint), {name: fields}


def _with_settings(catalog, names: list[str], variant: str, fields: dict[str, dict],
                   settings: list[str]) -> tuple[str, dict[str, dict]]:
    """(variant label, fields by model) with --set's fields on top of each model's variant (or
    checkpoint) fields, each model's config checked to take them."""
    from harness.models import check_overrides, parse_overrides, variant_fields, variant_label

    overrides = parse_overrides(settings)
    out = {}
    for name in names:
        base = fields.get(name) or variant_fields(name, variant, catalog)
        check_overrides(name, overrides, base)
        out[name] = {**base, **dict(overrides)}
    return variant_label(variant, overrides), out


def _run_with_progress(plan, sweeps, catalog, peak_cache, runner) -> list[results.BenchRecord]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    records: list[results.BenchRecord] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=stderr(), transient=False) as progress:
        task = progress.add_task("benchmark", total=len(plan.cells(catalog)))

        def on_event(event) -> None:
            c = event.cell
            label = f"{c.model} {c.impl} {c.mode} seqlen {c.seqlen}"
            if event.kind == "start":
                progress.update(task, description=f"running {label}")
            else:
                status = event.record.status + (" (earlier run)" if event.record.resumed
                                                 else "")
                progress.update(task, advance=1, description=f"{label}: {status}")

        try:
            with interrupts_raise():
                for rec in sweeps.run(plan, peak_cache, on_event, catalog, runner):
                    records.append(rec)
        except KeyboardInterrupt:
            progress.stop()
            stderr().print(f"[yellow]interrupted[/]: {len(records)} record(s) kept in "
                         f"{escape(str(plan.results))}")
            raise typer.Exit(130) from None
        except sweeps.SweepError as exc:
            progress.stop()
            stderr().print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(USAGE_ERROR) from None
    return records


def _bench_table(records: list[results.BenchRecord]) -> Table:
    table = Table(title="Benchmark", header_style="bold")
    for column in ("model", "impl", "mode", "seqlen", "status", "tokens/s", "ms (median ± IQR)",
                   "peak mem", "above weights", "MFU", "ours/peer tok/s", "notes"):
        table.add_column(column, justify="right" if column not in ("model", "impl", "mode",
                                                                    "status", "notes") else "left")
    pairs = results.ratios(results.frame(records))
    ratio_of = {(p.model, p.mode, p.seqlen, p.peer): p.tokens_per_s_ratio
                for p in pairs.itertuples()}
    for r in records:
        ok = r.status == "ok"
        ratio = ratio_of.get((r.model, r.mode, r.seqlen, r.impl))
        notes = [*r.notes] + ([r.error] if r.error else [])
        if r.resumed:
            notes.append("from an earlier run")
        table.add_row(
            r.model, r.impl, r.mode, str(r.seqlen),
            r.status if ok else f"[red]{r.status}[/]",
            f"{r.tokens_per_s:,.0f}" if ok else "",
            f"{r.ms_median:,.1f} ± {r.ms_iqr:,.1f}" if ok else "",
            _gib(r.peak_mem_bytes), _gib(r.act_mem_bytes) if ok else "",
            f"{100 * r.mfu:.1f}%" if ok and r.mfu else "",
            f"{ratio:.2f}x" if ratio is not None and r.impl != "zoo" else "",
            escape("; ".join(notes)))
    return table


def _gib(value: int | None) -> str:
    return f"{value / 2**30:.2f} GiB" if value else ""
