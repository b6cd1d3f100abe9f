"""Whole training steps with one of zoo/fast/kernels/'s C kernels as it is now and as it was at an
earlier commit (its source read from git), alternated step by step in one process.

    python reports/train-cpu/kernel-probe.py attention_cpu --before 2c51887 gpt:small:1024:bfloat16
"""

from __future__ import annotations

import argparse

import torch
from probes import alternate_steps, library_ways

from harness.bench.memory import keep_freed_memory


def main(kernel: str, before: str, cells: list[str], rounds: int) -> None:
    keep_freed_memory()  # as training cells run
    torch.set_flush_denormal(True)
    ways = library_ways(f"zoo.fast.kernels.{kernel}", before)
    for cell in cells:
        name, variant, seqlen, dtype, *mode = cell.split(":")
        alternate_steps(name, int(seqlen), ways, rounds=rounds, variant=variant, dtype=dtype,
                        mode=mode[0] if mode else "train")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kernel", help="a module of zoo/fast/kernels/: attention_cpu, scan_cpu...")
    parser.add_argument("cells", nargs="+", help="NAME:VARIANT:SEQLEN:DTYPE[:forward]")
    parser.add_argument("--before", required=True, help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    main(args.kernel, args.before, args.cells, args.rounds)
