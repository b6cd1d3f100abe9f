"""Positions inside attention. Rotary position embeddings (RoPE, Su et al. 2021), shared by
Pangu-π, LLaMA and GPT-NeoX, in the rotate-half layout of Hugging Face's Llama: channel i of a
head pairs with channel i + hs/2. ALiBi's head slopes (Press et al. 2022), shared by MosaicBERT
and BLOOM."""

from __future__ import annotations

import math

import torch


def rope_frequencies(head_size: int, theta: float, device: torch.device) -> torch.Tensor:
    """(hs/2,) the rotation frequencies: channel pair (i, i + hs/2) turns by theta^(-2i/hs) a
    position."""
    return theta ** -(torch.arange(0, head_size, 2, device=device, dtype=torch.float32)
                      / head_size)


def rope_tables(head_size: int, start: int, length: int, theta: float,
                device: torch.device, inv_freq: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (length, hs) for positions start..start+length-1. Channel pair (i, i + hs/2)
    rotates by angle pos * inv_freq[i], theta's plain frequencies (rope_frequencies) unless
    `inv_freq` gives others. Built in fp32 per call: no buffer to go stale."""
    if inv_freq is None:
        inv_freq = rope_frequencies(head_size, theta, device)
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)
    angles = torch.outer(pos, inv_freq)  # (T, hs/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, nh, T, hs) by the tables: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


def alibi_slopes(n_head: int) -> list[float]:
    """Press et al.'s head slopes: 2^(-8k/n), k = 1..n, for n a power of two; otherwise those of
    the closest lower power of two c, then every other slope of 2c, (n - c) of them."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]

    if math.log2(n_head).is_integer():
        return power_of_two(n_head)
    closest = 2 ** math.floor(math.log2(n_head))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: n_head - closest]
