"""The training step of this report's cells, T5 and the Transformer as the sizing built them
(d_model 64, 2 + 2 layers), on one thread: seconds per step of 8 pairs of 128 + 128 tokens, and
torch.profiler's top operators over five of T5's steps. The cells take turns, a few steps each,
for ROUNDS rounds: median and range. T5 is timed twice: as the cells run now, its attention on
zoo.fast's dropout route (kernels/attention_cpu.py, which gives the position bias its gradient),
and with its attention on PyTorch's SDPA as the grid's cells ran it (a float mask with dropout:
SDPA's math path and PyTorch's dropout mask).

    python reports/seq2seq-positions-cpu/step-profile.py
"""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import torch
from torch.profiler import profile

from harness.optim import adamw
from harness.quality.model import build_model
from harness.quality.spec import RunSpec
from harness.quality.tokenizer import ByteTokenizer
from harness.quality.train import Budget
from zoo import t5
from zoo.fast.dropout import DropoutT5Attention

ROUNDS, STEPS = 7, 5


def _cell(name: str, data, sdpa: bool):
    """A cell's model and one training step of it on fixed inputs."""
    net = build_model(name, "seq2seq", data).train()
    if sdpa:  # T5's attention back on the plain module, PyTorch's SDPA
        for module in net.modules():
            if type(module) is DropoutT5Attention:
                module.__class__ = t5.Attention
    optimizer = adamw(net.parameters(), lr=1e-3)
    torch.manual_seed(0)
    inputs = net.dummy_inputs(8, 128)

    def step() -> None:
        loss = net(**inputs, targets=inputs["tgt_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return net, step


def main() -> None:
    torch.set_num_threads(1)
    spec = RunSpec(task="seq2seq", budget=Budget(tokens=3_000_000), width=64, depth=True)
    data = SimpleNamespace(spec=spec, tokenizer=ByteTokenizer(), mqar=None)
    cells = {"t5": _cell("t5", data, sdpa=False),
             "t5, attention on SDPA": _cell("t5", data, sdpa=True),
             "transformer": _cell("transformer", data, sdpa=False)}
    times: dict[str, list[float]] = {label: [] for label in cells}
    for _, step in cells.values():
        for _ in range(3):
            step()
    for _ in range(ROUNDS):  # the cells in turn, so that a noisy spell hits them alike
        for label, (_, step) in cells.items():
            start = time.perf_counter()
            for _ in range(STEPS):
                step()
            times[label].append((time.perf_counter() - start) / STEPS)
    for label, (net, _) in cells.items():
        spread = sorted(times[label])
        print(f"{label}: {net.num_params():,} parameters, median "
              f"{statistics.median(spread):.3f} s a step (range {spread[0]:.3f} to "
              f"{spread[-1]:.3f}, {ROUNDS} rounds of {STEPS} steps)")
    with profile() as prof:
        for _ in range(5):
            cells["t5"][1]()
    print("t5's steps:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
