"""The recurrent state of the RWKV versions with a matrix state per head (RWKV-5, -6 and -7),
shared unchanged by zoo.rwkv5, zoo.rwkv6 and zoo.rwkv7."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MatrixRWKVState:
    """The state after the tokens seen so far, of a fixed size: att_x, ffn_x (n_layer, B, d),
    the last ln1 / ln2 outputs (token shift; activation dtype); wkv (n_layer, B, H, N, N), each
    layer's matrix state S per head (fp32; its orientation is the model's, see its file). The
    `rwkv` pip package keeps the same three per layer, state[3i + 0..2] = att_x, wkv, ffn_x,
    without the batch dimension."""

    att_x: torch.Tensor
    wkv: torch.Tensor
    ffn_x: torch.Tensor

    @classmethod
    def empty(cls, n_layer: int, batch: int, d_model: int, n_head: int, head_size: int,
              dtype: torch.dtype, device: torch.device) -> MatrixRWKVState:
        """The state before the first token: zeros."""
        shift = (n_layer, batch, d_model)
        return cls(att_x=torch.zeros(shift, dtype=dtype, device=device),
                   wkv=torch.zeros(n_layer, batch, n_head, head_size, head_size, device=device),
                   ffn_x=torch.zeros(shift, dtype=dtype, device=device))
