"""Mamba-2: Mamba with a scalar decay per head, computed by state-space duality (SSD).

Paper: Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality", arXiv 2405.21060. Reference code: state-spaces/mamba
(`mamba_ssm/modules/mamba2.py`, the mixer; `mamba_ssm/modules/ssd_minimal.py`, the SSD in
PyTorch); Hugging Face `Mamba2ForCausalLM`.

Differences from its parent, Mamba (zoo.mamba):
  - A is one scalar per head (A = -exp(A_log), heads of head_dim channels) instead of a
    (channel, state) matrix, and delta is one step size per head: the decay of the whole
    (head_dim, d_state) state of a head is a single number per token. This restriction (the
    paper's "scalar times identity" SSM) is what makes the duality hold: the same map is a
    linear recurrence and a masked, attention-like matrix product y = (L o C B^T) (delta x),
    where L[i, j] is the decay from token j to token i ("1-semiseparable" mask);
  - B and C are shared by the heads of a group (n_groups groups, like grouped-query attention's
    shared keys) and are produced with x, z and delta by one input projection, in parallel,
    rather than from the convolved x by a second projection (x_proj, dt_proj are gone);
    in_proj's output is [z | xBC | dt(heads)], and the causal conv runs over x, B and C;
  - delta = softplus(dt + dt_bias), clamped to [dt_limit_min, dt_limit_max]; D is per head.
    The clamp applies when decoding too, so that cached decoding equals the full forward;
    Hugging Face's one-token step (and, as far as we can tell, mamba_ssm's) leaves it out, which
    only matters for a clamp other than the published checkpoints' (0, inf);
  - an extra normalisation before out_proj: RMSNorm(y * silu(z)), over groups of d_inner /
    n_groups channels (mamba_ssm's RMSNormGated, norm_before_gate=False);
  - a larger state (d_state 128 instead of 16), which the matrix-product form makes affordable.
The language model is Mamba's: pre-norm residual blocks, a final RMSNorm, the head tied.

Choices taken from the released code and checkpoints (state-spaces/mamba2-*): head_dim 64,
one group, d_conv 4, expand 2, no in/out projection biases, a conv bias, RMSNorm eps 1e-5, the
GPT-NeoX vocabulary of 50277 padded to 50288 (a multiple of 16), A initialised uniform in
[1, 16], the initialisation in `Mamba2.init_weights`.

The scan runs in fp32 two ways: `ssd_recurrent`, the per-token recurrence, used for decoding
and as the tests' oracle; and `ssd_chunked`, the paper's SSD algorithm: within a chunk of
`chunk_size` tokens the quadratic attention-like form, between chunks the recurrence on the
states at chunk boundaries (a Python loop over chunks, never over tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import RMSNorm, causal_depthwise_conv, new_token_mask, tied_head
from zoo.model import RecurrentLM, check_config

# Elementwise FLOPs of one recurrence step per state element (heads x head_dim x d_state): the
# decay times the state, the input's outer product (delta x) B^T and its add, C's multiply-add.
SCAN_FLOPS_PER_STATE = 5
DT_INIT_FLOOR = 1e-4  # the smallest initial step size (mamba_ssm's dt_init_floor)


@dataclass(frozen=True)
class Mamba2Config:
    """Defaults: mamba2-130m (state-spaces/mamba2-130m)."""

    vocab_size: int = 50288  # GPT-NeoX-20B tokenizer's 50277, padded to a multiple of 16
    n_layer: int = 24
    d_model: int = 768
    d_state: int = 128  # N: state size per channel
    d_conv: int = 4  # taps of the causal depthwise convolution
    expand: int = 2  # d_inner = expand * d_model = n_heads * head_dim
    head_dim: int = 64  # P: channels per head, which share one decay
    n_groups: int = 1  # G: B and C are shared by the n_heads / G heads of a group
    conv_bias: bool = True
    bias: bool = False  # biases of in_proj and out_proj
    norm_eps: float = 1e-5
    emb_init_std: float = 0.02  # token embedding N(0, 0.02)
    A_init_min: float = 1.0  # A = -uniform(A_init_min, A_init_max) per head at initialisation
    A_init_max: float = 16.0
    dt_min: float = 0.001  # initial step sizes are log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_limit_min: float = 0.0  # delta is clamped to [dt_limit_min, dt_limit_max]
    dt_limit_max: float = math.inf
    # Tokens per chunk of the SSD; speed only, the same result. None: 64 for this file's
    # PyTorch form on the CPU (at 1024 tokens, one thread, the small variant: 1.9 s with 32 or
    # 64, 2.1 s with 128, 2.8 s with mamba_ssm's 256, whose quadratic within-chunk work
    # dominates there), zoo.fast.kernels.ssd_cpu.CHUNK for the compiled one, 256 on GPUs.
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        check_config(self)
        if self.d_inner % self.head_dim or self.n_heads % self.n_groups:
            raise ValueError(f"expand * d_model = {self.d_inner} must be a multiple of head_dim "
                             f"{self.head_dim}, and the heads a multiple of n_groups "
                             f"{self.n_groups}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        return self.d_inner // self.head_dim

    @property
    def conv_dim(self) -> int:  # the convolved channels: x, B and C
        return self.d_inner + 2 * self.n_groups * self.d_state


def ssd_recurrent(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence, one token at a time, per head:
        h_t = exp(dt_t A) h_{t-1} + (dt_t x_t) B_t^T;   y_t = h_t C_t.
    x (b, T, H, P); dt (b, T, H) > 0; A (H,) < 0; B, C (b, T, G, N), head k reading group
    k // (H / G); state h_0 (b, H, P, N). Returns y (b, T, H, P) and h_T."""
    heads_per_group = x.size(2) // B.size(2)
    B = B.repeat_interleave(heads_per_group, dim=2)  # (b, T, H, N)
    C = C.repeat_interleave(heads_per_group, dim=2)
    h = state
    ys = []
    for t in range(x.size(1)):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # (b, H, 1, 1), in (0, 1]
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((h @ C[:, t, :, :, None]).squeeze(-1))  # (b, H, P)
    return torch.stack(ys, dim=1), h


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Log-decays a (..., L) -> (..., L, L) with [i, j] = a_{j+1} + ... + a_i for j <= i, the
    log of the decay from token j to token i, and -inf above the diagonal (exp -> 0: causal).
    Summed directly rather than as cumsum_i - cumsum_j, a difference of two large numbers that
    would lose the small decays of recent tokens in fp32."""
    L = a.size(-1)
    strictly_below = torch.ones(L, L, dtype=torch.bool, device=a.device).tril(-1)
    terms = a[..., :, None].expand(*a.shape, L).masked_fill(~strictly_below, 0)  # [k, j] = a_k
    sums = terms.cumsum(dim=-2)  # [i, j] = sum of a_k over j < k <= i
    return sums.masked_fill(~strictly_below.logical_or(torch.eye(L, dtype=torch.bool,
                                                                 device=a.device)), -math.inf)


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                C: torch.Tensor, state: torch.Tensor, chunk_size: int = 64
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same map as `ssd_recurrent` (same arguments), by state-space duality (the paper's
    Listing 1): split into chunks of L tokens; inside a chunk, the quadratic form
    y = (exp(segsum) o C B^T) (dt x), attention with a decay mask; the state each chunk leaves
    from a zero start; the recurrence over chunks on those states; each chunk's start state
    read by its tokens through C. Work per token: O(L (N + P) + N P) per head."""
    b, T, H, P = x.shape
    G, N = B.shape[2:]
    L = chunk_size
    pad = -T % L  # dt = 0 on padding: decay 1 and no input, so the final state is unchanged
    x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    n = (T + pad) // L
    # Chunks, and the heads as (group, head within it) so that B and C are read per group.
    u = (x * dt[..., None]).view(b, n, L, G, H // G, P)  # dt x: what each token writes
    B, C = B.view(b, n, L, G, N), C.view(b, n, L, G, N)
    a = (dt * A).view(b, n, L, G, H // G).permute(0, 1, 3, 4, 2)  # (b, n, G, H/G, L) <= 0
    decay = torch.exp(segsum(a))  # (b, n, G, H/G, L, L): from token s to token l of a chunk
    # 1. Within each chunk, from a zero state: scores C_l . B_s, masked by the decay.
    scores = torch.einsum("bclgn,bcsgn->bcgls", C, B)[:, :, :, None] * decay
    y = torch.einsum("bcghls,bcsghp->bclghp", scores, u)
    # 2. The state each chunk leaves from a zero start: its inputs decayed to its last token.
    to_end = decay[..., -1, :]  # (b, n, G, H/G, L)
    weighted = u * to_end.permute(0, 1, 4, 2, 3)[..., None]  # (b, n, L, G, H/G, P)
    chunk_states = torch.einsum("bcsgn,bcsghp->bcghpn", B, weighted)
    # 3. Between chunks, the recurrence: the state at each chunk's start.
    cum = a.cumsum(dim=-1)  # log-decay from the chunk's start through token l
    chunk_decay = torch.exp(cum[..., -1])[..., None, None]  # (b, n, G, H/G, 1, 1)
    h = state.view(b, G, H // G, P, N)
    starts = []
    # unbind, not [:, c]: the backward of each [:, c] fills a zero tensor the size of the
    # whole (b, n, G, H/G, P, N) for its one chunk (n of them: quadratic in the length)
    for decay_c, states_c in zip(chunk_decay.unbind(1), chunk_states.unbind(1), strict=True):
        starts.append(h)
        h = decay_c * h + states_c
    starts = torch.stack(starts, dim=1)  # (b, n, G, H/G, P, N)
    # 4. The start state's share of each token: read through C, decayed to the token.
    from_start = torch.einsum("bclgn,bcghpn->bclghp", C, starts)
    y = y + from_start * torch.exp(cum).permute(0, 1, 4, 2, 3)[..., None]
    return y.reshape(b, n * L, H, P)[:, :T], h.reshape(b, H, P, N)


def chunk_length(configured: int | None, cuda: bool) -> int:
    """ssd_chunked's chunk: the config's `chunk_size`, else 256 on CUDA, 64 on the CPU."""
    return configured or (256 if cuda else 64)


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * silu(z)) over groups of dim / n_groups channels, in fp32 (mamba_ssm's
    RMSNormGated with norm_before_gate=False): the gate is applied before the norm."""

    def __init__(self, dim: int, n_groups: int, eps: float):
        super().__init__()
        self.n_groups, self.eps = n_groups, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        g = (y.float() * F.silu(z.float())).unflatten(-1, (self.n_groups, -1))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * g.flatten(-2).to(z.dtype)


class Mamba2Mixer(nn.Module):
    """in_proj -> [z | xBC | dt]; xBC through the causal conv and SiLU, split into x (heads),
    B and C (groups); the SSD scan with the skip D x; GatedRMSNorm(y, z); out_proj. Names follow
    mamba_ssm."""

    def __init__(self, d_model: int, d_inner: int, d_state: int, d_conv: int, head_dim: int,
                 n_groups: int, conv_bias: bool, bias: bool, norm_eps: float,
                 dt_limit: tuple[float, float], chunk_size: int | None):
        super().__init__()
        self.d_inner, self.d_state, self.n_groups = d_inner, d_state, n_groups
        self.n_heads, self.head_dim = d_inner // head_dim, head_dim
        self.dt_limit, self.chunk_size = dt_limit, chunk_size
        conv_dim = d_inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(d_model, d_inner + conv_dim + self.n_heads, bias=bias)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))  # delta = softplus(dt + dt_bias)
        self.A_log = nn.Parameter(torch.empty(self.n_heads))  # A = -exp(A_log) < 0, per head
        self.D = nn.Parameter(torch.empty(self.n_heads))  # skip connection, per head
        self.norm = GatedRMSNorm(d_inner, n_groups, norm_eps)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def forward(self, hidden: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
                mask: torch.Tensor | None):
        """hidden (b, T, d_model); conv_state (b, conv_dim, d_conv - 1); ssm_state
        (b, H, P, N) fp32; mask (b, T) 1 = token, 0 = padding, or None. Returns the output and
        both new states."""
        if mask is not None:  # a padded token's dt is dt_bias alone, as in Hugging Face
            hidden = hidden * mask[..., None]
        GN = self.n_groups * self.d_state
        z, xBC, dt = self.in_proj(hidden).split(
            [self.d_inner, self.d_inner + 2 * GN, self.n_heads], dim=-1)
        if mask is not None:  # ...writes nothing into the conv window...
            xBC = xBC * mask[..., None]
        xBC, new_conv_state = self.conv(xBC, conv_state)  # (b, T, conv_dim)
        if mask is not None:  # ...nor into the SSM state: with x = 0 a zero state stays zero
            xBC = xBC * mask[..., None]
        x, B, C = xBC.split([self.d_inner, GN, GN], dim=-1)
        x = x.unflatten(-1, (self.n_heads, self.head_dim)).float()  # (b, T, H, P)
        B = B.unflatten(-1, (self.n_groups, self.d_state)).float()  # (b, T, G, N)
        C = C.unflatten(-1, (self.n_groups, self.d_state)).float()
        delta = F.softplus(dt.float() + self.dt_bias.float()).clamp(*self.dt_limit)  # (b, T, H)
        A = -torch.exp(self.A_log.float())  # (H,)
        y, ssm_state = self.scan(x, delta, A, B, C, ssm_state)
        y = (y + x * self.D.float()[:, None]).flatten(2)  # (b, T, d_inner)
        return self.out_proj(self.norm(y, z)), new_conv_state, ssm_state

    def conv(self, x: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SiLU of the causal depthwise convolution, and the new conv state."""
        conv, new_conv_state = causal_depthwise_conv(x, conv_state, self.conv1d.weight,
                                                     self.conv1d.bias)
        return F.silu(conv), new_conv_state

    def scan(self, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The scan in fp32: the recurrence for one token (decoding), the SSD for more."""
        if x.size(1) == 1:
            return ssd_recurrent(x, dt, A, B, C, state)
        return ssd_chunked(x, dt, A, B, C, state, chunk_length(self.chunk_size, x.is_cuda))


class Block(nn.Module):
    """Pre-norm residual: x + Mixer(RMSNorm(x)). The mixer is the whole block (no MLP)."""

    def __init__(self, config: Mamba2Config):
        super().__init__()
        c = config
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.mixer = Mamba2Mixer(c.d_model, c.d_inner, c.d_state, c.d_conv, c.head_dim,
                                 c.n_groups, c.conv_bias, c.bias, c.norm_eps,
                                 (c.dt_limit_min, c.dt_limit_max), c.chunk_size)

    def forward(self, x: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
                mask: torch.Tensor | None):
        h, conv_state, ssm_state = self.mixer(self.norm(x), conv_state, ssm_state, mask)
        return x + h, conv_state, ssm_state


@dataclass
class Mamba2State:
    """The recurrent state after the tokens seen so far, of a fixed size whatever their number:
    conv (n_layer, B, conv_dim, d_conv - 1), the last inputs of each convolution (activation
    dtype); ssm (n_layer, B, n_heads, head_dim, d_state), each scan's state h (fp32)."""

    conv: torch.Tensor
    ssm: torch.Tensor

    @classmethod
    def empty(cls, config: Mamba2Config, batch: int, dtype: torch.dtype,
              device: torch.device) -> Mamba2State:
        c = config
        return cls(conv=torch.zeros(c.n_layer, batch, c.conv_dim, c.d_conv - 1, dtype=dtype,
                                    device=device),
                   ssm=torch.zeros(c.n_layer, batch, c.n_heads, c.head_dim, c.d_state,
                                   device=device))


class Mamba2(RecurrentLM):
    config_class = Mamba2Config
    causal_lm = True

    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.init_weights()
        self.lm_head = tied_head(self.embedding)  # the output head is the token embedding

    @torch.no_grad()
    def init_weights(self) -> None:
        """mamba_ssm's initialisation: embedding N(0, emb_init_std); A = -uniform(A_init_min,
        A_init_max) per head; D = 1; dt_bias softplus^-1 of step sizes log-uniform in
        [dt_min, dt_max]; the linears and the conv keep PyTorch's default (Kaiming-uniform)
        init with zero linear biases, and out_proj is scaled by 1/sqrt(n_layer)."""
        c = self.config
        nn.init.normal_(self.embedding.weight, std=c.emb_init_std)
        for block in self.layers:
            mixer = block.mixer
            A = torch.empty_like(mixer.A_log).uniform_(c.A_init_min, c.A_init_max)
            mixer.A_log.copy_(torch.log(A))
            nn.init.ones_(mixer.D)
            log_dt = torch.empty_like(mixer.dt_bias).uniform_(math.log(c.dt_min),
                                                              math.log(c.dt_max))
            dt = torch.exp(log_dt).clamp(min=DT_INIT_FLOOR)
            mixer.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
            for linear in (mixer.in_proj, mixer.out_proj):
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
            mixer.out_proj.weight.div_(math.sqrt(c.n_layer))

    def hidden_states(self, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """As zoo.mamba.Mamba.hidden_states: final hidden states (B, T, d) after norm_f
        (Hugging Face's Mamba2Model); `attention_mask` (1 = token, 0 = padding) covers the new
        tokens or the cached ones too (only the last T columns are read). Left padding leaves
        the real tokens' states as without it."""
        return super().hidden_states(input_ids, attention_mask=attention_mask)

    def _hidden_and_state(self, input_ids: torch.Tensor, cache: Mamba2State | None,
                          keep_state: bool, attention_mask: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, Mamba2State | None]:
        """`hidden_states` continuing from the state `cache` (None: the empty state), and, with
        `keep_state`, the state after these tokens."""
        B, T = input_ids.shape
        x = self.embedding(input_ids)  # (B, T, d)
        state = cache if cache is not None else Mamba2State.empty(self.config, B, x.dtype,
                                                                  x.device)
        mask = new_token_mask(attention_mask, T, x.dtype)  # (B, T) or None
        conv_states, ssm_states = [], []
        for i, block in enumerate(self.layers):
            x, conv, ssm = block(x, state.conv[i], state.ssm[i], mask)
            conv_states.append(conv)
            ssm_states.append(ssm)
        new_state = None
        if keep_state:
            new_state = Mamba2State(conv=torch.stack(conv_states), ssm=torch.stack(ssm_states))
        return self.norm_f(x), new_state

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token, the same at every length (the state has a fixed size):
            2 * n_layer * (d * (2 d_in + 2 G N + H) + d_in * d)     [in_proj, out_proj]
          + 2 * vocab * d                                           [tied head]
          + n_layer * (2 * d_conv * conv_dim + SCAN_FLOPS_PER_STATE * d_in * N)   [conv, scan]
        with d_in = d_inner = H * P: the recurrence's work. (The chunked SSD does about
        chunk_size * (N + P) / N P more per token for the same result, as matrix products.)
        Biases, norms, activations, the gate and the D skip are left out."""
        c = self.config
        d, di, N = c.d_model, c.d_inner, c.d_state
        projections = d * (2 * di + 2 * c.n_groups * N + c.n_heads) + di * d
        per_layer = (2 * projections + 2 * c.d_conv * c.conv_dim
                     + SCAN_FLOPS_PER_STATE * di * N)
        return float(c.n_layer * per_layer + 2 * c.vocab_size * d)
