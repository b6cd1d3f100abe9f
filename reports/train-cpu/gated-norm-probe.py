"""Mamba-2's gated RMSNorm, forward and backward, in PyTorch (zoo.mamba2.GatedRMSNorm) and by
zoo/fast/kernels/norm_cpu.py, alternated in one process, at the `small` layer's shape (1 x 1024
tokens, 1024 channels, one group; z a view of the 2320-wide input projection, as the mixer passes
it).

    python reports/train-cpu/gated-norm-probe.py [--seqlen 1024] [--batch 1] [--rounds 3]

Each figure is the fastest of 15 runs. Run with the benchmark's allocator settings
(MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4294967295) to leave out page faults, as the
training cells do.
"""

from __future__ import annotations

import argparse

import torch
from probes import fastest_ms

from zoo.fast.kernels import norm_cpu
from zoo.mamba2 import GatedRMSNorm

D, WIDTH = 1024, 2320


def main(batch: int, seqlen: int, rounds: int) -> None:
    torch.set_flush_denormal(True)
    norm = GatedRMSNorm(D, 1, 1e-5)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(batch, seqlen, D, generator=g).requires_grad_()
    projection = torch.randn(batch, seqlen, WIDTH, generator=g).requires_grad_()
    dout = torch.randn(batch, seqlen, D, generator=g)

    def plain():
        norm(y, projection[..., :D]).backward(dout)

    def ours():
        norm_cpu.gated_rms_norm(y, projection[..., :D], norm.weight, 1, 1e-5).backward(dout)

    print(f"gated RMSNorm, {batch} x {seqlen} tokens, {D} channels, forward and backward (ms):")
    for r in range(rounds):
        a, b = fastest_ms(plain, repeat=15), fastest_ms(ours, repeat=15)
        print(f"  round {r + 1}: PyTorch {a:.2f}, zoo.fast.kernels.norm_cpu {b:.2f} ({a / b:.2f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqlen", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    main(args.batch, args.seqlen, args.rounds)
