"""Train the same model in float32 and in bfloat16 mixed precision, seed by seed, and compare
the loss curves: is mixed precision's curve within the seeds' noise of float32's?

    python benchmarks/mixed_precision_curve.py                       # gpt, lm, 2 seeds
    python benchmarks/mixed_precision_curve.py --model gpt --seeds 0,1,2 --budget 1M-tokens \
        --width 256 --results reports/train-cpu/results/mixed_precision.jsonl

Each (precision, seed) run is one `catalog train` run (harness.quality.run.run_one: same data,
same tokens, same seed, so the initial weights and the batches are the same for both
precisions), evaluated on the validation split every --eval-every steps. The table gives the
validation loss at each evaluation as mean and spread over seeds for each precision, the mean
of the per-seed differences (bf16 - fp32) and the seeds' spread of float32 beside it; then the
test bits per byte and the tokens per second of each precision. The per-run rows (curve
included) are appended to --results as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.machine import provenance
from harness.quality.data import prepare
from harness.quality.run import run_one
from harness.quality.spec import RunSpec

PRECISIONS = ("float32", "bfloat16")


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {statistics.stdev(values):.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt")
    parser.add_argument("--variant", default="small")
    parser.add_argument("--task", default="lm")
    parser.add_argument("--budget", default="500K-tokens")
    parser.add_argument("--corpus", default=None, help="default: catalog train's")
    parser.add_argument("--seqlen", type=int, default=None, help="default: catalog train's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: catalog train's")
    parser.add_argument("--width", type=int, default=None, help="d_model (default: the variant's)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: dict[tuple[str, int], dict] = {}
    console = Console(width=160 if not sys.stdout.isatty() else None)
    with tempfile.TemporaryDirectory() as folder:
        for seed in seeds:
            for dtype in PRECISIONS:
                spec = RunSpec.from_options(task=args.task, budget=args.budget, seed=seed,
                                            dtype=dtype, width=args.width,
                                            eval_every=args.eval_every, variant=args.variant,
                                            corpus=args.corpus, seqlen=args.seqlen,
                                            batch_size=args.batch_size)
                data = prepare(spec)
                result = run_one(args.model, data, Path(folder) / f"{dtype}-{seed}")
                record = result.record
                runs[dtype, seed] = {
                    "model": args.model, "variant": args.variant, "task": args.task,
                    "budget": args.budget,
                    "width": record.width, "params": record.params, "dtype": dtype,
                    "seed": seed, "steps": result.history.steps, "tokens": record.tokens,
                    "tokens_per_s": record.tokens_per_s, "metric": record.metric,
                    "test": record.value, "val": record.val_value,
                    "curve": [(e["step"], e.get("loss", e.get(record.metric)))
                              for e in result.history.evals],
                    **provenance()}
                console.print(f"{dtype} seed {seed}: {record.metric} {record.value:.4f}, "
                              f"{record.tokens_per_s:.0f} tok/s")
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as out:
            for row in runs.values():
                out.write(json.dumps(row) + "\n")

    steps = sorted({s for row in runs.values() for s, _ in row["curve"]})
    table = Table(title=f"{args.model} {args.task}, validation loss (accuracy for mqar) by step, "
                        f"seeds {args.seeds}",
                  header_style="bold")
    for column in ("step", "float32", "bfloat16", "bf16 - fp32 (mean of seeds)",
                   "fp32 seeds' spread"):
        table.add_column(column, justify="right")

    def at(dtype, seed, step):
        return dict(runs[dtype, seed]["curve"]).get(step)

    for step in steps:
        values = {d: [at(d, s, step) for s in seeds] for d in PRECISIONS}
        if any(v is None for vs in values.values() for v in vs):
            continue  # a run that stopped before this step
        diffs = [b - f for f, b in zip(values["float32"], values["bfloat16"], strict=True)]
        noise = statistics.stdev(values["float32"]) if len(seeds) > 1 else float("nan")
        table.add_row(str(step), spread(values["float32"]), spread(values["bfloat16"]),
                      f"{statistics.fmean(diffs):+.4f}", f"{noise:.4f}")
    console.print(table)
    for dtype in PRECISIONS:
        rows = [runs[dtype, s] for s in seeds]
        console.print(f"{dtype}: test {rows[0]['metric']} "
                      f"{spread([r['test'] for r in rows])}, tokens/s "
                      f"{spread([r['tokens_per_s'] for r in rows])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
