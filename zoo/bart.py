"""BART: a denoising sequence-to-sequence model, the Transformer's encoder-decoder pretrained to
rebuild corrupted text; mBART and Pegasus are configurations of it (below).

Paper: Lewis et al. 2019, "BART: Denoising Sequence-to-Sequence Pre-training for Natural
Language Generation, Translation, and Comprehension", arXiv 1910.13461 (architecture: section
2.1). References: fairseq's `bart` model and Hugging Face's BartForConditionalGeneration, whose
folders zoo.convert reads.

Differences from its parent, the original Transformer (zoo/transformer.py), as section 2.1 and
the released code give them:
  - GELU instead of ReLU in the feed-forward layers, and every weight drawn from N(0, 0.02)
    (following GPT);
  - learned absolute positions, a table per stack, instead of sinusoids, and no sqrt(d_model)
    scale on the token embeddings; the tables have two rows more than positions (fairseq
    counted positions from the padding id + 1, 2; Hugging Face keeps the offset, and so does
    this file, so that the released tables load as they are);
  - a LayerNorm on each stack's embeddings (`layernorm_embedding`) before the first layer;
  - the blocks stay post-LN, LN(x + Dropout(Sublayer(x))), as in the paper's Transformer, with
    dropout also inside the feed-forward layer after the activation (`act_dropout`);
  - one embedding matrix shared by the source, the target and the output head, plus a bias
    on the logits that the model does not train (`final_logits_bias`, a buffer: zeros in the
    released models);
  - the decoder starts from `decoder_start_id`, the end-of-sentence token </s> (id 2): the
    targets are the text shifted right behind it.
BART-base has 6 layers in each stack at d_model 768, BART-large 12 at 1024. Dropout 0.1 on the
embeddings and every branch, on the attention probabilities and after the activation (as the
released base model's config). LayerNorm eps 1e-5; the padding id is 1 (its embedding row is
zero at initialisation and gets no gradient).

mBART (Liu et al. 2020, "Multilingual Denoising Pre-training for Neural Machine Translation",
arXiv 2001.08210) is BART-large's network trained on 25 languages, with two changes that the
released fairseq model makes, each a config field here:
  - `pre_ln`: every sublayer reads a normalised copy of the stream, x + Dropout(Sublayer(LN(x))),
    and each stack ends with one more LayerNorm (fairseq's normalize_before; the paper adds the
    final LayerNorms to keep fp16 training stable);
  - `scale_embedding`: the token embeddings are multiplied by sqrt(d_model) before the positions
    are added, as in the original Transformer.
Its text ends with </s> and a language code, and its decoder starts from the target's language
code (`decoder_start_id`, from the checkpoint's config).

Pegasus (Zhang et al. 2019, "PEGASUS: Pre-training with Extracted Gap-sentences for Abstractive
Summarization", arXiv 1912.08777) is a standard Transformer encoder-decoder whose released
configuration is mBART's two switches plus two more:
  - `positions="sinusoidal"`: fixed sines and cosines (zoo.layers.split_sinusoids), one table
    for both stacks, counted from 0, in place of the learned tables;
  - `embedding_norm=False`: no LayerNorm on the embeddings.
PEGASUS-large has 16 layers in each stack at d_model 1024, ReLU, a 96,103-word SentencePiece
vocabulary with <pad> = 0 and </s> = 1, and its decoder starts from <pad>.

Parameter count (E encoder and D decoder layers, f = d_ff, P = max_seq_len; the buffer left out):
    V d + 2 (P + 2) d + 4 d + E (4 d^2 + 4 d + 2 d f + f + d + 4 d)
                            + D (8 d^2 + 8 d + 2 d f + f + d + 6 d)
which is 139,420,416 for the defaults, BART-base; `pre_ln` adds the two final LayerNorms, 4 d;
sinusoidal positions take away 2 (P + 2) d, and no embedding norms 4 d.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from zoo.layers import (
    ACTIVATIONS,
    KVCache,
    MultiHeadAttention,
    bert_init,
    causal_padding_mask,
    key_padding_bias,
    split_sinusoids,
    tied_head,
)
from zoo.model import DecoderCache, EncoderDecoderLM, check_config

POSITION_OFFSET = 2  # rows before position 0 in each position table (fairseq's padding id + 1)
POSITIONS = ("learned", "sinusoidal")


@dataclass(frozen=True)
class BartConfig:
    """Defaults: BART-base (Hugging Face's `facebook/bart-base`)."""

    vocab_size: int = 50265  # GPT-2's byte-level BPE, with fairseq's dictionary order
    max_seq_len: int = 1024  # learned positions: the longest source or target the model takes
    n_layer: int = 6  # encoder layers
    decoder_layers: int | None = None  # None: n_layer
    n_head: int = 12
    d_model: int = 768
    d_ff: int | None = None  # None: 4 * d_model
    activation: str = "gelu"  # a key of zoo.layers.ACTIVATIONS (exact GELU)
    dropout: float = 0.1  # on the embeddings and on every residual branch
    attn_dropout: float = 0.1  # on the attention probabilities
    act_dropout: float = 0.1  # inside the feed-forward layer, after the activation
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    pad_token_id: int = 1
    decoder_start_id: int = 2  # </s>: the decoder's first input
    pre_ln: bool = False  # mBART: LN before each sublayer and a final LN on each stack
    scale_embedding: bool = False  # mBART: token embeddings times sqrt(d_model)
    positions: str = "learned"  # or "sinusoidal": Pegasus's fixed table, sines then cosines
    embedding_norm: bool = True  # the LayerNorm on each stack's embeddings (not in Pegasus)

    def __post_init__(self) -> None:
        check_config(self)
        if self.decoder_layers is None:
            object.__setattr__(self, "decoder_layers", self.n_layer)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of "
                             f"{', '.join(ACTIVATIONS)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions {self.positions!r} is not one of "
                             f"{', '.join(POSITIONS)}")
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions pair the channels: d_model {self.d_model} "
                             "is odd")
        if self.decoder_start_id >= self.vocab_size:
            raise ValueError(f"decoder_start_id {self.decoder_start_id} is outside the "
                             f"vocabulary (vocab_size {self.vocab_size})")


class FeedForward(nn.Module):
    """fc2(Dropout(act(fc1(x)))): the activation's dropout sits between the two matrices."""

    def __init__(self, d_model: int, d_ff: int, activation: str, act_dropout: float):
        super().__init__()
        self.activation = activation
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.act_drop = nn.Dropout(act_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_drop(ACTIVATIONS[self.activation](self.fc1(x))))


class EncoderLayer(nn.Module):
    """Post-LN: h = LN(x + Dropout(SelfAttn(x)));  out = LN(h + Dropout(FFN(h))).
    Pre-LN (mBART): h = x + Dropout(SelfAttn(LN(x)));  out = h + Dropout(FFN(LN(h)))."""

    def __init__(self, config: BartConfig):
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        self.pre_ln = config.pre_ln
        self.self_attn = MultiHeadAttention(d, config.n_head, dropout=config.attn_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.ffn = FeedForward(d, config.d_ff, config.activation, config.act_dropout)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, src_bias: torch.Tensor | None) -> torch.Tensor:
        # x (B, S, C); src_bias (B, 1, 1, S) hides padded source keys
        if self.pre_ln:
            x = x + self.drop(self.self_attn(self.self_attn_layer_norm(x), attn_mask=src_bias))
            return x + self.drop(self.ffn(self.final_layer_norm(x)))
        x = self.self_attn_layer_norm(x + self.drop(self.self_attn(x, attn_mask=src_bias)))
        return self.final_layer_norm(x + self.drop(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Post-LN: causal self-attention, attention over the encoder's output, feed-forward, each
    as LN(y + Dropout(Sublayer(y))); pre-LN (mBART): each as y + Dropout(Sublayer(LN(y)))."""

    def __init__(self, config: BartConfig):
        super().__init__()
        d, h, eps = config.d_model, config.n_head, config.layer_norm_eps
        self.pre_ln = config.pre_ln
        self.self_attn = MultiHeadAttention(d, h, dropout=config.attn_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.encoder_attn = MultiHeadAttention(d, h, dropout=config.attn_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.ffn = FeedForward(d, config.d_ff, config.activation, config.act_dropout)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, src_bias: torch.Tensor | None,
                tgt_bias: torch.Tensor | None, self_cache: KVCache | None,
                cross_cache: KVCache | None) -> torch.Tensor:
        # y (B, T, C); memory (B, S, C). tgt_bias (B, 1, T, past + T) already holds the causal
        # mask; without it the attention applies its own (cache offset included). The keys and
        # values of the encoder's output are computed once per source and kept in cross_cache
        # while decoding.
        if self.pre_ln:
            h = self.self_attn_layer_norm(y)
            y = y + self.drop(self.self_attn(h, attn_mask=tgt_bias, is_causal=tgt_bias is None,
                                             cache=self_cache))
            h = self.encoder_attn_layer_norm(y)
            y = y + self.drop(self.encoder_attn(h, memory=memory, attn_mask=src_bias,
                                                cache=cross_cache))
            return y + self.drop(self.ffn(self.final_layer_norm(y)))
        a = self.self_attn(y, attn_mask=tgt_bias, is_causal=tgt_bias is None, cache=self_cache)
        y = self.self_attn_layer_norm(y + self.drop(a))
        a = self.encoder_attn(y, memory=memory, attn_mask=src_bias, cache=cross_cache)
        y = self.encoder_attn_layer_norm(y + self.drop(a))
        return self.final_layer_norm(y + self.drop(self.ffn(y)))


class Bart(EncoderDecoderLM):
    config_class = BartConfig
    position_table = "max_seq_len"
    head_keys = ("lm_head.", "final_logits_bias")

    def __init__(self, config: BartConfig):
        super().__init__()
        self.config = config
        d, rows = config.d_model, config.max_seq_len + POSITION_OFFSET
        learned = config.positions == "learned"

        def embedding_norm() -> nn.Module:
            return nn.LayerNorm(d, eps=config.layer_norm_eps) if config.embedding_norm \
                else nn.Identity()

        # The one embedding matrix: source embedding, target embedding and output head.
        self.tok_emb = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        if learned:
            self.enc_pos = nn.Embedding(rows, d)
        self.enc_ln_emb = embedding_norm()
        self.encoder = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_layer))
        if learned:
            self.dec_pos = nn.Embedding(rows, d)
        else:  # Pegasus: one fixed table for both stacks, computed rather than stored
            self.register_buffer("sinusoids", split_sinusoids(config.max_seq_len, d),
                                 persistent=False)
        self.dec_ln_emb = embedding_norm()
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        if config.pre_ln:  # mBART: one more LayerNorm on each stack's output
            self.enc_ln_out = nn.LayerNorm(d, eps=config.layer_norm_eps)
            self.dec_ln_out = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.embed_scale = math.sqrt(d) if config.scale_embedding else 1.0
        self.drop = nn.Dropout(config.dropout)
        # The paper: N(0, 0.02) for every weight; zero biases, unit LayerNorm gains, and the
        # padding row of the token table zero (BERT's initialisation, zoo.layers.bert_init).
        self.apply(functools.partial(bert_init, std=config.init_std))
        self.lm_head = tied_head(self.tok_emb)
        self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))

    @classmethod
    def learned_positions(cls, config: BartConfig) -> bool:
        """Pegasus's table is computed: a longer one is more of the same sinusoids."""
        return config.positions == "learned"

    def embed(self, ids: torch.Tensor, stack: str, offset: int = 0) -> torch.Tensor:
        """Dropout(LN(s E[ids] + P[offset .. offset + T])): (B, T, C) for the "encoder" or the
        "decoder", each with its own position table (Pegasus: the one fixed table) and LayerNorm
        (none in Pegasus); s is 1, or sqrt(d_model) with `scale_embedding`."""
        T = ids.size(1)
        if offset + T > self.config.max_seq_len:
            raise ValueError(f"{offset + T} positions exceed the model's maximum of "
                             f"{self.config.max_seq_len} (its position table's rows)")
        if self.config.positions == "sinusoidal":
            pos = self.sinusoids[offset:offset + T]  # (T, C)
        else:
            table = self.enc_pos if stack == "encoder" else self.dec_pos
            pos = table(torch.arange(offset, offset + T, device=ids.device) + POSITION_OFFSET)
        norm = self.enc_ln_emb if stack == "encoder" else self.dec_ln_emb
        return self.drop(norm(self.tok_emb(ids) * self.embed_scale + pos))

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output ("memory") (B, S, C) for `src_ids` (B, S); `src_mask` (B, S) is
        1 for tokens and 0 for padding."""
        x = self.embed(src_ids, "encoder")
        src_bias = key_padding_bias(src_mask, x.dtype) if src_mask is not None else None
        for layer in self.encoder:
            x = layer(x, src_bias)
        return self.enc_ln_out(x) if self.config.pre_ln else x

    def decode(self, tgt_ids: torch.Tensor, memory: torch.Tensor,
               src_mask: torch.Tensor | None = None, tgt_mask: torch.Tensor | None = None,
               cache: DecoderCache | None = None) -> torch.Tensor:
        """The decoder's final states (B, T, C) for target tokens `tgt_ids` (B, T) attending to
        `memory` (B, S, C). With `cache` the tokens continue the `cache.length` positions decoded
        before, and the cache is updated in place. `tgt_mask` (B, cache.length + T), 1 = token,
        0 = padding, hides padded target keys on top of the causal mask."""
        past = cache.length if cache is not None else 0
        T = tgt_ids.size(1)
        y = self.embed(tgt_ids, "decoder", offset=past)  # (B, T, C)
        src_bias = key_padding_bias(src_mask, y.dtype) if src_mask is not None else None
        tgt_bias = None  # (B, 1, T, past + T): future keys -inf, padded ones very low
        if tgt_mask is not None:
            tgt_bias = causal_padding_mask(tgt_mask, T, past, y.dtype)
        for i, layer in enumerate(self.decoder):
            self_cache = cache.self_attn[i] if cache is not None else None
            cross_cache = cache.cross_attn[i] if cache is not None else None
            y = layer(y, memory, src_bias, tgt_bias, self_cache, cross_cache)
        if cache is not None:
            cache.length += T
        return self.dec_ln_out(y) if self.config.pre_ln else y  # (B, T, C)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The tied head plus the untrained bias: (..., V)."""
        return self.lm_head(hidden) + self.final_logits_bias[0]

    def flops_per_token(self, seqlen: int, src_len: int | None = None) -> float:
        """Forward FLOPs per TARGET token: the forward cost of one (source, target) pair with
        `src_len` (default `seqlen`) source and `seqlen` target tokens, divided by `seqlen`.
        With d = d_model, f = d_ff, E encoder and D decoder layers, S = src_len, T = seqlen:
          per source token: 2 E (4 d^2 + 2 d f)          encoder Q, K, V, out, FFN
                          + 2 D (2 d^2)                   decoder cross-attention K, V of memory
                          + 4 E d S                       bidirectional QK^T and AV
          per target token: 2 D (6 d^2 + 2 d f)          self Q, K, V, out; cross Q, out; FFN
                          + 2 V d                         tied output head
                          + 4 D d (T + 1) / 2             causal self-attention
                          + 4 D d S                       cross-attention over S keys
          total = per target token + per source token * S / T.
        Biases, LayerNorms, softmax, positions and embedding lookups are left out."""
        c = self.config
        d, f, E, D = c.d_model, c.d_ff, c.n_layer, c.decoder_layers
        S, T = (src_len if src_len is not None else seqlen), seqlen
        per_source = 2.0 * E * (4 * d * d + 2 * d * f) + 2.0 * D * 2 * d * d + 4.0 * E * d * S
        per_target = (2.0 * D * (6 * d * d + 2 * d * f) + 2.0 * c.vocab_size * d
                      + 4.0 * D * d * (T + 1) / 2 + 4.0 * D * d * S)
        return per_target + per_source * S / T
