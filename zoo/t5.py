"""T5: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer" (JMLR 21; arXiv 1910.10683).

The encoder-decoder of the original Transformer (zoo/transformer.py), with the changes of
section 2.1:
  - layer normalisation without a bias and without subtracting the mean: activations are only
    rescaled, x / sqrt(mean(x^2) + eps) * g (RMSNorm, zoo.layers.norms), eps 1e-6;
  - the normalisation sits before each sub-layer, x + Dropout(Sublayer(LN(x))), and one more
    follows each stack, then dropout;
  - no position embeddings: every self-attention layer adds a learned scalar b[bucket, head] to
    its logits, where the bucket depends on the key's offset from the query. 32 buckets per
    stack, shared by all of its layers, kept in the first layer's table: distances below 8
    (16 without direction) have a bucket each, longer ones share buckets whose width grows
    logarithmically up to 128, beyond which all distances share the last bucket. The
    encoder's buckets tell keys before the query from keys after it (16 each); the decoder's
    see only the past. Attention over the encoder (cross-attention) has no position term;
  - no biases in any linear layer, and attention logits are not divided by sqrt(d_kv): the
    initialisation folds that scale into the query matrix;
  - ReLU feed-forward max(0, x W_i) W_o with dropout on the hidden layer;
  - one embedding matrix for the encoder's input, the decoder's input and (T5 as released)
    the output layer; the decoder's final states are multiplied by d_model^-1/2 before it,
    since the embedding's entries have unit variance (Mesh TensorFlow's tied softmax);
  - dropout 0.1 on the embeddings, each sub-layer's output, the attention probabilities, the
    feed-forward's hidden layer and each stack's output (pre-training used none; section 3.1.2
    and Table 14's fine-tuning used 0.1, Hugging Face's default).
The heads have their own width d_kv (64), so n_head x d_kv need not equal d_model (T5-3B and
T5-11B widen the attention to 128 heads of 128 over d_model 1024).

T5 v1.1 (and Flan-T5, fine-tuned from it) changed three things, which the config names:
`feed_forward="gated-gelu"` (GEGLU, Shazeer 2020: gelu_tanh(x W_i0) * (x W_i1) then W_o),
an output matrix of its own whose input is not rescaled (`tie_embeddings=False`,
`scale_output=False`), and no dropout in pre-training (`dropout=0.0`). The two output fields
are apart because transformers 5 builds a new v1.1 model with its output tied to the embedding
but not rescaled, and saves it so.

Initialisation as Mesh TensorFlow's, which Hugging Face's T5 reproduces: the embedding (and an
untied output layer) N(0, 1); the query matrix N(0, (d_model d_kv)^-1/2), which is where the
missing 1/sqrt(d_kv) went; keys and values N(0, d_model^-1/2); attention's output
N(0, (n_head d_kv)^-1/2); W_i N(0, d_model^-1/2), W_o N(0, d_ff^-1/2); the relative position
tables N(0, d_model^-1/2); unit norm gains.

Decoding starts from the padding token (id 0), T5's decoder start (`decoder_start_id`; the
quality commands' seq2seq task starts from their tokenizer's BOS).
Parameter count, with i = n_head d_kv, m = 2 (ReLU) or 3 (gated) feed-forward matrices,
E encoder and D decoder layers, and 32 buckets x n_head per stack:
    V d [+ V d untied] + E (4 d i + m d f + 2 d) + D (8 d i + m d f + 3 d) + 2 d + 2 x 32 h
which is 222,903,552 for the defaults, T5-Base as released (the paper's "220 million").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import KVCache, RMSNorm, causal_mask, key_padding_bias, sdpa, tied_head
from zoo.model import DecoderCache, EncoderDecoderLM, check_config

FEED_FORWARDS = ("relu", "gated-gelu")  # T5; T5 v1.1 and Flan-T5


@dataclass(frozen=True)
class T5Config:
    """Defaults: T5-Base (Table 14, "Base": 12 + 12 layers, d_model 768, 12 heads)."""

    vocab_size: int = 32128  # 32,000 SentencePiece pieces, the matrices padded to 128 x 251
    d_model: int = 768
    d_kv: int = 64  # the width of each attention head
    n_head: int = 12
    d_ff: int = 3072
    n_layer: int = 12  # encoder layers
    n_decoder_layer: int | None = None  # None: as many as the encoder
    num_buckets: int = 32  # relative position buckets per stack
    max_distance: int = 128  # distances from here on share the last bucket
    feed_forward: str = "relu"  # one of FEED_FORWARDS
    tie_embeddings: bool = True  # False: T5 v1.1's output matrix of its own
    scale_output: bool = True  # the decoder's states times d_model^-1/2 before the output
    dropout: float = 0.1
    layer_norm_eps: float = 1e-6
    decoder_start_id: int = 0  # the decoder's first input: T5's padding token

    def __post_init__(self) -> None:
        check_config(self)
        if self.decoder_start_id >= self.vocab_size:
            raise ValueError(f"decoder_start_id {self.decoder_start_id} is outside the "
                             f"vocabulary (vocab_size {self.vocab_size})")
        if self.feed_forward not in FEED_FORWARDS:
            raise ValueError(f"feed_forward {self.feed_forward!r} is not one of "
                             f"{', '.join(FEED_FORWARDS)}")
        if self.num_buckets < 4 or self.max_distance <= self.num_buckets // 4:
            raise ValueError(f"num_buckets {self.num_buckets} and max_distance "
                             f"{self.max_distance}: need num_buckets >= 4 and max_distance > "
                             "num_buckets / 4 (the exact buckets' range)")

    @property
    def decoder_layers(self) -> int:
        return self.n_layer if self.n_decoder_layer is None else self.n_decoder_layer


def relative_position_bucket(offset: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """The bucket (long, same shape) of each key offset = key position - query position.
    Bidirectional: half the buckets for keys after the query, half for keys at or before it.
    Within a half, distances below half of its buckets get a bucket each; the rest are binned
    by log(distance) up to `max_distance`, past which they share the last bucket. A causal
    stack sees no key after the query, so its offsets > 0 fall in bucket 0 (and are masked)."""
    bucket = torch.zeros_like(offset)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (offset > 0).long() * num_buckets
        distance = offset.abs()
    else:
        distance = (-offset).clamp(min=0)
    exact = num_buckets // 2
    # The log's operands in the order Mesh TensorFlow computes them, so that a distance on a
    # bucket's edge rounds the same way.
    logarithmic = (torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                   * (num_buckets - exact)).long()
    far = (exact + logarithmic).clamp(max=num_buckets - 1)
    return bucket + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
    """b[bucket(key - query), head]: one learned scalar per bucket and head, added to the
    attention logits of every layer of a stack. The bias depends on the offset key - query
    alone, so it is constant along each diagonal of the (queries, keys) matrix: each head's
    value is looked up once per offset and laid along its diagonal."""

    def __init__(self, n_head: int, num_buckets: int, max_distance: int, bidirectional: bool):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.bidirectional = bidirectional
        self.table = nn.Embedding(num_buckets, n_head)

    def forward(self, queries: int, keys: int, first_query: int = 0) -> torch.Tensor:
        """(1, n_head, queries, keys) for queries at positions first_query.. and keys at 0..,
        contiguous (attention reads it once per layer)."""
        last_query = first_query + queries - 1
        # every offset the matrix holds, ascending: from (key 0, last query) to (last key,
        # first query)
        offsets = torch.arange(-last_query, keys - first_query, device=self.table.weight.device)
        bucket = relative_position_bucket(offsets, self.bidirectional, self.num_buckets,
                                          self.max_distance)
        values = self.table(bucket).t().contiguous()  # (n_head, queries + keys - 1)
        # Window r holds the offsets -last_query + r + key for keys 0..: those of query
        # last_query - r. The windows are the rows in reverse order.
        return values.unfold(1, keys, 1).flip(1).contiguous().unsqueeze(0)


class Attention(nn.Module):
    """softmax(Q K^T + bias) V over n_head heads of d_kv: no 1/sqrt(d_kv), no biases.
    Self-attention over `x`, or attention over `memory` (cross-attention) when given. With a
    `cache`, self-attention appends this call's keys and values; cross-attention projects the
    memory once and reuses it."""

    def __init__(self, d_model: int, n_head: int, d_kv: int, dropout: float):
        super().__init__()
        self.n_head, self.d_kv, self.dropout = n_head, d_kv, dropout
        inner = n_head * d_kv
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.d_kv).transpose(1, 2)  # (B, nh, T, d_kv)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None,
                memory: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self._heads(self.q(x))
        if memory is not None and cache is not None and cache.length:
            k, v = cache.get()
        else:
            source = x if memory is None else memory
            k, v = self._heads(self.k(source)), self._heads(self.v(source))
            if cache is not None:
                if memory is None:
                    k, v = cache.append(k, v)
                else:
                    cache.set(k, v)
        bias = bias.to(q.dtype) if bias is not None else None  # bfloat16 under autocast
        y = self.attend(q, k, v, bias, self.dropout if self.training else 0.0, False,
                        cache is not None and memory is None)  # (B, nh, T, d_kv)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.d_kv))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               bias: torch.Tensor | None, dropout: float, is_causal: bool,
               new_key_length: bool) -> torch.Tensor:
        """softmax(q k^T + bias) v with dropout on the probabilities: `sdpa` at scale 1."""
        return sdpa(q, k, v, bias, dropout, is_causal, new_key_length, scale=1.0)


class FeedForward(nn.Module):
    """W_o(Dropout(relu(x W_i))), or with `gated` W_o(Dropout(gelu_tanh(x W_i0) * x W_i1))."""

    def __init__(self, d_model: int, d_ff: int, gated: bool, dropout: float):
        super().__init__()
        self.gated = gated
        if gated:
            self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
            self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        else:
            self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            hidden = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        else:
            hidden = F.relu(self.wi(x))
        return self.wo(self.drop(hidden))


class EncoderLayer(nn.Module):
    def __init__(self, c: T5Config):
        super().__init__()
        self.ln1 = RMSNorm(c.d_model, c.layer_norm_eps)
        self.self_attn = Attention(c.d_model, c.n_head, c.d_kv, c.dropout)
        self.ln2 = RMSNorm(c.d_model, c.layer_norm_eps)
        self.ffn = FeedForward(c.d_model, c.d_ff, c.feed_forward == "gated-gelu", c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # x (B, S, C); bias (1 or B, nh, S, S): the positions' buckets plus the padding
        x = x + self.drop(self.self_attn(self.ln1(x), bias))
        return x + self.drop(self.ffn(self.ln2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: T5Config):
        super().__init__()
        self.ln1 = RMSNorm(c.d_model, c.layer_norm_eps)
        self.self_attn = Attention(c.d_model, c.n_head, c.d_kv, c.dropout)
        self.ln2 = RMSNorm(c.d_model, c.layer_norm_eps)
        self.cross_attn = Attention(c.d_model, c.n_head, c.d_kv, c.dropout)
        self.ln3 = RMSNorm(c.d_model, c.layer_norm_eps)
        self.ffn = FeedForward(c.d_model, c.d_ff, c.feed_forward == "gated-gelu", c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, self_bias: torch.Tensor,
                cross_bias: torch.Tensor | None, self_cache: KVCache | None,
                cross_cache: KVCache | None) -> torch.Tensor:
        # y (B, T, C); memory (B, S, C); self_bias (1 or B, nh, T, past + T) holds the causal
        # mask; cross_bias (B, 1, 1, S) hides padded source tokens (no position term)
        y = y + self.drop(self.self_attn(self.ln1(y), self_bias, cache=self_cache))
        y = y + self.drop(self.cross_attn(self.ln2(y), cross_bias, memory, cross_cache))
        return y + self.drop(self.ffn(self.ln3(y)))


class T5(EncoderDecoderLM):
    config_class = T5Config

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)  # both stacks' inputs
        self.drop = nn.Dropout(c.dropout)
        self.enc_bias = RelativePositionBias(c.n_head, c.num_buckets, c.max_distance, True)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_layer))
        self.enc_norm = RMSNorm(c.d_model, c.layer_norm_eps)
        self.dec_bias = RelativePositionBias(c.n_head, c.num_buckets, c.max_distance, False)
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        self.dec_norm = RMSNorm(c.d_model, c.layer_norm_eps)
        if c.tie_embeddings:
            self.lm_head = tied_head(self.tok_emb)
        else:
            self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        c = self.config
        inner = c.n_head * c.d_kv
        nn.init.normal_(self.tok_emb.weight, std=1.0)
        if not c.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=1.0)
        for table in (self.enc_bias.table, self.dec_bias.table):
            nn.init.normal_(table.weight, std=c.d_model**-0.5)
        for module in self.modules():
            if isinstance(module, Attention):
                nn.init.normal_(module.q.weight, std=(c.d_model * c.d_kv) ** -0.5)
                nn.init.normal_(module.k.weight, std=c.d_model**-0.5)
                nn.init.normal_(module.v.weight, std=c.d_model**-0.5)
                nn.init.normal_(module.o.weight, std=inner**-0.5)
            elif isinstance(module, FeedForward):
                for wi in (module.wi_0, module.wi_1) if module.gated else (module.wi,):
                    nn.init.normal_(wi.weight, std=c.d_model**-0.5)
                nn.init.normal_(module.wo.weight, std=c.d_ff**-0.5)

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output ("memory") (B, S, C) for `src_ids` (B, S); `src_mask` (B, S) is
        1 for tokens and 0 for padding."""
        x = self.drop(self.tok_emb(src_ids))
        S = x.size(1)
        bias = self.enc_bias(S, S)  # (1, nh, S, S), computed once for every layer
        if src_mask is not None:
            bias = bias + key_padding_bias(src_mask, bias.dtype)  # (B, nh, S, S)
        for layer in self.encoder:
            x = layer(x, bias)
        return self.drop(self.enc_norm(x))

    def decode(self, tgt_ids: torch.Tensor, memory: torch.Tensor,
               src_mask: torch.Tensor | None = None, tgt_mask: torch.Tensor | None = None,
               cache: DecoderCache | None = None) -> torch.Tensor:
        """The decoder's final states (B, T, C) for target tokens `tgt_ids` (B, T) attending to
        `memory` (B, S, C). With `cache` the tokens continue the `cache.length` positions
        decoded before, and the cache is updated in place. `tgt_mask` (B, cache.length + T),
        1 = token, 0 = padding, hides padded target keys on top of the causal mask."""
        past = cache.length if cache is not None else 0
        T = tgt_ids.size(1)
        y = self.drop(self.tok_emb(tgt_ids))  # (B, T, C)
        self_bias = self.dec_bias(T, past + T, first_query=past)  # (1, nh, T, past + T)
        if T > 1:  # a single new query may see every key
            future = ~causal_mask(T, past + T, y.device)
            self_bias = self_bias.masked_fill(future, float("-inf"))
        if tgt_mask is not None:
            if tgt_mask.size(1) != past + T:
                raise ValueError(f"tgt_mask covers {tgt_mask.size(1)} positions; expected "
                                 f"{past + T} ({past} cached + {T} new)")
            self_bias = self_bias + key_padding_bias(tgt_mask, self_bias.dtype)
        cross_bias = key_padding_bias(src_mask, y.dtype) if src_mask is not None else None
        for i, layer in enumerate(self.decoder):
            self_cache = cache.self_attn[i] if cache is not None else None
            cross_cache = cache.cross_attn[i] if cache is not None else None
            y = layer(y, memory, self_bias, cross_bias, self_cache, cross_cache)
        if cache is not None:
            cache.length += T
        return self.drop(self.dec_norm(y))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer: the embedding matrix again on states scaled by d_model^-1/2
        (T5), or T5 v1.1's own matrix on the states as they are."""
        if self.config.scale_output:
            hidden = hidden * self.config.d_model**-0.5
        return self.lm_head(hidden)

    def flops_per_token(self, seqlen: int, src_len: int | None = None) -> float:
        """Forward FLOPs per TARGET token: one (source, target) pair of `src_len` (default
        `seqlen`) source and `seqlen` target tokens, divided by `seqlen`. Multiply-add = 2
        FLOPs; d = d_model, i = n_head d_kv, f = d_ff, m = 2 (ReLU) or 3 (gated) feed-forward
        matrices, E and D the encoder's and decoder's layers, S = src_len, T = seqlen:
          per source token: 2 E (4 d i + m d f)        encoder Q, K, V, O, feed-forward
                          + 2 D (2 d i)                 the decoder's K, V of the memory
                          + 4 E i S                     bidirectional QK^T and AV
          per target token: 2 D (6 d i + m d f)        self Q, K, V, O; cross Q, O; FFN
                          + 2 V d                       the output layer
                          + 4 D i (T + 1) / 2           causal self-attention, average context
                          + 4 D i S                     cross-attention over S keys
          total = per target token + per source token * S / T.
        Norms, position buckets, softmax and embedding lookups are left out."""
        c = self.config
        d, i, f, V = c.d_model, c.n_head * c.d_kv, c.d_ff, c.vocab_size
        E, D = c.n_layer, c.decoder_layers
        m = 3 if c.feed_forward == "gated-gelu" else 2
        S, T = (src_len if src_len is not None else seqlen), seqlen
        per_source = 2.0 * E * (4 * d * i + m * d * f) + 2.0 * D * 2 * d * i + 4.0 * E * i * S
        per_target = (2.0 * D * (6 * d * i + m * d * f) + 2.0 * V * d
                      + 4.0 * D * i * (T + 1) / 2 + 4.0 * D * i * S)
        return per_target + per_source * S / T
