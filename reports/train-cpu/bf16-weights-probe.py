"""What bfloat16 copies of the linear weights, kept by the optimizer as the field's CPU mixed
precision does (IPEX's bf16 weights with fp32 masters), could save in a bfloat16 training step:
forward and backward under autocast over float32 weights (autocast casts each weight, then each
weight's gradient back) against the same model with its nn.Linear weights and biases stored in
bfloat16, alternated in one process; and the fused AdamW step over the float32 weights alone.
A bound on the saving, not an implementation: the bfloat16 model here has no float32 masters.

    python reports/train-cpu/bf16-weights-probe.py gpt:small:256 gpt:small:1024
"""

from __future__ import annotations

import time

import torch
from probes import parser, prepare

from harness.models import build_variant


def bf16_linears(model: torch.nn.Module) -> int:
    """Store every float32 nn.Linear's weight and bias in bfloat16 (a tied head stays as its
    embedding); how many were changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.float32:
            module.weight = torch.nn.Parameter(module.weight.detach().bfloat16())
            if module.bias is not None:
                module.bias = torch.nn.Parameter(module.bias.detach().bfloat16())
            changed += 1
    return changed


def one_cell(cell: str, rounds: int) -> None:
    name, variant, seqlen = cell.split(":")
    plain = build_variant(name, variant, seqlen=int(seqlen)).train()
    copies = build_variant(name, variant, seqlen=int(seqlen)).train()
    copies.load_state_dict(plain.state_dict())
    changed = bf16_linears(copies)
    ids = torch.randint(0, plain.config.vocab_size, (1, int(seqlen)))
    optimizer = torch.optim.AdamW(plain.parameters(), fused=True)

    def step(model, update=False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, targets=ids).loss
        loss.backward()
        if update:
            optimizer.step()
        model.zero_grad(set_to_none=True)

    ways = {"forward and backward, autocast over float32 weights": lambda: step(plain),
            f"forward and backward, {changed} linears in bfloat16": lambda: step(copies),
            "forward, backward and AdamW, float32 weights": lambda: step(plain, update=True)}
    seconds = {way: [] for way in ways}
    for run in ways.values():
        run()
    for _ in range(rounds):
        for way, run in ways.items():
            run()
            start = time.perf_counter()
            run()
            run()
            seconds[way].append((time.perf_counter() - start) / 2)
    for way, times in seconds.items():
        times.sort()
        print(f"{cell} bfloat16, {way}: median "
              f"{times[len(times) // 2] * 1e3:.0f} ms, fastest {times[0] * 1e3:.0f} ms")


def main(cells: list[str], rounds: int) -> None:
    prepare()
    for cell in cells:
        one_cell(cell, rounds)


if __name__ == "__main__":
    args = parser(__doc__, cell="NAME:VARIANT:SEQLEN").parse_args()
    main(args.cells, args.rounds)
