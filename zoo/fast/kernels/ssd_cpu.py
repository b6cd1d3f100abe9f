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
(chunk, head) for the gradients of S = C B^T, of u and of the log-decays (every exp recomputed
from running sums over the chunk, never as a difference of two long sums, as segsum does), a_k's
the sum over the segments s < k <= l that hold it (not a difference of row and column totals,
which lost A's gradient to 2e-5 in float32 over chunks of 128), and both into x's, dt's and
A's. The C
passes read x and dt where they lie (x a view of the input projection) and write y, dx and ddt
in the model's layout. The state's matrices are kept transposed, N x (heads x P), so that every
product's left operand is a contiguous matrix: oneDNN ran a transposed left operand at 40-65%
of the speed (`python reports/train-cpu/ssd-probe.py --products`). Chunks are CHUNK tokens
unless the config names a size.

`ssd` has `zoo.mamba2.ssd_chunked`'s contract for float32 CPU tensors, differentiable in all
six inputs; zoo.fast's "scan" route takes it for Mamba-2's mixer, with ssd_chunked as its
oracle in the tests. The source is compiled on first use with the system's C compiler and
cached (ckernel.py).
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from zoo.fast.kernels import ckernel
from zoo.fast.kernels.ckernel import channel_ranges, split

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The chunks: chunk k is chunk k % n of sequence k / n, its tokens t0 = (k % n) L .. t0 + L - 1,
   of which the first `valid` are real (the last chunk of a sequence may be partial: past T its
   tokens read as dt = 0 and x = 0, no input and no decay). Heads h < Hg of a group; H heads in
   all. x, y, dy, dx: (b, tokens, H, P) rows, a head's P channels contiguous; dt, ddt: (b, T, H)
   contiguous; the per-chunk buffers (E, V, dV, dZ, y_start, da, S, dS) are the group's own,
   (K, L, Hg [P]) and (K, L, L). Pointers to x, dt, A, y, dy, dx and ddt are at the group's
   first head. */
typedef struct {
    int64_t i, t0, valid;
} chunk_t;

static inline chunk_t chunk_of(int64_t k, int64_t n, int64_t L, int64_t T) {
    chunk_t c = {k / n, (k % n) * L, 0};
    c.valid = T - c.t0 < L ? T - c.t0 : L;
    return c;
}

/* A head's inputs in a chunk: dtb[l] = dt_l, ab[l] = dt_l A, ub[l] = dt_l x_l (L x P,
   contiguous), zeros past the valid tokens. xh, dth: the chunk's first token of the head. */
static inline void head_inputs(int64_t L, int64_t P, int64_t valid, const float *xh, int64_t xt,
                               const float *dth, int64_t H, float A, float *dtb, float *ab,
                               float *ub) {
    for (int64_t l = 0; l < L; l++) {
        const float d = l < valid ? dth[l * H] : 0.0f;
        dtb[l] = d;
        ab[l] = d * A;
        float *ul = ub + l * P;
        if (l < valid) {
            const float *xl = xh + l * xt;
#pragma omp simd
            for (int64_t p = 0; p < P; p++) ul[p] = d * xl[p];
        } else {
            memset(ul, 0, P * sizeof(float));
        }
    }
}

/* Row l of the log-decays from row l - 1's: seg[s] = a_{s+1} + ... + a_l for s < l, seg[l] = 0,
   each a sum of the chunk's own terms (a difference of two cumulative sums would lose the
   small decays of recent tokens). al: a_l. */
static inline void next_row(int64_t l, float al, float *seg) {
#pragma omp simd
    for (int64_t s = 0; s < l; s++) seg[s] += al;
    seg[l] = 0.0f;
}

/* out (P) = sum over s in [s0, s1) of c[s * cs] rows[s * P ..]: a row of a small product. P is
   a literal at the call sites below, so the accumulator stays in registers. */
static inline void combine(int64_t P, int64_t s0, int64_t s1, const float *c, int64_t cs,
                           const float *rows, float *out) {
    float sum[P];
#pragma omp simd
    for (int64_t p = 0; p < P; p++) sum[p] = 0.0f;
    for (int64_t s = s0; s < s1; s++) {
        const float cv = c[s * cs], *r = rows + s * P;
#pragma omp simd
        for (int64_t p = 0; p < P; p++) sum[p] += cv * r[p];
    }
    memcpy(out, sum, P * sizeof(float));
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

/* One head of one chunk, forward (see ssd_chunk_forward). yh: rows H P floats apart. */
static inline void head_forward(int64_t L, int64_t P, int64_t H, int64_t Hg, int64_t valid,
                                const float *xh, int64_t xt, const float *dth, float A,
                                const float *Sk, float *yh, float *Eh, float *Vh, float *buf) {
    float *ub = buf, *dtb = ub + L * P, *ab = dtb + L, *seg = ab + L, *m = seg + L;
    head_inputs(L, P, valid, xh, xt, dth, H, A, dtb, ab, ub);
    float cum = 0.0f;
    for (int64_t l = 0; l < L; l++) {
        cum += ab[l];
        Eh[l * Hg] = expf(cum);
        next_row(l, ab[l], seg);
#pragma omp simd
        for (int64_t s = 0; s <= l; s++) m[s] = Sk[l * L + s] * expf(seg[s]);
        combine(P, 0, l + 1, m, 1, ub, yh + l * H * P);
    }
    for (int64_t s = 0; s < L; s++) {  /* seg: the last row, the decays to the chunk's end */
        const float ws = expf(seg[s]);
        float *vs = Vh + s * Hg * P;
#pragma omp simd
        for (int64_t p = 0; p < P; p++) vs[p] = ub[s * P + p] * ws;
    }
}

/* Chunks k0 <= k < k1 of K = b n, each of L tokens, for one group's Hg heads of P channels;
   x (b, T, H, P) with strides xb, xt for sequences and tokens; dt (b, T, H); A (H); S
   (K, L, L): C B^T per chunk. Writes y (b, n L, H, P): each chunk's own share of the output;
   E (K, L, Hg): exp(a_0 + ... + a_l); V (K, L, Hg P): u = dt x decayed to the chunk's last
   token. Returns 1 where its buffers could not be allocated, else 0. */
int ssd_chunk_forward(int64_t K, int64_t L, int64_t Hg, int64_t P, int64_t n, int64_t T,
                      int64_t H, int64_t k0, int64_t k1, const float *x, int64_t xb,
                      int64_t xt, const float *dt, const float *A, const float *S, float *y,
                      float *E, float *V) {
    /* on the heap: a long chunk's buffers would not fit a thread's stack */
    float *buf = malloc((L * P + 4 * L) * sizeof(float));
    if (!buf) return 1;
    for (int64_t k = k0; k < k1; k++) {
        const chunk_t c = chunk_of(k, n, L, T);
        for (int64_t h = 0; h < Hg; h++) {
            const float *xh = x + c.i * xb + c.t0 * xt + h * P;
            const float *dth = dt + (c.i * T + c.t0) * H + h;
            float *yh = y + (c.i * n * L + c.t0) * H * P + h * P;
            float *Eh = E + k * L * Hg + h, *Vh = V + k * L * Hg * P + h * P;
            if (P == 64)
                head_forward(L, 64, H, Hg, c.valid, xh, xt, dth, A[h], S + k * L * L, yh, Eh,
                             Vh, buf);
            else
                head_forward(L, P, H, Hg, c.valid, xh, xt, dth, A[h], S + k * L * L, yh, Eh,
                             Vh, buf);
        }
    }
    free(buf);
    return 0;
}

/* The backward's inputs from y's gradient dy (b, T, H, P), strides dyb, dyt, for chunks
   k0 <= k < k1: dZ (K, L, Hg P) = E dy, the gradient of Z = C h_start^T (y's share of the
   start state is E Z); da (K, L, Hg) = dy . y_start, the gradient of cum through E. */
int ssd_chunk_backward_start(int64_t K, int64_t L, int64_t Hg, int64_t P, int64_t n,
                             int64_t T, int64_t k0, int64_t k1, const float *dy, int64_t dyb,
                             int64_t dyt, const float *E, const float *y_start, float *dZ,
                             float *da) {
    for (int64_t k = k0; k < k1; k++) {
        const chunk_t c = chunk_of(k, n, L, T);
        for (int64_t l = 0; l < L; l++) {
            const int64_t row = (k * L + l) * Hg;
            if (l >= c.valid) {
                memset(dZ + row * P, 0, Hg * P * sizeof(float));
                memset(da + row, 0, Hg * sizeof(float));
                continue;
            }
            const float *dyl = dy + c.i * dyb + (c.t0 + l) * dyt;
            for (int64_t h = 0; h < Hg; h++) {
                const float e = E[row + h], *g = dyl + h * P, *ys = y_start + (row + h) * P;
                float *z = dZ + (row + h) * P, dot = 0.0f;
#pragma omp simd reduction(+:dot)
                for (int64_t p = 0; p < P; p++) {
                    z[p] = e * g[p];
                    dot += g[p] * ys[p];
                }
                da[row + h] = dot;
            }
        }
    }
    return 0;
}

/* One head of one chunk, backward (see ssd_chunk_backward). */
static inline void head_backward(int64_t L, int64_t P, int64_t H, int64_t Hg, int64_t valid,
                                 const float *xh, int64_t xt, const float *dth, float A,
                                 const float *Sk, const float *dyh, int64_t dyt,
                                 const float *dVh, float *dah, float *dxh, float *ddth,
                                 float *dAh, float *dSk, float *Vh, float *buf) {
    const int64_t Lr = (L + 15) / 16 * 16;
    float *ub = buf, *ubT = ub + L * P, *dyb = ubT + P * Lr, *dub = dyb + L * P,
          *M = dub + L * P, *D = M + L * L, *X = D + L * L, *dtb = X + L * L, *ab = dtb + L,
          *seg = ab + L, *dcum = seg + L, *cols = dcum + L, *dm = cols + L;
    head_inputs(L, P, valid, xh, xt, dth, H, A, dtb, ab, ub);
    for (int64_t l = 0; l < L; l++) {
        if (l < valid) memcpy(dyb + l * P, dyh + l * dyt, P * sizeof(float));
        else memset(dyb + l * P, 0, P * sizeof(float));
    }
    for (int64_t s = 0; s < L; s++)
        for (int64_t p = 0; p < P; p++) ubT[p * Lr + s] = ub[s * P + p];
    for (int64_t l = 0; l < L; l++) {
        next_row(l, ab[l], seg);
#pragma omp simd
        for (int64_t s = 0; s <= l; s++) {
            D[l * L + s] = expf(seg[s]);
            M[l * L + s] = Sk[l * L + s] * D[l * L + s];
        }
        dcum[l] = dah[l * Hg];  /* cum's gradient from outside the chunk (the caller's) */
    }
    /* dM[l, s] = dy_l . u_s for s <= l; S's gradient dM D, and X[l, s] = dM M, the gradient of
       seg[l, s] = a_{s+1} + ... + a_l (s < l) */
    for (int64_t l = 0; l < L; l++) {
        dot_rows(P, Lr, l + 1, dyb + l * P, ubT, dm);
        float *xl = X + l * L;
#pragma omp simd
        for (int64_t s = 0; s < l; s++) {
            dSk[l * L + s] += dm[s] * D[l * L + s];
            xl[s] = dm[s] * M[l * L + s];
        }
        dSk[l * L + l] += dm[l];  /* seg[l, l] = 0: D = 1, and no log-decay in it */
    }
    const float *w = D + (L - 1) * L;  /* the decays to the chunk's end, exp(seg[L - 1, s]) */
    /* u's gradient: through V (u decayed to the end) and through y (M^T dy) */
    for (int64_t s = 0; s < L; s++) {
        const float *dvs = dVh + s * Hg * P, *us = ub + s * P;
        float *vs = Vh + s * Hg * P, *dus = dub + s * P;
        combine(P, s, L, M + s, L, dyb, dus);
        float dw = 0.0f;
#pragma omp simd reduction(+:dw)
        for (int64_t p = 0; p < P; p++) {
            dus[p] += dvs[p] * w[s];
            dw += dvs[p] * us[p];
            vs[p] = us[p] * w[s];
        }
        if (s < L - 1) X[(L - 1) * L + s] += dw * w[s];
    }
    /* a_k's gradient from the segments: the seg[l, s] with s < k <= l, summed as they are (a
       difference of row and column totals would cancel in float32 over a long chunk), plus
       the sum of cum_l's over l >= k. cols[s] holds X's column s summed over rows >= k. */
    memset(cols, 0, L * sizeof(float));
    float total = 0.0f, dA = 0.0f;
    for (int64_t k = L - 1; k >= 0; k--) {
        const float *xk = X + k * L;
#pragma omp simd
        for (int64_t s = 0; s < k; s++) cols[s] += xk[s];
        float inside = 0.0f;
#pragma omp simd reduction(+:inside)
        for (int64_t s = 0; s < k; s++) inside += cols[s];
        total += dcum[k];
        const float da = total + inside;
        /* back through a = dt A and u = dt x to x, dt and A */
        if (k >= valid) continue;
        const float *xl = xh + k * xt, *dul = dub + k * P, d = dtb[k];
        float *dxl = dxh + k * H * P, ddt = da * A;
#pragma omp simd reduction(+:ddt)
        for (int64_t p = 0; p < P; p++) {
            dxl[p] = dul[p] * d;
            ddt += dul[p] * xl[p];
        }
        ddth[k * H] = ddt;
        dA += da * d;
    }
    *dAh = dA;
}

/* The gradients inside chunks k0 <= k < k1 (shapes as ssd_chunk_forward's), from dy (b, T, H, P)
   with strides dyb, dyt, y's gradient, and dV (K, L, Hg P), V's (through the state each chunk
   leaves). da (K, L, Hg) holds, on entry, cum's gradient from outside the chunk (the caller's:
   ssd_chunk_backward_start's and the decay of the chunk's whole state). Writes dx (b, T, H, P),
   ddt (b, T, H), dA (K, Hg): each chunk's share of A's, dS (K, L, L), and V again (as the
   forward). Returns 1 where its buffers could not be allocated, else 0. */
int ssd_chunk_backward(int64_t K, int64_t L, int64_t Hg, int64_t P, int64_t n, int64_t T,
                       int64_t H, int64_t k0, int64_t k1, const float *x, int64_t xb,
                       int64_t xt, const float *dt, const float *A, const float *S,
                       const float *dy, int64_t dyb, int64_t dyt, const float *dV,
                       float *da, float *dx, float *ddt, float *dA, float *dS, float *V) {
    const int64_t Lr = (L + 15) / 16 * 16;
    /* ubT's rows padded with zeros to Lr, read by dot_rows in 16 lanes */
    float *buf = calloc(3 * L * P + P * Lr + 3 * L * L + 6 * L + Lr, sizeof(float));
    if (!buf) return 1;
    for (int64_t k = k0; k < k1; k++) {
        const chunk_t c = chunk_of(k, n, L, T);
        memset(dS + k * L * L, 0, L * L * sizeof(float));
        for (int64_t h = 0; h < Hg; h++) {
            const int64_t tok = c.i * T + c.t0;
            const float *xh = x + c.i * xb + c.t0 * xt + h * P, *dth = dt + tok * H + h;
            const float *dyh = dy + c.i * dyb + c.t0 * dyt + h * P;
            const int64_t at = k * L * Hg + h, vt = k * L * Hg * P + h * P;
            float *dah = da + at, *dxh = dx + tok * H * P + h * P;
            if (P == 64)
                head_backward(L, 64, H, Hg, c.valid, xh, xt, dth, A[h], S + k * L * L, dyh,
                              dyt, dV + vt, dah, dxh, ddt + tok * H + h, dA + k * Hg + h,
                              dS + k * L * L, V + vt, buf);
            else
                head_backward(L, P, H, Hg, c.valid, xh, xt, dth, A[h], S + k * L * L, dyh,
                              dyt, dV + vt, dah, dxh, ddt + tok * H + h, dA + k * Hg + h,
                              dS + k * L * L, V + vt, buf);
        }
    }
    free(buf);
    return 0;
}

#ifdef _OPENMP
int omp_get_thread_num(void);
int omp_get_num_threads(void);

/* For training: the three above over all K chunks, split between the threads of one OpenMP
   region of PyTorch's runtime (ckernel.py). */
int ssd_chunk_forward_team(int64_t threads, int64_t K, int64_t L, int64_t Hg, int64_t P,
                           int64_t n, int64_t T, int64_t H, const float *x, int64_t xb,
                           int64_t xt, const float *dt, const float *A, const float *S,
                           float *y, float *E, float *V) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        const int64_t p = omp_get_thread_num(), m = omp_get_num_threads();
        failed |= ssd_chunk_forward(K, L, Hg, P, n, T, H, K * p / m, K * (p + 1) / m, x, xb,
                                    xt, dt, A, S, y, E, V);
    }
    return failed;
}

int ssd_chunk_backward_start_team(int64_t threads, int64_t K, int64_t L, int64_t Hg, int64_t P,
                                  int64_t n, int64_t T, const float *dy, int64_t dyb,
                                  int64_t dyt, const float *E, const float *y_start, float *dZ,
                                  float *da) {
#pragma omp parallel num_threads(threads)
    {
        const int64_t p = omp_get_thread_num(), m = omp_get_num_threads();
        ssd_chunk_backward_start(K, L, Hg, P, n, T, K * p / m, K * (p + 1) / m, dy, dyb, dyt, E,
                                 y_start, dZ, da);
    }
    return 0;
}

int ssd_chunk_backward_team(int64_t threads, int64_t K, int64_t L, int64_t Hg, int64_t P,
                            int64_t n, int64_t T, int64_t H, const float *x, int64_t xb,
                            int64_t xt, const float *dt, const float *A, const float *S,
                            const float *dy, int64_t dyb, int64_t dyt, const float *dV,
                            float *da, float *dx, float *ddt, float *dA, float *dS, float *V) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        const int64_t p = omp_get_thread_num(), m = omp_get_num_threads();
        failed |= ssd_chunk_backward(K, L, Hg, P, n, T, H, K * p / m, K * (p + 1) / m, x, xb,
                                     xt, dt, A, S, dy, dyb, dyt, dV, da, dx, ddt, dA, dS, V);
    }
    return failed;
}
#endif
"""

# The chunk where the config leaves it open: at 128 tokens a layer's forward and backward took
# 5-10% less time than at 64 (`python reports/train-cpu/ssd-probe.py --chunk 128`, 1 x 256 to
# 1 x 4096 and 8 x 256 tokens): the products with the state, the same work whatever the chunk,
# run on longer matrices; 256 took 40% more, its quadratic work inside chunks outgrowing them.
CHUNK = 128

# The C functions' arguments: (name, integers before the range, then the rest, "i" an integer
# and "p" a pointer); the training forms (_team) take the threads first and no range.
_SIGNATURES = {
    "ssd_chunk_forward": (7, "pii" + "p" * 6),
    "ssd_chunk_backward_start": (6, "pii" + "p" * 4),
    "ssd_chunk_backward": (7, "pii" + "ppp" + "pii" + "p" * 7),
}


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("ssd_chunk", SOURCE, openmp=True)
    if library is not None and library.ssd_chunk_forward.argtypes is None:
        kinds = {"i": ctypes.c_int64, "p": ctypes.c_void_p}
        for name, (head, rest) in _SIGNATURES.items():
            function = getattr(library, name)
            function.restype = ctypes.c_int
            function.argtypes = [ctypes.c_int64] * (head + 2) + [kinds[c] for c in rest]
            if hasattr(library, f"{name}_team"):  # built with OpenMP
                team = getattr(library, f"{name}_team")
                team.restype = ctypes.c_int
                team.argtypes = [ctypes.c_int64] * (head + 1) + [kinds[c] for c in rest]
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x weight^T for matrices x (M, K), contiguous, and weight (N, K), either layout, in
    oneDNN's matrix multiply."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


def run_ranges(name: str, K: int, work: int, head: tuple, tail: tuple, training: bool) -> None:
    """The kernel `name` over the K chunks (split between threads), or MemoryError."""
    pointers = tuple(t.data_ptr() if isinstance(t, torch.Tensor) else t for t in tail)
    if any(split(_library(), name, channel_ranges(work, K), head, pointers, openmp=training)):
        raise MemoryError("the compiled SSD could not allocate its chunk buffers")


def _heads(t: torch.Tensor, P: int) -> torch.Tensor:
    """t (b, T, H, P) with each head's P channels contiguous (a view of a wider projection
    stays a view): the kernels read it by its sequence and token strides."""
    return t if t.stride(-1) == 1 and t.stride(-2) == P else t.contiguous()


def _chunked(t: torch.Tensor, n: int, L: int) -> torch.Tensor:
    """B or C (b, T, G, N) as (G, b n, L, N) contiguous, zeros past T."""
    b, T, G, N = t.shape
    out = t.new_zeros(G, b, n * L, N)
    out[:, :, :T] = t.movedim(2, 0)
    return out.view(G, b * n, L, N)


class _SSD(torch.autograd.Function):
    # float32 throughout, autocast or not: the C loop reads the products' outputs as floats
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, x, dt, A, B, C, state, chunk_size, training):
        b, T, H, P = x.shape
        G, N = B.shape[2:]
        Hg, L = H // G, chunk_size
        n = -(-T // L)
        K = b * n
        x, dt, A = _heads(x, P), dt.contiguous(), A.contiguous()
        Bg, Cg = _chunked(B, n, L), _chunked(C, n, L)  # (G, K, L, N)
        Bt, Ct = Bg.transpose(2, 3).contiguous(), Cg.transpose(2, 3).contiguous()
        S = torch.matmul(Cg, Bt)  # (G, K, L, L)
        # The state (b, H, P, N) as each group's (N, Hg P): the products' layout.
        h0 = state.reshape(b, G, Hg * P, N).transpose(2, 3).movedim(1, 0).contiguous()
        y = torch.empty(b, n * L, H, P)
        E = torch.empty(G, K, L, Hg)
        V, y_start = torch.empty(G, K, L, Hg * P), torch.empty(G, K, L, Hg * P)
        starts = torch.empty(G, K, N, Hg * P)  # the state at each chunk's start
        last = torch.empty(G, b, N, Hg * P)
        for g in range(G):
            heads = slice(g * Hg, (g + 1) * Hg)
            run_ranges("ssd_chunk_forward", K, K * L * L * Hg * P, (K, L, Hg, P, n, T, H),
                 (x[:, :, heads], x.stride(0), x.stride(1), dt[:, :, heads], A[heads], S[g],
                  y[:, :, heads], E[g], V[g]), training)
            decays = E[g, :, -1].repeat_interleave(P, dim=-1)  # (K, Hg P): exp(cum_{L-1})
            for i in range(b):  # h_next = B^T V + decay h_start
                starts[g, i * n] = h0[g, i]
                for k in range(i * n, (i + 1) * n):
                    h_next = starts[g, k + 1] if k + 1 < (i + 1) * n else last[g, i]
                    torch.addcmul(_product(Bt[g, k], V[g, k].t()), starts[g, k], decays[k],
                                  out=h_next)
            for k in range(K):  # E_l (C_l . h_start)
                torch.mul(_product(Cg[g, k], starts[g, k].t()).view(L, Hg, P),
                          E[g, k, :, :, None], out=y_start[g, k].view(L, Hg, P))
            y.view(K, L, G, Hg * P)[:, :, g] += y_start[g]
        if training:
            ctx.save_for_backward(x, dt, A, Bg, Cg, Bt, Ct, S, E, starts, y_start)
            ctx.shape = (b, T, H, P, G, N, L, n)
        return y[:, :T], last.transpose(2, 3).movedim(0, 1).reshape(b, H, P, N)

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dy, dlast):
        x, dt, A, Bg, Cg, Bt, Ct, S, E, starts, y_start = ctx.saved_tensors
        b, T, H, P, G, N, L, n = ctx.shape
        Hg, K = H // G, b * n
        dy = _heads(dy, P)
        # (autograd gives zeros for an output the loss did not read: never None here)
        dlast = dlast.reshape(b, G, Hg * P, N).transpose(2, 3).movedim(1, 0)
        dZ, da = torch.empty_like(y_start), torch.empty_like(E)
        dstates = torch.empty_like(starts)  # the gradient of the state each chunk leaves
        dh0 = torch.empty(G, b, N, Hg * P)
        dx, ddt = torch.empty(b, T, H, P), torch.empty(b, T, H)
        dA, dS, V = torch.empty(G, K, Hg), torch.empty_like(S), torch.empty_like(y_start)
        dB, dC = torch.empty_like(Bg), torch.empty_like(Cg)
        for g in range(G):
            heads = slice(g * Hg, (g + 1) * Hg)
            run_ranges("ssd_chunk_backward_start", K, K * L * Hg * P, (K, L, Hg, P, n, T),
                 (dy[:, :, heads], dy.stride(0), dy.stride(1), E[g], y_start[g], dZ[g], da[g]),
                 training=True)
            decays = E[g, :, -1].repeat_interleave(P, dim=-1)
            for i in range(b):  # through h_next = decay h_start + B^T V, and Z = C h_start^T
                dstates[g, (i + 1) * n - 1] = dlast[g, i]
                for k in reversed(range(i * n, (i + 1) * n)):
                    dh_start = dstates[g, k - 1] if k > i * n else dh0[g, i]
                    torch.addcmul(_product(Ct[g, k], dZ[g, k].t()), dstates[g, k], decays[k],
                                  out=dh_start)
            # the decay of each chunk's whole state: d(decay) = dh_next . h_start
            d_decay = (dstates[g] * starts[g]).view(K, N, Hg, P).sum((1, 3))
            da[g, :, -1] += d_decay * E[g, :, -1]
            dV = torch.stack([_product(Bg[g, k], dstates[g, k].t()) for k in range(K)])
            run_ranges("ssd_chunk_backward", K, 3 * K * L * L * Hg * P, (K, L, Hg, P, n, T, H),
                 (x[:, :, heads], x.stride(0), x.stride(1), dt[:, :, heads], A[heads], S[g],
                  dy[:, :, heads], dy.stride(0), dy.stride(1), dV, da[g], dx[:, :, heads],
                  ddt[:, :, heads], dA[g], dS[g], V[g]), training=True)
            # B's gradient: V dh_next (the state each chunk leaves) + dS^T C; C's: dZ h_start
            # + dS B
            torch.baddbmm(torch.stack([_product(V[g, k], dstates[g, k]) for k in range(K)]),
                          dS[g].transpose(1, 2), Cg[g], out=dB[g])
            torch.baddbmm(torch.stack([_product(dZ[g, k], starts[g, k]) for k in range(K)]),
                          dS[g], Bg[g], out=dC[g])
        dB, dC = (t.view(G, b, n * L, N)[:, :, :T].movedim(0, 2) for t in (dB, dC))
        dstate = dh0.movedim(0, 1).transpose(2, 3).reshape(b, H, P, N)
        return dx, ddt, dA.sum(1).flatten(), dB, dC, dstate, None, None


@torch.compiler.disable  # torch.compile runs it between its graphs: it cannot trace the C call
def ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        state: torch.Tensor, chunk_size: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """zoo.mamba2.ssd_chunked for float32 CPU tensors, with gradients for all six inputs:
    x (b, T, H, P); dt (b, T, H) > 0; A (H,) < 0; B, C (b, T, G, N); state (b, H, P, N). Returns
    y (b, T, H, P) and the final state."""
    tensors = (x, dt, A, B, C, state)
    ckernel.checked(_library(), "the compiled SSD", tensors)
    b, T, H, P = x.shape
    G, N = B.shape[2:]
    if (dt.shape != (b, T, H) or A.shape != (H,) or B.shape != (b, T, G, N)
            or C.shape != B.shape or state.shape != (b, H, P, N) or H % G):
        raise ValueError(f"shapes: x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)},"
                         f" B {tuple(B.shape)}, C {tuple(C.shape)}, state {tuple(state.shape)}:"
                         " expected (b, T, H, P), (b, T, H), (H,), (b, T, G, N) twice with G "
                         "dividing H, (b, H, P, N)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, not {chunk_size}")
    if T == 0:  # no chunk to run: nothing out, the state as it came
        return x.new_zeros(b, 0, H, P), state.clone()
    training = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return _SSD.apply(x, dt, A, B, C, state, chunk_size, training)
