"""How fast this machine's attention kernel is, against its matrix-multiply peak.

    python benchmarks/attention_kernel.py             # 2048 and 8192 tokens, fp32 and bf16
    python benchmarks/attention_kernel.py --seqlen 4096 --heads 12 --head-size 64

The zoo's attention models (and Hugging Face's) call F.scaled_dot_product_attention, so its
speed bounds their MFU at long lengths, where attention is most of the work. This times it
alone on (1, heads, T, head_size) inputs, causal and not, and prints GFLOP/s (4 T^2 d FLOPs
for the full product, half for causal) beside the matmul peak `catalog bench` measured (its
cache), and the share of that peak it reaches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from harness import results, sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", default="2048,8192")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    lengths = sweep.parse_seqlens(args.seqlen)
    try:
        peaks = json.loads(results.default_peak_cache().read_text())
    except (OSError, ValueError):
        peaks = {}
    table = Table(title=f"F.scaled_dot_product_attention, {args.heads} heads of "
                        f"{args.head_size}, {torch.get_num_threads()} threads", header_style="bold")
    for column in ("dtype", "tokens", "mask", "ms", "GFLOP/s", "matmul peak", "share of peak"):
        table.add_column(column, justify="right")
    torch.manual_seed(0)
    for dtype in ("float32", "bfloat16"):
        peak = peaks.get(sweep.peak_label("cpu", dtype, None))
        for T in lengths:
            q, k, v = (torch.randn(1, args.heads, T, args.head_size).to(getattr(torch, dtype))
                       for _ in range(3))
            for causal in (True, False):
                F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                times = []
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    times.append(time.perf_counter() - start)
                seconds = statistics.median(times)
                flops = 4 * T * T * args.head_size * args.heads / (2 if causal else 1)
                speed = flops / seconds
                table.add_row(dtype, str(T), "causal" if causal else "none",
                              f"{1000 * seconds:,.1f}", f"{speed / 1e9:,.0f}",
                              f"{peak / 1e9:,.0f}" if peak else "not measured",
                              f"{speed / peak:.0%}" if peak else "")
    Console(width=120 if not sys.stdout.isatty() else None).print(table)
    if not peaks:
        print("no matmul peak cached: run `catalog bench --calibrate` (and --dtype bfloat16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
