"""Time zoo.fast.linear's routes against F.linear on this machine, side by side.

    python benchmarks/linear_backends.py            # decoding (1 row) and prefill (2048 rows)
    python benchmarks/linear_backends.py --quick
    python benchmarks/linear_backends.py --training   # forward and backward, 2048 rows

For one row (decoding) the weights of a `small` model's shapes are cycled through, about 100 MB of
them, so that they stream from memory as in a decoding step rather than sit in the cache; the table
gives GB/s of weight read; `matvec_cpu` is zoo/fast/kernels/matvec_cpu.py's product (RWKV-5/6's
decoding; the route's split product is an OpenMP region, the compiled one shares the rows between
threads that never wait for one another), timed for one row only. For many rows it gives GFLOP/s;
`zoo linear` takes the kernel zoo.fast.many_rows_kernel() names (oneDNN's with AVX-512, else MKL's,
unless ZOO_LINEAR_KERNEL names one; printed under the table). --training times a training step's
three products (forward, input gradient, weight gradient) of F.linear and of `zoo linear` with
gradients, 6 x rows x out x in FLOPs. Each route is timed in alternation with the others (median of
several rounds), so a noisy machine slows all alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from zoo.fast import linear, many_rows_kernel, onednn_available
from zoo.fast.kernels import matvec_cpu

SHAPES = [(512, 512), (1536, 512), (2048, 512), (512, 2048), (8192, 512)]  # (out, in)


def timed(fn, rounds: int) -> list[float]:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--training", action="store_true",
                        help="forward and backward with gradients, many rows")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 5 if args.quick else 15
    if args.training:
        return training(rounds)
    routes = {"F.linear (MKL)": F.linear, "zoo linear": linear}
    if matvec_cpu.available():
        routes["matvec_cpu"] = matvec_cpu.matvec
    if onednn_available():
        routes["oneDNN"] = lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none",
                                                                            [], "")
    table = Table(title=f"linear routes, float32, {torch.get_num_threads()} threads",
                  header_style="bold")
    for column in ("weight (out, in)", "rows", "unit", *routes, "zoo / F.linear"):
        table.add_column(column, justify="right")
    torch.manual_seed(0)
    with torch.no_grad():
        for out_features, in_features in SHAPES:
            for rows in (1, 2048):
                copies = max(1, 100_000_000 // (out_features * in_features * 4)) if rows == 1 else 1
                weights = [torch.randn(out_features, in_features) for _ in range(copies)]
                x = torch.randn(rows, in_features)
                timed_here = {name: fn for name, fn in routes.items()
                              if rows == 1 or name != "matvec_cpu"}
                samples = {name: [] for name in timed_here}
                for _ in range(rounds):  # alternate the routes round by round
                    for name, fn in timed_here.items():
                        run = lambda fn=fn, x=x, weights=weights: [fn(x, w) for w in weights]  # noqa: E731
                        samples[name] += timed(run, 1)
                median = {name: statistics.median(s) for name, s in samples.items()}
                if rows == 1:
                    unit, work = "GB/s", copies * out_features * in_features * 4 / 1e9
                else:
                    unit, work = "GFLOP/s", 2 * rows * out_features * in_features / 1e9
                speed = [f"{work / median[name]:.1f}" if name in median else "" for name in routes]
                ratio = median["F.linear (MKL)"] / median["zoo linear"]
                table.add_row(f"({out_features}, {in_features})", str(rows), unit, *speed,
                              f"{ratio:.2f}x")
    console = Console(width=160 if not sys.stdout.isatty() else None)
    console.print(table)
    console.print(f"zoo linear, more than a few rows: {many_rows_kernel()} (ZOO_LINEAR_KERNEL)")
    return 0


def training(rounds: int, rows: int = 2048) -> int:
    """F.linear against zoo.fast.linear with gradients: forward, then dy W and dy^T x."""
    routes = {"F.linear (MKL)": F.linear, "zoo linear": linear}
    table = Table(title=f"linear routes with gradients, float32, {rows} rows, "
                        f"{torch.get_num_threads()} threads", header_style="bold")
    for column in ("weight (out, in)", *(f"{name} GFLOP/s" for name in routes),
                   "zoo / F.linear"):
        table.add_column(column, justify="right")
    torch.manual_seed(0)
    for out_features, in_features in SHAPES:
        x = torch.randn(rows, in_features, requires_grad=True)
        weight = torch.randn(out_features, in_features, requires_grad=True)
        dy = torch.randn(rows, out_features)
        samples = {name: [] for name in routes}
        for _ in range(rounds):
            for name, fn in routes.items():
                samples[name] += timed(lambda fn=fn, x=x, w=weight, dy=dy: fn(x, w).backward(dy), 1)
        median = {name: statistics.median(s) for name, s in samples.items()}
        work = 6 * rows * out_features * in_features / 1e9
        table.add_row(f"({out_features}, {in_features})",
                      *(f"{work / median[name]:.1f}" for name in routes),
                      f"{median['F.linear (MKL)'] / median['zoo linear']:.2f}x")
    console = Console(width=160 if not sys.stdout.isatty() else None)
    console.print(table)
    console.print(f"zoo linear with gradients: {many_rows_kernel()} (ZOO_LINEAR_KERNEL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
