"""GPT-Neo's local layers in bands of 256 queries against one masked attention over every key
(GPTNeo.band = None, the bands' oracle): the `small` variant at 2048 tokens, a forward and a
training step (AdamW), the two forms in turns in one process, fastest of three each.

    python reports/gpt-neo-cpu/band-probe.py
"""

import time

import torch

from harness.models import build_variant

torch.manual_seed(0)
model = build_variant("gpt-neo", "small", max_seq_len=4096)
ids = torch.randint(0, 8192, (1, 2048))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def forward() -> None:
    model.eval()
    with torch.no_grad():
        model(ids)


def train() -> None:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    model(ids, targets=ids.roll(-1, 1)).loss.backward()
    optimizer.step()


for name, step in (("forward", forward), ("train", train)):
    best: dict[int | None, float] = {}
    for _ in range(3):
        for band in (256, None):
            model.band = band
            step()  # warm-up
            start = time.perf_counter()
            step()
            best[band] = min(best.get(band, float("inf")), time.perf_counter() - start)
    print(f"{name}, 2048 tokens: bands of 256 {best[256]:.3f} s, one masked attention "
          f"{best[None]:.3f} s, ratio {best[None] / best[256]:.2f}")
