"""RWKV-4: an RNN that trains in parallel like a Transformer.

Paper: Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", arXiv 2305.13048.
Reference code: BlinkDL/RWKV-LM (`RWKV-v4neo/src/model.py`, training and initialisation) and
BlinkDL/ChatRWKV (the `rwkv` pip package, inference); Hugging Face `RwkvForCausalLM`.

Differences from its parent, the GPT decoder:
  - no attention and no positions: each block has a *time-mixing* layer (WKV: a per-channel,
    exponentially decaying weighted average of past values, gated by a receptance) and a
    *channel-mixing* layer (a squared-ReLU MLP gated by a receptance);
  - both layers see their normalised input "token-shifted": mixed with the previous token's;
  - an extra LayerNorm (ln0) on the embeddings in block 0; the output head is untied;
  - decoding is a recurrence with a constant-size state per layer (no KV cache).

WKV is evaluated in fp32 in the numerically stable form (state a, b kept as aa·e^pp, bb·e^pp),
in PyTorch, two ways (`TimeMix.wkv`): decoding runs `wkv_recurrent`, the plain per-token
recurrence, which is also the test oracle; longer inputs run `wkv_chunked` (a Python loop over
T / C chunks only). Both are differentiable. zoo/fast/ swaps in a compiled C loop for CPU
inference (zoo/fast/kernels/wkv_cpu.py), one of the zoo's speed routes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.layers import token_shift
from zoo.model import RecurrentLM, check_config

# WKV state of one layer: (aa, bb, pp), each (B, d) in fp32, with a = aa·e^pp and b = bb·e^pp
# the decayed sums of e^k·v and of e^k over the past tokens.
WKVState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
EMPTY_PP = -1e38  # log-scale of an empty state: every exp(pp - ...) underflows to exactly 0
WKV_FLOPS_PER_CHANNEL = 23  # elementwise ops of one stable recurrence step (12 output, 11 update)


@dataclass(frozen=True)
class RWKVConfig:
    vocab_size: int = 50277  # GPT-NeoX-20B tokenizer of the Pile models
    n_layer: int = 12
    d_model: int = 768  # attention (time-mix) width
    d_ff: int | None = None  # channel-mix hidden width: None: 4 * d_model (the paper); 0: none
    context_length: int = 1024  # training context of the Pile models; inference has no limit
    layer_norm_eps: float = 1e-5
    emb_init_range: float = 1e-4  # small-init embedding U(±1e-4) (paper App. E)
    # Tokens per chunk of the parallel WKV; speed only, same result. None: 8 on CPU (the
    # pairwise work grows with it), 128 on GPUs, where the Python loop's kernel launches cost
    # more than the pairwise work (small model on an H100: 3.5x faster than 32 at 8192 tokens,
    # 0.1 GiB more at 1024; 256 gains little more for twice the table).
    wkv_chunk_len: int | None = None

    def __post_init__(self) -> None:
        check_config(self)


def wkv_recurrent(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  state: WKVState) -> tuple[torch.Tensor, WKVState]:
    """The plain stable recurrence, one token at a time. w = -exp(time_decay) (log of the
    per-step decay), u = time_first (the bonus of the current token); k, v (B, T, d) fp32."""
    aa, bb, pp = state
    out = []
    for t in range(k.size(1)):
        kt, vt = k[:, t], v[:, t]
        q = torch.maximum(pp, u + kt)  # output: past state plus the current token with bonus u
        e1, e2 = torch.exp(pp - q), torch.exp(u + kt - q)
        out.append((e1 * aa + e2 * vt) / (e1 * bb + e2))
        q = torch.maximum(pp + w, kt)  # update: decay the past once, add the current token
        e1, e2 = torch.exp(pp + w - q), torch.exp(kt - q)
        aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, q
    return torch.stack(out, dim=1), (aa, bb, pp)


def _wkv_chunk(offsets: torch.Tensor, state_decay: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor, aa: torch.Tensor, bb: torch.Tensor, pp: torch.Tensor):
    """One chunk of c tokens. Row t < c of the (c+1, c) log-weight table is the output at t;
    row c is the state after the chunk. Log-weights: (t-1-i)·w + k_i for i < t, u + k_t on the
    diagonal, -inf above it; the incoming state enters row t with pp + t·w. Every row is
    shifted by its max, so no exp overflows whatever the decays and keys."""
    logw = k[:, None] + offsets  # (B, c+1, c, d)
    state_logw = pp[:, None] + state_decay  # (B, c+1, d)
    with torch.no_grad():  # the result does not depend on the shift m: no gradient through it
        m = torch.maximum(logw.amax(dim=2), state_logw)  # (B, c+1, d)
    e = torch.exp(logw - m[:, :, None])
    e_state = torch.exp(state_logw - m)
    num = (e * v[:, None]).sum(dim=2) + e_state * aa[:, None]  # (B, c+1, d)
    den = e.sum(dim=2) + e_state * bb[:, None]
    c = k.size(1)
    return num[:, :c] / den[:, :c], num[:, c], den[:, c], m[:, c]


def wkv_chunked(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                state: WKVState, chunk_len: int = 32) -> tuple[torch.Tensor, WKVState]:
    """The same WKV as `wkv_recurrent`, a chunk of `chunk_len` tokens at a time: inside a chunk
    all pairwise decayed weights are built at once in log space; only the state (aa, bb, pp)
    crosses chunk boundaries. Cost per token O(chunk_len · d) elementwise, no loop over T."""
    C = chunk_len
    t = torch.arange(C + 1, device=k.device, dtype=torch.float32)[:, None]  # output row
    i = torch.arange(C, device=k.device, dtype=torch.float32)[None, :]  # input column
    offsets = torch.where((i < t)[..., None], (t - 1 - i)[..., None] * w,
                          torch.where((i == t)[..., None], u, float("-inf")))  # (C+1, C, d)
    state_decay = t * w  # (C+1, d): the incoming state has decayed t times at row t
    # Keep only the chunk's inputs for backward, not its (C+1, C) tables: recompute them.
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (w, u, k, v))
    aa, bb, pp = state
    out = []
    # split, not k[:, start:start + C]: the backward of each slice fills a zero tensor the size
    # of the whole input for its one chunk (quadratic in the length); split's concatenates once
    for kc, vc in zip(k.split(C, dim=1), v.split(C, dim=1), strict=True):
        c = kc.size(1)
        args = (offsets[:c + 1, :c], state_decay[:c + 1], kc, vc, aa, bb, pp)
        if grad:
            y, aa, bb, pp = checkpoint(_wkv_chunk, *args, use_reentrant=False)
        else:
            y, aa, bb, pp = _wkv_chunk(*args)
        out.append(y)
    return torch.cat(out, dim=1), (aa, bb, pp)


def chunk_length(configured: int | None, cuda: bool) -> int:
    """wkv_chunked's chunk: the config's `wkv_chunk_len`, else 128 on CUDA and 8 on the CPU."""
    return configured or (128 if cuda else 8)


class TimeMix(nn.Module):
    """RWKV's replacement for attention: r ⊙ WKV(k, v) with per-channel decay and bonus."""

    def __init__(self, d: int, chunk_len: int | None):
        super().__init__()
        self.chunk_len = chunk_len
        self.time_decay = nn.Parameter(torch.empty(d))  # w = -exp(time_decay) per channel
        self.time_first = nn.Parameter(torch.empty(d))  # u: bonus of the current token
        self.time_mix_k = nn.Parameter(torch.empty(d))  # token-shift mixing weights
        self.time_mix_v = nn.Parameter(torch.empty(d))
        self.time_mix_r = nn.Parameter(torch.empty(d))
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, last_x: torch.Tensor, state: WKVState):
        prev = token_shift(x, last_x)  # (B, T, d)
        # lerp(prev, x, mix) = x * mix + prev * (1 - mix): the paper's token-shift interpolation
        k = self.key(torch.lerp(prev, x, self.time_mix_k)).float()
        v = self.value(torch.lerp(prev, x, self.time_mix_v)).float()
        r = torch.sigmoid(self.receptance(torch.lerp(prev, x, self.time_mix_r)))
        w, u = -torch.exp(self.time_decay.float()), self.time_first.float()
        wkv, state = self.wkv(w, u, k, v, state)
        return self.output(r * wkv.to(x.dtype)), x[:, -1], state

    def wkv(self, w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            state: WKVState) -> tuple[torch.Tensor, WKVState]:
        """WKV of k, v (B, T, d) in fp32 after `state`: the recurrence for one token (decoding),
        the chunked parallel form for more."""
        if k.size(1) == 1:
            return wkv_recurrent(w, u, k, v, state)
        return wkv_chunked(w, u, k, v, state, chunk_length(self.chunk_len, k.is_cuda))


class ChannelMix(nn.Module):
    """The feed-forward layer: sigmoid(r) ⊙ W_v relu(W_k x)², on token-shifted input."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.time_mix_k = nn.Parameter(torch.empty(d))
        self.time_mix_r = nn.Parameter(torch.empty(d))
        self.key = nn.Linear(d, hidden, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor, last_x: torch.Tensor):
        prev = token_shift(x, last_x)
        k = self.squared_relu_key(torch.lerp(prev, x, self.time_mix_k))  # (B, T, 4d)
        r = self.receptance(torch.lerp(prev, x, self.time_mix_r))
        return torch.sigmoid(r) * self.value(k), x[:, -1]

    def squared_relu_key(self, xk: torch.Tensor) -> torch.Tensor:
        """relu(W_k xk)², the hidden layer."""
        return torch.square(torch.relu(self.key(xk)))


class Block(nn.Module):
    def __init__(self, config: RWKVConfig, layer_id: int):
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        # Block 0 normalises the small-init embeddings first (no such module in later blocks).
        self.ln0 = nn.LayerNorm(d, eps=eps) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.att = TimeMix(d, config.wkv_chunk_len)
        hidden = 4 * d if config.d_ff is None else config.d_ff
        self.ffn = ChannelMix(d, hidden) if hidden else None  # 0: time-mix alone (mixer-only)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]):
        att_x, aa, bb, pp, ffn_x = state
        if self.ln0 is not None:
            x = self.ln0(x)
        # Pre-LN residuals; the *normalised* inputs are what gets token-shifted and cached.
        h, att_x, (aa, bb, pp) = self.att(self.ln1(x), att_x, (aa, bb, pp))
        x = x + h
        if self.ffn is not None:
            h, ffn_x = self.ffn(self.ln2(x), ffn_x)
            x = x + h
        return x, (att_x, aa, bb, pp, ffn_x)


@dataclass
class RWKVState:
    """The recurrent state after the tokens seen so far; each field is (n_layer, B, d).
    att_x / ffn_x: the last ln1 / ln2 output (token shift; activation dtype); aa, bb, pp: the
    WKV state (fp32). The pip `rwkv` package keeps the same five per layer, as
    state[5i + 0..4] = att_x, aa, bb, pp, ffn_x (its empty pp is -1e30)."""

    att_x: torch.Tensor
    aa: torch.Tensor
    bb: torch.Tensor
    pp: torch.Tensor
    ffn_x: torch.Tensor

    @classmethod
    def empty(cls, n_layer: int, batch: int, d: int, dtype: torch.dtype,
              device: torch.device) -> RWKVState:
        shape = (n_layer, batch, d)
        return cls(att_x=torch.zeros(shape, dtype=dtype, device=device),
                   aa=torch.zeros(shape, device=device), bb=torch.zeros(shape, device=device),
                   pp=torch.full(shape, EMPTY_PP, device=device),
                   ffn_x=torch.zeros(shape, dtype=dtype, device=device))

    def layer(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.att_x[i], self.aa[i], self.bb[i], self.pp[i], self.ffn_x[i]


class RWKV(RecurrentLM):
    config_class = RWKVConfig
    causal_lm = True
    head_keys = ("head.",)

    def __init__(self, config: RWKVConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # untied
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official from-scratch initialisation (RWKV-LM v4neo): per-layer time_mix,
        time_decay and time_first curves over the channels; att.key/receptance/output and
        ffn.receptance/value zero; att.value and ffn.key orthogonal with gain sqrt(rows/cols)
        when rows > cols; head orthogonal with gain 0.5·sqrt(V/d); LayerNorms 1 and 0."""
        c = self.config
        L, d = c.n_layer, c.d_model
        device = self.head.weight.device
        ch = torch.arange(d, device=device, dtype=torch.float32)
        for layer, block in enumerate(self.blocks):
            ratio_0_to_1 = layer / max(L - 1, 1)
            ratio_1_to_almost0 = 1.0 - layer / L
            ddd = ch / d
            att, ffn = block.att, block.ffn
            att.time_mix_k.copy_(ddd.pow(ratio_1_to_almost0))
            att.time_mix_v.copy_(ddd.pow(ratio_1_to_almost0) + 0.3 * ratio_0_to_1)
            att.time_mix_r.copy_(ddd.pow(0.5 * ratio_1_to_almost0))
            att.time_decay.copy_(-5 + 8 * (ch / max(d - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1))
            zigzag = 0.5 * (((ch + 1) % 3) - 1)  # 0, +0.5, -0.5, 0, ...
            att.time_first.copy_(math.log(0.3) + zigzag)
            if ffn is not None:
                ffn.time_mix_k.copy_(ddd.pow(ratio_1_to_almost0))
                ffn.time_mix_r.copy_(ddd.pow(ratio_1_to_almost0))
            for zero in (att.key, att.receptance, att.output, *(
                    (ffn.receptance, ffn.value) if ffn is not None else ())):
                nn.init.zeros_(zero.weight)
            for lin in (att.value, *((ffn.key,) if ffn is not None else ())):
                rows, cols = lin.weight.shape
                nn.init.orthogonal_(lin.weight, gain=math.sqrt(rows / cols) if rows > cols else 1.0)
            for ln in (block.ln0, block.ln1, block.ln2):
                if ln is not None:
                    ln.reset_parameters()
        self.ln_out.reset_parameters()
        nn.init.uniform_(self.emb.weight, -c.emb_init_range, c.emb_init_range)
        V = c.vocab_size
        nn.init.orthogonal_(self.head.weight, gain=0.5 * (math.sqrt(V / d) if V > d else 1.0))

    def _hidden_and_state(self, input_ids: torch.Tensor, cache: RWKVState | None,
                          keep_state: bool) -> tuple[torch.Tensor, RWKVState | None]:
        """`hidden_states` continuing from the state `cache` (None: the empty state), and, with
        `keep_state`, the state after these tokens (`cache` is never modified in place)."""
        B, T = input_ids.shape
        x = self.emb(input_ids)  # (B, T, d)
        state = cache if cache is not None else RWKVState.empty(
            self.config.n_layer, B, self.config.d_model, x.dtype, x.device)
        new_states = []
        for i, block in enumerate(self.blocks):
            x, layer_state = block(x, state.layer(i))
            new_states.append(layer_state)
        new_state = None
        if keep_state:
            new_state = RWKVState(*(torch.stack(s) for s in zip(*new_states, strict=True)))
        return self.ln_out(x), new_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The untied head: logits (..., V) from final hidden states (..., d)."""
        return self.head(hidden)

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token: 2 x the matrix-multiply weights (13·d² per layer: 4·d² in
        time-mix, 9·d² in channel-mix; plus the V·d head; the embedding lookup is free), which
        is the paper's Table 2 column 2·(V·d + 13·d²·L), plus the WKV recurrence as its
        elementwise cost, WKV_FLOPS_PER_CHANNEL per channel and layer (about 0.1%).
        Independent of `seqlen`: the state has a fixed size."""
        c = self.config
        d, f = c.d_model, 4 * c.d_model if c.d_ff is None else c.d_ff
        channel_mix = 2 * d * f + d * d if f else 0  # key, value, receptance
        matmul = 2 * (c.vocab_size * d + (4 * d * d + channel_mix) * c.n_layer)
        return float(matmul + WKV_FLOPS_PER_CHANNEL * c.d_model * c.n_layer)
