"""Mamba-2's chunked SSD for CPU float32: the work inside each chunk as a small C loop, the
products with the state as oneDNN matrix products, and a backward written out.

zoo.mamba2.ssd_chunked is the paper's algorithm in PyTorch, differentiated by autograd. On the
2-core AMD Zen 4 host one layer of the `small` Mamba-2 (16 heads of 64 channels, d_state 128, one
group) at 1024 tokens took about 30 ms forward and backward, two-thirds of it outside its
products: building the decay mask (segsum's expand, masked_fill, cumsum and exp over (chunks,
heads, L, L)), the copies einsum makes to reach batched MKL products, and the backward of each
(`python reports/train-cpu/ssd-probe.py`). Here, per chunk of L tokens, heads h, with
a = delta A (<= 0), u = delta x, cum_l = a_0 + ... + a_l within the chunk:

  C loop, each (chunk, head):  M[l, s] = (C_l . B_s) exp(a_{s+1} + ... + a_l) for s <= l;
                               y_l = sum_s M[l, s] u_s;   E_l = exp(cum_l);
                               V_s = u_s exp(a_{s+1} + ... + a_{L-1})   (u decayed to the end)
  products, each chunk:        the state it leaves from a zero start  V^T B  (P x N a head);
                               the start state's share  E_l (C_l . h_start)
  recurrence over chunks:      h_next = exp(cum_{L-1}) h_start + V^T B   (elementwise)

and the backward the same way round: the products of the state's gradient, then one C pass per
(chunk, head) for the gradients of u, of S = C B^T and of the log-decays (every exp recomputed
from running sums over the chunk, never as a difference of two long sums, as segsum does), the
last turned into a's by a reversed cumulative sum. The state's matrices are kept transposed, N x
(heads x P), so that every product's left operand is a contiguous matrix: oneDNN runs a
transposed left operand at 60% of the speed (`python reports/train-cpu/ssd-probe.py --products`).

`ssd` has `zoo.mamba2.ssd_chunked`'s contract for float32 CPU tensors, differentiable in all
six inputs; zoo/fast.py's "scan" route takes it for Mamba-2's mixer, with ssd_chunked as its
oracle in the tests. The source is compiled on first use with the system's C compiler and
cached (zoo/ckernel.py).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from zoo import ckernel
from zoo.scan_cpu import _channel_ranges, split

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Head h's rows of a chunk (L x P, rows hgp floats apart) into a contiguous buffer. */
static inline void take_head(int64_t L, int64_t P, int64_t hgp, const float *src, float *dst) {
    for (int64_t s = 0; s < L; s++) memcpy(dst + s * P, src + s * hgp, P * sizeof(float));
}

/* Row l of the log-decays from row l - 1's: seg[s] = a_{s+1} + ... + a_l for s < l, seg[l] = 0,
   each a sum of the chunk's own terms (a difference of two cumulative sums would lose the
   small decays of recent tokens). al: a_l. */
static inline void next_row(int64_t l, float al, float *seg) {
#pragma omp simd
    for (int64_t s = 0; s < l; s++) seg[s] += al;
    seg[l] = 0.0f;
}

/* acc (P) = sum over s in [s0, s1) of c[s * cs] rows[s * P ..]: a row of a small product. P is a
   literal at the call sites below, so the accumulator stays in registers. */
static inline void combine(int64_t P, int64_t s0, int64_t s1, const float *c, int64_t cs,
                           const float *rows, float *acc) {
    float sum[P];
#pragma omp simd
    for (int64_t p = 0; p < P; p++) sum[p] = 0.0f;
    for (int64_t s = s0; s < s1; s++) {
        const float cv = c[s * cs], *r = rows + s * P;
#pragma omp simd
        for (int64_t p = 0; p < P; p++) sum[p] += cv * r[p];
    }
    memcpy(acc, sum, P * sizeof(float));
}

/* One head of one chunk, forward (see ssd_chunk_forward). */
static inline void head_forward(int64_t L, int64_t Hg, int64_t P, const float *ah,
                                const float *Sk, const float *uh, float *yh, float *Eh,
                                float *Vh, float *ub, float *seg, float *m) {
    const int64_t hgp = Hg * P;
    take_head(L, P, hgp, uh, ub);
    float cum = 0.0f;
    for (int64_t l = 0; l < L; l++) {
        cum += ah[l * Hg];
        Eh[l * Hg] = expf(cum);
        next_row(l, ah[l * Hg], seg);
#pragma omp simd
        for (int64_t s = 0; s <= l; s++) m[s] = Sk[l * L + s] * expf(seg[s]);
        combine(P, 0, l + 1, m, 1, ub, yh + l * hgp);
    }
    for (int64_t s = 0; s < L; s++) {  /* seg: the last row, the decays to the chunk's end */
        const float ws = expf(seg[s]);
        float *vs = Vh + s * hgp;
#pragma omp simd
        for (int64_t p = 0; p < P; p++) vs[p] = ub[s * P + p] * ws;
    }
}

/* Chunks k0 <= k < k1 of K, each L tokens of Hg heads of P channels. a (K, L, Hg): log-decays;
   S (K, L, L): C B^T; u (K, L, Hg P). Writes y (K, L, Hg P): the chunk's own share of the
   output; E (K, L, Hg): exp(cum); V (K, L, Hg P): u decayed to the chunk's last token.
   Returns 1 where its buffers could not be allocated, else 0. */
int ssd_chunk_forward(int64_t K, int64_t L, int64_t Hg, int64_t P, int64_t k0, int64_t k1,
                      const float *a, const float *S, const float *u, float *y, float *E,
                      float *V) {
    const int64_t hgp = Hg * P;
    /* on the heap: a long chunk's buffers would not fit a thread's stack */
    float *ub = malloc((L * P + 2 * L) * sizeof(float));
    if (!ub) return 1;
    float *seg = ub + L * P, *m = seg + L;
    for (int64_t k = k0; k < k1; k++)
        for (int64_t h = 0; h < Hg; h++) {
            const int64_t at = k * L * Hg + h, ut = k * L * hgp + h * P;
            if (P == 64)
                head_forward(L, Hg, 64, a + at, S + k * L * L, u + ut, y + ut, E + at, V + ut,
                             ub, seg, m);
            else
                head_forward(L, Hg, P, a + at, S + k * L * L, u + ut, y + ut, E + at, V + ut,
                             ub, seg, m);
        }
    free(ub);
    return 0;
}

/* out[s] = d . u_s for s < n (and up to the next multiple of 16), uT: u transposed, P rows of
   Lr floats (Lr a multiple of 16, zero past the tokens): 16 lanes of accumulators at a time in
   registers. */
static inline void dot_rows(int64_t P, int64_t Lr, int64_t n, const float *d, const float *uT,
                            float *out) {
    for (int64_t s0 = 0; s0 < n; s0 += 16) {
        float acc[16];
#pragma omp simd
        for (int64_t s = 0; s < 16; s++) acc[s] = 0.0f;
        for (int64_t p = 0; p < P; p++) {
            const float dp = d[p], *row = uT + p * Lr + s0;
#pragma omp simd
            for (int64_t s = 0; s < 16; s++) acc[s] += dp * row[s];
        }
        memcpy(out + s0, acc, sizeof acc);
    }
}

/* One head of one chunk, backward (see ssd_chunk_backward). */
static inline void head_backward(int64_t L, int64_t Hg, int64_t P, const float *ah,
                                 const float *Sk, const float *uh, const float *dyh,
                                 const float *dVh, float *dah, float *duh, float *dSk, float *Vh,
                                 float *ub, float *ubT, float *dyb, float *M, float *D,
                                 float *seg, float *dcum, float *dm) {
    const int64_t hgp = Hg * P, Lr = (L + 15) / 16 * 16;
    take_head(L, P, hgp, uh, ub);
    take_head(L, P, hgp, dyh, dyb);
    for (int64_t s = 0; s < L; s++)
        for (int64_t p = 0; p < P; p++) ubT[p * Lr + s] = ub[s * P + p];
    for (int64_t l = 0; l < L; l++) {
        next_row(l, ah[l * Hg], seg);
#pragma omp simd
        for (int64_t s = 0; s <= l; s++) {
            D[l * L + s] = expf(seg[s]);
            M[l * L + s] = Sk[l * L + s] * D[l * L + s];
        }
        dcum[l] = dah[l * Hg];
    }
    const float *w = D + (L - 1) * L;  /* the decays to the chunk's end */
    /* u's gradient: through V (u decayed to the end) and through y (M^T dy) */
    for (int64_t s = 0; s < L; s++) {
        const float *dvs = dVh + s * hgp, *us = ub + s * P;
        float *vs = Vh + s * hgp, *dus = duh + s * hgp;
        combine(P, s, L, M + s, L, dyb, dus);
        float dw = 0.0f;
#pragma omp simd reduction(+:dw)
        for (int64_t p = 0; p < P; p++) {
            dus[p] += dvs[p] * w[s];
            dw += dvs[p] * us[p];
            vs[p] = us[p] * w[s];
        }
        dcum[L - 1] += dw * w[s];  /* w_s = exp(cum_{L-1} - cum_s) */
        dcum[s] -= dw * w[s];
    }
    /* dM[l, s] = dy_l . u_s for s <= l; S's gradient dM D, the log-decays' dM M */
    for (int64_t l = 0; l < L; l++) {
        const int64_t n = l + 1;
        dot_rows(P, Lr, n, dyb + l * P, ubT, dm);
        float drow = 0.0f;
#pragma omp simd reduction(+:drow)
        for (int64_t s = 0; s < n; s++) {
            dSk[l * L + s] += dm[s] * D[l * L + s];
            const float dseg = dm[s] * M[l * L + s];  /* seg = cum_l - cum_s */
            drow += dseg;
            dcum[s] -= dseg;
        }
        dcum[l] += drow;
    }
    float total = 0.0f;  /* cum_l = a_0 + ... + a_l: a_j's gradient sums l >= j */
    for (int64_t l = L - 1; l >= 0; l--) {
        total += dcum[l];
        dah[l * Hg] = total;
    }
}

/* The gradients inside chunks k0 <= k < k1, from dy (K, L, Hg P), the output's gradient, and
   dV (K, L, Hg P), V's (from the state the chunk leaves). da (K, L, Hg) holds, on entry, the
   gradient of cum from the products with the start state (the caller's); on return, a's.
   Writes du (K, L, Hg P), dS (K, L, L), and V again (as the forward). Returns 1 where its
   buffers could not be allocated, else 0. */
int ssd_chunk_backward(int64_t K, int64_t L, int64_t Hg, int64_t P, int64_t k0, int64_t k1,
                       const float *a, const float *S, const float *u, const float *dy,
                       const float *dV, float *da, float *du, float *dS, float *V) {
    const int64_t hgp = Hg * P, Lr = (L + 15) / 16 * 16;
    float *ub = calloc(2 * L * P + P * Lr + 2 * L * L + 2 * L + Lr, sizeof(float));
    if (!ub) return 1;
    /* ubT: u transposed, its rows padded with zeros to Lr; dm: a row of dy u^T */
    float *ubT = ub + L * P, *dyb = ubT + P * Lr, *M = dyb + L * P, *D = M + L * L,
          *seg = D + L * L, *dcum = seg + L, *dm = dcum + L;
    for (int64_t k = k0; k < k1; k++) {
        memset(dS + k * L * L, 0, L * L * sizeof(float));
        for (int64_t h = 0; h < Hg; h++) {
            const int64_t at = k * L * Hg + h, ut = k * L * hgp + h * P;
            if (P == 64)
                head_backward(L, Hg, 64, a + at, S + k * L * L, u + ut, dy + ut, dV + ut,
                              da + at, du + ut, dS + k * L * L, V + ut, ub, ubT, dyb, M, D,
                              seg, dcum, dm);
            else
                head_backward(L, Hg, P, a + at, S + k * L * L, u + ut, dy + ut, dV + ut,
                              da + at, du + ut, dS + k * L * L, V + ut, ub, ubT, dyb, M, D,
                              seg, dcum, dm);
        }
    }
    free(ub);
    return 0;
}

#ifdef _OPENMP
int omp_get_thread_num(void);
int omp_get_num_threads(void);

/* For training: the two above over all K chunks, split between the threads of one OpenMP
   region of PyTorch's runtime (zoo/ckernel.py). */
int ssd_chunk_forward_team(int64_t threads, int64_t K, int64_t L, int64_t Hg, int64_t P,
                           const float *a, const float *S, const float *u, float *y, float *E,
                           float *V) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads();
        failed |= ssd_chunk_forward(K, L, Hg, P, K * p / n, K * (p + 1) / n, a, S, u, y, E, V);
    }
    return failed;
}

int ssd_chunk_backward_team(int64_t threads, int64_t K, int64_t L, int64_t Hg, int64_t P,
                            const float *a, const float *S, const float *u, const float *dy,
                            const float *dV, float *da, float *du, float *dS, float *V) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads();
        failed |= ssd_chunk_backward(K, L, Hg, P, K * p / n, K * (p + 1) / n, a, S, u, dy, dV,
                                     da, du, dS, V);
    }
    return failed;
}
#endif
"""


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("ssd_chunk", SOURCE, openmp=True)
    if library is not None and library.ssd_chunk_forward.argtypes is None:
        ints, ptr = ctypes.c_int64, ctypes.c_void_p
        library.ssd_chunk_forward.restype = ctypes.c_int
        library.ssd_chunk_forward.argtypes = [ints] * 6 + [ptr] * 6
        library.ssd_chunk_backward.restype = ctypes.c_int
        library.ssd_chunk_backward.argtypes = [ints] * 6 + [ptr] * 9
        if hasattr(library, "ssd_chunk_forward_team"):  # built with OpenMP
            library.ssd_chunk_forward_team.restype = ctypes.c_int
            library.ssd_chunk_forward_team.argtypes = [ints] * 5 + [ptr] * 6
            library.ssd_chunk_backward_team.restype = ctypes.c_int
            library.ssd_chunk_backward_team.argtypes = [ints] * 5 + [ptr] * 9
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x weight^T for matrices x (M, K), contiguous, and weight (N, K), either layout, in
    oneDNN's matrix multiply."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


def _pointers(*tensors: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.data_ptr() for t in tensors)


def _check(returned: list) -> None:
    if any(returned):
        raise MemoryError("the compiled SSD could not allocate its chunk buffers")


def _by_group(t: torch.Tensor, G: int) -> torch.Tensor:
    """(b, T, H, ...) -> (G, b, T, H / G, ...) contiguous: each group's heads (a view for G = 1)."""
    return t.unflatten(2, (G, -1)).movedim(2, 0).contiguous()


class _SSD(torch.autograd.Function):
    # float32 throughout, autocast or not: the C loop reads the products' outputs as floats
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, dt, A, B, C, state, chunk_size, training):
        b, T, H, P = x.shape
        G, N = B.shape[2:]
        Hg, L = H // G, chunk_size
        pad = -T % L  # dt = 0 on padding: decay 1 and no input, so the final state is unchanged
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
        n = (T + pad) // L
        K = b * n
        u = _by_group(x * dt[..., None], G).view(G, K, L, Hg * P)
        a = _by_group(dt * A, G).view(G, K, L, Hg)
        Bg, Cg = (t.movedim(2, 0).reshape(G, K, L, N).contiguous() for t in (B, C))
        Bt, Ct = Bg.transpose(2, 3).contiguous(), Cg.transpose(2, 3).contiguous()  # (G, K, N, L)
        S = torch.matmul(Cg, Bt)  # (G, K, L, L)
        # The state (b, H, P, N) as each group's (N, Hg P): the products' layout.
        h0 = state.reshape(b, G, Hg * P, N).transpose(2, 3).movedim(1, 0).contiguous()
        y, E, V = torch.empty_like(u), torch.empty_like(a), torch.empty_like(u)
        starts = torch.empty(G, K, N, Hg * P)  # the state at each chunk's start
        y_start = torch.empty_like(u)  # the start state's share of y
        last = torch.empty(G, b, N, Hg * P)
        library = _library()
        for g in range(G):
            _check(split(library, "ssd_chunk_forward", _channel_ranges(K * L * L * Hg * P, K),
                         (K, L, Hg, P), _pointers(a[g], S[g], u[g], y[g], E[g], V[g]),
                         openmp=training))
            decays = E[g, :, -1].repeat_interleave(P, dim=-1)  # (K, Hg P): exp(cum_{L-1})
            for i in range(b):
                h = h0[g, i]
                for k in range(i * n, (i + 1) * n):
                    starts[g, k] = h
                    h = _product(Bt[g, k], V[g, k].t()).add_(h * decays[k])  # B^T V + decay h
                last[g, i] = h
            for k in range(K):  # E_l (C_l . h_start)
                torch.mul(_product(Cg[g, k], starts[g, k].t()).view(L, Hg, P),
                          E[g, k, :, :, None], out=y_start[g, k].view(L, Hg, P))
        y.add_(y_start)
        if training:
            ctx.save_for_backward(x, dt, A, a, u, Bg, Cg, Bt, Ct, S, E, starts, y_start)
            ctx.shape = (b, T, H, P, G, N, L, n)
        y = y.view(G, b, n * L, Hg, P).movedim(0, 2).reshape(b, n * L, H, P)[:, :T]
        return y, last.transpose(2, 3).movedim(0, 1).reshape(b, H, P, N)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dy, dlast):
        x, dt, A, a, u, Bg, Cg, Bt, Ct, S, E, starts, y_start = ctx.saved_tensors
        b, T, H, P, G, N, L, n = ctx.shape
        Hg, K = H // G, b * n
        dy = _by_group(F.pad(dy, (0, 0, 0, 0, 0, n * L - T)), G).view(G, K, L, Hg * P)
        # cum's gradient from the start state's share, E_l (C_l . h_start): dy . y_start
        da = (dy * y_start).view(G, K, L, Hg, P).sum(-1)
        # the gradient of Z = C h_start^T, y's share being E_l Z_l
        dZ = (dy.view(G, K, L, Hg, P) * E[..., None]).view(G, K, L, Hg * P)
        dlast = (torch.zeros(G, b, N, Hg * P) if dlast is None else
                 dlast.reshape(b, G, Hg * P, N).transpose(2, 3).movedim(1, 0))
        dstates = torch.empty_like(starts)  # the gradient of the state each chunk leaves
        dh0 = torch.empty(G, b, N, Hg * P)
        du, dS, V = torch.empty_like(u), torch.empty_like(S), torch.empty_like(u)
        dB, dC = torch.empty_like(Bg), torch.empty_like(Cg)
        library = _library()
        for g in range(G):
            decays = E[g, :, -1].repeat_interleave(P, dim=-1)
            for i in range(b):
                dh = dlast[g, i]
                for k in reversed(range(i * n, (i + 1) * n)):
                    dstates[g, k] = dh
                    # h_next = decay h_start + B^T V, and Z = C h_start^T
                    dh = _product(Ct[g, k], dZ[g, k].t()).add_(dh * decays[k])
                dh0[g, i] = dh
            # the decay of each chunk's whole state: d(decay) = dh_next . h_start
            d_decay = (dstates[g] * starts[g]).view(K, N, Hg, P).sum((1, 3))
            da[g, :, -1] += d_decay * E[g, :, -1]
            dV = torch.stack([_product(Bg[g, k], dstates[g, k].t()) for k in range(K)])
            _check(split(library, "ssd_chunk_backward",
                         _channel_ranges(3 * K * L * L * Hg * P, K), (K, L, Hg, P),
                         _pointers(a[g], S[g], u[g], dy[g], dV, da[g], du[g], dS[g], V[g])))
            for k in range(K):
                torch.add(_product(V[g, k], dstates[g, k]), _product(dS[g, k].t().contiguous(),
                          Ct[g, k]), out=dB[g, k])  # V dh_next + dS^T C
                torch.add(_product(dZ[g, k], starts[g, k]), _product(dS[g, k], Bt[g, k]),
                          out=dC[g, k])  # dZ h_start + dS B
        # back through u = dt x, a = dt A (by head), the groups' layout and the padding
        du = du.view(G, b, n * L, Hg, P).movedim(0, 2).reshape(b, n * L, H, P)
        da = da.view(G, b, n * L, Hg).movedim(0, 2).reshape(b, n * L, H)
        dx = du * dt[..., None]
        ddt = da * A + (du * x).sum(-1)
        dA = (da * dt).sum((0, 1))
        dB, dC = (t.view(G, b, n * L, N).movedim(0, 2) for t in (dB, dC))
        dstate = dh0.movedim(0, 1).transpose(2, 3).reshape(b, H, P, N)
        return (dx[:, :T], ddt[:, :T], dA, dB[:, :T], dC[:, :T], dstate, None, None)


@torch.compiler.disable  # torch.compile runs it between its graphs: it cannot trace the C call
def ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        state: torch.Tensor, chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """zoo.mamba2.ssd_chunked for float32 CPU tensors, with gradients for all six inputs:
    x (b, T, H, P); dt (b, T, H) > 0; A (H,) < 0; B, C (b, T, G, N); state (b, H, P, N). Returns
    y (b, T, H, P) and the final state."""
    tensors = (x, dt, A, B, C, state)
    if _library() is None:
        raise RuntimeError("the compiled SSD is not available (no C compiler?)")
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors):
        raise ValueError("the compiled SSD takes float32 CPU tensors")
    b, T, H, P = x.shape
    G, N = B.shape[2:]
    if (dt.shape != (b, T, H) or A.shape != (H,) or B.shape != (b, T, G, N)
            or C.shape != B.shape or state.shape != (b, H, P, N) or H % G):
        raise ValueError(f"shapes: x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)},"
                         f" B {tuple(B.shape)}, C {tuple(C.shape)}, state {tuple(state.shape)}:"
                         " expected (b, T, H, P), (b, T, H), (H,), (b, T, G, N) twice with G "
                         "dividing H, (b, H, P, N)")
    training = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return _SSD.apply(x, dt, A, B, C, state, chunk_size, training)
