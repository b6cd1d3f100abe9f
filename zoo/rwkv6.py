"""RWKV-6 "Finch": RWKV with a matrix state per head and a decay that depends on the token.

Paper: Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic
Recurrence", arXiv 2404.05892 (Eagle is RWKV-5, zoo.rwkv5; Finch is RWKV-6). Reference code:
BlinkDL/RWKV-LM (`RWKV-v5/src/model.py`, RWKV_Tmix_x060, training and initialisation) and the
`rwkv` pip package (`att_seq_v6_0` / `att_one_v6_0`, inference).

Differences from RWKV-4 (zoo.rwkv), through RWKV-5 (Eagle):
  - the state is a matrix per head (v5): H heads of N channels, S (N x N) per head, written by
    the outer product k^T v and read by r S, where RWKV-4 kept two vectors per channel and
    divided one by the other (no denominator here; a GroupNorm per head instead);
  - the output of the WKV goes through that GroupNorm (eps 64e-5) and a SiLU gate (v5);
  - the token shift is data-dependent (v6's first change): one tanh low-rank ("LoRA") adapter
    (time_maa_w1 (d, 5 r), time_maa_w2 (5, r, d)) reads the shifted input and adds a
    token-dependent amount to each of the five mixing weights (w, k, v, r, g);
  - the decay is data-dependent (v6's second change): per token and channel,
        w_t = exp(-exp(time_decay + tanh(x_w W1) W2)),
    where RWKV-5's decay was one learned constant per channel;
  - the channel mix is RWKV-4's sigmoid(r) * W_v relu(W_k x)^2 at width 3.5 d.
Per head, with u = time_faaaa (the bonus of the current token):
    y_t = r_t (S_{t-1} + diag(u) k_t^T v_t),        S_t = diag(w_t) S_{t-1} + k_t^T v_t.
The state is S[key channel, value channel], as the pip package keeps it.

Choices the paper leaves open, taken from the released code and checkpoints: adapter widths 32
(mixing) and 64 (decay), 64 and 128 at d = 4096; channel-mix width int(3.5 d / 32) * 32; head
size 64; the World tokenizer's 65536 ids; the initialisation in `RWKV6.init_weights`.

The WKV, shared with RWKV-5 (zoo.layers.matrix_wkv), runs in fp32 two ways: the per-token
recurrence for decoding (and as the tests' oracle), and a chunked form for prefill and training
that sums the log-decays over each span of tokens, so that a decay with no floor neither
overflows nor loses precision (see that module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import MatrixRWKVState, head_group_norm, run_matrix_wkv, token_shift
from zoo.model import RecurrentLM, check_config

WKV6State = torch.Tensor  # (B, H, N, N) per layer, fp32, S[key channel, value channel]
RWKV6State = MatrixRWKVState  # the state across calls: att_x, wkv (S[key, value]), ffn_x
MIXES = ("w", "k", "v", "r", "g")  # the order of the five data-dependent mixes (time_maa_w2)
# Elementwise FLOPs of one recurrence step per state element, as matrix_wkv_recurrent does them:
# k^T v (1), S + u k^T v (2), the read-out r (.) (multiply-add, 2), the decay and the write (2).
WKV_FLOPS_PER_STATE = 7


@dataclass(frozen=True)
class RWKV6Config:
    """Defaults: RWKV-6 World 1.6B (Finch 1.6B, 1,599,873,024 parameters)."""

    vocab_size: int = 65536  # the RWKV World tokenizer
    n_layer: int = 24
    d_model: int = 2048
    head_size: int = 64  # N: channels per head; the state of a head is N x N
    d_ff: int | None = None  # channel-mix width; None: int(3.5 d / 32) * 32; 0: none
    mix_lora: int | None = None  # token-shift adapter width; None: 32 (64 at d = 4096)
    decay_lora: int | None = None  # decay adapter width; None: 64 (128 at d = 4096)
    layer_norm_eps: float = 1e-5
    group_norm_eps: float = 64e-5  # ln_x (training's ln_x(x / 8) at eps 1e-5)
    context_length: int = 4096  # training context of the World models; inference has no limit
    emb_init_range: float = 1e-4  # small-init embedding U(+-1e-4), as RWKV-4
    # Tokens per chunk of the chunked WKV: speed and memory only, the same result. The pairwise
    # decay factors take B T d L floats per layer.
    chunk_size: int = 16

    def __post_init__(self) -> None:
        check_config(self)
        if self.d_model % self.head_size:
            raise ValueError(f"d_model {self.d_model} must be a multiple of head_size "
                             f"{self.head_size}")

    @property
    def n_head(self) -> int:
        return self.d_model // self.head_size

    @property
    def ffn_width(self) -> int:
        return int(3.5 * self.d_model // 32 * 32) if self.d_ff is None else self.d_ff

    @property
    def mix_width(self) -> int:
        return self.mix_lora or (64 if self.d_model == 4096 else 32)

    @property
    def decay_width(self) -> int:
        return self.decay_lora or (128 if self.d_model == 4096 else 64)


class TimeMix(nn.Module):
    """RWKV-6's replacement for attention: the data-dependent token shift, r, k, v, g and the
    decay w, the WKV, GroupNorm, the SiLU gate, W_o. Parameter names follow the official
    checkpoints."""

    def __init__(self, config: RWKV6Config):
        super().__init__()
        d, H, N = config.d_model, config.n_head, config.head_size
        self.n_head, self.head_size, self.chunk_size = H, N, config.chunk_size
        # Static mixing weights, then the adapter that adds a token-dependent part to each.
        for name in ("time_maa_x", *(f"time_maa_{m}" for m in MIXES)):
            setattr(self, name, nn.Parameter(torch.empty(d)))
        self.time_maa_w1 = nn.Parameter(torch.empty(d, len(MIXES) * config.mix_width))
        self.time_maa_w2 = nn.Parameter(torch.empty(len(MIXES), config.mix_width, d))
        self.time_decay = nn.Parameter(torch.empty(d))  # log(-log w) = time_decay + tanh(.) W2
        self.time_decay_w1 = nn.Parameter(torch.empty(d, config.decay_width))
        self.time_decay_w2 = nn.Parameter(torch.empty(config.decay_width, d))
        self.time_faaaa = nn.Parameter(torch.empty(H, N))  # u: the current token's bonus
        self.receptance = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.gate = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)
        self.ln_x = nn.GroupNorm(H, d, eps=config.group_norm_eps)

    def forward(self, x: torch.Tensor, last_x: torch.Tensor, state: WKV6State):
        B, T, d = x.shape
        H, N = self.n_head, self.head_size
        dx = token_shift(x, last_x) - x  # (B, T, d): toward the previous token
        # The adapter: five token-dependent additions to the mixing weights, (5, B, T, d).
        lora = torch.tanh((x + dx * self.time_maa_x) @ self.time_maa_w1)
        lora = torch.einsum("btmr,mrd->mbtd", lora.view(B, T, len(MIXES), -1), self.time_maa_w2)
        xw, xk, xv, xr, xg = (x + dx * (getattr(self, f"time_maa_{m}") + extra)
                              for m, extra in zip(MIXES, lora, strict=True))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        g = F.silu(self.gate(xg))
        wkv_dtype = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for an fp64 model
        # log w = -exp(time_decay + tanh(x_w W1) W2), per token and channel, in fp32
        log_w = -torch.exp((self.time_decay + self.lora(xw, self.time_decay_w1,
                                                        self.time_decay_w2, torch.tanh)
                            ).to(wkv_dtype))
        heads = (B, T, H, N)
        y, state = self.wkv(r.view(heads).to(wkv_dtype), log_w.view(heads),
                            k.view(heads).to(wkv_dtype), v.view(heads).to(wkv_dtype),
                            self.time_faaaa.to(wkv_dtype), state.to(wkv_dtype))
        y = head_group_norm(y, self.ln_x).to(x.dtype)  # in the WKV's precision
        return self.output(y * g), x[:, -1], state

    def lora(self, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
             inner=None) -> torch.Tensor:
        """A low-rank projection: inner(x down) up, x (..., d), down (d, rank), up (rank, d),
        `inner` an elementwise function or None."""
        h = x @ down
        return (h if inner is None else inner(h)) @ up

    def wkv(self, r, log_w, k, v, u, state) -> tuple[torch.Tensor, WKV6State]:
        """The WKV in fp32 (fp64 for an fp64 model): the recurrence for one token (decoding),
        the chunked form for more."""
        return run_matrix_wkv(r, log_w, k, v, u, state, self.chunk_size)


class ChannelMix(nn.Module):
    """The feed-forward layer: sigmoid(W_r x_r) * W_v relu(W_k x_k)^2 on shifted inputs."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.time_maa_k = nn.Parameter(torch.empty(d))
        self.time_maa_r = nn.Parameter(torch.empty(d))
        self.key = nn.Linear(d, hidden, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor, last_x: torch.Tensor):
        prev = token_shift(x, last_x)
        xk, xr = torch.lerp(x, prev, self.time_maa_k), torch.lerp(x, prev, self.time_maa_r)
        k = torch.square(torch.relu(self.key(xk)))
        return torch.sigmoid(self.receptance(xr)) * self.value(k), x[:, -1]


class Block(nn.Module):
    def __init__(self, config: RWKV6Config, layer_id: int):
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        self.ln0 = nn.LayerNorm(d, eps=eps) if layer_id == 0 else None  # on the embeddings
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.att = TimeMix(config)
        hidden = config.ffn_width
        self.ffn = ChannelMix(d, hidden) if hidden else None  # 0: time-mix alone (mixer-only)

    def forward(self, x: torch.Tensor, att_x: torch.Tensor, wkv: WKV6State, ffn_x: torch.Tensor):
        if self.ln0 is not None:
            x = self.ln0(x)
        # Pre-LN residuals; the normalised inputs are what gets token-shifted and cached.
        h, att_x, wkv = self.att(self.ln1(x), att_x, wkv)
        x = x + h
        if self.ffn is not None:
            h, ffn_x = self.ffn(self.ln2(x), ffn_x)
            x = x + h
        return x, (att_x, wkv, ffn_x)


class RWKV6(RecurrentLM):
    config_class = RWKV6Config
    causal_lm = True
    head_keys = ("head.",)

    def __init__(self, config: RWKV6Config):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # untied
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official from-scratch initialisation (RWKV-LM RWKV_Tmix_x060 / RWKV_CMix_x060):
        mixing weights 1 - (i/d)^(p (1 - l/L)) (p = 1 for x, w, k; v adds 0.3 (l / (L - 1)); r and
        g use p = 0.5), adapters W1 = 0 and W2 U(+-0.01); decay -6 + 5 (i/(d-1))^(0.7 + 1.3 l /
        (L - 1)); bonus l/(L-1) (1 - i/(d-1)) + zigzag; the training code's generic init of
        the matrices (orthogonal; key and gate x 0.1; output, ffn value and ffn receptance
        zero); ln_x as GroupNorm's default; embedding U(+-1e-4); head orthogonal x 0.5 sqrt(V /
        d)."""
        c = self.config
        L, d, N = c.n_layer, c.d_model, c.head_size
        ch = torch.arange(d, dtype=torch.float32, device=self.head.weight.device)
        ddd = ch / d
        for layer, block in enumerate(self.blocks):
            ratio_0_to_1 = layer / max(L - 1, 1)
            ratio_1_to_almost0 = 1.0 - layer / L
            att, ffn = block.att, block.ffn
            for name, mu in (("x", ddd.pow(ratio_1_to_almost0)),
                             ("w", ddd.pow(ratio_1_to_almost0)),
                             ("k", ddd.pow(ratio_1_to_almost0)),
                             ("v", ddd.pow(ratio_1_to_almost0) + 0.3 * ratio_0_to_1),
                             ("r", ddd.pow(0.5 * ratio_1_to_almost0)),
                             ("g", ddd.pow(0.5 * ratio_1_to_almost0))):
                getattr(att, f"time_maa_{name}").copy_(1.0 - mu)
            nn.init.zeros_(att.time_maa_w1)
            nn.init.uniform_(att.time_maa_w2, -0.01, 0.01)
            att.time_decay.copy_(-6 + 5 * (ch / (d - 1)) ** (0.7 + 1.3 * ratio_0_to_1))
            nn.init.zeros_(att.time_decay_w1)
            nn.init.uniform_(att.time_decay_w2, -0.01, 0.01)
            zigzag = ((ch + 1) % 3 - 1) * 0.1
            att.time_faaaa.copy_((ratio_0_to_1 * (1 - ch / (d - 1)) + zigzag).view(-1, N))
            for lin, gain in ((att.receptance, 1.0), (att.value, 1.0), (att.key, 0.1),
                              (att.gate, 0.1)):
                nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(att.output.weight)
            att.ln_x.reset_parameters()
            if ffn is not None:
                ffn.time_maa_k.copy_(1.0 - ddd.pow(ratio_1_to_almost0))
                ffn.time_maa_r.copy_(1.0 - ddd.pow(ratio_1_to_almost0))
                nn.init.orthogonal_(ffn.key.weight)
                nn.init.zeros_(ffn.receptance.weight)
                nn.init.zeros_(ffn.value.weight)
            for ln in (block.ln0, block.ln1, block.ln2):
                if ln is not None:
                    ln.reset_parameters()
        self.ln_out.reset_parameters()
        nn.init.uniform_(self.emb.weight, -c.emb_init_range, c.emb_init_range)
        V = c.vocab_size
        nn.init.orthogonal_(self.head.weight, gain=0.5 * (math.sqrt(V / d) if V > d else 1.0))

    def _hidden_and_state(self, input_ids: torch.Tensor, cache: RWKV6State | None,
                          keep_state: bool) -> tuple[torch.Tensor, RWKV6State | None]:
        """`hidden_states` continuing from the state `cache` (None: the empty state), and, with
        `keep_state`, the state after these tokens (`cache` is never modified in place)."""
        B, T = input_ids.shape
        x = self.emb(input_ids)  # (B, T, d)
        c = self.config
        state = cache if cache is not None else RWKV6State.empty(
            c.n_layer, B, c.d_model, c.n_head, c.head_size, x.dtype, x.device)
        new_states = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, state.att_x[i], state.wkv[i], state.ffn_x[i])
            new_states.append(layer_state)
        new_state = None
        if keep_state:
            new_state = RWKV6State(*(torch.stack(s) for s in zip(*new_states, strict=True)))
        return self.ln_out(x), new_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The untied head: logits (..., V) from final hidden states (..., d)."""
        return self.head(hidden)

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token, the same at every length (the state has a fixed size):
        2 x the matrix weights (r, k, v, g, o; the channel mix; both adapters; the V x d head;
        the embedding lookup is free) plus the recurrence, WKV_FLOPS_PER_STATE per state
        element (H N^2 = d N per layer). Norms and activations are left out."""
        c = self.config
        d, f = c.d_model, c.ffn_width
        adapters = 2 * d * len(MIXES) * c.mix_width + 2 * d * c.decay_width
        ffn = 2 * d * f + d * d if f else 0
        per_layer = 5 * d * d + ffn + adapters
        return float(2 * (c.n_layer * per_layer + c.vocab_size * d)
                     + WKV_FLOPS_PER_STATE * d * c.head_size * c.n_layer)
