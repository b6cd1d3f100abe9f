"""One RWKV-6 or RWKV-7 training step (small, batch 1, fp32, AdamW) with the time mix's low-rank
projections as zoo.fast.linear's products (the route's _LinearLoRA, the default) and as
PyTorch's `@` (the model file's), alternated in one process: six rounds of two steps each way
after two warm-up steps; the median and fastest time per step.

    python reports/train-cpu/lora-probe.py MODEL SEQLEN
"""

import sys
import time

import torch

import zoo.fast
from harness.models import build_variant
from zoo import rwkv6, rwkv7

PLAIN = {"rwkv6": (zoo.fast.CompiledWKV6TimeMix, rwkv6.TimeMix.lora),
         "rwkv7": (zoo.fast.CompiledWKV7TimeMix, rwkv7.TimeMix.lora)}


def main(name: str, seqlen: int) -> None:
    routed, plain_lora = PLAIN[name]
    routed_lora = routed.lora
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
    seconds = {"linear's products": [], "PyTorch's @": []}
    for _ in range(6):
        for way, lora in (("linear's products", routed_lora), ("PyTorch's @", plain_lora)):
            routed.lora = lora
            step()
            start = time.perf_counter()
            step()
            step()
            seconds[way].append((time.perf_counter() - start) / 2)
    routed.lora = routed_lora
    for way, times in seconds.items():
        times.sort()
        print(f"{name} {seqlen} {way}: median {times[len(times) // 2] * 1e3:.0f} ms, "
              f"fastest {times[0] * 1e3:.0f} ms a step")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
