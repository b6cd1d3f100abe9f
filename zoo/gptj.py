"""GPT-J: EleutherAI's 6B-parameter GPT-3-style decoder, trained on the Pile with Mesh
Transformer JAX.

Reference: Wang and Komatsuzaki 2021, "GPT-J-6B: A 6 Billion Parameter Autoregressive Language
Model", https://github.com/kingoflolz/mesh-transformer-jax. GPT-J has no paper: the repository's
code (mesh_transformer/layers.py, the 6B_roto_256 configuration) is the description, and Hugging
Face's GPTJForCausalLM reads its released weights, whose folders zoo.convert reads.

GPT-J follows GPT-3's decoder (zoo/gpt.py for GPT-2, which GPT-3 keeps), except where the code
says otherwise:
  - rotary position embeddings (RoPE, Su et al. 2021) on the first `rotary_dim` channels of
    each query and key head (64 of 256 in the 6B model), the other channels carrying no
    position; pairs of neighbouring channels (2i, 2i + 1) turn together, by theta^(-2i/r) a
    position with r = rotary_dim, as in the RoPE paper (zoo.layers.positions, interleaved);
    no learned position table;
  - attention and feed-forward side by side, reading the same LayerNorm of the input:
    h = x + Attn(LN(x)) + FF(LN(x)), one LayerNorm per block where GPT-NeoX (zoo/gpt_neox.py)
    later gave each branch its own;
  - no biases in attention's four matrices; the feed-forward's two have them;
  - the output head is a matrix of its own with a bias, not the token embedding;
  - the tanh approximation of GELU (jax.nn.gelu's default; Hugging Face's "gelu_new");
  - initialisation by fan-in: every matrix and the embedding drawn from N(0, 1/fan_in) cut
    at two standard deviations (Haiku's default for a linear layer; the embedding is a one-hot
    vector times a V x d matrix, fan-in V), except the two writers into the residual stream
    (attention's output and the feed-forward's second matrix), whose normal has standard
    deviation (2 / n_layer) / sqrt(d); zero biases, unit LayerNorm gains;
  - dense attention in every layer, no dropout;
  - (data and training, not the model) GPT-2's BPE, the embedding and head padded to 50,400
    rows, a context of 2048 tokens, and a small z-loss (1e-4 log^2 Z) beside the cross-entropy,
    which the zoo's trainers do not add.
The block is pre-LN, and one LayerNorm follows the last layer. Attention scores are scaled by
1/sqrt(hs) and LayerNorm eps is 1e-5.

Choices left to the code, taken as Hugging Face takes them: separate query, key and value
matrices (q_proj, k_proj, v_proj; Mesh Transformer JAX's q, k, v); in a padded batch, positions
count from the start of the row, padding included (as zoo.gpt_neox); dropout fields (`dropout` on
the embedding and each branch's output, `attn_dropout` on the attention probabilities), 0 as
GPT-J trained.
Parameter count (f = d_ff):
    2 V d + V + 2 d + L (4 d^2 + 2 d f + f + 3 d)
which is 6,050,882,784 for the defaults, GPT-J-6B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from zoo.layers import (
    FeedForward,
    KVCache,
    causal_padding_mask,
    causal_sdpa,
    partial_rope,
    rope_tables,
)
from zoo.model import CachedLM, check_config


@dataclass(frozen=True)
class GPTJConfig:
    """Defaults: GPT-J-6B (Mesh Transformer JAX's 6B_roto_256 configuration; Hugging Face's
    `EleutherAI/gpt-j-6b`)."""

    vocab_size: int = 50_400
    max_seq_len: int = 2048  # the trained context; RoPE has no table, so longer inputs still run
    n_layer: int = 28
    n_head: int = 16
    d_model: int = 4096
    d_ff: int | None = None  # None: 4 * d_model; 0: no feed-forward (mixer-only)
    rotary_dim: int | None = 64  # channels of each head that RoPE turns; None: all of them
    rope_theta: float = 10_000.0
    activation: str = "gelu_tanh"  # a key of zoo.layers.ACTIVATIONS
    dropout: float = 0.0  # on the embedding and on each branch's output
    attn_dropout: float = 0.0  # on the attention probabilities
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_config(self)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        head = self.d_model // self.n_head
        if self.rotary_dim is None:
            object.__setattr__(self, "rotary_dim", head)
        if not 0 <= self.rotary_dim <= head or self.rotary_dim % 2:
            raise ValueError(f"rotary_dim is an even number of a head's {head} channels (RoPE "
                             f"turns them in pairs), not {self.rotary_dim}")


class Attention(nn.Module):
    """Causal self-attention without biases, RoPE (interleaved) on the first r channels of each
    query and key head."""

    def __init__(self, d_model: int, n_head: int, attn_dropout: float):
        super().__init__()
        self.n_head, self.attn_dropout = n_head, attn_dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = (proj(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        q = partial_rope(q, cos, sin, interleaved=True)
        k = partial_rope(k, cos, sin, interleaved=True)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, S, hs): the cached positions, then these
        dropout = self.attn_dropout if self.training else 0.0
        y = causal_sdpa(q, k, v, attn_mask, dropout, cached=cache is not None)  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-LN, one LayerNorm read by attention and feed-forward side by side:

        h = x + Attn(LN(x)) + FF(LN(x))
    """

    def __init__(self, config: GPTJConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = Attention(config.d_model, config.n_head, config.attn_dropout)
        self.mlp = FeedForward(config.d_model, config.d_ff, config.activation) if config.d_ff \
            else None
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        h = self.ln_1(x)
        a = self.drop(self.attn(h, cos, sin, attn_mask, cache))
        if self.mlp is None:  # d_ff = 0: the block is its attention alone
            return x + a
        return x + a + self.drop(self.mlp(h))


class GPTJ(CachedLM):
    config_class = GPTJConfig
    causal_lm = True

    def __init__(self, config: GPTJConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)  # untied, with a bias
        self._init_weights()

    def _init_weights(self) -> None:
        """Mesh Transformer JAX's (the module docstring): truncated normal by fan-in, the
        residual stream's two writers (2 / L) / sqrt(d); zero biases, unit LayerNorm gains."""
        c = self.config
        d = c.d_model

        def truncated(weight: torch.Tensor, std: float) -> None:
            """Haiku's TruncatedNormal(std): N(0, std^2) cut at two standard deviations."""
            nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)

        truncated(self.wte.weight, 1 / math.sqrt(c.vocab_size))  # a one-hot times a V x d matrix
        for module in self.modules():
            if isinstance(module, nn.Linear):
                truncated(module.weight, 1 / math.sqrt(module.in_features))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            writers = [block.attn.out_proj] + ([block.mlp.fc_out] if block.mlp else [])
            for linear in writers:
                truncated(linear.weight, 2 / c.n_layer / math.sqrt(d))

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache: list[KVCache] | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) of `input_ids` (B, T), after the final LayerNorm
        (Hugging Face's GPTJModel). With `cache` (one KVCache per layer, filled in place) the
        inputs continue the cached positions. `attention_mask` (B, cached + T), 1 = token and
        0 = padding, hides padded keys."""
        T = input_ids.size(1)
        c = self.config
        past = cache[0].length if cache is not None else 0
        x = self.drop(self.wte(input_ids))  # (B, T, C); no position embedding
        cos, sin = rope_tables(c.rotary_dim, past, T, c.rope_theta, x.device, interleaved=True)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (T, r) each, cast once for every layer
        attn_mask = None
        if attention_mask is not None:
            attn_mask = causal_padding_mask(attention_mask, T, past, x.dtype)  # (B, 1, T, S)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn_mask, cache[i] if cache is not None else None)
        return self.ln_f(x)

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token at context `seqlen`:
            2 * (n_layer * (4 d^2 + 2 d d_ff) + vocab * d)   [q, k, v, out, feed-forward; head]
          + 4 * n_layer * d * (seqlen + 1) / 2             [causal QK^T and AV, average context]
        Biases, LayerNorms, RoPE, softmax, GELU and the embedding lookup are left out."""
        c = self.config
        d = c.d_model
        matmul_weights = c.n_layer * (4 * d * d + 2 * d * c.d_ff) + c.vocab_size * d
        return 2.0 * matmul_weights + 4.0 * c.n_layer * d * (seqlen + 1) / 2
