"""GPT-Neo: EleutherAI's open GPT-3-style decoders (125M, 1.3B, 2.7B), trained on the Pile with
Mesh TensorFlow, whose layers alternate full causal attention with a sliding window of 256.

Reference: Black, Gao, Wang, Leahy and Biderman 2021, "GPT-Neo: Large Scale Autoregressive
Language Modeling with Mesh-Tensorflow", https://github.com/EleutherAI/gpt-neo. GPT-Neo has no
paper: the repository's code (models/gpt2/gpt2.py, models/layers.py) is the description, and
Hugging Face's GPTNeoForCausalLM reads the released weights, whose folders zoo.convert reads.
The same network carries the TinyStories models (Eldan and Li 2023), from 1M parameters up.

GPT-Neo keeps GPT-2's decoder (zoo/gpt.py: pre-LN blocks, learned absolute positions, a final
LayerNorm, the head tied to the token embedding, tanh GELU), except that:
  - layers take turns by `attention_layers`, a pattern repeated over the depth ("global,local"
    for every released model): a "global" layer attends causally to every earlier position, a
    "local" layer only to the last `window` positions, itself included (query i sees keys j
    with i - window < j <= i), GPT-3's alternating dense and locally banded attention. A local
    layer's cache keeps the last window - 1 positions only, and a long input reaches it in
    bands of `GPTNeo.band` queries, each against the keys its window reaches (Mistral's
    window in zoo/llama.py, the same code in zoo.layers): its cost grows as T * (window +
    band), not T^2. One masked attention over every key (band = None) is the tests' oracle;
  - attention scores are q k^T as they are, never divided by sqrt(head size): Mesh
    TensorFlow's attention leaves that scale to the query weights' initialisation, and the
    trained weights carry it;
  - the query, key and value matrices are separate and have no biases; the output projection
    keeps its bias, as do the feed-forward's two matrices;
  - the context is 2048 positions and the vocabulary GPT-2's 50,257.
Dropout fields (`dropout` on the embedding and on each branch's output, `attn_dropout` on the
attention probabilities) are 0, as the released models trained. The initialisation is Hugging
Face's for this class (N(0, init_std) for every matrix and both embeddings, zero biases, unit
LayerNorm gains); the original code draws the position table at 0.01 and the feed-forward's
output at init_std / sqrt(n_layer). In a padded batch, positions count from the start of the
row, padding included (as zoo.gpt). LayerNorm eps is 1e-5.

Parameter count (f = d_ff, P = max_seq_len):
    V d + P d + 2 d + L (4 d^2 + d + 2 d f + f + d + 4 d)
which is 125,198,592 for the defaults, GPT-Neo 125M.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from zoo.layers import (
    FeedForward,
    KVCache,
    Visibility,
    WindowKVCache,
    attend,
    bert_init,
    tied_head,
    window_visibility,
)
from zoo.model import CachedLM, check_config

ATTENTION_KINDS = ("global", "local")


def shortest_pattern(layers: list[str]) -> str:
    """The shortest comma-separated pattern that, repeated, gives `layers` (one kind a layer)."""
    n = next(n for n in range(1, len(layers) + 1)
             if all(kind == layers[i % n] for i, kind in enumerate(layers)))
    return ",".join(layers[:n])


@dataclass(frozen=True)
class GPTNeoConfig:
    """Defaults: GPT-Neo 125M (Hugging Face's `EleutherAI/gpt-neo-125m`)."""

    vocab_size: int = 50257
    max_seq_len: int = 2048  # learned position embeddings: the longest input the model takes
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int | None = None  # None: 4 * d_model; 0: no feed-forward (mixer-only)
    attention_layers: str = "global,local"  # layer i is the (i mod n)-th of these n kinds
    window: int = 256  # the positions a "local" layer's query sees, itself included
    activation: str = "gelu_tanh"  # a key of zoo.layers.ACTIVATIONS (Hugging Face's gelu_new)
    dropout: float = 0.0  # on the embedding and on each branch's output
    attn_dropout: float = 0.0  # on the attention probabilities
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_config(self)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        kinds = self.attention_layers.split(",")
        if not all(kind in ATTENTION_KINDS for kind in kinds):
            raise ValueError(f"attention_layers {self.attention_layers!r} is a comma-separated "
                             f"pattern of {' and '.join(ATTENTION_KINDS)}")
        # kept in its shortest form over these layers, so that equal models have equal configs
        layers = [kinds[i % len(kinds)] for i in range(self.n_layer)]
        object.__setattr__(self, "attention_layers", shortest_pattern(layers))

    def layer_kind(self, i: int) -> str:
        """"global" or "local": what layer i attends to."""
        kinds = self.attention_layers.split(",")
        return kinds[i % len(kinds)]


class Attention(nn.Module):
    """Causal self-attention without the 1/sqrt(hs) scale; query, key and value matrices without
    biases, the output projection with one."""

    def __init__(self, d_model: int, n_head: int, attn_dropout: float):
        super().__init__()
        self.n_head, self.attn_dropout = n_head, attn_dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, seen: Visibility,
                cache: KVCache | WindowKVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = (proj(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, S, hs): the kept positions, then these
        dropout = self.attn_dropout if self.training else 0.0
        y = attend(q, k, v, seen, new_key_length=cache is not None, dropout_p=dropout,
                   scale=1.0)  # (B, nh, T, hs): q k^T as it is
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """GPT-2's pre-LN block:

        a = x + Attn(LN1(x));  h = a + MLP(LN2(a))
    """

    def __init__(self, config: GPTNeoConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = Attention(config.d_model, config.n_head, config.attn_dropout)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = FeedForward(config.d_model, config.d_ff, config.activation) if config.d_ff \
            else None
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, seen: Visibility,
                cache: KVCache | WindowKVCache | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), seen, cache))
        if self.mlp is None:  # d_ff = 0: the block is its attention alone
            return x
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPTNeo(CachedLM):
    config_class = GPTNeoConfig
    position_table = "max_seq_len"
    causal_lm = True
    band = 256  # queries per band in a local layer (None: one masked attention over all keys)

    def __init__(self, config: GPTNeoConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)  # also the output head
        self.wpe = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        # Hugging Face's GPTNeo (the module docstring): N(0, init_std), zero biases, unit
        # LayerNorm gains: BERT's initialisation (zoo.layers.bert_init)
        self.apply(functools.partial(bert_init, std=config.init_std))
        self.lm_head = tied_head(self.wte)

    def new_cache(self) -> list[KVCache | WindowKVCache]:
        """One empty cache per layer: every position's keys for a global layer, the last
        window - 1 for a local one (the next query sees those and itself)."""
        return [WindowKVCache(self.config.window) if self.config.layer_kind(i) == "local"
                else KVCache() for i in range(self.config.n_layer)]

    def _visibility(self, attention_mask: torch.Tensor | None, T: int, past: int,
                    dtype: torch.dtype, device: torch.device) -> dict[str, Visibility]:
        """What this call's T queries may see, for each kind of layer: a global layer every
        cached key and its own causally, a local layer the last `window` positions in bands of
        `band` queries (zoo.layers.window_visibility, as Mistral's window)."""
        w = self.config.window
        kept = {"global": past, "local": min(past, w - 1)}  # keys each kind's cache holds
        return {kind: window_visibility(attention_mask, T, past, kept[kind],
                                        w if kind == "local" else None, self.band, dtype, device)
                for kind in set(self.config.attention_layers.split(","))}

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache: list[KVCache | WindowKVCache] | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) of `input_ids` (B, T), after ln_f (Hugging Face's
        GPTNeoModel). With `cache` (new_cache's, one per layer, filled in place) the inputs
        continue the cached positions. `attention_mask` (B, cached + T), 1 = token and 0 =
        padding, hides padded keys."""
        T = input_ids.size(1)
        past = cache[0].length if cache is not None else 0
        if past + T > self.config.max_seq_len:
            raise ValueError(f"{past + T} positions exceed the model's maximum of "
                             f"{self.config.max_seq_len} (learned position embeddings)")
        pos = torch.arange(past, past + T, device=input_ids.device)  # (T,)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))  # (B, T, C)
        seen = self._visibility(attention_mask, T, past, x.dtype, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, seen[self.config.layer_kind(i)], cache[i] if cache is not None else None)
        return self.ln_f(x)

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token at context `seqlen`:
            2 * (n_layer * (4 d^2 + 2 d d_ff) + vocab * d)   [q, k, v, out, MLP; tied head]
          + 4 * d * (sum over layers of the average keys a query sees)   [QK^T and AV]
        The average is (seqlen + 1) / 2 for a global layer; a local layer's window W caps each
        query at W keys: (W (W + 1) / 2 + (seqlen - W) W) / seqlen once seqlen > W. Biases,
        LayerNorms, softmax, GELU and the embedding lookups are left out."""
        c = self.config
        d, w = c.d_model, c.window
        matmul_weights = c.n_layer * (4 * d * d + 2 * d * c.d_ff) + c.vocab_size * d
        dense = (seqlen + 1) / 2
        local = dense if seqlen <= w else (w * (w + 1) / 2 + (seqlen - w) * w) / seqlen
        context = sum(local if c.layer_kind(i) == "local" else dense for i in range(c.n_layer))
        return 2.0 * matmul_weights + 4.0 * d * context
