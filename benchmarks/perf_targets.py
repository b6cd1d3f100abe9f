"""Run the performance comparison of issue 7 (or of issue 15, training) and print its targets.

    python benchmarks/perf_targets.py                 # 512..8192, decoding at 512 and 8192,
                                                      # small and the published base sizes
    python benchmarks/perf_targets.py --quick         # 512 and 2048, small only (minutes)
    python benchmarks/perf_targets.py --check-only --results FILE   # table from earlier records
    python benchmarks/perf_targets.py --suite training --seqlen 256..4096   # training steps:
        # ours against HF, MFU, RWKV against HF and our GPT, mixed-precision bf16 against fp32
    python benchmarks/perf_targets.py --suite training --device cuda --dtype bfloat16 \
        --compile --seqlen 1024,4096         # the same table on a GPU in bf16 (mixed
        # precision), with each model under torch.compile beside the eager one

Each cell runs in its own process through the benchmark harness (`harness.sweep`), ours and the
peers one after the other in the same run, so every ratio compares measurements taken under
the same conditions. The records are appended to --results (a `catalog report` input too).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness import results, sweep, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("inference", "training"), default="inference",
                        help="inference: forward, decoding, memory (issue 7); training: the "
                             "training step (issue 15)")
    parser.add_argument("--seqlen", default=None,
                        help="lengths (inference: 512..8192; training: 256..4096)")
    parser.add_argument("--decode", default="512,8192", help="prompt lengths for decoding")
    parser.add_argument("--quick", action="store_true",
                        help="--seqlen 512,2048 --decode 512,2048 --no-base-sizes "
                             "(training: --seqlen 256,1024)")
    parser.add_argument("--base-sizes", action=argparse.BooleanOptionalAction, default=None,
                        help="also compare the published base sizes (bert base, gpt2, roberta "
                             "base) with HF; default: on, off with --quick")
    parser.add_argument("--variant", default="small")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="training suite: the precision of ours against HF (float32; "
                             "bfloat16 or float16 train mixed, as the quality trainer does)")
    parser.add_argument("--compile", action="store_true",
                        help="training suite: also measure each model under torch.compile and "
                             "check that eager, the default, is no slower")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds per cell before it is stopped (recorded as a timeout; "
                             "that model's longer lengths are skipped)")
    parser.add_argument("--new-tokens", type=int, default=64,
                        help="timed tokens per decoding cell (a median over more of them: "
                             "decoding is bandwidth bound, and a shared machine's bandwidth "
                             "varies from token to token)")
    parser.add_argument("--results", type=Path, default=Path("reports/results/perf_targets.jsonl"))
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every cell this many times, round after round; each "
                             "side of a ratio keeps its fastest round")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated groups of sweeps: {', '.join(targets.GROUPS)} "
                             f"(training: {', '.join(targets.TRAIN_GROUPS)})")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the table to this Markdown file")
    parser.add_argument("--fastest-records", type=Path, default=None,
                        help="also write the records the table uses (each cell's fastest "
                             "round) to this JSON Lines file, e.g. for `catalog report`")
    parser.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the matrix-multiply peak of each dtype first, so that MFU "
                             "is against the machine as it runs now (a shared host's varies "
                             "from day to day); --no-calibrate uses the cached peaks")
    parser.add_argument("--check-only", action="store_true",
                        help="measure nothing; check the records already in --results")
    args = parser.parse_args(argv)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        training = args.suite == "training"
        default = ("256,1024" if args.quick else "256..4096") if training else (
            "512,2048" if args.quick else "512..8192")
        seqlens = sweep.parse_seqlens(args.seqlen or default)
        decode = sweep.parse_seqlens("512,2048" if args.quick else args.decode)
        groups = targets.TRAIN_GROUPS if training else targets.GROUPS
        only = set(args.only.split(",")) if args.only else set(groups)
        if only - set(groups):
            raise sweep.SweepError(f"--only {args.only!r}: the groups are {', '.join(groups)}")
        if not training and (args.dtype is not None or args.compile):
            raise sweep.SweepError("--dtype and --compile belong to --suite training (the "
                                   "inference suite plans its own bf16 cells)")
        if args.timeout <= 0:
            raise sweep.SweepError(f"--timeout {args.timeout}: give a positive number of seconds")
        if args.rounds < 1:
            raise sweep.SweepError(f"--rounds {args.rounds}: give at least 1")
    except sweep.SweepError as error:
        err.print(f"[bold red]error:[/] {error}")
        return 2
    records: list = []
    if args.check_only:
        loaded = results.load([args.results])
        records = loaded.records
        if not records:
            err.print(f"[bold red]error:[/] no records in {args.results}")
            return 2
    else:
        base_sizes = not args.quick if args.base_sizes is None else args.base_sizes
        planned = (targets.train_plan(tuple(seqlens), args.dtype or "float32", args.compile)
                   if training
                   else targets.plan(tuple(seqlens), tuple(decode), base_sizes))
        plans = [p for p in planned if p.group in only] * args.rounds
        sweeps = [sweep.Sweep(models=list(p.models), variant=p.variant or args.variant,
                              modes=list(p.modes),
                              seqlens=list(p.seqlens), dtype=p.dtype, device=args.device,
                              threads=args.threads, repeat=args.repeat, timeout=args.timeout,
                              new_tokens=args.new_tokens, against=list(p.against),
                              compile=p.compile, force=True, results=args.results)
                  for p in plans]
        try:
            for dtype in sorted({s.dtype for s in sweeps}) if args.calibrate else ():
                peak = sweep.calibrate(args.device, dtype, args.threads,
                                       results.default_peak_cache(), force=True)
                err.print(f"matrix-multiply peak on {args.device}, {dtype}: "
                          f"{peak / 1e9:,.1f} GFLOP/s")
        except sweep.SweepError as error:
            err.print(f"[bold red]error:[/] {error}")
            return 2
        total = sum(len(s.cells()) for s in sweeps)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err) as progress:
            bar = progress.add_task("benchmark", total=total)

            def on_event(event: sweep.Event) -> None:
                c = event.cell
                progress.update(bar, description=f"{c.model} {c.impl} {c.mode} {c.seqlen} "
                                                 f"{c.dtype}")
                if event.kind == "done":
                    progress.advance(bar)

            try:
                for s in sweeps:
                    records.extend(sweep.run(s, results.default_peak_cache(), on_event))
            except sweep.SweepError as error:
                err.print(f"[bold red]error:[/] {error}")
                return 2
    rows = targets.check_training(records) if training else targets.check(records)
    title = "Training targets" if training else "Performance targets"
    table = Table(title=f"{title} (ratios from one run)", header_style="bold")
    for column in ("target", "cell", "measured", "required", "verdict"):
        table.add_column(column, justify="right" if column in ("measured", "required") else "left")
    colour = {"met": "green", "missed": "red", "not measured": "yellow"}
    for row in rows:
        table.add_row(row.target, row.cell, "" if row.value is None else f"{row.value:.2f}",
                      row.required, f"[{colour[row.verdict]}]{row.verdict}[/]")
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    met = sum(r.met is True for r in rows)
    print(f"{met} of {len(rows)} met; records in {args.results}")
    if args.fastest_records is not None:
        args.fastest_records.parent.mkdir(parents=True, exist_ok=True)
        args.fastest_records.write_text("".join(json.dumps(r) + "\n"
                                                for r in targets.fastest(records)))
        print(f"fastest records written to {args.fastest_records}")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(targets.markdown(rows))
        print(f"table written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
