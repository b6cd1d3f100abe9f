"""One model's training step (small, batch 1, fp32, AdamW) with the C kernels' training forms
split in one OpenMP region of PyTorch's runtime (the default) and between the kernels' own
threads (zoo.scan_cpu._run, the way without OpenMP), alternated in one process: six rounds of
two steps each way after two warm-up steps; the median and fastest time per step.

    python reports/train-cpu/kernel-split-probe.py MODEL SEQLEN
"""

import sys
import time

import torch

from harness.models import build_variant
from zoo import scan_cpu

OPENMP = scan_cpu.team  # every kernel splits its work by scan_cpu.split


def own_threads(library, name):
    return None


def main(name: str, seqlen: int) -> None:
    model = build_variant(name, "small")
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (1, seqlen))
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)

    def step():
        model(ids, targets=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    step()
    seconds = {"OpenMP region": [], "own threads": []}
    for _ in range(6):
        for way, split in (("OpenMP region", OPENMP), ("own threads", own_threads)):
            scan_cpu.team = split
            step()
            start = time.perf_counter()
            step()
            step()
            seconds[way].append((time.perf_counter() - start) / 2)
    for way, times in seconds.items():
        times.sort()
        print(f"{name} {seqlen} {way}: median {times[len(times) // 2] * 1e3:.0f} ms, "
              f"fastest {times[0] * 1e3:.0f} ms a step")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
