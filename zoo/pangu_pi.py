"""Pangu-π: a LLaMA-style decoder with nonlinearity compensation.

Paper: Wang et al. 2023, "PanGu-π: Enhancing Language Model Architectures via Nonlinearity
Compensation", arXiv 2312.17276. No official code or weights exist, so this file is written from
the paper's equations; every choice it leaves open is a config field, listed here.

Parent model: LLaMA (pre-norm RMSNorm, SwiGLU feed-forward, rotary position embeddings, no
biases). Pangu-π adds two things and removes layers to keep the parameter count:

1. The series informed activation (SIAF, paper Eq. 7-9), in the feed-forward layer:
       sigma_s(x) = sum_{i=1..n} sigma(a_i * x + b_i),   n = `siaf_terms` = 2,
   with learnable a_i, b_i per term (`siaf_per_channel`: one value per hidden channel, as the
   per-channel weights of its origin VanillaNet; or one scalar per term).
   Open choices:
   - fusion with SwiGLU (`siaf_fusion`): "gate" (default) puts sigma_s where SwiGLU has its SiLU,
     down(sigma_s(gate(x)) * up(x)) with sigma = `siaf_activation` = SiLU, so n = 1, a = 1, b = 0
     is exactly LLaMA's FFN; "mlp" is Eq. 9 as printed, down(sigma_s(fc(x))), no gate.
   - neighbour mixing (`siaf_window`): the paper calls the series "informed" by neighbouring
     inputs but Eq. 9 has no neighbour term. We follow VanillaNet (activation, then a centred
     depthwise convolution of 2n+1 taps) made causal: the same 2n+1 = 5 taps
     (`siaf_window`), all on the current and the 4 previous tokens (zero left padding), applied
     to sigma_s's output, no bias. Token t never sees t+1, so decoding stays valid; the cache
     keeps the last window-1 activations of every layer. `siaf_window` = 1: no mixing, no taps.
   - init: a_i = 1, b_i evenly spaced in [-`siaf_bias_init`, +`siaf_bias_init`] (0 for n = 1;
     equal terms would stay equal forever), mixing taps = identity (current token 1, past 0),
     so training starts from the unmixed series and learns how much context to take.
2. The augmented shortcut (paper Eq. 4-5), beside attention only:
       x = x + attn(norm(x)) + sum_{j=1..`n_shortcuts`} T_j(norm(x)),
       T_j(z) = W2 GELU(W1 z),  W1: d -> d / `shortcut_ratio` (32), W2: d/32 -> d.
   Open choices: the number of shortcuts (Fig. 2 shows one: default 1), their input
   (`shortcut_input`: "normed", as in the AugViT pre-norm code, or the raw "residual" stream),
   and biases (`shortcut_bias`, default none as in LLaMA).

Other open choices (spec sections 7 and 11):
- FFN size (`d_ff`) is unpublished: None applies LLaMA's rule, 8d/3 rounded up to a multiple of
  256 (5632 for the 1B model, 11008 for the 7B).
- RMSNorm (implied by "LLaMA architecture") with `norm_eps` = 1e-5 (LLaMA-2), RoPE base
  `rope_theta` = 10000 in the rotate-half layout of Hugging Face's Llama (channel i pairs with
  i + hs/2), an untied output head (`tie_embeddings`; untied as in LLaMA, which also puts the
  7B config at 6.73B params, LLaMA-2-7B's size), weights N(0, `init_std` = 0.02) as HF Llama.
Config defaults are PanGu-π-1B (d 2048, 16 heads, 12 layers, vocab 100,883). Parameter count:
    V*d*(2 if untied else 1) + d + L*(4d^2 + 3*d*f [2*d*f for "mlp"] + n*f*2 [2n if scalar]
    + w*f [if w > 1] + S*(2*d*(d/r) [+ d/r + d with shortcut_bias]) + 2d)
with f = FFN size, n = siaf_terms, w = siaf_window, S = n_shortcuts, r = shortcut_ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import KVCache, RMSNorm, apply_rope, causal_mask, rope_tables, sdpa
from zoo.model import Output, ZooModel, check_config, generate

SIAF_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh}


def llama_ffn_size(d_model: int, multiple_of: int = 256) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4d (same weights as a 4d two-matrix MLP), rounded up."""
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


@dataclass(frozen=True)
class PanguPiConfig:
    vocab_size: int = 100_883
    d_model: int = 2048
    n_head: int = 16
    n_layer: int = 12
    d_ff: int | None = None  # None: LLaMA's rule (llama_ffn_size); the paper does not publish it
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02
    siaf_terms: int = 2  # n in sigma_s(x) = sum_i sigma(a_i x + b_i); paper Table 2 picks 2
    siaf_activation: str = "silu"  # sigma of every term (SiLU keeps SwiGLU's gate)
    siaf_per_channel: bool = True  # a_i, b_i per hidden channel (True) or one scalar per term
    siaf_window: int = 5  # causal neighbour mixing over this many tokens (1 = none)
    siaf_fusion: str = "gate"  # "gate": sigma_s replaces SwiGLU's SiLU; "mlp": Eq. 9, no gate
    siaf_bias_init: float = 1.0  # initial b_i spread evenly over [-this, +this]
    n_shortcuts: int = 1  # augmented shortcuts beside each attention layer (0 = none)
    shortcut_ratio: int = 32  # bottleneck d -> d / ratio -> d
    shortcut_input: str = "normed"  # "normed": T(norm(x)); "residual": T(x)
    shortcut_bias: bool = False

    def __post_init__(self) -> None:
        check_config(self)
        checks = [
            (self.d_model % self.n_head == 0, f"d_model {self.d_model} is not divisible by "
                                              f"n_head {self.n_head}"),
            ((self.d_model // self.n_head) % 2 == 0, "RoPE needs an even head size"),
            (self.siaf_activation in SIAF_ACTIVATIONS,
             f"siaf_activation must be one of {', '.join(SIAF_ACTIVATIONS)}"),
            (self.siaf_fusion in ("gate", "mlp"), "siaf_fusion must be 'gate' or 'mlp'"),
            (self.shortcut_ratio <= self.d_model,
             f"shortcut_ratio must be in [1, d_model={self.d_model}]"),
            (self.shortcut_input in ("normed", "residual"),
             "shortcut_input must be 'normed' or 'residual'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def ffn_size(self) -> int:
        return self.d_ff if self.d_ff is not None else llama_ffn_size(self.d_model)


class Attention(nn.Module):
    """Causal multi-head attention with RoPE on queries and keys, and a KV cache."""

    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None) -> torch.Tensor:
        B, T, C = x.shape
        heads = lambda t: t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # noqa: E731
        q = apply_rope(heads(self.q_proj(x)), cos, sin)  # (B, nh, T, hs)
        k = apply_rope(heads(self.k_proj(x)), cos, sin)
        v = heads(self.v_proj(x))
        past = cache.length if cache is not None else 0
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, past + T, hs)
        if past == 0 or T == 1:
            # Queries are the first T positions (SDPA's own causal flag is right), or the one
            # new query of a decoding step, which sees every key: no mask (see MultiHeadAttention).
            y = sdpa(q, k, v, is_causal=past == 0 and T > 1, new_key_length=cache is not None)
        else:  # queries are the last T of past + T keys
            mask = causal_mask(T, past + T, x.device)
            y = sdpa(q, k, v, attn_mask=mask, new_key_length=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class SeriesActivation(nn.Module):
    """sigma_s(x) = sum_i sigma(a_i x + b_i), then (window > 1) a causal depthwise mix over
    the last `window` tokens: y_t = sum_{j < window} taps[j] * sigma_s(x)_{t-j} per channel."""

    def __init__(self, dim: int, terms: int, activation: str, per_channel: bool, window: int,
                 bias_init: float):
        super().__init__()
        self.act, self.window, self.bias_init = SIAF_ACTIVATIONS[activation], window, bias_init
        width = dim if per_channel else 1
        self.scale = nn.Parameter(torch.empty(terms, width))  # a_i
        self.bias = nn.Parameter(torch.empty(terms, width))  # b_i
        self.taps = nn.Parameter(torch.empty(window, dim)) if window > 1 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.scale.fill_(1.0)
            n = self.bias.size(0)
            spread = torch.linspace(-self.bias_init, self.bias_init, n) if n > 1 else torch.zeros(1)
            self.bias.copy_(spread[:, None].expand_as(self.bias))
            if self.taps is not None:
                self.taps.zero_()
                self.taps[0].fill_(1.0)  # identity: only the current token at first

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, C); state (B, window-1, C): sigma_s of the previous window-1 tokens (zeros
        before the sequence). Returns y (B, T, C) and the state for the next call."""
        s = None
        for a, b in zip(self.scale, self.bias, strict=True):
            term = self.act(torch.addcmul(b, x, a))  # sigma(a_i * x + b_i)
            s = term if s is None else s + term  # (B, T, C)
        if self.taps is None:
            return s, None
        if state is None:
            state = s.new_zeros(s.size(0), self.window - 1, s.size(2))
        padded = torch.cat((state, s), dim=1)  # (B, window-1+T, C)
        # A correlation: the last kernel entry meets the current token, so flip the taps.
        kernel = self.taps.flip(0)  # (window, C)
        if s.size(1) == 1:  # decoding: one weighted sum (5 us here; a conv1d call takes 117 us)
            y = (padded * kernel).sum(dim=1, keepdim=True)
        else:
            y = F.conv1d(padded.transpose(1, 2), kernel.t().unsqueeze(1),
                         groups=s.size(2)).transpose(1, 2)
        return y, padded[:, -(self.window - 1):]


class FeedForward(nn.Module):
    """SwiGLU with the series activation in place of SiLU ("gate"), or Eq. 9's plain MLP."""

    def __init__(self, config: PanguPiConfig):
        super().__init__()
        d, f = config.d_model, config.ffn_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False) if config.siaf_fusion == "gate" else None
        self.down_proj = nn.Linear(f, d, bias=False)
        self.series = SeriesActivation(f, config.siaf_terms, config.siaf_activation,
                                       config.siaf_per_channel, config.siaf_window,
                                       config.siaf_bias_init)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None):
        h, state = self.series(self.gate_proj(x), state)  # (B, T, f)
        if self.up_proj is not None:
            h = h * self.up_proj(x)
        return self.down_proj(h), state


class AugmentedShortcut(nn.Module):
    """T(z) = W2 GELU(W1 z): a d -> d/r -> d bottleneck beside attention."""

    def __init__(self, d_model: int, ratio: int, bias: bool):
        super().__init__()
        self.down = nn.Linear(d_model, d_model // ratio, bias=bias)
        self.up = nn.Linear(d_model // ratio, d_model, bias=bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(z)))


@dataclass
class PanguPiCache:
    """Per layer: the attention KV cache and the series activation's last window-1 outputs."""

    kv: list[KVCache]
    series: list[torch.Tensor | None]

    @property
    def length(self) -> int:
        return self.kv[0].length


class Block(nn.Module):
    def __init__(self, config: PanguPiConfig):
        super().__init__()
        self.shortcut_on_normed = config.shortcut_input == "normed"
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config.d_model, config.n_head)
        self.shortcuts = nn.ModuleList(
            AugmentedShortcut(config.d_model, config.shortcut_ratio, config.shortcut_bias)
            for _ in range(config.n_shortcuts))
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = FeedForward(config) if config.ffn_size else None  # d_ff = 0: none

    def forward(self, x, cos, sin, kv: KVCache | None, series_state: torch.Tensor | None):
        h = self.attn_norm(x)
        z = h if self.shortcut_on_normed else x
        # Augmented shortcuts run parallel to attention, added to the same residual update.
        update = self.attn(h, cos, sin, kv)
        for shortcut in self.shortcuts:
            update = update + shortcut(z)
        x = x + update
        if self.ffn is None:
            return x, series_state
        update, series_state = self.ffn(self.ffn_norm(x), series_state)
        return x + update, series_state


class PanguPi(ZooModel):
    config_class = PanguPiConfig
    causal_lm = True

    def __init__(self, config: PanguPiConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def _init_weights(self, module: nn.Module) -> None:
        # As HF Llama: every matrix N(0, init_std), biases 0; RMSNorm weights stay 1 and the
        # series activation keeps its own init (a = 1, spread b, identity taps).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden_states(self, input_ids: torch.Tensor,
                      cache: PanguPiCache | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) of `input_ids` (B, T), after the final RMSNorm. With
        `cache` (filled in place) the inputs continue the cached positions."""
        T = input_ids.size(1)
        start = cache.length if cache is not None else 0
        cos, sin = rope_tables(self.config.d_model // self.config.n_head, start, T,
                               self.config.rope_theta, input_ids.device)  # (T, hs) each
        x = self.tok_emb(input_ids)  # (B, T, C); no embedding scale, no position embedding
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # once here, not in every layer
        for i, block in enumerate(self.blocks):
            kv = cache.kv[i] if cache is not None else None
            state = cache.series[i] if cache is not None else None
            x, state = block(x, cos, sin, kv, state)
            if cache is not None:
                cache.series[i] = state
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                cache: PanguPiCache | None = None, use_cache: bool = False) -> Output:
        """Logits (B, T, vocab): the head on `hidden_states`; the loss for `targets` (-100 =
        ignored); with `use_cache` and no `cache`, a new cache, returned in `Output.cache`."""
        if cache is None and use_cache:
            cache = PanguPiCache([KVCache() for _ in self.blocks], [None] * len(self.blocks))
        logits = self.logits(self.hidden_states(input_ids, cache))  # (B, T, V)
        loss = self.lm_loss(logits, targets) if targets is not None else None
        return Output(logits=logits, loss=loss, cache=cache)

    def dummy_inputs(self, batch: int, seqlen: int, device: torch.device | str = "cpu",
                     padded: bool = False) -> dict:
        ids = torch.randint(0, self.config.vocab_size, (batch, seqlen), device=device)
        return {"input_ids": ids}

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token: 2 x every weight used in a matrix multiply (q, k, v, o;
        gate, up, down; the shortcut bottlenecks; the output head; the depthwise mixing taps,
        one multiply-add each) + causal attention 4 * n_layer * d_model * (T + 1) / 2.
        The series activation's elementwise work (a few ops per hidden unit) is left out."""
        c = self.config
        d, f = c.d_model, c.ffn_size
        ffn = (3 if c.siaf_fusion == "gate" else 2) * d * f
        taps = c.siaf_window * f if c.siaf_window > 1 else 0
        shortcuts = c.n_shortcuts * 2 * d * (d // c.shortcut_ratio)
        matmul = c.n_layer * (4 * d * d + ffn + taps + shortcuts) + c.vocab_size * d
        return 2.0 * matmul + 4.0 * c.n_layer * d * (seqlen + 1) / 2

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 eos_id: int | None = None) -> torch.Tensor:
        """Greedy (temperature 0) or sampled decoding with the KV + series-activation cache."""
        step = lambda tokens, cache: self(tokens, cache=cache, use_cache=True)  # noqa: E731
        return generate(step, input_ids, max_new_tokens, temperature, top_k, generator, eos_id)
