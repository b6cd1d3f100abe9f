"""BLOOM: BigScience's GPT-style multilingual decoder with ALiBi in place of position embeddings
and a LayerNorm on the embeddings.

Paper: BigScience Workshop 2022, "BLOOM: A 176B-Parameter Open-Access Multilingual Language
Model", arXiv 2211.05100 (architecture: section 3.2). References: BigScience's
Megatron-DeepSpeed and Hugging Face's BloomForCausalLM, whose folders zoo.convert reads.

Differences from GPT-2 (zoo/gpt.py), as section 3.2 lists them:
  - ALiBi (Press et al. 2022) instead of learned positions: no position embedding at all;
    head h adds -m_h (i - j) to the score of query i for key j <= i, with the slopes m_h of
    Press et al. (zoo.layers.alibi_slopes: 2^(-8h/n) for n heads, a power of two; otherwise
    those of the closest lower power of two, then every other slope of twice it). The model has
    no maximum length (`max_seq_len` records the trained context only). The paper chose it
    because in its ablations it trained more smoothly and scored better at the trained length
    than learned or rotary positions, not for extrapolation alone.
  - a LayerNorm right after the token embedding (`embed_norm`, as bitsandbytes' StableEmbedding
    has), which the paper's 104B trial runs in float16 needed for stable training; it cost some
    zero-shot quality there, and was kept for BLOOM's run in bfloat16 to be safe.
  - (data, not code) a byte-level BPE of 250,680 tokens for 46 natural and 13 programming
    languages, the embedding padded to 250,880 rows; a context of 2048 tokens.
The rest is GPT-2's: pre-LN blocks with a final LayerNorm, GELU (tanh form) in a 4d feed-forward,
biases everywhere, the output head tied to the token embedding.

Choices the paper leaves to its code, taken as Megatron-DeepSpeed and Hugging Face take them:
  - one query-key-value matrix (3d x d) whose output is laid out head by head, each head's
    query, key and value channels together ((nh, 3, hs)): kept, so checkpoints load as they are;
  - scores scaled by 1 / sqrt(hs) before the bias is added; LayerNorm eps 1e-5;
  - no dropout unless asked for, as Hugging Face's configuration has it (`dropout` after each
    branch and `attn_dropout` on the probabilities: its hidden_dropout and attention_dropout);
  - initialisation N(0, init_std = 0.02) for every matrix and the embedding, zero biases, unit
    LayerNorm gains (Hugging Face's; the paper does not restate Megatron-DeepSpeed's);
  - ALiBi over token positions counted from the start of the row, padding included. Hugging
    Face counts only real tokens; the two give real queries the same scores, since a bias
    constant along a query's row leaves its softmax unchanged and the padding is masked.
Parameter count (f = d_ff, the head tied):
    V d + 4 d + L (4 d^2 + 2 d f + f + 9 d)
which is 176,247,271,424 for the defaults, BLOOM (176B).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from zoo.layers import (
    FeedForward,
    KVCache,
    alibi_slopes,
    bert_init,
    causal_mask,
    causal_padding_mask,
    sdpa,
    tied_head,
)
from zoo.model import CachedLM, check_config


@dataclass(frozen=True)
class BloomConfig:
    """Defaults: BLOOM 176B (the paper's largest model; Hugging Face's `bigscience/bloom`)."""

    vocab_size: int = 250_880
    max_seq_len: int = 2048  # the trained context; ALiBi has no table, so longer inputs run
    n_layer: int = 70
    n_head: int = 112
    d_model: int = 14_336
    d_ff: int | None = None  # None: 4 * d_model; 0: no feed-forward (mixer-only)
    dropout: float = 0.0  # after each branch (hidden_dropout)
    attn_dropout: float = 0.0  # on the attention probabilities
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_config(self)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")


def alibi_mask(slopes: torch.Tensor, past: int, T: int,
               attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask of T queries at positions past..past+T-1 over keys 0..past+T-1:
    -m_h (i - j) for key j <= query i, -inf for later keys, and with `attention_mask` (B, S)
    the padded keys hidden (zoo.layers.causal_padding_mask). (1 or B, nh, T, S)."""
    S = past + T
    i = torch.arange(past, S, device=slopes.device)[:, None]  # (T, 1) query positions
    j = torch.arange(S, device=slopes.device)[None, :]  # (1, S) key positions
    bias = -slopes[:, None, None] * (i - j).float()  # (nh, T, S), float32
    if attention_mask is None:
        visible = causal_mask(T, S, slopes.device)
        return bias.masked_fill(~visible, float("-inf")).to(dtype)[None]
    return bias.to(dtype)[None] + causal_padding_mask(attention_mask, T, past, dtype)


@dataclass
class AlibiBias:
    """What one forward's attention adds to its scores, shared by every layer: ALiBi's bias for
    `length` queries at positions past..past+length-1 over the keys before them, and with
    `attention_mask` (B, past + length) the padded keys hidden. `mask`, the (1 or B, nh,
    length, past + length) tensor alibi_mask makes, is built on first use only (zoo.fast's
    alibi route computes the same bias without it)."""

    slopes: torch.Tensor  # (nh,) m_h
    past: int
    length: int
    attention_mask: torch.Tensor | None
    dtype: torch.dtype

    _mask: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def mask(self) -> torch.Tensor:
        # kept by hand, not functools.cached_property, whose lock (Python 3.11) torch.compile
        # cannot trace: it broke the graph at every layer
        if self._mask is None:
            self._mask = alibi_mask(self.slopes, self.past, self.length, self.attention_mask,
                                    self.dtype)
        return self._mask


class Attention(nn.Module):
    """Causal self-attention from one fused query-key-value matrix laid out head by head, its
    positions the ALiBi bias added to the scores."""

    def __init__(self, d_model: int, n_head: int, attn_dropout: float):
        super().__init__()
        self.n_head, self.attn_dropout = n_head, attn_dropout
        self.query_key_value = nn.Linear(d_model, 3 * d_model)
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, bias: AlibiBias,
                cache: KVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        qkv = self.query_key_value(x).view(B, T, self.n_head, 3, hs)
        q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))  # (B, nh, T, hs) each
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, S, hs): the cached positions, then these
        y = self.attend(q, k, v, bias, cached=cache is not None)
        return self.dense(y.transpose(1, 2).reshape(B, T, C))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: AlibiBias,
               cached: bool) -> torch.Tensor:
        """softmax(q k^T / sqrt(hs) + bias) v, the bias as a float mask (B, nh, T, hs)."""
        dropout = self.attn_dropout if self.training else 0.0
        return sdpa(q, k, v, bias.mask, dropout, new_key_length=cached)


class Block(nn.Module):
    """GPT-2's pre-LN block: a = x + Attn(LN1(x)), h = a + FF(LN2(a))."""

    def __init__(self, config: BloomConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.self_attention = Attention(config.d_model, config.n_head, config.attn_dropout)
        self.post_attention_layernorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = FeedForward(config.d_model, config.d_ff, "gelu_tanh") if config.d_ff \
            else None
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, bias: AlibiBias,
                cache: KVCache | None) -> torch.Tensor:
        x = x + self.drop(self.self_attention(self.input_layernorm(x), bias, cache))
        if self.mlp is None:  # d_ff = 0: the block is its attention alone
            return x
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class Bloom(CachedLM):
    config_class = BloomConfig
    causal_lm = True

    def __init__(self, config: BloomConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.d_model)  # also the head
        self.embed_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        # N(0, init_std) matrices and embedding, zero biases, unit gains: BERT's initialisation
        self.apply(functools.partial(bert_init, std=config.init_std))
        self.lm_head = tied_head(self.word_embeddings)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache: list[KVCache] | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) of `input_ids` (B, T), after ln_f (Hugging Face's
        BloomModel). With `cache` (one KVCache per layer, filled in place) the inputs continue
        the cached positions. `attention_mask` (B, cached + T), 1 = token and 0 = padding,
        hides padded keys."""
        T = input_ids.size(1)
        past = cache[0].length if cache is not None else 0
        x = self.embed_norm(self.word_embeddings(input_ids))  # (B, T, C); no positions
        slopes = torch.tensor(alibi_slopes(self.config.n_head), device=x.device)  # (nh,) m_h
        bias = AlibiBias(slopes, past, T, attention_mask, x.dtype)  # every layer's
        for i, block in enumerate(self.blocks):
            x = block(x, bias, cache[i] if cache is not None else None)
        return self.ln_f(x)

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token at context `seqlen`:
            2 * (n_layer * (4 d^2 + 2 d d_ff) + vocab * d)   [QKV, dense, feed-forward; the head]
          + 4 * n_layer * d * (seqlen + 1) / 2             [causal QK^T and AV, average context]
        Biases, LayerNorms, the ALiBi bias, softmax, GELU and the embedding lookup are left out."""
        c = self.config
        d = c.d_model
        matmul_weights = c.n_layer * (4 * d * d + 2 * d * c.d_ff) + c.vocab_size * d
        return 2.0 * matmul_weights + 4.0 * c.n_layer * d * (seqlen + 1) / 2
