"""Positions inside attention. Rotary position embeddings (RoPE, Su et al. 2021), shared by
Pangu-π, LLaMA, GPT-NeoX and GPT-J, in two layouts of the same rotation: rotate-half, Hugging
Face's Llama's, where channel i of a head pairs with channel i + hs/2, and interleaved, the
paper's and GPT-J's, where channel 2i pairs with 2i + 1 (`interleaved=True`). The two differ by a
fixed reordering of the channels, so a checkpoint only runs in the layout it was trained in.
`partial_rope` turns the first r channels of a head and leaves the rest (GPT-NeoX, GPT-J).
ALiBi's head slopes (Press et al. 2022), shared by MosaicBERT and BLOOM. The split sinusoid
table added to the embeddings by Pegasus and CTRL."""

from __future__ import annotations

import math

import torch


def rope_frequencies(head_size: int, theta: float, device: torch.device) -> torch.Tensor:
    """(hs/2,) the rotation frequencies: channel pair (i, i + hs/2) turns by theta^(-2i/hs) a
    position."""
    return theta ** -(torch.arange(0, head_size, 2, device=device, dtype=torch.float32)
                      / head_size)


def rope_tables(head_size: int, start: int, length: int, theta: float,
                device: torch.device, inv_freq: torch.Tensor | None = None,
                interleaved: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (length, hs) for positions start..start+length-1. The i-th channel pair
    ((i, i + hs/2), or (2i, 2i + 1) interleaved) rotates by angle pos * inv_freq[i], theta's
    plain frequencies (rope_frequencies) unless `inv_freq` gives others. Built in fp32 per call:
    no buffer to go stale."""
    if inv_freq is None:
        inv_freq = rope_frequencies(head_size, theta, device)
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)
    angles = torch.outer(pos, inv_freq)  # (T, hs/2)
    if interleaved:
        angles = angles.repeat_interleave(2, dim=-1)  # (T, hs): a0 a0 a1 a1 ...
    else:
        angles = torch.cat((angles, angles), dim=-1)  # (T, hs): a0 a1 ... a0 a1 ...
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               interleaved: bool = False) -> torch.Tensor:
    """Rotate (B, nh, T, hs) by the tables (built with the same `interleaved`): each pair
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)  # -x1 x0 -x3 x2 ...
    else:
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


def partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 interleaved: bool = False) -> torch.Tensor:
    """x (B, nh, T, hs) with its first r channels turned by the (T, r) tables and the rest as
    they are (r = 0: no positions at all)."""
    r = cos.size(-1)
    if r == 0:
        return x
    return torch.cat((apply_rope(x[..., :r], cos, sin, interleaved), x[..., r:]), dim=-1)


def alibi_slopes(n_head: int) -> list[float]:
    """Press et al.'s head slopes: 2^(-8k/n), k = 1..n, for n a power of two; otherwise those of
    the closest lower power of two c, then every other slope of 2c, (n - c) of them."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]

    if math.log2(n_head).is_integer():
        return power_of_two(n_head)
    closest = 2 ** math.floor(math.log2(n_head))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: n_head - closest]


def split_sinusoids(length: int, d_model: int, start: int = 0) -> torch.Tensor:
    """A fixed position table (length, d_model), Pegasus's and CTRL's, for positions start ..
    start + length - 1: row p holds sin(p w_k) for k < d/2, then cos(p w_k), with
    w_k = 10000^(-2k/d). These are the Transformer's sinusoids (section 3.5, zoo/transformer.py)
    with the sines and cosines in two halves rather than interleaved; computed in float64 and
    stored in float32. Positions count from 0."""
    k = torch.arange(d_model // 2, dtype=torch.float64)
    positions = torch.arange(start, start + length, dtype=torch.float64)
    angles = positions[:, None] / 10000.0 ** (2 * k / d_model)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()
