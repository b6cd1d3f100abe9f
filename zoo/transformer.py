"""The original Transformer: Vaswani et al. 2017, "Attention Is All You Need" (arXiv 1706.03762).

The root of the family, so it has no parent model: an encoder-decoder for translation.
  - encoder: N layers of [self-attention, feed-forward]; decoder: N layers of [causally masked
    self-attention, attention over the encoder's output, feed-forward] (section 3.1);
  - post-LN: every sub-layer is wrapped as LayerNorm(x + Dropout(Sublayer(x))) (sections 3.1,
    5.4), so each layer's output is already normalised and no LayerNorm follows the last layer;
  - scaled dot-product attention softmax(Q K^T / sqrt(d_k)) V in h heads of d_k = d_model / h;
  - ReLU feed-forward max(0, x W1 + b1) W2 + b2 of inner size d_ff (section 3.3);
  - fixed sinusoidal positions added to the token embeddings, which are multiplied by
    sqrt(d_model); dropout on that sum in both stacks (sections 3.4, 3.5, 5.4);
  - ONE embedding matrix shared by the source embedding, the target embedding and the
    pre-softmax projection, possible because EN-DE used one shared BPE vocabulary (~37000).

Choices the paper leaves open, made here:
  - `pre_ln=True` normalises the input of each sub-layer instead, x + Dropout(Sublayer(LN(x))),
    as the released tensor2tensor code does by default (the difference Xiong et al. 2020
    analyse). A pre-LN stack's residual stream is never normalised, so this option also adds
    one final LayerNorm after the encoder and one after the decoder (as tensor2tensor and
    torch.nn.Transformer(norm_first=True) do); the post-LN default has none.
  - LayerNorm epsilon 1e-5 (PyTorch's default; tensor2tensor used 1e-6).
  - No dropout on attention probabilities by default (the paper names only residual and
    embedding dropout for its translation models); `attn_dropout` turns it on.
  - Initialisation as in the common reproductions: embeddings N(0, d_model^-1/2), so that after
    the sqrt(d_model) scale tokens have unit variance like the sinusoids; Xavier-uniform weights
    and zero biases in every linear layer; unit LayerNorm gains.
  - Label smoothing (0.1 in the paper) is a training choice: the loss here is plain mean
    cross-entropy (zoo.model.LMLoss), as for every zoo model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from zoo.layers import (
    FeedForward,
    KVCache,
    MultiHeadAttention,
    causal_mask,
    hidden_key_bias,
    key_padding_bias,
    tied_head,
)
from zoo.model import DecoderCache, EncoderDecoderLM, check_config


@dataclass(frozen=True)
class TransformerConfig:
    """Defaults: the paper's base model (Table 3) with the EN-DE shared vocabulary."""

    vocab_size: int = 37000  # one BPE vocabulary shared by source and target (section 5.1)
    n_layer: int = 6  # N, in the encoder and in the decoder alike
    d_model: int = 512
    n_head: int = 8  # h; d_k = d_v = d_model / h
    d_ff: int = 2048
    dropout: float = 0.1  # P_drop: on embeddings + positions and on every residual branch
    attn_dropout: float = 0.0  # on attention probabilities; not in the paper's recipe
    layer_norm_eps: float = 1e-5
    pre_ln: bool = False  # False: the paper's post-LN; True: tensor2tensor's pre-LN + final LNs

    def __post_init__(self) -> None:
        check_config(self)


def sinusoidal_positions(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """Section 3.5: PE(pos, 2i) = sin(pos / 10000^(2i / d_model)) and PE(pos, 2i + 1) = cos(same),
    for `positions` (T,); returns (T, d_model) in fp32. Computed on the fly (a few T x d_model
    sines), so the model has no maximum length."""
    assert d_model % 2 == 0, "sinusoidal positions pair the dimensions: d_model must be even"
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32, device=positions.device)  # (d/2,)
    angles = positions.float()[:, None] / 10000.0 ** (two_i / d_model)  # (T, d/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)  # interleaved: sin, cos


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each with a residual connection and a LayerNorm."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        d, h, p_attn = config.d_model, config.n_head, config.attn_dropout
        self.self_attn = MultiHeadAttention(d, h, bias=True, dropout=p_attn)
        self.ln1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn = FeedForward(d, config.d_ff, activation="relu")
        self.ln2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)
        self.pre_ln = config.pre_ln

    def forward(self, x: torch.Tensor, src_bias: torch.Tensor | None) -> torch.Tensor:
        # x (B, S, C); src_bias (B, 1, 1, S) hides padded source keys
        if self.pre_ln:  # x + Dropout(Sublayer(LN(x)))
            x = x + self.drop(self.self_attn(self.ln1(x), attn_mask=src_bias))
            return x + self.drop(self.ffn(self.ln2(x)))
        # The paper: LN(x + Dropout(Sublayer(x)))
        x = self.ln1(x + self.drop(self.self_attn(x, attn_mask=src_bias)))
        return self.ln2(x + self.drop(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention, attention over the encoder output, feed-forward; each sub-layer
    with a residual connection and a LayerNorm."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        d, h, p_attn = config.d_model, config.n_head, config.attn_dropout
        eps = config.layer_norm_eps
        self.self_attn = MultiHeadAttention(d, h, bias=True, dropout=p_attn)
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.cross_attn = MultiHeadAttention(d, h, bias=True, dropout=p_attn)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.ffn = FeedForward(d, config.d_ff, activation="relu")
        self.ln3 = nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(config.dropout)
        self.pre_ln = config.pre_ln

    def forward(self, y: torch.Tensor, memory: torch.Tensor, src_bias: torch.Tensor | None,
                tgt_bias: torch.Tensor | None, self_cache: KVCache | None,
                cross_cache: KVCache | None) -> torch.Tensor:
        # y (B, T, C); memory (B, S, C). tgt_bias (B, 1, T, past + T) already holds the causal
        # mask; without it the attention applies its own causal mask (cache offset included).
        def self_attention(h: torch.Tensor) -> torch.Tensor:
            return self.self_attn(h, attn_mask=tgt_bias, is_causal=tgt_bias is None,
                                  cache=self_cache)

        def cross_attention(h: torch.Tensor) -> torch.Tensor:
            # queries from the decoder, keys and values from the final encoder output (computed
            # once per source and kept in cross_cache while decoding)
            return self.cross_attn(h, memory=memory, attn_mask=src_bias, cache=cross_cache)

        if self.pre_ln:  # y + Dropout(Sublayer(LN(y)))
            y = y + self.drop(self_attention(self.ln1(y)))
            y = y + self.drop(cross_attention(self.ln2(y)))
            return y + self.drop(self.ffn(self.ln3(y)))
        # The paper: LN(y + Dropout(Sublayer(y)))
        y = self.ln1(y + self.drop(self_attention(y)))
        y = self.ln2(y + self.drop(cross_attention(y)))
        return self.ln3(y + self.drop(self.ffn(y)))


class Transformer(EncoderDecoderLM):
    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        # The one embedding matrix: source embedding, target embedding and output projection.
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_layer))
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        # Pre-LN leaves the residual streams un-normalised, so both stacks end with a LayerNorm;
        # in the paper's post-LN stacks the last layer's output is already a LayerNorm's output.
        if config.pre_ln:
            self.enc_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
            self.dec_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        else:
            self.enc_norm, self.dec_norm = nn.Identity(), nn.Identity()
        self.apply(self._init_weights)
        self.lm_head = tied_head(self.tok_emb)  # the pre-softmax projection: E again (tied)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.d_model**-0.5)
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def embed(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Dropout(E[ids] * sqrt(d_model) + PE(offset .. offset + T)): (B, T, C), either stack."""
        d = self.config.d_model
        pos = torch.arange(offset, offset + ids.size(1), device=ids.device)  # (T,)
        x = self.tok_emb(ids) * math.sqrt(d)
        return self.drop(x + sinusoidal_positions(pos, d).to(x.dtype))

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output ("memory") (B, S, C) for `src_ids` (B, S); `src_mask` (B, S) is
        1 for tokens and 0 for padding."""
        x = self.embed(src_ids)
        src_bias = key_padding_bias(src_mask, x.dtype) if src_mask is not None else None
        for layer in self.encoder:
            x = layer(x, src_bias)
        return self.enc_norm(x)

    def decode(self, tgt_ids: torch.Tensor, memory: torch.Tensor,
               src_mask: torch.Tensor | None = None, tgt_mask: torch.Tensor | None = None,
               cache: DecoderCache | None = None) -> torch.Tensor:
        """The decoder's final states (B, T, C) for target tokens `tgt_ids` (B, T) attending to
        `memory` (B, S, C) (after dec_norm in the pre-LN variant; `logits` maps them to the
        vocabulary). With `cache` the tokens continue the `cache.length` positions decoded
        before, and the cache is updated in place. `tgt_mask` (B, cache.length + T), 1 = token,
        0 = padding, hides padded target keys on top of the causal mask."""
        past = cache.length if cache is not None else 0
        T = tgt_ids.size(1)
        y = self.embed(tgt_ids, offset=past)  # (B, T, C)
        src_bias = key_padding_bias(src_mask, y.dtype) if src_mask is not None else None
        tgt_bias = None
        if tgt_mask is not None:
            if tgt_mask.size(1) != past + T:
                raise ValueError(f"tgt_mask covers {tgt_mask.size(1)} positions; expected "
                                 f"{past + T} ({past} cached + {T} new)")
            causal = causal_mask(T, past + T, y.device)  # (T, past + T)
            tgt_bias = key_padding_bias(tgt_mask, y.dtype).expand(-1, -1, T, -1).masked_fill(
                ~causal, hidden_key_bias(y.dtype))  # (B, 1, T, past + T)
        for i, layer in enumerate(self.decoder):
            self_cache = cache.self_attn[i] if cache is not None else None
            cross_cache = cache.cross_attn[i] if cache is not None else None
            y = layer(y, memory, src_bias, tgt_bias, self_cache, cross_cache)
        if cache is not None:
            cache.length += T
        return self.dec_norm(y)  # (B, T, C)

    def flops_per_token(self, seqlen: int, src_len: int | None = None) -> float:
        """Forward FLOPs per TARGET token: the forward cost of one (source, target) pair with
        `src_len` (default `seqlen`) source and `seqlen` target tokens, divided by `seqlen`.
        Multiply-add = 2 FLOPs; with d = d_model, N = n_layer, S = src_len, T = seqlen:
          per source token: 2 N (4 d^2 + 2 d d_ff)       encoder Q, K, V, out, FFN
                          + 2 N (2 d^2)                   decoder cross-attention K, V of memory
                          + 4 N d S                       bidirectional QK^T and AV
          per target token: 2 N (6 d^2 + 2 d d_ff)       self Q, K, V, out; cross Q, out; FFN
                          + 2 V d                         tied output projection
                          + 4 N d (T + 1) / 2             causal self-attention, average context
                          + 4 N d S                       cross-attention over S keys
          total = per target token + per source token * S / T.
        Biases, LayerNorms, softmax, positions and embedding lookups are left out."""
        c = self.config
        d, N, S, T = c.d_model, c.n_layer, src_len if src_len is not None else seqlen, seqlen
        per_source = 2.0 * N * (4 * d * d + 2 * d * c.d_ff) + 2.0 * N * 2 * d * d + 4.0 * N * d * S
        per_target = (2.0 * N * (6 * d * d + 2 * d * c.d_ff) + 2.0 * c.vocab_size * d
                      + 4.0 * N * d * (T + 1) / 2 + 4.0 * N * d * S)
        return per_target + per_source * S / T
