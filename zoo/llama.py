"""LLaMA: a GPT-style decoder with pre-RMSNorm, SwiGLU and rotary positions; with Llama 2's
grouped-query attention and Mistral's sliding window as config fields.

Paper: Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models",
arXiv 2302.13971 (architecture: section 2.2). References: Meta's `llama` repository (model.py)
and Hugging Face's LlamaForCausalLM / MistralForCausalLM, whose folders zoo.convert reads.

Differences from its parent, GPT-2 (zoo/gpt.py), as section 2.2 lists them:
  - pre-normalisation with RMSNorm (Zhang & Sennrich 2019) instead of LayerNorm: each sub-block
    normalises its input, the residual stream never is, and one RMSNorm precedes the head;
  - SwiGLU feed-forward (Shazeer 2020), down(silu(gate(x)) * up(x)), of width 2/3 * 4d rounded
    up to a multiple of 256 (11008 at d = 4096): three matrices with about the weights of GPT's
    two;
  - rotary position embeddings (RoPE, Su et al. 2021) applied to queries and keys in every layer
    instead of a learned table added to the input: no table, so no hard length limit
    (`max_seq_len` records the trained context only);
  - no biases anywhere; the output head is a matrix of its own, not the token embedding.

Two later models change one thing each, here a config field each:
  - grouped-query attention (Ainslie et al. 2023; Llama 2 70B, Mistral), `n_kv_head`: keys and
    values have n_kv_head heads, each read by a group of n_head / n_kv_head consecutive query
    heads (query head h reads key/value head h // group). n_kv_head = n_head is LLaMA's
    multi-head attention, 1 is multi-query attention. The KV cache stores the n_kv_head heads,
    a group-fold smaller cache, which is the point of it.
  - the sliding window (Jiang et al. 2023, Mistral 7B), `window` = W: a query at position q sees
    keys k with q - W < k <= q, W keys including itself (None: full causal attention). Stacked
    layers still carry information further back, up to W more positions per layer. Generation
    then needs only the last W - 1 positions' keys and values: the cache stops growing there
    (the paper's rolling buffer cache). A long input is attended in bands of `Llama.band`
    queries, each against the keys its window reaches only (the paper's chunked pre-fill): the
    cost grows as T * (W + band), not T^2. The whole masked attention (band = None) is its
    oracle in the tests.

Llama 3 (Grattafiori et al. 2024, "The Llama 3 Herd of Models") keeps this block; two of its
releases need a field each:
  - Llama 3.1's RoPE frequency scaling, `rope_factor` (8; None: plain RoPE), for a context
    longer than the `rope_original_len` (8192) the frequencies were trained for. A frequency f
    of wavelength 2 pi / f shorter than rope_original_len / rope_high_freq_factor (4) is kept,
    one longer than rope_original_len / rope_low_freq_factor (1) is divided by the factor, and
    one between is blended: (1 - s) f / factor + s f, where s = (rope_original_len / wavelength
    - low) / (high - low) runs from 0 at the long end to 1 at the short end.
  - Llama 3.2 1B and 3B tie the head to the token embedding, `tie_embeddings`.

Choices the paper leaves open, taken as Hugging Face's Llama takes them:
  - RoPE in the rotate-half layout (channel i pairs with i + hs/2; zoo.layers.positions).
    Meta's own checkpoints pair channels (2i, 2i+1); Hugging Face permutes their q and k rows
    when converting, so both compute the same function. The zoo reads Hugging Face folders.
  - RMSNorm eps 1e-6 (LLaMA-1; Llama 2 and Mistral use 1e-5), computed in fp32; RoPE base 10000
    (Mistral v0.2 and later: 1e6).
  - initialisation (unpublished): every matrix and the embedding N(0, 0.02), norm gains 1.
  - in a padded batch, positions count from the start of the row, padding included (as
    Hugging Face does without position_ids, and as zoo.gpt does).
Parameter count (head size hs = d / n_head, kv width = n_kv_head * hs, f = d_ff):
    2 V d + d + L (2 d^2 + 2 d kv + 3 d f + 2 d)     (V d once with a tied head)
which is 6,738,415,616 for the defaults, LLaMA-7B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import (
    KVCache,
    RMSNorm,
    Visibility,
    WindowKVCache,
    apply_rope,
    attend,
    rope_frequencies,
    rope_tables,
    tied_head,
    window_visibility,
)
from zoo.model import CachedLM, check_config


@dataclass(frozen=True)
class LlamaConfig:
    """Defaults: LLaMA-7B (paper Table 2; Hugging Face's `huggyllama/llama-7b`)."""

    vocab_size: int = 32_000
    max_seq_len: int = 2048  # the trained context; RoPE has no table, so longer inputs still run
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int | None = None  # key/value heads (GQA); None: n_head, LLaMA-1's multi-head
    d_model: int = 4096
    d_ff: int = 11_008  # SwiGLU width; 0: no feed-forward (mixer-only)
    norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    window: int | None = None  # Mistral's sliding window W; None: full causal attention
    rope_factor: float | None = None  # Llama 3.1's RoPE scaling factor; None: plain RoPE
    rope_low_freq_factor: float = 1.0  # wavelengths past original_len / low: divided by factor
    rope_high_freq_factor: float = 4.0  # wavelengths below original_len / high: kept
    rope_original_len: int = 8192  # the context the scaled frequencies were trained for
    tie_embeddings: bool = False  # Llama 3.2 1B and 3B: the head is the token embedding
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_config(self)
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        checks = [  # sizes are >= 1 (check_config); what they must divide:
            (self.d_model % self.n_head == 0,
             f"d_model {self.d_model} is not divisible by n_head {self.n_head}"),
            ((self.d_model // self.n_head) % 2 == 0, "RoPE needs an even head size"),
            (self.n_head % self.n_kv_head == 0,
             f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}"),
            (self.rope_factor is None or self.rope_factor > 0,
             f"rope_factor must be > 0, not {self.rope_factor}"),
            (self.rope_high_freq_factor > self.rope_low_freq_factor > 0,
             f"rope_high_freq_factor {self.rope_high_freq_factor} must exceed "
             f"rope_low_freq_factor {self.rope_low_freq_factor} > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def llama3_scaled(f: torch.Tensor, factor: float, low: float, high: float,
                  original: int) -> torch.Tensor:
    """Frequencies `f` under Llama 3.1's RoPE scaling (the module docstring): kept where the
    wavelength 2 pi / f is below original / high, divided by `factor` above original / low,
    blended between."""
    wavelength = 2 * math.pi / f
    s = (original / wavelength - low) / (high - low)
    blended = (1 - s) * f / factor + s * f
    return torch.where(wavelength > original / low, f / factor,
                       torch.where(wavelength < original / high, f, blended))


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with RoPE on queries and keys, n_kv_head key/value heads shared by
    groups of query heads, and a cache of the n_kv_head heads."""

    def __init__(self, d_model: int, n_head: int, n_kv_head: int):
        super().__init__()
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.group = n_head // n_kv_head  # query heads per key/value head
        kv_width = n_kv_head * (d_model // n_head)
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, kv_width, bias=False)
        self.v_proj = nn.Linear(d_model, kv_width, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seen: Visibility,
                cache: KVCache | WindowKVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q = self.q_proj(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, hs).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, n_kv, S, hs): kept keys, then this call's
        if self.group > 1:  # query head h reads key/value head h // group
            k = k.repeat_interleave(self.group, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(self.group, dim=1)
        y = attend(q, k, v, seen, new_key_length=cache is not None)  # (B, nh, T, hs)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    """The feed-forward layer: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm: each sub-block reads RMSNorm(x) and adds to the un-normalised stream.

        a = x + Attn(RMSNorm(x));  h = a + SwiGLU(RMSNorm(a))
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = GroupedQueryAttention(config.d_model, config.n_head, config.n_kv_head)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = SwiGLU(config.d_model, config.d_ff) if config.d_ff else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seen: Visibility,
                cache: KVCache | WindowKVCache | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, seen, cache)
        if self.ffn is None:  # d_ff = 0: the block is its attention alone
            return x
        return x + self.ffn(self.ffn_norm(x))


class Llama(CachedLM):
    config_class = LlamaConfig
    causal_lm = True
    band = 256  # queries per band under a window (None: one masked attention over everything)

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:  # Llama 3.2 1B, 3B
            self.lm_head = tied_head(self.tok_emb)

    def _init_weights(self, module: nn.Module) -> None:
        # As Hugging Face's Llama (the paper does not say): N(0, init_std); RMSNorm gains stay 1.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def new_cache(self) -> list[KVCache | WindowKVCache]:
        """One empty cache per layer: every position's keys, or the last W - 1 with a window."""
        window = self.config.window
        return [KVCache() if window is None else WindowKVCache(window) for _ in self.blocks]

    def _visibility(self, attention_mask: torch.Tensor | None, T: int, past: int, kept: int,
                    dtype: torch.dtype, device: torch.device) -> Visibility:
        """What this call's T queries may see of its kept + T keys, under the config's window,
        in bands of `band` queries (zoo.layers.window_visibility)."""
        return window_visibility(attention_mask, T, past, kept, self.config.window, self.band,
                                 dtype, device)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache: list[KVCache | WindowKVCache] | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) of `input_ids` (B, T), after the final RMSNorm
        (Hugging Face's LlamaModel / MistralModel). With `cache` (one per layer, filled in
        place) the inputs continue the cached positions. `attention_mask` (B, cached + T),
        1 = token and 0 = padding, hides padded keys."""
        T = input_ids.size(1)
        c = self.config
        past = cache[0].length if cache is not None else 0
        kept = past if c.window is None else min(past, c.window - 1)  # keys the cache holds
        x = self.tok_emb(input_ids)  # (B, T, C); no position embedding, no scale
        cos, sin = rope_tables(c.d_model // c.n_head, past, T, c.rope_theta, x.device,
                               self.rope_frequencies(x.device))  # (T, hs)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # once here, not in every layer
        seen = self._visibility(attention_mask, T, past, kept, x.dtype, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, seen, cache[i] if cache is not None else None)
        return self.norm(x)

    def rope_frequencies(self, device: torch.device) -> torch.Tensor | None:
        """RoPE's frequencies under Llama 3.1's scaling (see the module docstring); None
        without it (rope_tables then takes theta's plain ones)."""
        c = self.config
        if c.rope_factor is None:
            return None
        return llama3_scaled(rope_frequencies(c.d_model // c.n_head, c.rope_theta, device),
                             c.rope_factor, c.rope_low_freq_factor, c.rope_high_freq_factor,
                             c.rope_original_len)

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token at context `seqlen`:
            2 * (n_layer * (2 d^2 + 2 d kv + 3 d f) + V d)  [q, o; k, v (GQA: kv = n_kv * hs);
                                                           SwiGLU; the head]
          + 4 * n_layer * d * (average keys a query sees) [QK^T and AV over every query head]
        The average is (seqlen + 1) / 2 for causal attention; a window W caps each query at W
        keys: (W (W + 1) / 2 + (seqlen - W) W) / seqlen once seqlen > W. Norms, RoPE, softmax,
        the SiLU and the embedding lookup are left out."""
        c = self.config
        d, kv = c.d_model, c.n_kv_head * (c.d_model // c.n_head)
        matmul_weights = c.n_layer * (2 * d * d + 2 * d * kv + 3 * d * c.d_ff) + c.vocab_size * d
        w = c.window
        if w is None or seqlen <= w:
            context = (seqlen + 1) / 2
        else:
            context = (w * (w + 1) / 2 + (seqlen - w) * w) / seqlen
        return 2.0 * matmul_weights + 4.0 * c.n_layer * d * context
