"""A language model's cross-entropy, forward and backward, by F.cross_entropy and by
zoo/fast/kernels/loss_cpu.py, alternated in one process. (At the start of the backward
F.cross_entropy holds three rows x V tensors, its log-probabilities, their zeroed gradient and
the logits' gradient; the kernel two, the logits and their gradient.)

    python reports/train-cpu/loss-probe.py [--vocab 50257] [--rows 1024,4096] [--rounds 3]
    python reports/train-cpu/loss-probe.py --model rwkv:169m:1024   # whole training steps

With --model, a whole training step of that model (batch 1, float32, AdamW, every route) with
its loss by F.cross_entropy and by the kernel, alternated step by step in one process (six
rounds of two steps each way).

Each figure is the fastest of 7 runs. Run with the benchmark's allocator settings
(MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4294967295) to leave out page faults, as the
training cells do.
"""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F
from probes import alternate_steps, fastest_ms

from zoo.fast.kernels import loss_cpu
from zoo.fast.loss import FusedLMLoss
from zoo.model import LMLoss


def main(vocab: int, rows: list[int], rounds: int) -> None:
    torch.set_flush_denormal(True)
    print(f"cross-entropy over {vocab} words, forward and backward (ms):")
    for R in rows:
        g = torch.Generator().manual_seed(0)
        z = torch.randn(R, vocab, generator=g).requires_grad_()
        targets = torch.randint(0, vocab, (R,), generator=g)
        print(f"  {R} rows (a rows x V tensor: {R * vocab * 4 / 2**20:.0f} MiB):")
        for r in range(rounds):
            a = fastest_ms(functools.partial(step, F.cross_entropy, z, targets))
            b = fastest_ms(functools.partial(step, loss_cpu.cross_entropy, z, targets))
            print(f"    round {r + 1}: F.cross_entropy {a:.1f}, loss_cpu {b:.1f} ({a / b:.2f}x)")


def step(loss, z: torch.Tensor, targets: torch.Tensor) -> None:
    loss(z, targets).backward()
    z.grad = None


def whole_steps(model: str) -> None:
    name, variant, seqlen = model.split(":")
    fused = FusedLMLoss.forward
    alternate_steps(name, int(seqlen), {
        "loss_cpu": lambda: setattr(FusedLMLoss, "forward", fused),
        "F.cross_entropy": lambda: setattr(FusedLMLoss, "forward", LMLoss.forward),
    }, variant=variant)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--rows", default="1024,4096")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", help="NAME:VARIANT:SEQLEN: time whole training steps")
    args = parser.parse_args()
    if args.model:
        whole_steps(args.model)
    else:
        main(args.vocab, [int(r) for r in args.rows.split(",")], args.rounds)
