"""The training step of this report's cells, T5 and the Transformer as the sizing built them
(d_model 64, 2 + 2 layers), on one thread: seconds per step of 8 pairs of 128 + 128 tokens, and
torch.profiler's top operators over five of T5's steps.

    python reports/seq2seq-positions-cpu/step-profile.py
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import torch
from torch.profiler import profile

from harness.optim import adamw
from harness.quality.model import build_model
from harness.quality.spec import RunSpec
from harness.quality.tokenizer import ByteTokenizer
from harness.quality.train import Budget


def main() -> None:
    torch.set_num_threads(1)
    spec = RunSpec(task="seq2seq", budget=Budget(tokens=3_000_000), width=64, depth=True)
    data = SimpleNamespace(spec=spec, tokenizer=ByteTokenizer(), mqar=None)
    for name in ("t5", "transformer"):
        net = build_model(name, "seq2seq", data).train()
        optimizer = adamw(net.parameters(), lr=1e-3)
        torch.manual_seed(0)
        inputs = net.dummy_inputs(8, 128)

        def step(net=net, optimizer=optimizer, inputs=inputs) -> None:
            loss = net(**inputs, targets=inputs["tgt_ids"]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        for _ in range(3):
            step()
        start = time.perf_counter()
        for _ in range(10):
            step()
        print(f"{name}: {net.num_params():,} parameters, "
              f"{(time.perf_counter() - start) / 10:.3f} s a step")
        if name == "t5":
            with profile() as prof:
                for _ in range(5):
                    step()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
