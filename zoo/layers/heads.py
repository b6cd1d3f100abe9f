"""An output head tied to an embedding table, shared by GPT, BERT/RoBERTa and the Transformer."""

from __future__ import annotations

from torch import nn


def tied_head(embedding: nn.Embedding, bias: nn.Parameter | None = None) -> nn.Linear:
    """nn.Linear(d, V) whose weight IS `embedding`'s (V, d) table: one Parameter under two
    state-dict keys, as nanoGPT and Hugging Face tie their heads, so that whatever handles the
    model's linear layers handles the head too. `bias`, when given, is the head's own
    Parameter (BERT's MLM decoder), shared the same way.

    Built on the meta device: its own weight and bias are replaced at once, and drawing them
    on the CPU would move the random generator, so the same seed would give other weights to
    every module initialised after it. Call it after the model's initialisation, which must
    draw the table once, as the embedding it is."""
    rows, width = embedding.weight.shape
    head = nn.Linear(width, rows, bias=bias is not None, device="meta")
    head.weight = embedding.weight
    if bias is not None:
        head.bias = bias
    return head
