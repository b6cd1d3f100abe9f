"""Whole training steps with attention with dropout by kernels/attention_cpu.py (the route) and
by the PyTorch form, alternated step by step in one process (what separate `catalog bench`
processes cannot resolve on a noisy shared host).

    python reports/train-cpu/attention-probe.py gpt:small:256:bfloat16 bert:small:1024:float32
"""

from __future__ import annotations

from probes import alternate_cells, parser, prepare

import zoo.fast.dropout


def main(cells: list[str], rounds: int) -> None:
    prepare()
    kernel = zoo.fast.dropout._kernel_attention
    ways = {"attention_cpu": lambda: setattr(zoo.fast.dropout, "_kernel_attention", kernel),
            "PyTorch form": lambda: setattr(zoo.fast.dropout, "_kernel_attention",
                                            lambda *args: False)}
    alternate_cells(cells, ways, rounds)


if __name__ == "__main__":
    args = parser(__doc__).parse_args()
    main(args.cells, args.rounds)
