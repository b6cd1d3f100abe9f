"""RWKV's token shift, shared by RWKV-4 and RWKV-7: each position sees the previous token's
vector next to its own."""

from __future__ import annotations

import torch


def token_shift(x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """The previous token's vector at every position (B, T, d); `last` (B, d) precedes x[:, 0]
    (zeros at the start of a text, the cached one when decoding)."""
    if x.size(1) == 1:  # decoding: the shifted sequence is the cached token alone
        return last[:, None]
    return torch.cat([last[:, None], x[:, :-1]], dim=1)
