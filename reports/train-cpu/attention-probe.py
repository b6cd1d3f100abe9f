"""Whole training steps with attention with dropout by kernels/attention_cpu.py (the route) and
by the PyTorch form, alternated step by step in one process (what separate `catalog bench`
processes cannot resolve on a noisy shared host).

    python reports/train-cpu/attention-probe.py gpt:small:256:bfloat16 bert:small:1024:float32
"""

from __future__ import annotations

import argparse

import torch
from probes import alternate_steps

import zoo.fast.dropout
from harness.bench.memory import keep_freed_memory


def main(cells: list[str], rounds: int) -> None:
    keep_freed_memory()  # as training cells run
    torch.set_flush_denormal(True)
    kernel = zoo.fast.dropout._kernel_attention
    ways = {"attention_cpu": lambda: setattr(zoo.fast.dropout, "_kernel_attention", kernel),
            "PyTorch form": lambda: setattr(zoo.fast.dropout, "_kernel_attention",
                                            lambda *args: False)}
    for cell in cells:
        name, variant, seqlen, dtype = cell.split(":")
        alternate_steps(name, int(seqlen), ways, rounds=rounds, variant=variant, dtype=dtype)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", nargs="+", help="NAME:VARIANT:SEQLEN:DTYPE")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    main(args.cells, args.rounds)
