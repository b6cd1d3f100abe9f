"""The alibi route: BLOOM's causal ALiBi attention without its (heads x T x T) mask.

The plain path (zoo.bloom) hands SDPA ALiBi's bias as a float mask, which rules out PyTorch's
CPU flash kernel: SDPA then reads a (heads x T x T) tensor on every call, and at 4096 tokens a
layer's forward and backward took about twice what the causal flag alone takes in float32, three
times in bfloat16 (reports/train-cpu/alibi-mask-probe.py). But the causal bias is a dot product:
for query i and key j <= i,

    -m (i - j) = [m, -m i] . [j, 1]

so extra channels on each query and key carry it, and SDPA runs with its causal flag. The sum
is only as exact as its terms, and m j alone reaches m T (2048 for m = 1/2 at 4096 tokens),
so each precision gets channels whose products are exact:

float32: the channels come first, where the product's sum starts, and each slope is split into a
high part whose products with every position are exact and the small rest:

    queries  [hi, -hi i, lo, -lo i, q / sqrt(hs), 0...]
    keys     [j,  1,     j,  1,     k,            0...]

The first two terms cancel exactly to hi (j - i), the next two add lo (j - i) to within a step
of lo T, and q . k / sqrt(hs) lands on the bias as the mask's addition would: within float32's
step of the bias, not of m T (2.4e-4). (Slopes that are powers of two, those of any
power-of-two head count, have lo = 0.) The scale is applied to q here, so SDPA is called with
scale 1.

bfloat16 (under autocast, or a bfloat16 model): 8 significant bits hold neither m i nor a
position past 256, so the row's constant -m i is left out (a softmax does not change when a
constant is added to a row's scores) and the position is written in two base-256 digits,
j = 256 j1 + j0. The bias enters before SDPA's 1/sqrt(hs), as m sqrt(hs), which float32 holds
exactly as the sum of three bfloat16 parts p1 + p2 + p3:

    queries  [256 p1, 256 p2, 256 p3, p1, p2, p3, q, 0...]
    keys     [j1,     j1,     j1,     j0, j0, j0, k, 0...]

Every product is exact and the kernel adds them in float32, so the scores carry m j to within
float32's step of m T, far below bfloat16's own rounding of q . k (the bfloat16 mask rounds the
bias itself to 8 bits: 2048 has a step of 16). Queries and keys stay as they are.

In both, the channels are padded with zeros to a multiple of 8, the values too, whose extra
output columns are dropped. The route runs on the CPU in float32 (not under autocast, whose
SDPA would take the float32 channels in bfloat16) and in bfloat16 up to 65,536 positions (two
digits), for a forward over positions 0..T-1 without padding (training, and a prompt's
prefill) and without attention dropout (SDPA's CPU flash kernel takes none); elsewhere, and
under torch.compile, the plain mask. The tests hold it to the plain path, and to a float64
reference at 2048 tokens, where channels in another order or a slope rounded to bfloat16 miss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zoo.bloom import AlibiBias, Attention
from zoo.fast.conditions import compiling

BFLOAT16_POSITIONS = 1 << 16  # two base-256 digits


def split_slopes(slopes: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 `slopes` as hi + lo, hi keeping only as many significant bits as leave its
    product with any position below `length` exact (24 less the positions' bits)."""
    # the mantissa bits dropped from hi; past 2^23 positions hi is a power of two (positions
    # from 2^24 on are not exact in float32 anyway)
    low_bits = min(length.bit_length(), 23)
    hi = (slopes.float().view(torch.int32) & ~((1 << low_bits) - 1)).view(torch.float32)
    return hi, slopes.float() - hi


def bfloat16_parts(x: torch.Tensor) -> list[torch.Tensor]:
    """float32 `x` as three bfloat16 tensors whose sum is exactly x (8 significant bits each)."""
    parts, rest = [], x.float()
    for _ in range(3):
        parts.append(rest.bfloat16())
        rest = rest - parts[-1].float()
    return parts


def float32_channels(slopes: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 bias channels (see the module's docstring): queries' (nh, T, 4) and keys'
    (nh, T, 4)."""
    H = slopes.numel()
    hi, lo = (part[:, None].expand(H, T) for part in split_slopes(slopes, T))
    i = torch.arange(T, dtype=torch.float32, device=slopes.device).expand(H, T)
    one = torch.ones_like(i)
    return torch.stack([hi, -hi * i, lo, -lo * i], -1), torch.stack([i, one, i, one], -1)


def bfloat16_channels(slopes: torch.Tensor, T: int,
                      head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bfloat16 bias channels (see the module's docstring): queries' (nh, T, 6) and keys'
    (nh, T, 6), for a scale of 1 / sqrt(head_size)."""
    H = slopes.numel()
    parts = bfloat16_parts(slopes.float() * math.sqrt(head_size))  # 3 x (nh,)
    queries = torch.stack([*(256 * p for p in parts), *parts], -1)  # (nh, 6), x 256 exact
    j = torch.arange(T, device=slopes.device)
    j1, j0 = (j // 256).bfloat16(), (j % 256).bfloat16()
    keys = torch.stack([j1, j1, j1, j0, j0, j0], -1)  # (T, 6)
    return queries[:, None].expand(H, T, 6), keys.expand(H, T, 6)


def alibi_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           slopes: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) - m_h (i - j) over keys j <= i) v for q, k, v (B, nh, T, hs)
    at positions 0..T-1 and the heads' `slopes` (nh,), by SDPA's causal kernel with the bias
    in extra channels (see the module's docstring), in float32 or bfloat16."""
    B, H, T, D = q.shape
    if q.dtype == torch.bfloat16:
        queries, keys = bfloat16_channels(slopes, T, D)
        scale = 1 / math.sqrt(D)
    else:
        queries, keys = float32_channels(slopes, T)
        q, scale = q / math.sqrt(D), 1.0
    channels = queries.size(-1)
    width = -(-(D + channels) // 8) * 8
    zeros = q.new_zeros(B, H, T, width - D - channels)
    q = torch.cat([queries.to(q.dtype).expand(B, H, T, channels), q, zeros], dim=-1)
    k = torch.cat([keys.to(k.dtype).expand(B, H, T, channels), k, zeros], dim=-1)
    v = torch.cat([v, v.new_zeros(B, H, T, width - D)], dim=-1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)[..., :D]


def folds(q: torch.Tensor, bias: AlibiBias, dropout: float) -> bool:
    """Whether the route runs for these queries (see the module's docstring)."""
    if q.dtype == torch.float32:
        precision = not torch.is_autocast_enabled("cpu")
    else:
        precision = q.dtype == torch.bfloat16 and bias.length <= BFLOAT16_POSITIONS
    return (precision and q.device.type == "cpu" and bias.past == 0
            and bias.attention_mask is None and bias.length > 1 and dropout == 0.0
            and not compiling())


class FoldedAlibiAttention(Attention):
    """zoo.bloom's Attention with ALiBi's bias folded into the queries and keys where it can
    be (CPU float32 or bfloat16, positions 0..T-1, no padding, no attention dropout)."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: AlibiBias,
               cached: bool) -> torch.Tensor:
        dropout = self.attn_dropout if self.training else 0.0
        if folds(q, bias, dropout):
            return alibi_causal_attention(q, k, v, bias.slopes)
        return super().attend(q, k, v, bias, cached)
