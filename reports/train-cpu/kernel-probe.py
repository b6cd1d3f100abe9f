"""Whole training steps with one of zoo/fast/kernels/'s C kernels as it is now and as it was at an
earlier commit (its source read from git), alternated step by step in one process.

    python reports/train-cpu/kernel-probe.py attention_cpu --before 2c51887 gpt:small:1024:bfloat16
"""

from __future__ import annotations

from probes import alternate_cells, library_ways, parser, prepare


def main(kernel: str, before: str, cells: list[str], rounds: int) -> None:
    prepare()
    alternate_cells(cells, library_ways(f"zoo.fast.kernels.{kernel}", before), rounds)


if __name__ == "__main__":
    arguments = parser(__doc__, first=(("kernel", "a module of zoo/fast/kernels/: "
                                                  "attention_cpu, scan_cpu..."),))
    arguments.add_argument("--before", required=True, help="the commit to compare with")
    args = arguments.parse_args()
    main(args.kernel, args.before, args.cells, args.rounds)
