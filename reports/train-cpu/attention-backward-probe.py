"""Causal attention's forward and backward on the CPU, fp32, (1, 8 heads, T, 64): PyTorch's
SDPA (its flash kernel) against zoo.fast's blocked math path (written for attention with
dropout; here with p = 1e-9, so that it runs and drops nothing measurable). Fastest of 7 runs.

    python reports/train-cpu/attention-backward-probe.py
"""

import time

import torch
import torch.nn.functional as F

from zoo.fast.dropout import attention_with_dropout


def fastest_ms(attend, seqlen: int, repeat: int = 7) -> float:
    q, k, v = (torch.randn(1, 8, seqlen, 64, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, 8, seqlen, 64)
    times = []
    for _ in range(repeat + 2):  # two warm-up runs
        start = time.perf_counter()
        attend(q, k, v).backward(grad)
        times.append(time.perf_counter() - start)
        q.grad = k.grad = v.grad = None
    return min(times[2:]) * 1e3


def main() -> None:
    torch.manual_seed(0)
    for seqlen in (256, 1024, 2048, 4096):
        sdpa = fastest_ms(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                          seqlen)
        flops = 3.5 * 2 * seqlen**2 * 64 * 8  # causal forward 2 T^2 d, backward ~2.5x that
        print(f"T={seqlen}: SDPA {sdpa:.1f} ms ({flops / sdpa / 1e6:.0f} GFLOP/s)", end="")
        for block in (256, 512):
            ms = fastest_ms(lambda q, k, v, b=block: attention_with_dropout(
                q, k, v, None, True, 1e-9, b), seqlen)
            print(f"; blocked math ({block} rows) {ms:.1f} ms", end="")
        print()


if __name__ == "__main__":
    main()
