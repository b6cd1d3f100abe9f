"""BERT's initialisation, shared by BERT/RoBERTa and MosaicBERT, and taken by BLOOM (and by GPT-NeoX
with its own standard deviation)."""

from __future__ import annotations

import torch
from torch import nn


def bert_init(module: nn.Module, std: float = 0.02) -> None:
    """N(0, std) weights for Linear and Embedding, zero biases, LayerNorm (1, 0), and a zero
    row for an embedding's padding index."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
