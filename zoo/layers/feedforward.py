"""The position-wise feed-forward layer: Linear -> activation -> Linear.

Used by the Transformer (ReLU), BERT/RoBERTa (exact GELU) and GPT (GELU, tanh form in GPT-2)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

# The activations a feed-forward layer can take, by the name a config gives.
ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact, erf form
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),  # GPT-2's "gelu_new"
}


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
        self.activation = activation  # a key of ACTIVATIONS
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(ACTIVATIONS[self.activation](self.fc_in(x)))
