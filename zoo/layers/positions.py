"""Rotary position embeddings (RoPE, Su et al. 2021), shared by Pangu-π and LLaMA, in the
rotate-half layout of Hugging Face's Llama: channel i of a head pairs with channel i + hs/2."""

from __future__ import annotations

import torch


def rope_tables(head_size: int, start: int, length: int, theta: float,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (length, hs) for positions start..start+length-1. Channel pair (i, i + hs/2)
    rotates by angle pos * theta^(-2i/hs). Built in fp32 per call: no buffer to go stale."""
    inv_freq = theta ** -(torch.arange(0, head_size, 2, device=device, dtype=torch.float32)
                          / head_size)
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
