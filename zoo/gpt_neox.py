"""GPT-NeoX and Pythia: EleutherAI's GPT-3-style decoder with partial rotary positions and
attention and feed-forward side by side in each layer.

Paper: Black et al. 2022, "GPT-NeoX-20B: An Open-Source Autoregressive Language Model",
arXiv 2204.06745 (architecture: section 2.1). Pythia (Biderman et al. 2023, arXiv 2304.01373)
trains the same architecture at eight sizes, 70M to 12B, on the same data in the same order.
References: EleutherAI's gpt-neox library and Hugging Face's GPTNeoXForCausalLM, whose folders
zoo.convert reads.

Differences from GPT-2 (zoo/gpt.py), which GPT-3 follows, as section 2.1 lists them:
  - rotary position embeddings (RoPE, Su et al. 2021) instead of a learned table, on a part of
    each head only: the first r = rotary_pct * hs channels of every query and key turn with the
    position (channel i with i + r/2, by theta^(-2i/r) a position), the other hs - r channels
    carry no position at all. The paper takes rotary_pct = 0.25, in its early runs the best
    trade of quality against speed.
  - attention and feed-forward read the same input and add to the stream together, as in
    GPT-J: h = x + Attn(LN1(x)) + FF(LN2(x)) (`parallel_residual`; False is GPT-2's sequential
    pre-LN block, a = x + Attn(LN1(x)), h = a + FF(LN2(a))). Each branch has a LayerNorm of its
    own, where GPT-J shares one: the paper calls this an oversight, kept in every release.
  - initialisation: the feed-forward's output matrix N(0, 2 / (n_layer sqrt(d))) (Wang 2021),
    every other matrix and the embedding N(0, sqrt(2 / (5 d))) ("small init", Nguyen and
    Salazar 2019); the library gives attention's output matrix (`dense`) Wang's too, as here.
    Biases 0, LayerNorm gains 1;
  - every layer dense (GPT-3 alternated dense and banded sparse attention);
  - (data, not code) a new BPE tokenizer trained on the Pile, the embedding padded to 50,432
    rows (Pythia: 50,304), and a context of 2048 tokens.
The block is pre-LN, as GPT-2's, and one LayerNorm follows the last layer.

Choices the paper leaves to its code, taken as gpt-neox and Hugging Face take them:
  - the output head is a matrix of its own, without a bias, not the token embedding;
  - one query-key-value matrix (3d x d) whose output is laid out head by head, each head's
    query, key and value channels together ((nh, 3 hs), Megatron's layout): kept as it is, so
    that checkpoints load without reordering;
  - RoPE in the rotate-half layout within the rotary channels (zoo.layers.positions), base
    10,000; attention scores scaled by 1 / sqrt(hs); exact (erf) GELU; LayerNorm eps 1e-5;
  - dropout 0, as the 20B model and Pythia were trained (`dropout` on the embedding and on each
    branch's output, `attn_dropout` on the attention probabilities: Hugging Face's
    hidden_dropout and attention_dropout);
  - in a padded batch, positions count from the start of the row, padding included (as
    Hugging Face does without position_ids, and as zoo.gpt does).
Parameter count (f = d_ff):
    2 V d + 2 d + L (4 d^2 + 2 d f + f + 9 d)
which is 20,554,567,680 for the defaults, GPT-NeoX-20B (Pythia's sizes: catalog/pythia.yaml).
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
    bert_init,
    causal_padding_mask,
    causal_sdpa,
    partial_rope,
    rope_tables,
)
from zoo.model import CachedLM, check_config


@dataclass(frozen=True)
class GPTNeoXConfig:
    """Defaults: GPT-NeoX-20B (paper Table 1; Hugging Face's `EleutherAI/gpt-neox-20b`)."""

    vocab_size: int = 50_432
    max_seq_len: int = 2048  # the trained context; RoPE has no table, so longer inputs still run
    n_layer: int = 44
    n_head: int = 64
    d_model: int = 6144
    d_ff: int | None = None  # None: 4 * d_model; 0: no feed-forward (mixer-only)
    rotary_pct: float = 0.25  # the share of each head's channels that RoPE turns
    rope_theta: float = 10_000.0
    parallel_residual: bool = True  # False: GPT-2's sequential pre-LN block
    dropout: float = 0.0  # on the embedding and on each branch's output (hidden_dropout)
    attn_dropout: float = 0.0  # on the attention probabilities
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_config(self)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if not 0 < self.rotary_pct <= 1:
            raise ValueError(f"rotary_pct is a share of a head's channels in (0, 1], "
                             f"not {self.rotary_pct}")
        if self.rotary_dims % 2:
            raise ValueError(f"RoPE turns channels in pairs: rotary_pct {self.rotary_pct} of a "
                             f"head of {self.d_model // self.n_head} gives an odd "
                             f"{self.rotary_dims} channels")

    @property
    def rotary_dims(self) -> int:
        """r, the rotary channels of a head: int(hs * rotary_pct), as gpt-neox rounds it."""
        return int(self.d_model // self.n_head * self.rotary_pct)


class Attention(nn.Module):
    """Causal self-attention with partial RoPE, from one fused query-key-value matrix laid out
    head by head."""

    def __init__(self, d_model: int, n_head: int, attn_dropout: float):
        super().__init__()
        self.n_head, self.attn_dropout = n_head, attn_dropout
        self.query_key_value = nn.Linear(d_model, 3 * d_model)
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        qkv = self.query_key_value(x).view(B, T, self.n_head, 3 * hs).transpose(1, 2)
        q, k, v = qkv.split(hs, dim=-1)  # (B, nh, T, hs) each
        q, k = partial_rope(q, cos, sin), partial_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, S, hs): the cached positions, then these
        dropout = self.attn_dropout if self.training else 0.0
        y = causal_sdpa(q, k, v, attn_mask, dropout, cached=cache is not None)  # (B, nh, T, hs)
        return self.dense(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-LN, attention and feed-forward side by side (or one after the other):

        parallel:    h = x + Attn(LN1(x)) + FF(LN2(x))
        sequential:  a = x + Attn(LN1(x));  h = a + FF(LN2(a))
    """

    def __init__(self, config: GPTNeoXConfig):
        super().__init__()
        self.parallel = config.parallel_residual
        self.input_layernorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attention = Attention(config.d_model, config.n_head, config.attn_dropout)
        self.post_attention_layernorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = FeedForward(config.d_model, config.d_ff, "gelu") if config.d_ff else None
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        a = self.drop(self.attention(self.input_layernorm(x), cos, sin, attn_mask, cache))
        if self.mlp is None:  # d_ff = 0: the block is its attention alone
            return x + a
        if self.parallel:
            return x + a + self.drop(self.mlp(self.post_attention_layernorm(x)))
        a = x + a
        return a + self.drop(self.mlp(self.post_attention_layernorm(a)))


class GPTNeoX(CachedLM):
    config_class = GPTNeoXConfig
    causal_lm = True

    def __init__(self, config: GPTNeoXConfig):
        super().__init__()
        self.config = config
        self.embed_in = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # untied
        self._init_weights()

    def _init_weights(self) -> None:
        """Small init for the embedding and every matrix but the two that write into the
        residual stream, which take Wang's (the module docstring); zero biases, unit gains."""
        c = self.config
        self.apply(functools.partial(bert_init, std=math.sqrt(2 / (5 * c.d_model))))
        wang = 2 / c.n_layer / math.sqrt(c.d_model)
        for block in self.blocks:
            nn.init.normal_(block.attention.dense.weight, mean=0.0, std=wang)
            if block.mlp is not None:
                nn.init.normal_(block.mlp.fc_out.weight, mean=0.0, std=wang)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache: list[KVCache] | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) of `input_ids` (B, T), after the final LayerNorm
        (Hugging Face's GPTNeoXModel). With `cache` (one KVCache per layer, filled in place) the
        inputs continue the cached positions. `attention_mask` (B, cached + T), 1 = token and
        0 = padding, hides padded keys."""
        T = input_ids.size(1)
        c = self.config
        past = cache[0].length if cache is not None else 0
        x = self.drop(self.embed_in(input_ids))  # (B, T, C); no position embedding
        cos, sin = rope_tables(c.rotary_dims, past, T, c.rope_theta, x.device)  # (T, r) each
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # once here, not in every layer
        attn_mask = None
        if attention_mask is not None:
            attn_mask = causal_padding_mask(attention_mask, T, past, x.dtype)  # (B, 1, T, S)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn_mask, cache[i] if cache is not None else None)
        return self.final_layer_norm(x)

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token at context `seqlen`:
            2 * (n_layer * (4 d^2 + 2 d d_ff) + vocab * d)   [QKV, dense, feed-forward; the head]
          + 4 * n_layer * d * (seqlen + 1) / 2             [causal QK^T and AV, average context]
        Biases, LayerNorms, RoPE, softmax, GELU and the embedding lookup are left out."""
        c = self.config
        d = c.d_model
        matmul_weights = c.n_layer * (4 * d * d + 2 * d * c.d_ff) + c.vocab_size * d
        return 2.0 * matmul_weights + 4.0 * c.n_layer * d * (seqlen + 1) / 2
