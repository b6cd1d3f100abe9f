"""T5's position bias two ways, timed in turns in one process: as transformers builds it (the
bucket of every (query, key) pair looked up, then permuted to (1, heads, queries, keys), a
strided view that PyTorch's attention copies on every layer) and as zoo.t5 builds it since
this probe (the table looked up once per offset and laid along the diagonals, contiguous).
First, one attention call at 2048 tokens (8 heads of 64) with the bias each way, as the `small`
T5's layers make it; then the `small` T5's forward and training step (AdamW) at 1024 and 2048
tokens, two threads: the median of ROUNDS rounds, the two forms alternating.

    python reports/t5-cpu/bias-layout-probe.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from harness.models import build_variant
from harness.optim import adamw
from zoo.t5 import RelativePositionBias, relative_position_bucket

ROUNDS = 5


def per_pair(self: RelativePositionBias, queries: int, keys: int,
             first_query: int = 0) -> torch.Tensor:
    """The bias as transformers' T5Attention.compute_bias builds it."""
    device = self.table.weight.device
    query = torch.arange(first_query, first_query + queries, device=device)[:, None]
    key = torch.arange(keys, device=device)[None, :]
    bucket = relative_position_bucket(key - query, self.bidirectional, self.num_buckets,
                                      self.max_distance)
    return self.table(bucket).permute(2, 0, 1).unsqueeze(0)


def attention_call() -> None:
    """PyTorch's attention with a (1, 8, 2048, 2048) float bias, strided or contiguous."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 8, 2048, 64) for _ in range(3))
    strided = torch.randn(2048, 2048, 8).permute(2, 0, 1).unsqueeze(0)
    for name, bias in (("strided", strided), ("contiguous", strided.contiguous())):
        times = []
        for _ in range(ROUNDS + 1):
            start = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
            times.append(time.perf_counter() - start)
        print(f"attention at 2048 with a {name} bias: "
              f"{statistics.median(times[1:]) * 1000:,.0f} ms a call")


def main() -> None:
    torch.set_num_threads(2)
    attention_call()
    diagonal = RelativePositionBias.forward
    forms = {"per (query, key), permuted": per_pair, "per offset, contiguous": diagonal}
    for mode in ("forward", "train"):
        for seqlen in (1024, 2048):
            torch.manual_seed(0)
            model = build_variant("t5", "small").train(mode == "train")
            optimizer = adamw(model.parameters(), lr=1e-4)
            inputs = model.dummy_inputs(1, seqlen)

            def step(model=model, optimizer=optimizer, inputs=inputs, mode=mode) -> None:
                if mode == "forward":
                    with torch.no_grad():
                        model(**inputs)
                    return
                loss = model(**inputs, targets=inputs["tgt_ids"]).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

            times: dict[str, list[float]] = {name: [] for name in forms}
            for form in forms.values():  # a warm-up step each
                RelativePositionBias.forward = form
                step()
            for _ in range(ROUNDS):
                for name, form in forms.items():
                    RelativePositionBias.forward = form
                    start = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - start)
            RelativePositionBias.forward = diagonal
            old, new = (statistics.median(times[name]) for name in forms)
            print(f"{mode} at {seqlen}: per pair {old * 1000:,.0f} ms, per offset "
                  f"{new * 1000:,.0f} ms ({old / new:.2f}x; ranges "
                  f"{min(times[next(iter(forms))]) * 1000:,.0f}-"
                  f"{max(times[next(iter(forms))]) * 1000:,.0f} and "
                  f"{min(times['per offset, contiguous']) * 1000:,.0f}-"
                  f"{max(times['per offset, contiguous']) * 1000:,.0f} ms)")


if __name__ == "__main__":
    main()
