"""OPT: Meta's open replication of GPT-3's decoders, 125M to 175B parameters.

Paper: Zhang et al. 2022, "OPT: Open Pre-trained Transformer Language Models", arXiv 2205.01068
(models: section 2.1 and Table 1; training setup: section 2.2). References: Meta's metaseq, and
Hugging Face's OPTForCausalLM, whose folders zoo.convert reads.

The paper follows GPT-3 (Brown et al. 2020), itself GPT-2's decoder (zoo/gpt.py), and says
where it does not:
  - ReLU in the feed-forward layer (section 2.2 trains every size with it), not GELU;
  - Megatron-LM's initialisation: N(0, 0.006) for every matrix and embedding, the two output
    projections of each block (attention's and the feed-forward's, which write into the
    residual stream) scaled by 1/sqrt(2L), zero biases;
  - dropout 0.1 throughout, but none on the embeddings;
  - (data, not code) GPT-2's byte-level BPE (a vocabulary padded to 50,272 rows) and a context
    of 2048 tokens. The released tokenizers put </s> (id 2) before every text
    (add_bos_token), which the harness's checkpoint tokenizer does too.
The rest is GPT-2's: learned absolute positions, pre-LN blocks with a final LayerNorm, biases
everywhere, the output head tied to the token embedding.

Choices the paper leaves to its code, taken as metaseq and Hugging Face take them:
  - the position table has 2 more rows than the context (`POSITION_OFFSET`): fairseq's learned
    positions start after the padding index (1), so position p reads row p + 2; padding reads
    row 1. Positions count real tokens only (the padding mask's running sum), so a left-padded
    row's first token is at position 0, as it would be unpadded;
  - dense attention in every layer, as metaseq has it (GPT-3 alternated dense and locally
    banded layers);
  - separate query, key and value projections (Hugging Face's q_proj, k_proj, v_proj), the
    query scaled by 1/sqrt(hs) as in every softmax attention; LayerNorm eps 1e-5;
  - dropout 0.1 on the attention probabilities too (`attn_dropout`), reading "throughout" as
    including them; the released configurations record 0.1 on the branches and 0 on the
    probabilities;
  - OPT-350m alone differs from its siblings, and is read as it is (`pre_ln`, `d_embed`):
    post-LN blocks without a final LayerNorm (GPT-1's wiring), and a token embedding of 512
    projected up to the width of 1024 before the first block and back down before the head
    (project_in and project_out, without biases).
Parameter count (f = d_ff, E = d_embed, P = max_seq_len; the head tied; pre-LN):
    V E + (P + 2) d + [E != d] 2 E d + L (4 d^2 + 2 d f + f + 9 d) + 2 d
which is 174,604,468,224 for the defaults, OPT-175B (the post-LN OPT-350m has no final 2 d).
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
    tied_head,
)
from zoo.model import CachedLM, check_config

# Row of the position table that position 0 reads (fairseq's padding index 1, plus one).
POSITION_OFFSET = 2


@dataclass(frozen=True)
class OPTConfig:
    """Defaults: OPT-175B (paper Table 1; Hugging Face's configuration of `facebook/opt-66b`
    and smaller, the 175B weights being released on request)."""

    vocab_size: int = 50_272
    max_seq_len: int = 2048  # learned positions: the longest input the model takes
    n_layer: int = 96
    n_head: int = 96
    d_model: int = 12_288
    d_ff: int | None = None  # None: 4 * d_model; 0: no feed-forward (mixer-only)
    d_embed: int | None = None  # None: d_model; otherwise projected in and out (OPT-350m: 512)
    pre_ln: bool = True  # False: post-LN blocks and no final LayerNorm (OPT-350m)
    activation: str = "relu"  # a key of zoo.layers.ACTIVATIONS
    dropout: float = 0.1  # on each branch's output (none on the embeddings)
    attn_dropout: float = 0.1  # on the attention probabilities
    layer_norm_eps: float = 1e-5
    init_std: float = 0.006

    def __post_init__(self) -> None:
        check_config(self)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        if self.d_embed is None:
            object.__setattr__(self, "d_embed", self.d_model)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")


class Block(nn.Module):
    """A decoder block, pre-LN as in every OPT but one, or post-LN as in OPT-350m:

        pre-LN:   a = x + Attn(LN1(x));    h = a + FF(LN2(a))
        post-LN:  a = LN1(x + Attn(x));    h = LN2(a + FF(a))
    """

    def __init__(self, config: OPTConfig):
        super().__init__()
        self.pre_ln = config.pre_ln
        self.self_attn = MultiHeadAttention(config.d_model, config.n_head,
                                           dropout=config.attn_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = FeedForward(config.d_model, config.d_ff, config.activation) if config.d_ff \
            else None
        self.final_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        # A padding mask, when given, already holds the causal mask (causal_padding_mask).
        causal = attn_mask is None
        if self.pre_ln:
            x = x + self.drop(self.self_attn(self.self_attn_layer_norm(x), attn_mask=attn_mask,
                                             is_causal=causal, cache=cache))
            if self.mlp is None:  # d_ff = 0: the block is its attention alone
                return x
            return x + self.drop(self.mlp(self.final_layer_norm(x)))
        a = self.self_attn(x, attn_mask=attn_mask, is_causal=causal, cache=cache)
        x = self.self_attn_layer_norm(x + self.drop(a))
        if self.mlp is None:
            return x
        return self.final_layer_norm(x + self.drop(self.mlp(x)))


class OPT(CachedLM):
    config_class = OPTConfig
    position_table = "max_seq_len"
    causal_lm = True

    def __init__(self, config: OPTConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_embed)  # also the output head
        self.embed_positions = nn.Embedding(c.max_seq_len + POSITION_OFFSET, c.d_model)
        projected = c.d_embed != c.d_model
        self.project_in = nn.Linear(c.d_embed, c.d_model, bias=False) if projected else None
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        # Pre-LN leaves the residual stream un-normalised, so it is normalised once at the end;
        # a post-LN block's output already is.
        self.final_layer_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.pre_ln \
            else None
        self.project_out = nn.Linear(c.d_model, c.d_embed, bias=False) if projected else None
        self._init_weights()
        self.lm_head = tied_head(self.embed_tokens)

    def _init_weights(self) -> None:
        """Megatron-LM's, as section 2.2 gives it: N(0, init_std) for every matrix and
        embedding, the residual stream's writers scaled by 1/sqrt(2L); zero biases, unit
        LayerNorm gains."""
        c = self.config
        self.apply(functools.partial(bert_init, std=c.init_std))
        scaled = c.init_std / math.sqrt(2 * c.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.self_attn.out_proj.weight, mean=0.0, std=scaled)
            if block.mlp is not None:
                nn.init.normal_(block.mlp.fc_out.weight, mean=0.0, std=scaled)

    def positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  past: int) -> torch.Tensor:
        """The position of each new token, (B or 1, T): past .. past + T - 1 without a mask;
        with one (B, past + T), the count of real tokens before it, and -1 for padding (which
        reads the padding row)."""
        T = input_ids.size(1)
        if attention_mask is None:
            return torch.arange(past, past + T, device=input_ids.device)[None]
        mask = attention_mask.long()
        return (mask.cumsum(dim=1) * mask - 1)[:, past:]

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache: list[KVCache] | None = None) -> torch.Tensor:
        """Final hidden states (B, T, d_embed) of `input_ids` (B, T), after the final
        LayerNorm and project_out where the model has them (Hugging Face's OPTModel). With
        `cache` (one KVCache per layer, filled in place) the inputs continue the cached
        positions. `attention_mask` (B, cached + T), 1 = token and 0 = padding, hides padded
        keys and leaves them out of the position count."""
        T = input_ids.size(1)
        past = cache[0].length if cache is not None else 0
        if past + T > self.config.max_seq_len:
            raise ValueError(f"{past + T} positions exceed the model's maximum of "
                             f"{self.config.max_seq_len} (learned position embeddings)")
        x = self.embed_tokens(input_ids)  # (B, T, d_embed); no dropout on the embeddings
        if self.project_in is not None:
            x = self.project_in(x)
        pos = self.positions(input_ids, attention_mask, past)
        x = x + self.embed_positions(pos + POSITION_OFFSET)  # (B, T, C)
        attn_mask = None
        if attention_mask is not None:
            attn_mask = causal_padding_mask(attention_mask, T, past, x.dtype)  # (B, 1, T, S)
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, cache[i] if cache is not None else None)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return x

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token at context `seqlen`:
            2 * (n_layer * (4 d^2 + 2 d d_ff) + 2 E d [E != d] + vocab * E)
                                  [QKV, output, feed-forward; the projections; the head]
          + 4 * n_layer * d * (seqlen + 1) / 2             [causal QK^T and AV, average context]
        Biases, LayerNorms, softmax, ReLU and the embedding lookups are left out."""
        c = self.config
        d = c.d_model
        projections = 2 * c.d_embed * d if c.d_embed != d else 0
        matmul_weights = (c.n_layer * (4 * d * d + 2 * d * c.d_ff) + projections
                          + c.vocab_size * c.d_embed)
        return 2.0 * matmul_weights + 4.0 * c.n_layer * d * (seqlen + 1) / 2
