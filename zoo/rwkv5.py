"""RWKV-5 "Eagle": RWKV with a matrix-valued state per head.

Paper: Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic
Recurrence", arXiv 2404.05892 (Eagle is RWKV-5, Finch is RWKV-6, zoo.rwkv6). This is version
5.2, the one of the released Eagle models. Reference code: BlinkDL/RWKV-LM (`RWKV-v5/src/
model.py`, RWKV_TimeMix_RWKV5, training and initialisation) and the `rwkv` pip package
(`att_seq_v5_2`, inference).

Differences from RWKV-4 (zoo.rwkv):
  - the state is a matrix per head: H heads of N channels, S (N x N) per head, written by the
    outer product k^T v and read by r S, where RWKV-4 kept two vectors per channel (a weighted
    sum of values and its normaliser) and divided one by the other. Per head,
        y_t = r_t (S_{t-1} + diag(u) k_t^T v_t),        S_t = diag(w) S_{t-1} + k_t^T v_t,
    with S[key channel, value channel] as the pip package keeps it;
  - the decay w = exp(-exp(time_decay)) is one learned constant per channel (the same as in
    RWKV-4, now stored per head, (H, N)), and the bonus u = time_faaaa is used as stored
    (RWKV-4 used e^time_first);
  - the receptance multiplies the state directly (no sigmoid), and the WKV output goes through a
    GroupNorm per head (eps 64e-5) and a SiLU gate from a fourth shifted input, g = SiLU(W_g x_g);
  - the channel mix is RWKV-4's sigmoid(r) * W_v relu(W_k x)^2, at width 3.5 d instead of 4 d.
The token shift is RWKV-4's: x * mu + x_{t-1} * (1 - mu), one mu per input (r, k, v, g).

Choices the paper leaves open, taken from the released code and checkpoints: head size 64;
channel-mix width int(3.5 d / 32) * 32; the World tokenizer's 65536 ids; the initialisation in
`RWKV5.init_weights`.

The WKV, shared with RWKV-6 (zoo.layers.matrix_wkv), runs in fp32 two ways: the per-token
recurrence for decoding (and as the tests' oracle), and a chunked form for prefill and training
that sums the log-decays over each span of tokens, so that a strong decay neither overflows nor
loses precision (see that module). The decay being the same for every sequence, it goes in with
a batch of 1, and the chunked form's pairwise factors do not grow with the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import MatrixRWKVState, head_group_norm, run_matrix_wkv, token_shift
from zoo.model import RecurrentLM, check_config

WKV5State = torch.Tensor  # (B, H, N, N) per layer, fp32, S[key channel, value channel]
RWKV5State = MatrixRWKVState  # the state across calls: att_x, wkv (S[key, value]), ffn_x
# Elementwise FLOPs of one recurrence step per state element, as matrix_wkv_recurrent does them:
# k^T v (1), S + u k^T v (2), the read-out r (.) (multiply-add, 2), the decay and the write (2).
WKV_FLOPS_PER_STATE = 7


@dataclass(frozen=True)
class RWKV5Config:
    """Defaults: RWKV-5 World 0.4B (Eagle 0.4B, 461,721,600 parameters)."""

    vocab_size: int = 65536  # the RWKV World tokenizer
    n_layer: int = 24
    d_model: int = 1024
    head_size: int = 64  # N: channels per head; the state of a head is N x N
    d_ff: int | None = None  # channel-mix width; None: int(3.5 d / 32) * 32; 0: none
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


class TimeMix(nn.Module):
    """RWKV-5's replacement for attention: r, k, v, g from the shifted input, the WKV with a
    constant decay per channel, GroupNorm, the SiLU gate, W_o. Parameter names follow the
    official checkpoints."""

    def __init__(self, config: RWKV5Config):
        super().__init__()
        d, H, N = config.d_model, config.n_head, config.head_size
        self.n_head, self.head_size, self.chunk_size = H, N, config.chunk_size
        for name in ("time_mix_k", "time_mix_v", "time_mix_r", "time_mix_g"):
            setattr(self, name, nn.Parameter(torch.empty(d)))  # token-shift mixing weights
        self.time_decay = nn.Parameter(torch.empty(H, N))  # w = exp(-exp(time_decay))
        self.time_faaaa = nn.Parameter(torch.empty(H, N))  # u: the current token's bonus
        self.receptance = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.gate = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)
        self.ln_x = nn.GroupNorm(H, d, eps=config.group_norm_eps)

    def forward(self, x: torch.Tensor, last_x: torch.Tensor, state: WKV5State):
        B, T, d = x.shape
        H, N = self.n_head, self.head_size
        prev = token_shift(x, last_x)  # (B, T, d)
        # lerp(prev, x, mix) = x * mix + prev * (1 - mix): RWKV-4's token shift
        xk, xv, xr, xg = (torch.lerp(prev, x, mix) for mix in
                          (self.time_mix_k, self.time_mix_v, self.time_mix_r, self.time_mix_g))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        g = F.silu(self.gate(xg))
        wkv_dtype = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for an fp64 model
        # log w = -exp(time_decay), the same at every token: one row, broadcast over the batch
        log_w = -torch.exp(self.time_decay.to(wkv_dtype)).expand(1, T, H, N)
        heads = (B, T, H, N)
        y, state = self.wkv(r.view(heads).to(wkv_dtype), log_w, k.view(heads).to(wkv_dtype),
                            v.view(heads).to(wkv_dtype), self.time_faaaa.to(wkv_dtype),
                            state.to(wkv_dtype))
        y = head_group_norm(y, self.ln_x).to(x.dtype)  # in the WKV's precision
        return self.output(y * g), x[:, -1], state

    def wkv(self, r, log_w, k, v, u, state) -> tuple[torch.Tensor, WKV5State]:
        """The WKV in fp32 (fp64 for an fp64 model): the recurrence for one token (decoding),
        the chunked form for more."""
        return run_matrix_wkv(r, log_w, k, v, u, state, self.chunk_size)


class ChannelMix(nn.Module):
    """The feed-forward layer: sigmoid(W_r x_r) * W_v relu(W_k x_k)^2 on shifted inputs."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.time_mix_k = nn.Parameter(torch.empty(d))
        self.time_mix_r = nn.Parameter(torch.empty(d))
        self.key = nn.Linear(d, hidden, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor, last_x: torch.Tensor):
        prev = token_shift(x, last_x)
        xk, xr = torch.lerp(prev, x, self.time_mix_k), torch.lerp(prev, x, self.time_mix_r)
        k = torch.square(torch.relu(self.key(xk)))
        return torch.sigmoid(self.receptance(xr)) * self.value(k), x[:, -1]


class Block(nn.Module):
    def __init__(self, config: RWKV5Config, layer_id: int):
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        self.ln0 = nn.LayerNorm(d, eps=eps) if layer_id == 0 else None  # on the embeddings
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.att = TimeMix(config)
        hidden = config.ffn_width
        self.ffn = ChannelMix(d, hidden) if hidden else None  # 0: time-mix alone (mixer-only)

    def forward(self, x: torch.Tensor, att_x: torch.Tensor, wkv: WKV5State, ffn_x: torch.Tensor):
        if self.ln0 is not None:
            x = self.ln0(x)
        # Pre-LN residuals; the normalised inputs are what gets token-shifted and cached.
        h, att_x, wkv = self.att(self.ln1(x), att_x, wkv)
        x = x + h
        if self.ffn is not None:
            h, ffn_x = self.ffn(self.ln2(x), ffn_x)
            x = x + h
        return x, (att_x, wkv, ffn_x)


class RWKV5(RecurrentLM):
    config_class = RWKV5Config
    causal_lm = True
    head_keys = ("head.",)

    def __init__(self, config: RWKV5Config):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # untied
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official from-scratch initialisation (RWKV-LM RWKV_TimeMix_RWKV5 /
        RWKV_ChannelMix): mixing weights (i/d)^(p (1 - l/L)) (p = 1 for k; v adds 0.3 l / (L -
        1); r and g use p = 0.5; the channel mix's k and r p = 1); decay -6 + 5 (i/(d-1))^(0.7 +
        1.3 l / (L - 1)); bonus l/(L-1) (1 - i/(d-1)) + zigzag; the training code's generic init
        of the matrices (orthogonal; key and gate x 0.1; output, ffn value and ffn receptance
        zero); ln_x as GroupNorm's default; embedding U(+-1e-4); head orthogonal x 0.5 sqrt(V /
        d)."""
        c = self.config
        L, d, H = c.n_layer, c.d_model, c.n_head
        ch = torch.arange(d, dtype=torch.float32, device=self.head.weight.device)
        ddd = ch / d
        for layer, block in enumerate(self.blocks):
            ratio_0_to_1 = layer / max(L - 1, 1)
            ratio_1_to_almost0 = 1.0 - layer / L
            att, ffn = block.att, block.ffn
            att.time_mix_k.copy_(ddd.pow(ratio_1_to_almost0))
            att.time_mix_v.copy_(ddd.pow(ratio_1_to_almost0) + 0.3 * ratio_0_to_1)
            att.time_mix_r.copy_(ddd.pow(0.5 * ratio_1_to_almost0))
            att.time_mix_g.copy_(ddd.pow(0.5 * ratio_1_to_almost0))
            decay = -6 + 5 * (ch / (d - 1)) ** (0.7 + 1.3 * ratio_0_to_1)
            att.time_decay.copy_(decay.view(H, -1))
            zigzag = ((ch + 1) % 3 - 1) * 0.1
            att.time_faaaa.copy_((ratio_0_to_1 * (1 - ch / (d - 1)) + zigzag).view(H, -1))
            for lin, gain in ((att.receptance, 1.0), (att.value, 1.0), (att.key, 0.1),
                              (att.gate, 0.1)):
                nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(att.output.weight)
            att.ln_x.reset_parameters()
            if ffn is not None:
                ffn.time_mix_k.copy_(ddd.pow(ratio_1_to_almost0))
                ffn.time_mix_r.copy_(ddd.pow(ratio_1_to_almost0))
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

    def _hidden_and_state(self, input_ids: torch.Tensor, cache: RWKV5State | None,
                          keep_state: bool) -> tuple[torch.Tensor, RWKV5State | None]:
        """`hidden_states` continuing from the state `cache` (None: the empty state), and, with
        `keep_state`, the state after these tokens (`cache` is never modified in place)."""
        B, T = input_ids.shape
        x = self.emb(input_ids)  # (B, T, d)
        c = self.config
        state = cache if cache is not None else RWKV5State.empty(
            c.n_layer, B, c.d_model, c.n_head, c.head_size, x.dtype, x.device)
        new_states = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, state.att_x[i], state.wkv[i], state.ffn_x[i])
            new_states.append(layer_state)
        new_state = None
        if keep_state:
            new_state = RWKV5State(*(torch.stack(s) for s in zip(*new_states, strict=True)))
        return self.ln_out(x), new_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The untied head: logits (..., V) from final hidden states (..., d)."""
        return self.head(hidden)

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token, the same at every length (the state has a fixed size):
        2 x the matrix weights (r, k, v, g, o; the channel mix; the V x d head;
        the embedding lookup is free) plus the recurrence, WKV_FLOPS_PER_STATE per state
        element (H N^2 = d N per layer). Norms and activations are left out."""
        c = self.config
        d, f = c.d_model, c.ffn_width
        ffn = 2 * d * f + d * d if f else 0
        per_layer = 5 * d * d + ffn
        return float(2 * (c.n_layer * per_layer + c.vocab_size * d)
                     + WKV_FLOPS_PER_STATE * d * c.head_size * c.n_layer)
