"""The WKV of RWKV-5 (Eagle) and RWKV-6 (Finch): a matrix state per head, decayed per key
channel, read with a bonus u for the current token (Peng et al. 2024, arXiv 2404.05892):
    y_t = r_t (S_{t-1} + diag(u) k_t^T v_t),        S_t = diag(w_t) S_{t-1} + k_t^T v_t,
with S[key channel, value channel] as the `rwkv` package keeps it. RWKV-5's decay is one
constant per channel, RWKV-6's depends on the token; both come in as log w (B or 1, T, H, N).

Two forms of one map, in the dtype given (the models pass fp32): `matrix_wkv_recurrent`, one
token at a time, for decoding and as the tests' oracle; `matrix_wkv_chunked`, for prefill and
training, with a Python loop over chunks only. Its numerics: the decay has no floor (log w =
-exp(.) is unbounded below), so factoring e^(cumulative log-decay) into a query part and a key
part, as RWKV-7's chunked form does, could overflow. Inside a chunk every decay factor is
instead exp of the sum of the log-decays over the tokens between an earlier and a later
position, summed over that span alone (a "segment sum", as Mamba-2's chunked scan): the exponent
is <= 0, so each factor is in [0, 1], nothing overflows, strong decays underflow to 0
harmlessly, and no difference of large cumulative sums loses fp32 precision. The price is an
(L, L, N) tensor of pairwise factors per chunk and head, hence small chunks (16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def matrix_wkv_recurrent(r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   u: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token at a time, per head:  y_t = r_t (S_{t-1} + diag(u) k_t^T v_t);
    S_t = diag(w_t) S_{t-1} + k_t^T v_t.  r, k, v: (B, T, H, N); log_w (= log w_t): (B, T, H,
    N), or (1, T, H, N) when the decay is the same for every sequence; u (H, N); state
    (B, H, N, N), S[key channel, value channel]. Returns y (B, T, H, N) and S_T."""
    S = state
    ys = []
    for t in range(r.size(1)):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, N, N): k^T v
        ys.append((r[:, t, :, None, :] @ (S + u[:, :, None] * kv)).squeeze(-2))
        S = torch.exp(log_w[:, t, :, :, None]) * S + kv
    return torch.stack(ys, dim=1), S


def matrix_wkv_chunked(r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 u: torch.Tensor, state: torch.Tensor, chunk_size: int = 16
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same map as `matrix_wkv_recurrent` (same arguments), L = chunk_size tokens at a
    time.

    Inside a chunk with start state S_0 and chunk-local cumulative log-decays c_t = sum_{i<=t}
    log w_i (c_0 = 0), unrolled:
        y_t = (r_t e^{c_{t-1}}) S_0 + sum_{s<t} (sum_n r_tn k_sn e^{c_{t-1,n} - c_{s,n}}) v_s
              + (r_t u k_t) v_t,
        S_L = e^{c_L} S_0 + sum_s (k_s e^{c_L - c_s})^T v_s.
    Every exponent is a sum of log-decays over a span of tokens, <= 0, and is summed over that
    span alone (Mamba-2's "segment sum"), never as a difference of two cumulative sums: c_t -
    c_s would cancel catastrophically in fp32 after one very strong decay (c ~ -400, then
    decays near 1).
    """
    B, T, H, N = r.shape
    L = chunk_size
    pad = -T % L  # padding: log w = 0 (w = 1) and zero inputs leave the state as it is
    r, log_w, k, v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (r, log_w, k, v))
    n = (T + pad) // L
    # (B, n, H, L, N): chunks, heads, tokens of the chunk
    r, log_w, k, v = (x.view(x.size(0), n, L, H, N).transpose(2, 3) for x in (r, log_w, k, v))
    strict = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)  # row i > column s
    # span[n, s, t] = sum_{s < i <= t} log w_i, (B or 1, n, H, N, L, L): channel, column s,
    # row t; the running sum over t is along the last, contiguous dimension (fast).
    span = (log_w.transpose(-1, -2)[..., None, :] * strict.T).cumsum(dim=-1)
    # c_{t-1}: the sum of the chunk's earlier log-decays (not c_t - log w_t, which cancels)
    before = F.pad(log_w[:, :, :, :-1].cumsum(dim=3), (0, 0, 1, 0))
    gap = F.pad(span[..., :-1], (1, 0))  # c_{t-1} - c_s = span[s, t - 1]
    to_end = span[..., -1].transpose(-1, -2)  # c_L - c_s, (B, n, H, L, N)
    scores = torch.einsum("...tn,...sn,...nst->...ts", r, k, torch.exp(gap))
    scores = scores.masked_fill(~strict, 0)  # s < t (gap is 0, not -inf, elsewhere)
    bonus = (r * u[:, None] * k).sum(-1)  # (B, n, H, L): r_t u k_t
    y_in = scores @ v + bonus[..., None] * v  # the chunk's own tokens
    read = r * torch.exp(before)  # r_t e^{c_{t-1}}: what S_0 contributes
    written = (k * torch.exp(to_end)).transpose(-1, -2) @ v  # (B, n, H, N, N)
    # e^{c_L} per key channel, (B, n, H, N, 1)
    decay = torch.exp(log_w.sum(dim=3, keepdim=True)).transpose(-1, -2)
    S = state
    ys = []
    # unbind, not [:, c]: the backward of each [:, c] fills a zero tensor the size of the
    # whole for its one chunk (n of them: quadratic in the length)
    for read_c, y_in_c, decay_c, written_c in zip(*(t.unbind(1) for t in
                                                    (read, y_in, decay, written)), strict=True):
        ys.append(read_c @ S + y_in_c)
        S = decay_c * S + written_c
    y = torch.stack(ys, dim=1)  # (B, n, H, L, N)
    return y.transpose(2, 3).reshape(B, n * L, H, N)[:, :T], S


def run_matrix_wkv(r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   u: torch.Tensor, state: torch.Tensor, chunk_size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The WKV as RWKV-5 and RWKV-6 run it: the recurrence for one token (decoding), the
    chunked form for more (prefill, training)."""
    if r.size(1) == 1:
        return matrix_wkv_recurrent(r, log_w, k, v, u, state)
    return matrix_wkv_chunked(r, log_w, k, v, u, state, chunk_size)


def head_group_norm(y: torch.Tensor, ln_x: torch.nn.GroupNorm) -> torch.Tensor:
    """ln_x over the WKV's output y (B, T, H, N), one group per head, in y's precision (fp32
    or fp64), with the GroupNorm's weights cast to it, as the `rwkv` package does: (B, T, d)."""
    B, T, d = y.size(0), y.size(1), ln_x.num_channels
    out = F.group_norm(y.reshape(B * T, d), ln_x.num_groups, ln_x.weight.to(y.dtype),
                       ln_x.bias.to(y.dtype), ln_x.eps)
    return out.view(B, T, d)
