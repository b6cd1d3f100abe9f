"""What ALiBi costs attention on the CPU: one layer's forward and backward at 4096 tokens (8 heads
of 66, BLOOM's small), PyTorch's SDPA with only its causal flag (the flash kernel) against SDPA
with ALiBi's (heads x T x T) bias as a float mask (what zoo.bloom's plain path passes;
transformers' BLOOM adds the same bias to its scores in eager attention), and against zoo.fast's
alibi route, which puts the bias in extra query and key channels and runs the flash kernel
(zoo/fast/alibi.py). In float32, then in bfloat16 (the mask under autocast, as a BLOOM trains
with --dtype bfloat16; the route on the bfloat16 queries, keys and values autocast makes).
Fastest of 3.

    python reports/train-cpu/alibi-mask-probe.py
"""

import contextlib
import time

import torch
import torch.nn.functional as F

from zoo.fast.alibi import alibi_causal_attention
from zoo.layers import alibi_slopes

T, HEADS, HEAD_SIZE = 4096, 8, 66  # BLOOM small: d_model 528, 8 heads, 7 layers


def fastest(q, k, v, attention=F.scaled_dot_product_attention, autocast=False,
            **kwargs) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            out = attention(q, k, v, **kwargs)
        out.float().sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


torch.manual_seed(0)
q, k, v = (torch.randn(1, HEADS, T, HEAD_SIZE, requires_grad=True) for _ in range(3))
q16, k16, v16 = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
distance = torch.arange(T)[None, :] - torch.arange(T)[:, None]  # key - query, <= 0 where seen
slopes = torch.tensor(alibi_slopes(HEADS))[:, None, None]
alibi = (slopes * distance).masked_fill(distance > 0, float("-inf"))[None]  # (1, H, T, T)
for name, (a, b, c), autocast in (("float32", (q, k, v), False),
                                  ("bfloat16", (q16, k16, v16), True)):
    print(f"{name}:")
    print(f"  causal flag only (flash kernel):    {fastest(a, b, c, is_causal=True):.3f} s")
    masked = fastest(a, b, c, attn_mask=alibi, autocast=autocast)
    print(f"  ALiBi + causal as a float mask:     {masked:.3f} s")
    folded = fastest(a, b, c, alibi_causal_attention, slopes=slopes.flatten())
    print(f"  ALiBi in extra channels (zoo.fast): {folded:.3f} s")
