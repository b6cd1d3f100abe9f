"""Multi-head attention with an optional KV cache, on top of scaled_dot_product_attention.

Used unchanged by the Transformer (self- and cross-attention), BERT/RoBERTa, GPT and
MosaicBERT (which passes its ALiBi bias as an additive mask). The sliding window's pieces
(WindowKVCache, window_visibility and its bands, attend) serve LLaMA/Mistral's window and
GPT-Neo's local layers alike. Masks follow
`F.scaled_dot_product_attention`: a bool mask is True where a query may attend, a float mask
is added to the scores; either broadcasts to (B, nh, T_query, T_key). `math_attention` is the
same attention written out, the oracle of the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


# ---- sliding windows (Mistral's, GPT-Neo's local layers) --------------------------------------

class WindowKVCache:
    """A layer's keys and values under a sliding window W: only the last W - 1 positions are
    kept, since the next query sees those and itself. `length` counts every position seen (the
    next token's position), as KVCache.length does; `keys` holds at most W - 1 of them.
    Appending concatenates and trims, a copy of W keys per step, the order of the attention's
    own work over them (a ring buffer would save the copy but scramble the order of keys)."""

    def __init__(self, window: int) -> None:
        self.keep = window - 1
        self.keys: torch.Tensor | None = None  # (B, nh, <= W - 1, hs)
        self.values: torch.Tensor | None = None
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept keys and values followed by this call's T, (B, nh, kept + T, hs): what this
        call's queries may see. Then keeps the last W - 1 of them."""
        if self.keys is not None:
            k, v = torch.cat((self.keys, k), dim=2), torch.cat((self.values, v), dim=2)
        self.length += k.size(2) - (0 if self.keys is None else self.keys.size(2))
        first = max(k.size(2) - self.keep, 0)
        self.keys, self.values = k[:, :, first:].contiguous(), v[:, :, first:].contiguous()
        return k, v


@dataclass
class Visibility:
    """What a call's T queries may see of its S keys, computed once per forward for every layer
    that shares it: one SDPA mask for all queries (`mask`, `is_causal`), or with a window over a
    long input, `bands` of (query slice, key slice, mask): each band of queries with the keys
    its window reaches, and a mask over those."""

    mask: torch.Tensor | None = None
    is_causal: bool = False
    bands: list[tuple[slice, slice, torch.Tensor | None]] = field(default_factory=list)


def window_visibility(attention_mask: torch.Tensor | None, T: int, past: int, kept: int,
                      window: int | None, band: int | None, dtype: torch.dtype,
                      device: torch.device) -> Visibility:
    """What T queries (positions past..past+T-1) may see of kept + T keys (positions
    past-kept..past+T-1): query q sees key k when k <= q and, with a window W, q - W < k.
    `attention_mask` (B, past + T), 1 = token, 0 = padding, hides padded keys. With a window
    and more keys than it spans, the queries go in bands of `band` (None: one masked attention
    over every key, the bands' oracle), each against the keys its window reaches only: the cost
    grows as T * (W + band), not T^2."""
    if attention_mask is not None and attention_mask.shape[1] != past + T:
        raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions; "
                         f"expected {past + T} ({past} cached + {T} new)")
    if attention_mask is None:
        if T == 1 and (window is None or kept < window):  # one query sees every kept key
            return Visibility()
        if kept == 0 and (window is None or T <= window):
            return Visibility(is_causal=True)  # plain causal attention: SDPA's own flag
    if window is None or band is None or kept + T <= window:
        return Visibility(mask=window_mask(attention_mask, window, past, T, past - kept,
                                           kept + T, dtype, device))
    bands = []
    for first in range(0, T, band):
        last = min(first + band, T)  # queries first..last-1: positions past + first..
        keys = slice(max(0, kept + first - (window - 1)), kept + last)
        mask = window_mask(attention_mask, window, past + first, last - first,
                           past - kept + keys.start, keys.stop - keys.start, dtype, device)
        bands.append((slice(first, last), keys, mask))
    return Visibility(bands=bands)


def window_mask(attention_mask: torch.Tensor | None, window: int | None, q_first: int, n_q: int,
                k_first: int, n_k: int, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """The SDPA mask of queries at positions q_first.. (n_q) over keys at k_first.. (n_k), causal
    and within `window` (None: none): bool (n_q, n_k) without padding; with `attention_mask` an
    additive (B, 1, n_q, n_k), -inf where a key is not visible and a very low finite score on
    padded keys, so that a query with only padding to see (a left pad) averages it instead of
    producing NaNs (see hidden_key_bias)."""
    q_pos = torch.arange(q_first, q_first + n_q, device=device)[:, None]  # (n_q, 1)
    k_pos = torch.arange(k_first, k_first + n_k, device=device)[None, :]  # (1, n_k)
    visible = k_pos <= q_pos
    if window is not None:
        visible = visible & (k_pos > q_pos - window)  # (n_q, n_k)
    if attention_mask is None:
        return visible
    padded = ~attention_mask[:, k_first:k_first + n_k].bool()[:, None, None, :]  # (B, 1, 1, n_k)
    mask = torch.zeros(attention_mask.size(0), 1, n_q, n_k, dtype=dtype, device=device)
    return mask.masked_fill(padded, hidden_key_bias(dtype)).masked_fill(~visible, float("-inf"))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seen: Visibility,
           new_key_length: bool, dropout_p: float = 0.0,
           scale: float | None = None) -> torch.Tensor:
    """`sdpa` of q (B, nh, T, hs) over k, v (B, nh, S, hs) as `seen` allows: (B, nh, T, hs)."""
    if not seen.bands:
        return sdpa(q, k, v, attn_mask=seen.mask, dropout_p=dropout_p, is_causal=seen.is_causal,
                    new_key_length=new_key_length, scale=scale)
    return torch.cat([sdpa(q[:, :, rows], k[:, :, keys], v[:, :, keys], attn_mask=mask,
                           dropout_p=dropout_p, new_key_length=new_key_length, scale=scale)
                      for rows, keys, mask in seen.bands], dim=2)


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
