"""Mamba: a language model built from selective state-space layers, without attention.

Paper: Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
arXiv 2312.00752. Reference code: state-spaces/mamba (`mamba_ssm/modules/mamba_simple.py`, the
mixer; `mamba_ssm/models/mixer_seq_simple.py`, the language model); Hugging Face
`MambaForCausalLM`.

Differences from its parents, the structured state-space models S4 (Gu et al. 2022) and H3
(Fu et al. 2023):
  - selection (the paper's contribution): the step size delta and the matrices B and C are
    functions of the current token (projections of it), so each token chooses how much of the
    state to keep and what to write into it and read from it. S4's are fixed, which let it run
    as one long convolution; a selective SSM cannot, and is computed as a scan (a recurrence);
  - A is diagonal and real (S4D-Real: A = -(1, 2, ..., N) per channel at initialisation),
    discretised as exp(delta A) (zero-order hold) and delta B (the paper's simplified B);
  - one homogeneous block instead of H3's SSM-between-gates followed by an MLP: a projection to
    two branches, one through a short causal depthwise convolution, SiLU and the SSM, the other
    a SiLU gate; their product is projected back. No attention, no MLP, no positions;
  - the language model: a pre-norm residual stack of these blocks with RMSNorm, a final
    RMSNorm, and the output head tied to the token embedding.

Choices the paper leaves open, taken from the released code and checkpoints: d_state 16,
d_conv 4, expand 2, dt_rank ceil(d_model / 16); a bias in the convolution, none in the in/out
projections; RMSNorm eps 1e-5; the GPT-NeoX vocabulary of 50277 padded to 50280 (a multiple of
8); the initialisation in `Mamba.init_weights`. mamba_ssm keeps the residual stream in fp32
(`residual_in_fp32`); the zoo keeps it in the activations' dtype (the same numbers in fp32).

The selective scan runs in fp32 two ways: `selective_scan_recurrent`, the plain per-token
recurrence, used for decoding and as the tests' oracle; and `selective_scan_chunked`, which
computes every token of a chunk at once (Python loops over chunks and over log2 of the chunk
length, never over tokens). Both are differentiable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.layers import RMSNorm, causal_depthwise_conv, new_token_mask, tied_head
from zoo.model import RecurrentLM, check_config

# Elementwise FLOPs of one recurrence step per state element (d_inner x d_state): delta * A,
# its exp, delta x * B, the decay times the state, plus the input, and C's multiply-add.
SCAN_FLOPS_PER_STATE = 7
DT_INIT_FLOOR = 1e-4  # the smallest initial step size (mamba_ssm's dt_init_floor)


@dataclass(frozen=True)
class MambaConfig:
    """Defaults: mamba-130m (state-spaces/mamba-130m)."""

    vocab_size: int = 50280  # GPT-NeoX-20B tokenizer's 50277, padded to a multiple of 8
    n_layer: int = 24
    d_model: int = 768
    d_state: int = 16  # N: state size per channel
    d_conv: int = 4  # taps of the causal depthwise convolution
    expand: int = 2  # d_inner = expand * d_model: the width of the SSM branch
    dt_rank: int | None = None  # rank of delta's projection; None: ceil(d_model / 16)
    conv_bias: bool = True
    bias: bool = False  # biases of in_proj and out_proj
    norm_eps: float = 1e-5
    emb_init_std: float = 0.02  # token embedding N(0, 0.02)
    dt_min: float = 0.001  # initial step sizes are log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    # Tokens per chunk of the parallel scan; speed only, same result. None: 16 on the CPU (the
    # doubling work grows with log2 of it; 16 ran fastest of 8, 16 and 32 for the tiny and
    # small variants at 1024 tokens), 128 on GPUs, where each Python step costs kernel
    # launches rather than work (not measured).
    scan_chunk_len: int | None = None

    def __post_init__(self) -> None:
        check_config(self)
        if self.dt_rank is None:
            object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


def selective_scan_recurrent(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                             B: torch.Tensor, C: torch.Tensor, state: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's recurrence (Algorithm 2), one token at a time:
        h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t;   y_t = C_t h_t.
    x, delta (b, T, d_inner); A (d_inner, N); B, C (b, T, N); state h_0 (b, d_inner, N).
    Returns y (b, T, d_inner) and h_T."""
    h = state
    ys = []
    for t in range(x.size(1)):
        decay = torch.exp(delta[:, t, :, None] * A)  # (b, d_inner, N), in (0, 1]
        h = decay * h + (delta[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h @ C[:, t, :, None]).squeeze(-1))  # (b, d_inner)
    return torch.stack(ys, dim=1), h


def _scan_chunk(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All c tokens of one chunk at once. Each token is an affine map of the state,
    h -> a_t h + u_t with a_t = exp(delta_t A) and u_t = delta_t B_t x_t, and the maps compose
    by doubling (Hillis & Steele 1986): after the step with offset k, (a_t, u_t) is the
    composition of the 2k maps ending at t (fewer near the chunk's start), i.e. a_t is the
    cumulative decay since then and u_t the state those tokens leave from a zero state. The
    decays are products of factors in (0, 1]: nothing overflows or is divided, a long memory
    only underflows towards 0, its limit. log2(c) steps, then h_t = u_t + a_t h_0."""
    a = torch.exp(delta[..., None] * A)  # (b, c, d_inner, N)
    u = (delta * x)[..., None] * B[:, :, None, :]  # (b, c, d_inner, N)
    k = 1
    while k < x.size(1):
        # (a, u)_t <- (a, u)_t after (a, u)_{t-k}: the maps compose as a_t a_{t-k} and
        # a_t u_{t-k} + u_t. The first k tokens have nothing k back and stay as they are.
        u = torch.cat([u[:, :k], torch.addcmul(u[:, k:], a[:, k:], u[:, :-k])], dim=1)
        a = torch.cat([a[:, :k], a[:, k:] * a[:, :-k]], dim=1)
        k *= 2
    h = torch.addcmul(u, a, h0[:, None])  # (b, c, d_inner, N): the state after every token
    y = (h @ C[..., None]).squeeze(-1)  # (b, c, d_inner)
    return y, h[:, -1]


def selective_scan_chunked(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, state: torch.Tensor,
                           chunk_len: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The same scan as `selective_scan_recurrent`, `chunk_len` tokens at a time: inside a
    chunk every token is computed at once (`_scan_chunk`); only the state (b, d_inner, N)
    crosses chunk boundaries. Work per token: O(log2(chunk_len) * d_inner * N)."""
    # Keep only each chunk's inputs for backward, not its (c, d_inner, N) tables: recompute them.
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, delta, A, B, C, state))
    h = state
    ys = []
    # split, not x[:, start:end]: the backward of each slice fills a zero tensor the size of
    # the whole input for its one chunk (quadratic in the length); split's concatenates once
    chunks = zip(*(t.split(chunk_len, dim=1) for t in (x, delta, B, C)), strict=True)
    for x_c, delta_c, B_c, C_c in chunks:
        args = (x_c, delta_c, A, B_c, C_c, h)
        y, h = checkpoint(_scan_chunk, *args, use_reentrant=False) if grad else _scan_chunk(*args)
        ys.append(y)
    return torch.cat(ys, dim=1), h


def chunk_length(configured: int | None, cuda: bool) -> int:
    """selective_scan_chunked's chunk: the config's `scan_chunk_len`, else 128 on CUDA, 16 on
    the CPU."""
    return configured or (128 if cuda else 16)


class MambaMixer(nn.Module):
    """The selective SSM block: in_proj -> [x | z]; x through the causal conv, SiLU and the
    scan (with the skip D x); gated by SiLU(z); out_proj. Names follow mamba_ssm."""

    def __init__(self, d_model: int, d_inner: int, d_state: int, d_conv: int, dt_rank: int,
                 conv_bias: bool, bias: bool, chunk_len: int | None):
        super().__init__()
        self.d_state, self.dt_rank, self.chunk_len = d_state, dt_rank, chunk_len
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)  # -> [x | z]
        # Depthwise (one filter per channel). Causal: each output sees its token and the
        # d_conv - 1 before it; those earlier inputs come from the conv state (see forward).
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)  # -> [dt | B | C]
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)  # low-rank delta, per channel
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))  # A = -exp(A_log) < 0
        self.D = nn.Parameter(torch.empty(d_inner))  # skip connection around the scan
        # mamba_ssm trains A and D without weight decay; a trainer reads this flag (the zoo's
        # does: harness.quality.train), since A_log is a matrix like the weights it decays.
        self.A_log._no_weight_decay = self.D._no_weight_decay = True
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def forward(self, hidden: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
                mask: torch.Tensor | None):
        """hidden (b, T, d_model); conv_state (b, d_inner, d_conv - 1): the last inputs of the
        convolution (zeros at the start of a text); ssm_state (b, d_inner, N) fp32; mask
        (b, T) 1 = token, 0 = padding, or None. Returns the output and both new states."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (b, T, d_inner) each
        if mask is not None:  # a padded token writes nothing into the conv window...
            x = x * mask[..., None]
        x, new_conv_state = self.conv(x, conv_state)  # (b, T, d_inner)
        if mask is not None:  # ...nor into the SSM state: with u = 0 a zero state stays zero
            x = x * mask[..., None]
        # Selection: delta, B and C are projections of the token itself.
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        y, ssm_state = self.gated_scan(x, self.dt_proj(dt), A, B, C, z, ssm_state)
        return self.out_proj(y), new_conv_state, ssm_state

    def gated_scan(self, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, z: torch.Tensor, state: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The scan (in fp32) with step sizes softplus(dt), its skip D x, and the gate SiLU(z);
        and the new state."""
        delta = F.softplus(dt)  # (b, T, d_inner) > 0
        y, state = self.scan(x.float(), delta.float(), A, B.float(), C.float(), state)
        y = y.to(x.dtype) + x * self.D
        return y * F.silu(z), state

    def conv(self, x: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SiLU of the causal depthwise convolution, and the new conv state."""
        conv, new_conv_state = causal_depthwise_conv(x, conv_state, self.conv1d.weight,
                                                     self.conv1d.bias)
        return F.silu(conv), new_conv_state

    def scan(self, x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The selective scan in fp32: the recurrence for one token (decoding), chunks for more."""
        if x.size(1) == 1:
            return selective_scan_recurrent(x, delta, A, B, C, state)
        return selective_scan_chunked(x, delta, A, B, C, state,
                                      chunk_length(self.chunk_len, x.is_cuda))


class Block(nn.Module):
    """Pre-norm residual: x + Mixer(RMSNorm(x)). The mixer is the whole block (no MLP)."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        c = config
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.mixer = MambaMixer(c.d_model, c.d_inner, c.d_state, c.d_conv, c.dt_rank,
                                c.conv_bias, c.bias, c.scan_chunk_len)

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
                mask: torch.Tensor | None):
        h, conv_state, ssm_state = self.mixer(self.norm(x), conv_state, ssm_state, mask)
        return x + h, conv_state, ssm_state


@dataclass
class MambaState:
    """The recurrent state after the tokens seen so far, of a fixed size whatever their number:
    conv (n_layer, B, d_inner, d_conv - 1), the last inputs of each convolution (activation
    dtype); ssm (n_layer, B, d_inner, d_state), each scan's state h (fp32)."""

    conv: torch.Tensor
    ssm: torch.Tensor

    @classmethod
    def empty(cls, config: MambaConfig, batch: int, dtype: torch.dtype,
              device: torch.device) -> MambaState:
        c = config
        return cls(conv=torch.zeros(c.n_layer, batch, c.d_inner, c.d_conv - 1, dtype=dtype,
                                    device=device),
                   ssm=torch.zeros(c.n_layer, batch, c.d_inner, c.d_state, device=device))


class Mamba(RecurrentLM):
    config_class = MambaConfig
    causal_lm = True

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.init_weights()
        self.lm_head = tied_head(self.embedding)  # the output head is the token embedding

    @torch.no_grad()
    def init_weights(self) -> None:
        """mamba_ssm's initialisation: embedding N(0, emb_init_std); A_log = log(1..N) per
        channel (S4D-Real); D = 1; dt_proj's weight U(±dt_rank^-0.5) and its bias softplus^-1
        of step sizes log-uniform in [dt_min, dt_max]; the other linears and the conv keep
        PyTorch's default (Kaiming-uniform) init with zero linear biases, and out_proj is
        scaled by 1/sqrt(n_layer), one residual branch per layer (GPT-2's rescaling)."""
        c = self.config
        nn.init.normal_(self.embedding.weight, std=c.emb_init_std)
        for block in self.layers:
            mixer = block.mixer
            n = torch.arange(1, c.d_state + 1, dtype=torch.float32, device=mixer.A_log.device)
            mixer.A_log.copy_(torch.log(n).expand(c.d_inner, -1))
            nn.init.ones_(mixer.D)
            bound = c.dt_rank**-0.5
            nn.init.uniform_(mixer.dt_proj.weight, -bound, bound)
            log_dt = torch.empty(c.d_inner, device=mixer.A_log.device).uniform_(
                math.log(c.dt_min), math.log(c.dt_max))
            dt = torch.exp(log_dt).clamp(min=DT_INIT_FLOOR)
            mixer.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            for linear in (mixer.in_proj, mixer.out_proj):
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
            mixer.out_proj.weight.div_(math.sqrt(c.n_layer))

    def hidden_states(self, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, d) of `input_ids` (B, T), after the final RMSNorm norm_f
        (Hugging Face's MambaModel). `attention_mask`, 1 = token and 0 = padding, covers the
        new tokens (B, T) or, as for GPT, the cached ones too (B, cached + T; the state already
        holds the past, so only the last T columns are read). A padded token adds nothing to
        either state, so left padding leaves the real tokens' states as without it; the states
        at padded positions are meaningless. (As in Hugging Face, padding after real tokens
        still lets the state decay.)"""
        return super().hidden_states(input_ids, attention_mask=attention_mask)

    def _hidden_and_state(self, input_ids: torch.Tensor, cache: MambaState | None,
                          keep_state: bool, attention_mask: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, MambaState | None]:
        """`hidden_states` continuing from the state `cache` (None: the empty state), and, with
        `keep_state`, the state after these tokens."""
        B, T = input_ids.shape
        x = self.embedding(input_ids)  # (B, T, d)
        state = cache if cache is not None else MambaState.empty(self.config, B, x.dtype,
                                                                 x.device)
        mask = new_token_mask(attention_mask, T, x.dtype)  # (B, T) or None
        conv_states, ssm_states = [], []
        for i, block in enumerate(self.layers):
            x, conv, ssm = block(x, state.conv[i], state.ssm[i], mask)
            conv_states.append(conv)
            ssm_states.append(ssm)
        new_state = None
        if keep_state:
            new_state = MambaState(conv=torch.stack(conv_states), ssm=torch.stack(ssm_states))
        return self.norm_f(x), new_state

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token, the same at every length (the state has a fixed size):
            2 * n_layer * (d * 2 d_in + d_in * (R + 2N) + R * d_in + d_in * d)   [projections]
          + 2 * vocab * d                                                    [tied head]
          + n_layer * (2 * d_conv * d_in + SCAN_FLOPS_PER_STATE * d_in * N)   [conv, scan]
        with d_in = d_inner, R = dt_rank, N = d_state: the recurrence's work. (The chunked
        prefill does log2(chunk) times more elementwise work for the same result.) Biases,
        norms, activations, the gate and the D skip are left out."""
        c = self.config
        d, di, R, N = c.d_model, c.d_inner, c.dt_rank, c.d_state
        projections = d * 2 * di + di * (R + 2 * N) + R * di + di * d
        per_layer = 2 * projections + 2 * c.d_conv * di + SCAN_FLOPS_PER_STATE * di * N
        return float(c.n_layer * per_layer + 2 * c.vocab_size * d)
