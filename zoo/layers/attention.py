"""Multi-head attention with an optional KV cache, on top of scaled_dot_product_attention.

Used unchanged by the Transformer (self- and cross-attention), BERT/RoBERTa, GPT and
MosaicBERT (which passes its ALiBi bias as an additive mask). Masks follow
`F.scaled_dot_product_attention`: a bool mask is True where a query may attend, a float mask
is added to the scores; either broadcasts to (B, nh, T_query, T_key). `math_attention` is the
same attention written out, the oracle of the tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # older torch has no cuDNN attention to keep out
    sdpa_kernel = None


class KVCache:
    """Keys and values of past positions, (B, nh, T, hs) each, grown in place: the buffer
    doubles when full, so appending one token costs O(1) amortised instead of a full copy."""

    def __init__(self) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = k.size(2)
        if self._k is None or self.length + new > self._k.size(2):
            capacity = max(2 * (self.length + new), 16)
            grown_k = k.new_empty(*k.shape[:2], capacity, k.size(3))
            grown_v = v.new_empty(*v.shape[:2], capacity, v.size(3))
            if self._k is not None:
                grown_k[:, :, : self.length] = self._k[:, :, : self.length]
                grown_v[:, :, : self.length] = self._v[:, :, : self.length]
            self._k, self._v = grown_k, grown_v
        self._k[:, :, self.length : self.length + new] = k
        self._v[:, :, self.length : self.length + new] = v
        self.length += new
        return self._k[:, :, : self.length], self._v[:, :, : self.length]

    def set(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store fixed keys and values (cross-attention over an encoder's output)."""
        self._k, self._v, self.length = k, v, k.size(2)

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._k[:, :, : self.length], self._v[:, :, : self.length]


def causal_mask(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Bool (q_len, k_len) mask for queries that are the last q_len of k_len positions."""
    offset = k_len - q_len
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=offset)


def hidden_key_bias(dtype: torch.dtype) -> float:
    """The additive score of a hidden key (padding) that a query may still have nothing but:
    far below any real score, so it gets no weight beside one, yet finite, so that a query that
    sees only hidden keys averages them instead of producing NaNs. Half the dtype's lowest value,
    not all of it: CUDA's memory-efficient and cuDNN attention kernels scale the scores by
    log2(e), which takes finfo.min to -inf and makes such a query a row of zeros there, unlike
    on the CPU."""
    return torch.finfo(dtype).min / 2


def causal_padding_mask(attention_mask: torch.Tensor, T: int, past: int,
                        dtype: torch.dtype) -> torch.Tensor:
    """The additive (B, 1, T, past + T) mask of a causal decoder's T new queries, from a
    (B, past + T) mask of 1 = token, 0 = padding: -inf on future keys, a very low finite score
    on padded ones (hidden_key_bias), so that a query with only padding to see (a left pad)
    averages it rather than producing NaNs, which would reach the real tokens through its keys
    and values."""
    B, S = attention_mask.shape
    if S != past + T:
        raise ValueError(f"attention_mask covers {S} positions; expected {past + T} "
                         f"({past} cached + {T} new)")
    padded = ~attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    future = ~causal_mask(T, S, attention_mask.device)  # (T, S)
    mask = torch.zeros(B, 1, T, S, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(padded, hidden_key_bias(dtype)).masked_fill(future, float("-inf"))


def key_padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, 1, S) key mask from a (B, S) mask of 1 = token, 0 = padding. Masked keys
    get a very low finite score (hidden_key_bias) rather than -inf, so a query that sees no
    token at all (a padded position) gets finite uniform weights instead of NaNs, which would
    otherwise reach the real tokens through the next layer's keys and values."""
    hidden = ~mask.bool()[:, None, None, :]
    return torch.zeros(hidden.shape, dtype=dtype, device=mask.device).masked_fill(
        hidden, hidden_key_bias(dtype))


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True where a query may attend) as the additive mask it stands for: 0 where
    it may, -inf where not."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask,
                                                                                float("-inf"))


def merge_masks(mask: torch.Tensor | None, extra: torch.Tensor | None) -> torch.Tensor | None:
    """Combine two masks (bool = may attend, float = additive) into one; a float result keeps
    the float mask's dtype, so that it matches the attention's inputs."""
    if mask is None or extra is None:
        return extra if mask is None else mask
    if mask.dtype == torch.bool and extra.dtype == torch.bool:
        return mask & extra
    dtype = mask.dtype if mask.dtype != torch.bool else extra.dtype
    as_float = [m if m.dtype != torch.bool else additive_mask(m, dtype) for m in (mask, extra)]
    return as_float[0] + as_float[1]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
         dropout_p: float = 0.0, is_causal: bool = False,
         new_key_length: bool = False, scale: float | None = None) -> torch.Tensor:
    """F.scaled_dot_product_attention (`scale`: the logits' factor, 1/sqrt(hs) when None); with
    `new_key_length` (keys from a KV cache that has grown since the last call, as in every
    decoding step) on CUDA, without cuDNN's kernel. PyTorch 2.11 prefers cuDNN attention for
    bf16 on Hopper, and it plans anew for every key length it has not seen: about 70 ms a call
    on an H100, where flash attention takes 0.05 ms."""
    if new_key_length and q.is_cuda and sdpa_kernel is not None:
        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                  dropout_p=dropout_p, is_causal=is_causal,
                                                  scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale)


def causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                attn_mask: torch.Tensor | None, dropout_p: float, cached: bool) -> torch.Tensor:
    """Causal `sdpa` of T queries that are the last T of the S keys (a KV cache's positions,
    then this call's; `cached` says there is a cache). Without `attn_mask`: plain causal
    attention over a call's own keys, no mask at all for one new query (it sees every cached
    key), else the causal mask of the last T of S positions. A given `attn_mask` (a padding
    mask) must already hold the causal one (causal_padding_mask)."""
    T, S = q.size(2), k.size(2)
    is_causal = attn_mask is None and S == T and T > 1
    if attn_mask is None and S != T and T > 1:
        attn_mask = causal_mask(T, S, q.device)
    return sdpa(q, k, v, attn_mask, dropout_p, is_causal, new_key_length=cached)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) + mask) v, written out: the plain attention that tests hold
    `sdpa` to. q (B, nh, T_query, hs), k and v (B, nh, T_key, hs); `attn_mask` as in `sdpa` (bool:
    True where a query may attend; float: added to the scores); `is_causal` lets query i see
    keys 0..i, aligned to the first key as in F.scaled_dot_product_attention. A query that may
    see no key at all gets NaNs here (softmax over nothing), where PyTorch's kernels differ."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T_query, T_key)
    if is_causal:
        future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    return torch.softmax(scores, dim=-1) @ v  # (B, nh, T_query, hs)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        assert d_model % n_head == 0, f"d_model {d_model} is not divisible by n_head {n_head}"
        self.n_head, self.dropout = n_head, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: KVCache | None = None) -> torch.Tensor:
        """Self-attention over `x` (B, T, C), or cross-attention to `memory` (B, S, C) when given.
        With a `cache`, self-attention appends this call's keys/values to it and attends over
        all of them; cross-attention computes the memory's keys/values once and reuses them."""
        B, T, C = x.shape
        q = self._heads(self.q_proj(x))
        if memory is not None and cache is not None and cache.length:
            k, v = cache.get()
        else:
            source = x if memory is None else memory
            k, v = self._heads(self.k_proj(source)), self._heads(self.v_proj(source))
            if cache is not None:
                if memory is None:
                    k, v = cache.append(k, v)
                else:
                    cache.set(k, v)
        dropout = self.dropout if self.training else 0.0
        if is_causal and T == 1:
            # One new query may see every cached key: no causal mask at all. An all-True mask
            # would only keep flash attention out on CUDA (it takes no mask): on an H100 a
            # decoding step's attention then takes 0.24 ms instead of 0.05 ms.
            is_causal = False
        elif is_causal and (attn_mask is not None or k.size(2) != T):
            # SDPA's own causal flag aligns queries to the first keys; with a cache the queries
            # are the last T positions, so build the mask explicitly.
            attn_mask = merge_masks(attn_mask, causal_mask(T, k.size(2), x.device))
            is_causal = False
        y = self.attend(q, k, v, attn_mask, dropout, is_causal,
                        new_key_length=cache is not None and memory is None)  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: torch.Tensor | None, dropout: float, is_causal: bool,
               new_key_length: bool) -> torch.Tensor:
        """softmax(q k^T / sqrt(hs) + mask) v with dropout on the probabilities: `sdpa`."""
        return sdpa(q, k, v, attn_mask, dropout, is_causal, new_key_length)
