"""The alibi route: BLOOM's causal ALiBi attention without its (heads x T x T) mask.

The plain path (zoo.bloom) hands SDPA ALiBi's bias as a float mask, which rules out PyTorch's
CPU flash kernel: SDPA then reads a (heads x T x T) tensor on every call, and at 4096 tokens a
layer's forward and backward took about twice what the causal flag alone takes
(reports/train-cpu/alibi-mask-probe.py). But the causal bias is a dot product: for query i and
key j <= i,

    -m (i - j) = [m, -m i] . [j, 1]

so two more channels on each query and key carry it, and SDPA runs with its causal flag. In
float32 that sum is only as exact as its terms: m j alone reaches m T (2048 for m = 1/2 at 4096
tokens, where a float32 step is 2.4e-4), so the channels are placed first, where the product's
sum starts, and each slope is split into a high part whose products with every position are
exact and the small rest:

    queries  [hi, -hi i, lo, -lo i, q / sqrt(hs), 0...]
    keys     [j,  1,     j,  1,     k,            0...]

The first two terms cancel exactly to hi (j - i), the next two add lo (j - i) to within a
step of lo T, and q . k / sqrt(hs) lands on the bias as the mask's addition would. (Slopes that
are powers of two, those of any power-of-two head count, have lo = 0.) The scale is applied to
q here, so SDPA is called with scale 1, and the channels are padded with zeros to a multiple
of 8, the values too, whose extra output columns are dropped.

The route runs on the CPU in float32 (not under autocast, whose SDPA would take the channels in
bfloat16, where -m i is not exact past 256), for a forward over positions 0..T-1 without
padding (training, and a prompt's prefill) and without attention dropout (SDPA's CPU flash
kernel takes none); elsewhere, and under torch.compile, the plain mask. The tests hold it to
the plain path, and to a float64 reference at 2048 tokens, where a sum in another order would
be off by the 1e-4 the first paragraph names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zoo.bloom import AlibiBias, Attention
from zoo.fast.conditions import compiling, cpu_float32

BIAS_CHANNELS = 4  # hi, -hi i, lo, -lo i against j, 1, j, 1


def split_slopes(slopes: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 `slopes` as hi + lo, hi keeping only as many significant bits as leave its
    product with any position below `length` exact (24 less the positions' bits)."""
    # the mantissa bits dropped from hi; past 2^23 positions hi is a power of two (positions
    # from 2^24 on are not exact in float32 anyway)
    low_bits = min(length.bit_length(), 23)
    hi = (slopes.float().view(torch.int32) & ~((1 << low_bits) - 1)).view(torch.float32)
    return hi, slopes.float() - hi


def alibi_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           slopes: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) - m_h (i - j) over keys j <= i) v for q, k, v (B, nh, T, hs)
    at positions 0..T-1 and the heads' `slopes` (nh,), by SDPA's causal kernel with the bias
    in extra channels (see the module's docstring)."""
    B, H, T, D = q.shape
    width = -(-(D + BIAS_CHANNELS) // 8) * 8
    hi, lo = (part[:, None].expand(H, T) for part in split_slopes(slopes, T))
    i = torch.arange(T, dtype=q.dtype, device=q.device).expand(H, T)
    one = torch.ones_like(i)
    queries = torch.stack([hi, -hi * i, lo, -lo * i], dim=-1).expand(B, H, T, BIAS_CHANNELS)
    keys = torch.stack([i, one, i, one], dim=-1).expand(B, H, T, BIAS_CHANNELS)
    zeros = q.new_zeros(B, H, T, width - D - BIAS_CHANNELS)
    q = torch.cat([queries, q / math.sqrt(D), zeros], dim=-1)
    k = torch.cat([keys, k, zeros], dim=-1)
    v = torch.cat([v, q.new_zeros(B, H, T, width - D)], dim=-1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)[..., :D]


def folds(q: torch.Tensor, bias: AlibiBias, dropout: float) -> bool:
    """Whether the route runs for these queries (see the module's docstring)."""
    return (bias.past == 0 and bias.attention_mask is None and bias.length > 1
            and dropout == 0.0 and cpu_float32(q) and not torch.is_autocast_enabled("cpu")
            and not compiling())


class FoldedAlibiAttention(Attention):
    """zoo.bloom's Attention with ALiBi's bias folded into the queries and keys where it can
    be (CPU float32, positions 0..T-1, no padding, no attention dropout)."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: AlibiBias,
               cached: bool) -> torch.Tensor:
        dropout = self.attn_dropout if self.training else 0.0
        if folds(q, bias, dropout):
            return alibi_causal_attention(q, k, v, bias.slopes)
        return super().attend(q, k, v, bias, cached)
