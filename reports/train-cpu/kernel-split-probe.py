"""One model's training step (small, batch 1, fp32, AdamW) with the C kernels' training forms split
in one OpenMP region of PyTorch's runtime (the default) and between the kernels' own threads
(zoo.fast.kernels.ckernel.run_ranges, the way without OpenMP), alternated in one process: six
rounds of two steps each way after two warm-up steps; the median and fastest time per step.

    python reports/train-cpu/kernel-split-probe.py MODEL SEQLEN
"""

import sys

from probes import alternate_steps

from zoo.fast.kernels import ckernel

OPENMP = ckernel.team  # every kernel splits its work by ckernel.split


def own_threads(library, name):
    return None


def main(name: str, seqlen: int) -> None:
    alternate_steps(name, seqlen, {
        "OpenMP region": lambda: setattr(ckernel, "team", OPENMP),
        "own threads": lambda: setattr(ckernel, "team", own_threads)})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
