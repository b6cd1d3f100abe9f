"""What ALiBi costs attention on the CPU: one layer's forward and backward at 4096 tokens (8 heads
of 66, BLOOM's small), PyTorch's SDPA with only its causal flag (the flash kernel) against SDPA
with ALiBi's (heads x T x T) bias as a float mask (what zoo.bloom's plain path passes;
transformers' BLOOM adds the same bias to its scores in eager attention), and against zoo.fast's
alibi route, which puts the bias in four extra query and key channels and runs the flash kernel
(zoo/fast/alibi.py). Fastest of 3.

    python reports/train-cpu/alibi-mask-probe.py
"""

import time

import torch
import torch.nn.functional as F

from zoo.fast.alibi import alibi_causal_attention
from zoo.layers import alibi_slopes

T, HEADS, HEAD_SIZE = 4096, 8, 66  # BLOOM small: d_model 528, 8 heads, 7 layers


def fastest(attention=F.scaled_dot_product_attention, **kwargs) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        attention(q, k, v, **kwargs).sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


torch.manual_seed(0)
q, k, v = (torch.randn(1, HEADS, T, HEAD_SIZE, requires_grad=True) for _ in range(3))
distance = torch.arange(T)[None, :] - torch.arange(T)[:, None]  # key - query, <= 0 where seen
slopes = torch.tensor(alibi_slopes(HEADS))[:, None, None]
alibi = (slopes * distance).masked_fill(distance > 0, float("-inf"))[None]  # (1, H, T, T)
print(f"causal flag only (flash kernel): {fastest(is_causal=True):.3f} s")
print(f"ALiBi + causal as a float mask:  {fastest(attn_mask=alibi):.3f} s")
folded = fastest(alibi_causal_attention, slopes=slopes.flatten())
print(f"ALiBi in extra channels (zoo.fast): {folded:.3f} s")
