"""RWKV-7 "Goose": RWKV whose state is rewritten by a generalised delta rule.

Paper: Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State Evolution",
arXiv 2503.14456. Reference code: BlinkDL/RWKV-LM (`RWKV-v7/train_temp/src/model.py`, training
and initialisation) and the `rwkv` pip package (`RWKV_x070`, inference, read with RWKV_V7_ON=1).

Differences from RWKV-4 (zoo.rwkv), through RWKV-5 (Eagle) and RWKV-6 (Finch):
  - the state is a matrix per head (v5): H heads of N channels, S (N x N) per head, written by
    v k^T and read by y = S r, where RWKV-4 kept two vectors per channel;
  - the decay is a vector that depends on the token (v6): w = exp(-e^-0.5 sigmoid(w0 +
    tanh(x_w W1) W2)), in (0.545, 1) per key channel, through a low-rank ("LoRA") adapter;
  - the state is updated by a generalised delta rule (v7's change): before writing v k^T it
    removes what it held along a normalised "removal key" kk, at a per-channel in-context
    learning rate a in (0, 1):
        S_t = S_{t-1} (diag(w_t) - kk_t^T (a_t * kk_t)) + v_t^T k_t,     y_t = S_t r_t,
    so a layer can overwrite an association instead of only fading it (the delta rule of
    Schlag et al. 2021 with a diagonal decay, a vector learning rate and the removal key
    decoupled from the written key k = k (1 + (a - 1) k_a));
  - the token shift mixes toward the *previous* token, x + (x_{t-1} - x) mu, one mu per input
    (r, w, k, v, a, g), with no data-dependent mixing (v6 had one);
  - a "value residual": every layer after the first moves its v toward layer 0's v by a
    learned, token-dependent amount;
  - the output: GroupNorm per head (eps 64e-5), plus a bonus (sum_i r_i k_i r_k,i) v for the
    current token (v4-v6's u), times a gate g = sigmoid(x_g G1) G2, then W_o;
  - the channel mix loses its receptance gate: W_v relu(W_k x)^2 on the shifted input.
y_t reads the state after token t's write (v5/v6 read S_{t-1} and added token t with a bonus u);
there is no positional encoding, and the head is untied, as in RWKV-4.

Choices the paper leaves open, taken from the released code and checkpoints:
  - the low-rank widths: max(32, round(c sqrt(d) / 32) * 32) with c = 2.5 (decay, a), 1.7
    (value residual), 5 (gate), Python's round (half to even: 2.5 -> 2 at d = 1024); this
    reproduces the released models' sizes exactly. Layer 0 has no value-residual weights;
  - head size 64, channel-mix width 4d, LayerNorm eps 1e-5, the World tokenizer's 65536 ids;
  - the initialisation in `RWKV7.init_weights` (train_temp's constructor plus its
    generate_init_weight, which re-initialises the square matrices and ln_x);
  - e^-0.5 exactly, where the inference package rounds it to 0.606531 (a 4e-7 difference).

The WKV runs in fp32 two ways: `wkv7_recurrent`, the per-token recurrence, for decoding and as the
tests' oracle; and `wkv7_chunked` for prefill and training: inside a chunk of L tokens the product
of the transitions (diagonal plus rank one) is composed in closed form, a triangular solve for the
"removal" vectors (the WY / UT-transform form of flash-linear-attention's DPLR kernels), and the
state is carried from chunk to chunk (a Python loop over chunks only). zoo.fast's "wkv7" route swaps
in a compiled C loop of the recurrence for CPU inference (zoo/fast/kernels/wkv7_cpu.py) and, for
decoding, a block's step as one compiled call (zoo/fast/kernels/wkv7_step_cpu.py), one of the zoo's
speed routes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import MatrixRWKVState, token_shift
from zoo.model import RecurrentLM, check_config

WKV7State = torch.Tensor  # (B, H, N, N) per layer, fp32, S[value channel, key channel]
RWKV7State = MatrixRWKVState  # the state across calls: att_x, wkv (S[value, key]), ffn_x
LOG_DECAY_FLOOR = -math.exp(-0.5)  # log w > -e^-0.5: the decay per token is above 0.545
# Elementwise FLOPs of one recurrence step per state element: the decay, S kk and the rank-one
# removal (multiply-adds), v k^T (multiply-add), the read-out S r (multiply-add).
WKV_FLOPS_PER_STATE = 9


def lora_width(d_model: int, factor: float) -> int:
    """The official suggestion for a low-rank adapter's width: max(32, round(factor *
    sqrt(d) / 32) * 32), with Python's rounding (half to even), as the released models."""
    return max(32, int(round(factor * math.sqrt(d_model) / 32) * 32))


@dataclass(frozen=True)
class RWKV7Config:
    """Defaults: RWKV-7 World 0.1B (RWKV-x070-World-0.1B, 191,034,624 parameters)."""

    vocab_size: int = 65536  # the RWKV World tokenizer
    n_layer: int = 12
    d_model: int = 768
    head_size: int = 64  # N: channels per head; the state of a head is N x N
    d_ff: int | None = None  # channel-mix width; None: 4 * d_model; 0: none (mixer-only)
    # Low-rank adapter widths; None: the official suggestion from d_model (lora_width).
    decay_lora: int | None = None  # w (factor 2.5)
    iclr_lora: int | None = None  # a, the in-context learning rate (2.5)
    value_lora: int | None = None  # the value residual (1.7)
    gate_lora: int | None = None  # the output gate g (5)
    layer_norm_eps: float = 1e-5
    group_norm_eps: float = 64e-5  # ln_x (training's ln_x(x / 8) at eps 1e-5)
    context_length: int = 4096  # training context of the World models; inference has no limit
    emb_init_range: float = 1e-4  # small-init embedding U(+-1e-4), as RWKV-4
    # Tokens per chunk of wkv7_chunked: speed only, the same result. At most 64: the factors
    # e^(+-cumulative log-decay) inside a chunk reach e^(0.61 * L), 1e17 at 64, in fp32's range.
    # One layer of the small variant at 1024 tokens, one thread (a busy 2-core host): 43-63 ms
    # with 16, 40-71 ms with 32 or 64, 72-84 ms with 8; the recurrence 190-330 ms. A training
    # step of the small model (fewer, larger products): 16 -> 32 is 1.17x at 256 tokens and
    # 1.21x at 1024, 64 1.20x and 1.26x; fp32 gradients stay within 1e-6 of fp64's with 32
    # (5e-6 with 64), so 32.
    chunk_size: int = 32

    def __post_init__(self) -> None:
        check_config(self)
        if self.d_model % self.head_size:
            raise ValueError(f"d_model {self.d_model} must be a multiple of head_size "
                             f"{self.head_size}")
        if not 1 <= self.chunk_size <= 64:
            raise ValueError(f"chunk_size {self.chunk_size} must be in 1..64 (fp32 range)")

    @property
    def n_head(self) -> int:
        return self.d_model // self.head_size

    def lora(self, name: str) -> int:
        """Width of the 'decay', 'iclr', 'value' or 'gate' adapter."""
        factor = {"decay": 2.5, "iclr": 2.5, "value": 1.7, "gate": 5.0}[name]
        return getattr(self, f"{name}_lora") or lora_width(self.d_model, factor)


def wkv7_recurrent(r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   kk: torch.Tensor, a: torch.Tensor, state: WKV7State
                   ) -> tuple[torch.Tensor, WKV7State]:
    """The generalised delta rule, one token at a time, per head:
        S_t = S_{t-1} diag(w_t) - (S_{t-1} kk_t) (a_t * kk_t)^T + v_t k_t^T;   y_t = S_t r_t.
    r, log_w (= log w), k, v, kk (unit removal key), a: (B, T, H, N); state (B, H, N, N).
    Returns y (B, T, H, N) and S_T."""
    S = state
    ys = []
    for t in range(r.size(1)):
        removed = S @ kk[:, t, :, :, None]  # (B, H, N, 1): what S holds along kk
        S = (S * torch.exp(log_w[:, t, :, None, :]) - removed * (a[:, t] * kk[:, t])[:, :, None]
             + v[:, t, :, :, None] * k[:, t, :, None, :])
        ys.append((S @ r[:, t, :, :, None]).squeeze(-1))
    return torch.stack(ys, dim=1), S


def wkv7_chunked(r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 kk: torch.Tensor, a: torch.Tensor, state: WKV7State, chunk_size: int = 32
                 ) -> tuple[torch.Tensor, WKV7State]:
    """The same map as `wkv7_recurrent` (same arguments), L = chunk_size tokens at a time.

    Inside a chunk with start state S_0 and cumulative decays g_t = w_1 * ... * w_t, write the
    removal as u_t = S_{t-1} (-kk_t) and b_t = a_t * kk_t; unrolled, the recurrence is
        S_t = S_0 diag(g_t) + sum_{s<=t} (u_s b_s^T + v_s k_s^T) diag(g_t / g_s),
    so every u_t is a linear function of S_0 and of the earlier u_s and v_s: a unit lower-
    triangular system (I - A) U = (-kk * g_{t-1}) S_0^T + B V, solved once for all chunks (the
    UT transform) as U = W S_0^T + Z. Then y_t = S_t r_t and the state after the chunk follow
    from S_0, U and V by matrix products; only S_0 -> S_L crosses chunks. The factors g_t and
    1 / g_s are taken apart, which stays in range since w > 0.545 (see RWKV7Config.chunk_size).
    """
    B, T, H, N = r.shape
    L = chunk_size
    pad = -T % L  # padding: w = 1 and zero inputs leave the state as it is
    r, log_w, k, v, kk, a = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (r, log_w, k, v, kk, a))
    n = (T + pad) // L
    # (B, n, H, L, N): chunks, heads, tokens of the chunk
    r, log_w, k, v, kk, a = (x.view(B, n, L, H, N).transpose(2, 3) for x in
                             (r, log_w, k, v, kk, a))
    cum = log_w.cumsum(dim=3)  # log g_t, through token t
    before = cum - log_w  # log g_{t-1}
    last = cum[:, :, :, -1:]  # log g_L, (B, n, H, 1, N)
    removal = -kk * torch.exp(before)  # -kk_t g_{t-1}
    b_in = a * kk * torch.exp(-cum)  # b_s / g_s
    k_in = k * torch.exp(-cum)  # k_s / g_s
    r_out = r * torch.exp(cum)  # r_t g_t
    strict = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)
    causal = strict | torch.eye(L, dtype=torch.bool, device=r.device)
    # Pairwise weights within a chunk, (B, n, H, L, L): row t, column s.
    A = (removal @ b_in.transpose(-1, -2)).masked_fill(~strict, 0)  # s < t
    Bk = (removal @ k_in.transpose(-1, -2)).masked_fill(~strict, 0)
    Qb = (r_out @ b_in.transpose(-1, -2)).masked_fill(~causal, 0)  # s <= t
    Qk = (r_out @ k_in.transpose(-1, -2)).masked_fill(~causal, 0)
    I_minus_A = torch.eye(L, dtype=r.dtype, device=r.device) - A
    W = torch.linalg.solve_triangular(I_minus_A, removal, upper=False, unitriangular=True)
    Z = torch.linalg.solve_triangular(I_minus_A, Bk @ v, upper=False, unitriangular=True)
    # y = r_out S_0^T + Qb U + Qk V = read S_0^T + y_in
    read = r_out + Qb @ W  # (B, n, H, L, N)
    y_in = Qb @ Z + Qk @ v
    to_end = torch.exp(last - cum)  # g_L / g_s
    b_end, k_end = a * kk * to_end, k * to_end
    written = v.transpose(-1, -2) @ k_end + Z.transpose(-1, -2) @ b_end  # (B, n, H, N, N)
    S = state
    ys = []
    # unbind, not [:, c]: the backward of each [:, c] fills a zero tensor the size of the
    # whole for its one chunk (n of them: quadratic in the length)
    chunks = zip(*(t.unbind(1) for t in (read, y_in, W, last, written, b_end)), strict=True)
    for read_c, y_in_c, W_c, last_c, written_c, b_end_c in chunks:
        S_T = S.transpose(-1, -2)
        ys.append(read_c @ S_T + y_in_c)
        U_from_start = W_c @ S_T  # the part of U that S_0 drives
        S = S * torch.exp(last_c) + written_c + U_from_start.transpose(-1, -2) @ b_end_c
    y = torch.stack(ys, dim=1)  # (B, n, H, L, N)
    return y.transpose(2, 3).reshape(B, n * L, H, N)[:, :T], S


class TimeMix(nn.Module):
    """RWKV-7's replacement for attention: r, w, k, v, a, g from the shifted input, the WKV of
    the generalised delta rule, GroupNorm, the current token's bonus, the gate, W_o. Parameter
    names follow the official checkpoints."""

    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        d, H, N = config.d_model, config.n_head, config.head_size
        self.n_head, self.head_size, self.chunk_size = H, N, config.chunk_size
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"):  # token-shift mixing weights
            setattr(self, name, nn.Parameter(torch.empty(d)))
        self.w0 = nn.Parameter(torch.empty(d))  # decay: w0 + tanh(x_w W1) W2
        self.w1 = nn.Parameter(torch.empty(d, config.lora("decay")))
        self.w2 = nn.Parameter(torch.empty(config.lora("decay"), d))
        self.a0 = nn.Parameter(torch.empty(d))  # a = sigmoid(a0 + x_a A1 A2)
        self.a1 = nn.Parameter(torch.empty(d, config.lora("iclr")))
        self.a2 = nn.Parameter(torch.empty(config.lora("iclr"), d))
        if layer_id > 0:  # value residual toward layer 0's v (layer 0 has none)
            self.v0 = nn.Parameter(torch.empty(d))
            self.v1 = nn.Parameter(torch.empty(d, config.lora("value")))
            self.v2 = nn.Parameter(torch.empty(config.lora("value"), d))
        self.g1 = nn.Parameter(torch.empty(d, config.lora("gate")))  # g = sigmoid(x_g G1) G2
        self.g2 = nn.Parameter(torch.empty(config.lora("gate"), d))
        self.k_k = nn.Parameter(torch.empty(d))  # removal key kk = normalise(k * k_k)
        self.k_a = nn.Parameter(torch.empty(d))  # written key k (1 + (a - 1) k_a)
        self.r_k = nn.Parameter(torch.empty(H, N))  # bonus of the current token
        self.receptance = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)
        self.ln_x = nn.GroupNorm(H, d, eps=config.group_norm_eps)

    def forward(self, x: torch.Tensor, last_x: torch.Tensor, state: WKV7State,
                v_first: torch.Tensor | None):
        B, T, d = x.shape
        H, N = self.n_head, self.head_size
        prev = token_shift(x, last_x)  # (B, T, d)
        # v7 mixes toward the previous token: x + (prev - x) * mu = lerp(x, prev, mu)
        xr, xw, xk, xv, xa, xg = (torch.lerp(x, prev, mu) for mu in
                                  (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        # log of the decay, in (-e^-0.5, 0): w in (0.545, 1)
        log_w = LOG_DECAY_FLOOR * torch.sigmoid(self.w0 + self.lora(xw, self.w1, self.w2,
                                                                     torch.tanh))
        a = torch.sigmoid(self.a0 + self.lora(xa, self.a1, self.a2))  # in-context learning rate
        g = self.lora(xg, self.g1, self.g2, torch.sigmoid)
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1)  # unit removal key per head
        k = k * (1 + (a - 1) * self.k_a)
        if v_first is None:  # layer 0: its v is the one later layers move toward
            v_first = v
        else:
            # (the gate is float32 under autocast, v bfloat16: lerp wants one dtype)
            gate = torch.sigmoid(self.v0 + self.lora(xv, self.v1, self.v2))
            v = torch.lerp(v, v_first, gate.to(v.dtype))
        heads = (B, T, H, N)
        y, state = self.wkv(r.view(heads).float(), log_w.view(heads).float(),
                            k.view(heads).float(), v.view(heads).float(), kk.float(),
                            a.view(heads).float(), state)
        y = self.ln_x(y.to(x.dtype).reshape(B * T, d)).view(B, T, d)
        bonus = (r * k).view(heads).mul(self.r_k).sum(-1, keepdim=True) * v.view(heads)
        y = y + bonus.view(B, T, d)
        return self.output(y * g), x[:, -1], state, v_first

    def lora(self, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
             inner=None) -> torch.Tensor:
        """A low-rank projection: inner(x down) up, x (..., d), down (d, rank), up (rank, d),
        `inner` an elementwise function or None."""
        h = x @ down
        return (h if inner is None else inner(h)) @ up

    def wkv(self, r, log_w, k, v, kk, a, state) -> tuple[torch.Tensor, WKV7State]:
        """The WKV in fp32: the recurrence for one token (decoding), the chunked form for more."""
        if r.size(1) == 1:
            return wkv7_recurrent(r, log_w, k, v, kk, a, state)
        return wkv7_chunked(r, log_w, k, v, kk, a, state, self.chunk_size)


class ChannelMix(nn.Module):
    """The feed-forward layer: W_v relu(W_k x)^2 on the shifted input (no receptance gate)."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.x_k = nn.Parameter(torch.empty(d))
        self.key = nn.Linear(d, hidden, bias=False)
        self.value = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor, last_x: torch.Tensor):
        k = torch.lerp(x, token_shift(x, last_x), self.x_k)
        return self.value(torch.square(torch.relu(self.key(k)))), x[:, -1]


class Block(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        self.ln0 = nn.LayerNorm(d, eps=eps) if layer_id == 0 else None  # on the embeddings
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.att = TimeMix(config, layer_id)
        hidden = 4 * d if config.d_ff is None else config.d_ff
        self.ffn = ChannelMix(d, hidden) if hidden else None  # 0: time-mix alone (mixer-only)

    def forward(self, x: torch.Tensor, v_first: torch.Tensor | None, att_x: torch.Tensor,
                wkv: WKV7State, ffn_x: torch.Tensor):
        if self.ln0 is not None:
            x = self.ln0(x)
        # Pre-LN residuals; the normalised inputs are what gets token-shifted and cached.
        h, att_x, wkv, v_first = self.att(self.ln1(x), att_x, wkv, v_first)
        x = x + h
        if self.ffn is not None:
            h, ffn_x = self.ffn(self.ln2(x), ffn_x)
            x = x + h
        return x, v_first, (att_x, wkv, ffn_x)


class RWKV7(RecurrentLM):
    config_class = RWKV7Config
    causal_lm = True
    head_keys = ("head.",)

    def __init__(self, config: RWKV7Config):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # untied
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official from-scratch initialisation (RWKV-LM train_temp): token-shift weights
        1 - (i/d)^(p * (1 - l/L)) with p = 0.2 (r, g), 0.9 (w, a), 0.7 (k, v), 1 - (i/d)^((1 -
        l/L)^4) for the channel mix; w0, a0, v0, k_k, k_a, r_k per-channel curves; adapters
        W1 = 0 and W2 orthogonal x 0.1; receptance, value and ffn.key orthogonal, key
        orthogonal x 0.1, output and ffn.value zero; ln_x gain ((l + 1) / L)^0.7; embedding
        U(+-1e-4); head orthogonal x 0.5 sqrt(V / d)."""
        c = self.config
        L, d, N = c.n_layer, c.d_model, c.head_size
        ch = torch.arange(d, dtype=torch.float32, device=self.head.weight.device)
        ddd = ch / d
        linear = ch / (d - 1) - 0.5
        zigzag = ((ch % N) - (N - 1) / 2) / ((N - 1) / 2)
        zigzag = zigzag * zigzag.abs()
        for layer, block in enumerate(self.blocks):
            ratio_0_to_1 = layer / max(L - 1, 1)
            ratio_1_to_almost0 = 1.0 - layer / L
            att, ffn = block.att, block.ffn
            for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7),
                                ("x_a", 0.9), ("x_g", 0.2)):
                getattr(att, name).copy_(1.0 - ddd.pow(power * ratio_1_to_almost0))
            if ffn is not None:
                ffn.x_k.copy_(1.0 - ddd.pow(ratio_1_to_almost0**4))
                nn.init.orthogonal_(ffn.key.weight)
                nn.init.zeros_(ffn.value.weight)
            decay = -6 + 6 * (ch / (d - 1)) ** (1 + ratio_0_to_1**0.3)
            att.w0.copy_(decay + 0.5 + 2.5 * zigzag)
            att.a0.copy_(-0.19 + 0.3 * zigzag + 0.4 * linear)
            att.k_k.copy_(0.71 - 0.1 * linear)
            att.k_a.fill_(1.02)
            att.r_k.fill_(-0.04)
            adapters = [(att.w1, att.w2), (att.a1, att.a2), (att.g1, att.g2)]
            if layer > 0:
                att.v0.copy_(0.73 - 0.4 * linear)
                adapters.append((att.v1, att.v2))
            for down, up in adapters:
                nn.init.zeros_(down)
                nn.init.orthogonal_(up, gain=0.1)  # (rank, d): rows < cols, no extra gain
            for lin, gain in ((att.receptance, 1.0), (att.value, 1.0), (att.key, 0.1)):
                nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(att.output.weight)
            att.ln_x.weight.fill_(((layer + 1) / L) ** 0.7)
            nn.init.zeros_(att.ln_x.bias)
            for ln in (block.ln0, block.ln1, block.ln2):
                if ln is not None:
                    ln.reset_parameters()
        self.ln_out.reset_parameters()
        nn.init.uniform_(self.emb.weight, -c.emb_init_range, c.emb_init_range)
        V = c.vocab_size
        nn.init.orthogonal_(self.head.weight, gain=0.5 * (math.sqrt(V / d) if V > d else 1.0))

    def _hidden_and_state(self, input_ids: torch.Tensor, cache: RWKV7State | None,
                          keep_state: bool) -> tuple[torch.Tensor, RWKV7State | None]:
        """`hidden_states` continuing from the state `cache` (None: the empty state), and, with
        `keep_state`, the state after these tokens (`cache` is never modified in place)."""
        B, T = input_ids.shape
        x = self.emb(input_ids)  # (B, T, d)
        c = self.config
        state = cache if cache is not None else RWKV7State.empty(
            c.n_layer, B, c.d_model, c.n_head, c.head_size, x.dtype, x.device)
        v_first = None
        new_states = []
        for i, block in enumerate(self.blocks):
            x, v_first, layer_state = block(x, v_first, state.att_x[i], state.wkv[i],
                                            state.ffn_x[i])
            new_states.append(layer_state)
        new_state = None
        if keep_state:
            new_state = RWKV7State(*(torch.stack(s) for s in zip(*new_states, strict=True)))
        return self.ln_out(x), new_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The untied head: logits (..., V) from final hidden states (..., d)."""
        return self.head(hidden)

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token, the same at every length (the state has a fixed size):
        2 x the matrix weights (r, k, v, o; the channel mix; the adapters; the V x d head;
        the embedding lookup is free) plus the recurrence, WKV_FLOPS_PER_STATE per state
        element (H N^2 = d N per layer). The chunked form does about chunk_size / N more per
        token for the same result, as matrix products; norms and activations are left out."""
        c = self.config
        d = c.d_model
        f = 4 * d if c.d_ff is None else c.d_ff
        adapters = 2 * d * (c.lora("decay") + c.lora("iclr") + c.lora("gate"))
        per_layer = 4 * d * d + 2 * d * f + adapters
        matrices = c.n_layer * per_layer + (c.n_layer - 1) * 2 * d * c.lora("value")
        return float(2 * (matrices + c.vocab_size * d)
                     + WKV_FLOPS_PER_STATE * d * c.head_size * c.n_layer)
