"""CTRL: a 1.6B-parameter decoder trained with control codes, so that a text's first token says
what kind of text follows (a domain, a URL, a task).

Paper: Keskar et al. 2019, "CTRL: A Conditional Transformer Language Model for Controllable
Generation", arXiv 1909.05858. Reference: Hugging Face's CTRLLMHeadModel (its port of
Salesforce's released model), whose folders zoo.convert reads.

The control codes are ordinary tokens of the vocabulary: conditioning is p(x_i | code, x_<i),
nothing in the network tells them apart. The network is the original Transformer's decoder
(zoo/transformer.py) without the encoder and its cross-attention, as the paper describes it,
with the changes the released model has:
  - pre-LN blocks, x + Dropout(Sublayer(LN(x))), with a final LayerNorm (eps 1e-6);
  - fixed sinusoidal positions, the sines of a row in its first half and the cosines in its
    second (zoo.layers.split_sinusoids), added to the token embeddings scaled by sqrt(d_model).
    The released model was trained on 256 tokens (`max_seq_len`, the rows kept ready); past it
    the same formula gives the rows, so the model takes any length, as the Transformer's;
  - ReLU in the feed-forward layer, whose width 8192 is 6.4 d_model rather than 4;
  - no dropout on the attention probabilities; 0.1 on the embeddings and on each branch;
  - the output head is the token embedding (tied) with a bias of its own.
CTRL has 48 layers at d_model 1280 with 16 heads, and a BPE vocabulary of 246,534 tokens.

Parameter count (f = d_ff; the head tied, its bias counted):
    V d + V + L (4 d^2 + 4 d + 2 d f + f + d + 4 d) + 2 d
which is 1,637,964,550 for the defaults, as transformers counts CTRLLMHeadModel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from zoo.layers import (
    FeedForward,
    KVCache,
    MultiHeadAttention,
    bert_init,
    causal_padding_mask,
    split_sinusoids,
    tied_head,
)
from zoo.model import CachedLM, check_config


@dataclass(frozen=True)
class CTRLConfig:
    """Defaults: CTRL as released (Hugging Face's `Salesforce/ctrl`)."""

    vocab_size: int = 246_534
    max_seq_len: int = 256  # the training context (sinusoid rows kept ready; longer runs too)
    n_layer: int = 48
    n_head: int = 16
    d_model: int = 1280
    d_ff: int = 8192  # 0: no feed-forward (mixer-only)
    dropout: float = 0.1  # on the embeddings and on each branch's output
    attn_dropout: float = 0.0  # on the attention probabilities (none in CTRL)
    layer_norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_config(self)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.d_model % 2:
            raise ValueError(f"sinusoidal positions pair the channels: d_model {self.d_model} "
                             "is odd")


class Block(nn.Module):
    """Pre-LN: a = x + Dropout(Attn(LN1(x)));  h = a + Dropout(FF(LN2(a)))."""

    def __init__(self, config: CTRLConfig):
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.attn = MultiHeadAttention(d, config.n_head, dropout=config.attn_dropout)
        self.ln_2 = nn.LayerNorm(d, eps=eps)
        self.mlp = FeedForward(d, config.d_ff, "relu") if config.d_ff else None
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        # A padding mask, when given, already holds the causal mask (causal_padding_mask).
        x = x + self.drop(self.attn(self.ln_1(x), attn_mask=attn_mask,
                                    is_causal=attn_mask is None, cache=cache))
        if self.mlp is None:  # d_ff = 0: the block is its attention alone
            return x
        return x + self.drop(self.mlp(self.ln_2(x)))


class CTRL(CachedLM):
    config_class = CTRLConfig
    causal_lm = True

    def __init__(self, config: CTRLConfig):
        super().__init__()
        self.config = config
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.d_model)  # also the output head
        self.register_buffer("sinusoids", split_sinusoids(c.max_seq_len, c.d_model),
                             persistent=False)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        # N(0, 0.02) for every matrix and the embedding, zero biases, unit LayerNorm gains
        self.apply(functools.partial(bert_init, std=c.init_std))
        self.lm_head = tied_head(self.wte, nn.Parameter(torch.zeros(c.vocab_size)))

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache: list[KVCache] | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) of `input_ids` (B, T), after the final LayerNorm
        (Hugging Face's CTRLModel). With `cache` (one KVCache per layer, filled in place) the
        inputs continue the cached positions. `attention_mask` (B, cached + T), 1 = token and
        0 = padding, hides padded keys; positions count every slot, padding too, as in the
        released code."""
        T = input_ids.size(1)
        past = cache[0].length if cache is not None else 0
        if past + T <= self.sinusoids.size(0):
            pos = self.sinusoids[past:past + T]  # (T, C)
        else:  # past the training context: the same formula, for these T rows only
            pos = split_sinusoids(T, self.config.d_model, start=past).to(self.sinusoids.device)
        x = self.wte(input_ids) * math.sqrt(self.config.d_model)  # (B, T, C)
        x = self.drop(x + pos.to(x.dtype))
        attn_mask = None
        if attention_mask is not None:
            attn_mask = causal_padding_mask(attention_mask, T, past, x.dtype)  # (B, 1, T, S)
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, cache[i] if cache is not None else None)
        return self.ln_f(x)

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token at context `seqlen`:
            2 * (n_layer * (4 d^2 + 2 d d_ff) + vocab * d)   [QKV, output, feed-forward; head]
          + 4 * n_layer * d * (seqlen + 1) / 2               [causal QK^T and AV]
        Biases, LayerNorms, softmax, ReLU, the positions and the embedding lookup are left
        out."""
        c = self.config
        d = c.d_model
        matmul_weights = c.n_layer * (4 * d * d + 2 * d * c.d_ff) + c.vocab_size * d
        return 2.0 * matmul_weights + 4.0 * c.n_layer * d * (seqlen + 1) / 2
