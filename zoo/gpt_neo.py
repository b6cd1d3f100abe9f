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
    with i - window < j <= i), GPT-3's alternating dense and locally banded attention;
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

from dataclasses import dataclass

import torch
from torch import nn

from zoo.layers import FeedForward, KVCache, hidden_key_bias, sdpa, tied_head
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


def visible_keys(T: int, past: int, window: int | None, device: torch.device) -> torch.Tensor:
    """Bool (T, past + T): query past + t may see key s when s <= past + t and, with a window W,
    past + t - W < s."""
    q = torch.arange(past, past + T, device=device)[:, None]  # (T, 1)
    k = torch.arange(past + T, device=device)[None, :]  # (1, S)
    visible = k <= q
    return visible if window is None else visible & (k > q - window)


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

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = (proj(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, S, hs): the cached positions, then these
        dropout = self.attn_dropout if self.training else 0.0
        is_causal = attn_mask is None and T > 1  # a mask is given whenever S != T (hidden_states)
        y = sdpa(q, k, v, attn_mask, dropout, is_causal, new_key_length=cache is not None,
                 scale=1.0)  # (B, nh, T, hs)
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

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), attn_mask, cache))
        if self.mlp is None:  # d_ff = 0: the block is its attention alone
            return x
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPTNeo(CachedLM):
    config_class = GPTNeoConfig
    position_table = "max_seq_len"
    causal_lm = True

    def __init__(self, config: GPTNeoConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)  # also the output head
        self.wpe = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.apply(self._init_weights)
        self.lm_head = tied_head(self.wte)

    def _init_weights(self, module: nn.Module) -> None:
        # Hugging Face's GPTNeo (the module docstring): N(0, init_std), zero biases, unit gains.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _masks(self, attention_mask: torch.Tensor | None, T: int, past: int,
               dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor | None]:
        """Each kind of layer's SDPA mask for this call's T queries over its past + T keys:
        None where SDPA's own causal flag says it all (no padding, no cache, a window no shorter
        than the input), a bool mask without padding, else an additive (B, 1, T, S) one with
        -inf on keys out of sight and a very low finite score on padded keys, so that a query
        with only padding to see (a left pad) averages it instead of producing NaNs (see
        zoo.layers.hidden_key_bias). `attention_mask` (B, past + T) is 1 = token, 0 = padding."""
        if attention_mask is not None and attention_mask.shape[1] != past + T:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions; "
                             f"expected {past + T} ({past} cached + {T} new)")
        masks = {}
        for kind in set(self.config.attention_layers.split(",")):
            window = self.config.window if kind == "local" else None
            if attention_mask is None and past == 0 and (window is None or T <= window):
                masks[kind] = None
                continue
            visible = visible_keys(T, past, window, device)  # (T, S)
            if attention_mask is None:
                masks[kind] = visible
                continue
            padded = ~attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
            mask = torch.zeros(attention_mask.size(0), 1, T, past + T, dtype=dtype, device=device)
            masks[kind] = mask.masked_fill(padded, hidden_key_bias(dtype)).masked_fill(
                ~visible, float("-inf"))
        return masks

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      cache: list[KVCache] | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) of `input_ids` (B, T), after ln_f (Hugging Face's
        GPTNeoModel). With `cache` (one KVCache per layer, filled in place) the inputs continue
        the cached positions. `attention_mask` (B, cached + T), 1 = token and 0 = padding, hides
        padded keys."""
        T = input_ids.size(1)
        past = cache[0].length if cache is not None else 0
        if past + T > self.config.max_seq_len:
            raise ValueError(f"{past + T} positions exceed the model's maximum of "
                             f"{self.config.max_seq_len} (learned position embeddings)")
        pos = torch.arange(past, past + T, device=input_ids.device)  # (T,)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))  # (B, T, C)
        masks = self._masks(attention_mask, T, past, x.dtype, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, masks[self.config.layer_kind(i)],
                      cache[i] if cache is not None else None)
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
