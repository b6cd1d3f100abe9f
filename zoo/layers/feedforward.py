"""The position-wise feed-forward layer: Linear -> activation -> Linear.

Used by the Transformer (ReLU), BERT/RoBERTa (exact GELU) and GPT (GELU, tanh form in GPT-2)."""

from __future__ import annotations

import torch
from torch import nn

from zoo.layers.linear import ACTIVATIONS, Linear


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
        self.activation = activation  # a key of zoo.layers.ACTIVATIONS
        self.fc_in = Linear(d_model, d_ff, bias=bias)
        self.fc_out = Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fc_in applies the activation itself: in the same pass over its output where it can.
        return self.fc_out(self.fc_in(x, activation=self.activation))
