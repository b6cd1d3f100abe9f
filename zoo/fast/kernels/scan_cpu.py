"""Mamba's selective scan as a small C loop on the CPU, with its backward for training.

`zoo.mamba.selective_scan_recurrent` is the paper's recurrence in PyTorch, one token at a time:
a handful of tensor operations per token and layer whose dispatch is the cost. The chunked scan
(`selective_scan_chunked`) removes the loop over tokens but builds (chunk, d_inner, N) tables
and composes them log2(chunk) times: at 2048 tokens two thirds of Mamba small's forward went
to its concatenations, products and exponentials. This module runs the recurrence itself,
compiled from the C source below: per token and channel, the N state entries decay by
exp(delta A), take delta x B and are read out by C. The vector lanes run over 16 channels at a
time, the state of those channels (N, 16) in registers and cache, so the read-out by C is a sum
of N vectors rather than one across lanes per channel and token; exp is inlined (ckernel.EXP):
glibc's vector exp, a call per vector, had been about half the forward's time. For fewer than 8
tokens (decoding) the lanes run over a channel's N entries instead, the state used where it
lies. The channels are independent, so a call splits them between the threads PyTorch uses
(ctypes releases the GIL during the call).

`scan` runs it without gradients (inference: prefill and decoding); `scan_with_grad` is
differentiable, an autograd Function whose backward is `selective_scan_backward` below: it
recomputes the states chunk by chunk (the forward keeps the state at every 64th token) rather
than storing a (T, d_inner, N) history, and sweeps back in time. Its gradients equal the float64
recurrence's to float32 rounding (tests/zoo/test_scan_cpu.py). `gated_scan` and
`gated_scan_with_grad` take the rest of Mamba's selective SSM into the same pass, as mamba_ssm's
selective_scan_fn does: the step sizes' softplus (they take delta before it) and the skip and
gate, (y + D x) SiLU(z), their gradients taken in the backward's sweep: PyTorch made several
passes over (T, d_inner) tensors each way for them. The source is compiled on first
use with the system's C compiler and cached (ckernel.py); zoo.fast's "scan" route runs
it, and without a compiler `available()` is False and the model keeps its PyTorch paths.
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from zoo.fast.kernels import ckernel
from zoo.fast.kernels.ckernel import channel_ranges, run_ranges, split, team

# The kernels of commits before the split moved to ckernel imported it from here, as these
# names: the probes that load a kernel as it was at a commit (reports/train-cpu) need them.
_channel_ranges, _run = channel_ranges, run_ranges

SOURCE = ckernel.EXP + r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Channels go in blocks of W, the lanes of the vector loops: a block's state is (N, W), every
   operation of a token's update runs over W channels at once, and the read-out by C sums over
   n in those lanes (no sums across lanes, which vectors over N need twice per token and
   channel). Time goes in chunks of K tokens, and within a chunk the blocks in turn, so that a
   chunk's rows of x, delta and y stay in the cache while each block reads its W columns. */
#define W 16

/* Mamba's skip and gate around the scan, where a caller passes them (z not NULL): the
   read-out s becomes y = (s + D x) SiLU(z), SiLU(z) = z sigmoid(z), one pass instead of
   PyTorch's several over (T, D) tensors each way. */
static inline float sigmoid(float v) { return 1.0f / (1.0f + exp_inline(-v)); }
static inline float gate(float s, float x, float Dd, float z) {
    return (s + Dd * x) * z * sigmoid(z);
}

/* The gated form also takes delta before its softplus (mamba_ssm's delta_softplus): log(1 +
   e^v) = max(v, 0) + log1p(e^-|v|), log1p(u) = 2 atanh(u / (2 + u)) by its series to the 15th
   power (u / (2 + u) <= 1/3: the next term is under float's rounding); v above 20 as v, as
   PyTorch's softplus. Its derivative is sigmoid(v), 1 above 20. */
static inline float softplus(float v) {
    const float u = exp_inline(v < 0.0f ? v : -v), s = u / (2.0f + u), s2 = s * s;
    float p = 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return v > 20.0f ? v : (v > 0.0f ? v : 0.0f) + 2.0f * s * p;
}
static inline float softplus_slope(float v) { return v > 20.0f ? 1.0f : sigmoid(v); }
#ifndef FEW_TOKENS
#define FEW_TOKENS 8
#endif

/* One block of nw <= W channels over tokens [t0, t1) of one sequence: x, delta, y, ys, z
   point at that sequence's row 0, column c0 (row stride D; z's zt); Bm, Cm at its row 0 (row
   stride N); A and h (the state, updated) at channel c0's row of (D, N), Dskip at channel c0; kept,
   if not NULL, receives the state at t0 in h's layout. Without z, y is the read-out s; with
   it, y = (s + Dskip x) SiLU(z), s kept in ys if that is not NULL (see gate). */
static inline __attribute__((always_inline)) void
forward_block(int64_t D, int64_t N, int64_t nw, int64_t t0, int64_t t1, const float *x,
              const float *delta, const float *A, const float *Bm, const float *Cm, float *y,
              float *h, float *kept, const float *Dskip, const float *z, int64_t zt, float *ys) {
    float hs[N * W], Aw[N * W], Dw[W];
    for (int64_t w = 0; w < nw; w++) Dw[w] = z ? Dskip[w] : 0.0f;
    for (int64_t w = 0; w < nw; w++)
        for (int64_t n = 0; n < N; n++) {
            hs[n * W + w] = h[w * N + n];
            Aw[n * W + w] = A[w * N + n];
            if (kept) kept[w * N + n] = h[w * N + n];
        }
    for (int64_t t = t0; t < t1; t++) {
        const float *xr = x + t * D, *dr = delta + t * D, *Bt_ = Bm + t * N, *Ct = Cm + t * N;
        float dt[W], u[W], acc[W];
#pragma omp simd
        for (int64_t w = 0; w < nw; w++) {
            dt[w] = z ? softplus(dr[w]) : dr[w];
            u[w] = dt[w] * xr[w];
            acc[w] = 0.0f;
        }
        for (int64_t n = 0; n < N; n++) {
            const float b = Bt_[n], c = Ct[n];
#pragma omp simd
            for (int64_t w = 0; w < nw; w++) {
                const float s = exp_inline(dt[w] * Aw[n * W + w]) * hs[n * W + w] + u[w] * b;
                hs[n * W + w] = s;
                acc[w] += s * c;
            }
        }
        float *yr = y + t * D;
        if (z) {
            const float *zr = z + t * zt;
            if (ys)
                for (int64_t w = 0; w < nw; w++) ys[t * D + w] = acc[w];
#pragma omp simd
            for (int64_t w = 0; w < nw; w++) yr[w] = gate(acc[w], xr[w], Dw[w], zr[w]);
        } else {
#pragma omp simd
            for (int64_t w = 0; w < nw; w++) yr[w] = acc[w];
        }
    }
    for (int64_t w = 0; w < nw; w++)
        for (int64_t n = 0; n < N; n++) h[w * N + n] = hs[n * W + w];
}

/* Few tokens (decoding): the vector lanes over a channel's N state entries instead, the
   state used in its (D, N) layout where it lies, rather than moved into blocks' (N, W) and back
   for a token or two. The same contract as scan_forward below. */
static inline __attribute__((always_inline)) void
scan_forward_few(int64_t Bt, int64_t T, int64_t D, int64_t N, int64_t d0, int64_t d1,
                 const float *x, const float *delta, const float *A, const float *Bm,
                 const float *Cm, float *y, float *h, int64_t K, float *starts,
                 const float *Dskip, const float *z, int64_t zt, float *ys) {
    const int64_t chunks = (T + K - 1) / K;
    for (int64_t b = 0; b < Bt; b++) {
        for (int64_t t = 0; t < T; t++) {
            const int64_t row = b * T + t;
            const float *Bt_ = Bm + row * N, *Ct = Cm + row * N;
            float *kept = (starts && t % K == 0) ? starts + (b * chunks + t / K) * D * N : 0;
            for (int64_t d = d0; d < d1; d++) {
                const float dt = z ? softplus(delta[row * D + d]) : delta[row * D + d];
                const float u = dt * x[row * D + d], *Ad = A + d * N;
                float *hd = h + (b * D + d) * N;
                float acc = 0.0f;
                if (kept)
                    for (int64_t n = 0; n < N; n++) kept[d * N + n] = hd[n];
#pragma omp simd reduction(+:acc)
                for (int64_t n = 0; n < N; n++) {
                    float s = exp_inline(dt * Ad[n]) * hd[n] + u * Bt_[n];
                    hd[n] = s;
                    acc += s * Ct[n];
                }
                if (z) {
                    if (ys) ys[row * D + d] = acc;
                    acc = gate(acc, x[row * D + d], Dskip[d], z[row * zt + d]);
                }
                y[row * D + d] = acc;
            }
        }
    }
}

/* x, delta, y: (Bt, T, D); A: (D, N); Bm, Cm: (Bt, T, N); h: (Bt, D, N), the state, updated in
   place. Float32, row-major. Channels d0 <= d < d1 only: a call per thread. With starts (not
   NULL; (Bt, ceil(T / K), D, N)), the state at the start of every chunk of K tokens is kept
   there, for the backward. With z (not NULL; (Bt, T, D) with rows zt floats apart, sequences
   T zt: a view of half of Mamba's in_proj output) and Dskip (D), Mamba's whole selective SSM:
   delta is taken before its softplus (see softplus), and y is gated (see gate), its read-out
   kept in ys ((Bt, T, D)) where that is not NULL. */
static inline __attribute__((always_inline)) void
scan_forward(int64_t Bt, int64_t T, int64_t D, int64_t N, int64_t d0, int64_t d1,
             const float *x, const float *delta, const float *A, const float *Bm,
             const float *Cm, float *y, float *h, int64_t K, float *starts,
             const float *Dskip, const float *z, int64_t zt, float *ys) {
    const int64_t chunks = (T + K - 1) / K;
    for (int64_t b = 0; b < Bt; b++) {
        const int64_t rows = b * T * D;
        for (int64_t t0 = 0; t0 < T; t0 += K) {
            const int64_t t1 = (t0 + K < T) ? t0 + K : T;
            for (int64_t c0 = d0; c0 < d1; c0 += W) {
                float *kept = starts ? starts + ((b * chunks + t0 / K) * D + c0) * N : 0;
                const float *args_x = x + rows + c0, *args_delta = delta + rows + c0;
                float *hb = h + (b * D + c0) * N;
                const float *zb = z ? z + b * T * zt + c0 : 0, *Db = z ? Dskip + c0 : 0;
                float *ysb = ys ? ys + rows + c0 : 0;
                if (d1 - c0 >= W)
                    forward_block(D, N, W, t0, t1, args_x, args_delta, A + c0 * N,
                                  Bm + b * T * N, Cm + b * T * N, y + rows + c0, hb, kept, Db,
                                  zb, zt, ysb);
                else
                    forward_block(D, N, d1 - c0, t0, t1, args_x, args_delta, A + c0 * N,
                                  Bm + b * T * N, Cm + b * T * N, y + rows + c0, hb, kept, Db,
                                  zb, zt, ysb);
            }
        }
    }
}

/* N is a compile-time constant for the N = 16 of every released Mamba, so that the loops over
   the state's entries unroll. */
void selective_scan_forward(int64_t Bt, int64_t T, int64_t D, int64_t N, int64_t d0, int64_t d1,
                            const float *x, const float *delta, const float *A,
                            const float *Bm, const float *Cm, float *y, float *h, int64_t K,
                            float *starts, const float *Dskip, const float *z, int64_t zt,
                            float *ys) {
    if (T < FEW_TOKENS && N == 16)
        scan_forward_few(Bt, T, D, 16, d0, d1, x, delta, A, Bm, Cm, y, h, K, starts, Dskip, z, zt,
                         ys);
    else if (T < FEW_TOKENS)
        scan_forward_few(Bt, T, D, N, d0, d1, x, delta, A, Bm, Cm, y, h, K, starts, Dskip, z, zt,
                         ys);
    else if (N == 16)
        scan_forward(Bt, T, D, 16, d0, d1, x, delta, A, Bm, Cm, y, h, K, starts, Dskip, z, zt, ys);
    else
        scan_forward(Bt, T, D, N, d0, d1, x, delta, A, Bm, Cm, y, h, K, starts, Dskip, z, zt, ys);
}

/* The gradients of selective_scan_forward. With a_t = exp(delta_t A), u_t = delta_t x_t,
   h_t = a_t h_{t-1} + u_t B_t and y_t = C_t . h_t, going back in time with
   G_t = dL/dh_t = gy_t C_t + a_{t+1} G_{t+1} (G_T-1 starting from gh, the final state's):
     dL/dC_t += gy_t h_t,   dL/dB_t += u_t G_t,   du_t = B_t . G_t,
     dL/dx_t = du_t delta_t,   dL/ddelta_t = du_t x_t + sum_n A G_t h_{t-1} a_t,
     dL/dA += delta_t G_t h_{t-1} a_t,   dL/dh_0 = a_0 G_0 (the given state's).
   The states are recomputed, not stored: the forward kept the state at the start of every
   chunk of K tokens (starts). Chunks go last first; in each, every block of channels
   recomputes its states and decays into (K, N, W) buffers and sweeps them backwards, its G
   (N, W) carried from chunk to chunk. dL/dB_t and dL/dC_t are sums over channels: each block
   adds its lanes into (K, N, W) buffers, summed across the lanes once the chunk's blocks are
   done. */

/* One block of nw channels over tokens [t0, t1): pointers as forward_block's, start at this
   chunk's kept state, gx, gdelta, gy, gz as x; gA at channel c0's row of (D, N), added to;
   G (N, W); gBw, gCw, states, decays (K, N, W); steps (K, W), the step sizes the recompute
   works out (after the softplus) and the sweep reads. With z (the gated form), gy is the gated
   output's gradient: the read-out's is gy SiLU(z), and z's, x's extra and D's (gD at channel
   c0, added to) follow from the read-out ys the forward kept. */
static inline __attribute__((always_inline)) void
backward_block(int64_t D, int64_t N, int64_t nw, int64_t t0, int64_t t1, const float *x,
               const float *delta, const float *A, const float *Bm, const float *Cm,
               const float *start, const float *gy, float *gx, float *gdelta, float *gA,
               float *G, float *gBw, float *gCw, float *states, float *decays, float *steps,
               const float *Dskip, const float *z, int64_t zt, const float *ys, float *gz,
               float *gD) {
    float Aw[N * W], gAw[N * W], h0[N * W], Dw[W], gDw[W];
    for (int64_t w = 0; w < nw; w++) {
        Dw[w] = z ? Dskip[w] : 0.0f;
        gDw[w] = 0.0f;
    }
    for (int64_t w = 0; w < nw; w++)
        for (int64_t n = 0; n < N; n++) {
            Aw[n * W + w] = A[w * N + n];
            h0[n * W + w] = start[w * N + n];
            gAw[n * W + w] = 0.0f;
        }
    const float *prev = h0;
    for (int64_t t = t0; t < t1; t++) {
        float *cur = states + (t - t0) * N * W, *a = decays + (t - t0) * N * W;
        float *dt = steps + (t - t0) * W;
        const float *xr = x + t * D, *dr = delta + t * D;
        float u[W];
#pragma omp simd
        for (int64_t w = 0; w < nw; w++) {
            dt[w] = z ? softplus(dr[w]) : dr[w];
            u[w] = dt[w] * xr[w];
        }
        for (int64_t n = 0; n < N; n++) {
            const float b = Bm[t * N + n];
#pragma omp simd
            for (int64_t w = 0; w < nw; w++) {
                a[n * W + w] = exp_inline(dt[w] * Aw[n * W + w]);
                cur[n * W + w] = a[n * W + w] * prev[n * W + w] + u[w] * b;
            }
        }
        prev = cur;
    }
    for (int64_t t = t1 - 1; t >= t0; t--) {
        const int64_t i = t - t0;
        const float *cur = states + i * N * W, *a = decays + i * N * W;
        const float *before = i ? states + (i - 1) * N * W : h0;
        float *gBt = gBw + i * N * W, *gCt = gCw + i * N * W;
        const float *xr = x + t * D, *dr = delta + t * D, *gr = gy + t * D, *dt = steps + i * W;
        float xv[W], u[W], g[W], du[W], dd[W];
#pragma omp simd
        for (int64_t w = 0; w < nw; w++) {
            xv[w] = xr[w];
            u[w] = dt[w] * xv[w];
            g[w] = gr[w];
            du[w] = dd[w] = 0.0f;
        }
        if (z) {  /* y = (s + D x) z sigmoid(z): s's gradient, z's, D's */
            const float *zr = z + t * zt, *sr = ys + t * D;
            float *gzr = gz + t * D;
#pragma omp simd
            for (int64_t w = 0; w < nw; w++) {
                const float zz = zr[w], sg = sigmoid(zz);
                gzr[w] = g[w] * (sr[w] + Dw[w] * xv[w]) * sg * (1.0f + zz * (1.0f - sg));
                g[w] *= zz * sg;
                gDw[w] += g[w] * xv[w];
            }
        }
        for (int64_t n = 0; n < N; n++) {
            const float b = Bm[t * N + n], c = Cm[t * N + n];
#pragma omp simd
            for (int64_t w = 0; w < nw; w++) {
                const int64_t k = n * W + w;
                const float Gn = g[w] * c + G[k];
                const float da = Gn * before[k] * a[k];
                gCt[k] += g[w] * cur[k];
                gBt[k] += Gn * u[w];
                du[w] += Gn * b;
                dd[w] += da * Aw[k];
                gAw[k] += da * dt[w];
                G[k] = a[k] * Gn;
            }
        }
        float *gdr = gdelta + t * D, *gxr = gx + t * D;
#pragma omp simd
        for (int64_t w = 0; w < nw; w++) {
            gdr[w] = (dd[w] + du[w] * xv[w]) * (z ? softplus_slope(dr[w]) : 1.0f);
            gxr[w] = du[w] * dt[w] + g[w] * Dw[w];
        }
    }
    for (int64_t w = 0; w < nw; w++)
        for (int64_t n = 0; n < N; n++) gA[w * N + n] += gAw[n * W + w];
    if (z)
        for (int64_t w = 0; w < nw; w++) gD[w] += gDw[w];
}

/* For channels d0 <= d < d1: gx, gdelta, gh0 (and with z, gz) are written; gA (D, N) and
   gD (D) are added to for these channels; gB, gC (Bt, T, N) are added to, a buffer per thread
   (the caller sums them). work: (ceil((d1 - d0) / W) + 4 K) N W + K W floats. */
static inline __attribute__((always_inline)) void
scan_backward(int64_t Bt, int64_t T, int64_t D, int64_t N, int64_t d0, int64_t d1, int64_t K,
              const float *x, const float *delta, const float *A, const float *Bm,
              const float *Cm, const float *starts, const float *gy, const float *gh,
              float *gx, float *gdelta, float *gA, float *gB, float *gC, float *gh0,
              float *work, const float *Dskip, const float *z, int64_t zt, const float *ys,
              float *gz, float *gD) {
    const int64_t chunks = (T + K - 1) / K, blocks = (d1 - d0 + W - 1) / W;
    float *Gs = work, *states = Gs + blocks * N * W, *decays = states + K * N * W;
    float *gBw = decays + K * N * W, *gCw = gBw + K * N * W, *steps = gCw + K * N * W;
    for (int64_t b = 0; b < Bt; b++) {
        const int64_t rows = b * T * D;
        for (int64_t k = 0; k < blocks * N * W; k++) Gs[k] = 0.0f;
        if (gh)
            for (int64_t d = d0; d < d1; d++)
                for (int64_t n = 0; n < N; n++)
                    Gs[((d - d0) / W * N + n) * W + (d - d0) % W] = gh[(b * D + d) * N + n];
        for (int64_t chunk = chunks - 1; chunk >= 0; chunk--) {
            const int64_t t0 = chunk * K, t1 = (t0 + K < T) ? t0 + K : T;
            for (int64_t k = 0; k < (t1 - t0) * N * W; k++) gBw[k] = gCw[k] = 0.0f;
            for (int64_t c0 = d0; c0 < d1; c0 += W) {
                const float *start = starts + ((b * chunks + chunk) * D + c0) * N;
                float *G = Gs + (c0 - d0) / W * N * W;
                const float *zb = z ? z + b * T * zt + c0 : 0, *ysb = z ? ys + rows + c0 : 0;
                const float *Db = z ? Dskip + c0 : 0;
                float *gzb = z ? gz + rows + c0 : 0, *gDb = z ? gD + c0 : 0;
                if (d1 - c0 >= W)
                    backward_block(D, N, W, t0, t1, x + rows + c0, delta + rows + c0, A + c0 * N,
                                   Bm + b * T * N, Cm + b * T * N, start, gy + rows + c0,
                                   gx + rows + c0, gdelta + rows + c0, gA + c0 * N, G, gBw, gCw,
                                   states, decays, steps, Db, zb, zt, ysb, gzb, gDb);
                else
                    backward_block(D, N, d1 - c0, t0, t1, x + rows + c0, delta + rows + c0,
                                   A + c0 * N, Bm + b * T * N, Cm + b * T * N, start,
                                   gy + rows + c0, gx + rows + c0, gdelta + rows + c0,
                                   gA + c0 * N, G, gBw, gCw, states, decays, steps, Db, zb, zt,
                                   ysb, gzb, gDb);
            }
            for (int64_t t = t0; t < t1; t++)
                for (int64_t n = 0; n < N; n++) {
                    const int64_t at = ((t - t0) * N + n) * W;
                    const float *lb = gBw + at, *lc = gCw + at;
                    float sb = 0.0f, sc = 0.0f;
#pragma omp simd reduction(+:sb, sc)
                    for (int64_t w = 0; w < W; w++) {
                        sb += lb[w];
                        sc += lc[w];
                    }
                    gB[(b * T + t) * N + n] += sb;
                    gC[(b * T + t) * N + n] += sc;
                }
        }
        for (int64_t d = d0; d < d1; d++)
            for (int64_t n = 0; n < N; n++)
                gh0[(b * D + d) * N + n] = Gs[((d - d0) / W * N + n) * W + (d - d0) % W];
    }
}

/* Returns 1 when the work arrays cannot be allocated, else 0. */
int selective_scan_backward(int64_t Bt, int64_t T, int64_t D, int64_t N, int64_t d0, int64_t d1,
                            int64_t K, const float *x, const float *delta, const float *A,
                            const float *Bm, const float *Cm, const float *starts,
                            const float *gy, const float *gh, float *gx, float *gdelta,
                            float *gA, float *gB, float *gC, float *gh0, const float *Dskip,
                            const float *z, int64_t zt, const float *ys, float *gz, float *gD) {
    float *work = malloc(sizeof(float) * (((d1 - d0 + W - 1) / W + 4 * K) * N * W + K * W));
    if (!work)
        return 1;
    if (N == 16)
        scan_backward(Bt, T, D, 16, d0, d1, K, x, delta, A, Bm, Cm, starts, gy, gh, gx, gdelta,
                      gA, gB, gC, gh0, work, Dskip, z, zt, ys, gz, gD);
    else
        scan_backward(Bt, T, D, N, d0, d1, K, x, delta, A, Bm, Cm, starts, gy, gh, gx, gdelta,
                      gA, gB, gC, gh0, work, Dskip, z, zt, ys, gz, gD);
    free(work);
    return 0;
}

#ifdef _OPENMP
int omp_get_thread_num(void);
int omp_get_num_threads(void);

/* For training: the two above over all D channels, split between the threads of one OpenMP
   region of PyTorch's runtime (ckernel.py); gB, gC: a (Bt, T, N) buffer per thread. */
void selective_scan_forward_team(int64_t threads, int64_t Bt, int64_t T, int64_t D, int64_t N,
                                 const float *x, const float *delta, const float *A,
                                 const float *Bm, const float *Cm, float *y, float *h, int64_t K,
                                 float *starts, const float *Dskip, const float *z, int64_t zt,
                                 float *ys) {
#pragma omp parallel num_threads(threads)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads();
        selective_scan_forward(Bt, T, D, N, D * p / n, D * (p + 1) / n, x, delta, A, Bm, Cm, y,
                               h, K, starts, Dskip, z, zt, ys);
    }
}

int selective_scan_backward_team(int64_t threads, int64_t Bt, int64_t T, int64_t D, int64_t N,
                                 int64_t K, const float *x, const float *delta, const float *A,
                                 const float *Bm, const float *Cm, const float *starts,
                                 const float *gy, const float *gh, float *gx, float *gdelta,
                                 float *gA, float *gB, float *gC, float *gh0, const float *Dskip,
                                 const float *z, int64_t zt, const float *ys, float *gz,
                                 float *gD) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads();
        failed |= selective_scan_backward(Bt, T, D, N, D * p / n, D * (p + 1) / n, K, x, delta,
                                          A, Bm, Cm, starts, gy, gh, gx, gdelta, gA,
                                          gB + p * Bt * T * N, gC + p * Bt * T * N, gh0, Dskip,
                                          z, zt, ys, gz, gD);
    }
    return failed;
}
#endif
"""

def _library() -> ctypes.CDLL | None:
    library = ckernel.load("selective_scan", SOURCE, openmp=True)
    if library is not None and library.selective_scan_forward.argtypes is None:
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        forward = [pointer] * 7 + [size] + [pointer] * 3 + [size, pointer]  # K .. z, zt, ys
        backward = [pointer] * 16 + [size] + [pointer] * 3  # x .. z, zt, ys, gz, gD
        library.selective_scan_forward.restype = None
        library.selective_scan_forward.argtypes = [ctypes.c_int64] * 6 + forward
        library.selective_scan_backward.restype = ctypes.c_int
        library.selective_scan_backward.argtypes = [ctypes.c_int64] * 7 + backward
        if hasattr(library, "selective_scan_forward_team"):  # built with OpenMP
            library.selective_scan_forward_team.restype = None
            library.selective_scan_forward_team.argtypes = [ctypes.c_int64] * 5 + forward
            library.selective_scan_backward_team.restype = ctypes.c_int
            library.selective_scan_backward_team.argtypes = [ctypes.c_int64] * 6 + backward
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _checked(*tensors: torch.Tensor) -> ctypes.CDLL:
    return ckernel.checked(_library(), "the compiled selective-scan kernel", tensors)


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _rows(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """z (b, T, D) as the kernel reads it, and its row stride: as it is where its rows are
    contiguous and evenly spaced (Mamba's z, half of in_proj's output, rows 2 D apart), else a
    contiguous copy."""
    b, T, D = z.shape
    stride = z.stride(1)
    if z.stride(2) == 1 and stride >= D and (b == 1 or z.stride(0) == T * stride):
        return z, stride
    return z.contiguous(), D


def _forward(library: ctypes.CDLL, x, delta, A, B, C, state, starts=None, gate=None, ys=None):
    """selective_scan_forward on contiguous tensors: y and the new state; with `starts`
    ((b, ceil(T / BACKWARD_CHUNK), d_inner, N)), for training, the state at every chunk's
    start kept there and the channels split in one OpenMP region where the library has it.
    With `gate`, (D, z): y gated as `gated_scan` says, its read-out kept in `ys` if given."""
    h = state.clone(memory_format=torch.contiguous_format)
    y = torch.empty_like(x)
    (batch, T, D), N = x.shape, A.size(1)
    pointers = [t.data_ptr() for t in (x, delta, A, B, C, y, h)]
    skip, z = gate or (None, None)
    z, z_rows = (None, 0) if z is None else _rows(z)
    tail = (BACKWARD_CHUNK, _pointer(starts), _pointer(skip), _pointer(z), z_rows, _pointer(ys))
    head = (batch, T, D, N)
    split(library, "selective_scan_forward", channel_ranges(batch * T * D * N, D), head,
          (*pointers, *tail), openmp=starts is not None)
    return y, h


def scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
         C: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same contract as `zoo.mamba.selective_scan_recurrent`, for float32 CPU tensors
    without gradients: x, delta (b, T, d_inner); A (d_inner, N); B, C (b, T, N); state
    (b, d_inner, N). Returns y (b, T, d_inner) and the new state; the given one is unchanged.
    `scan_with_grad` is the same with a backward."""
    library = _checked(x, delta, A, B, C, state)
    return _forward(library, *(t.contiguous() for t in (x, delta, A, B, C)), state)


def gated_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
               C: torch.Tensor, D: torch.Tensor, z: torch.Tensor, state: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba's selective SSM in the scan's pass: `scan` of x with step sizes softplus(delta)
    (delta taken before the softplus, as the model's dt_proj gives it), then the skip and the
    gate, (y + D x) SiLU(z), with D (d_inner) and z (b, T, d_inner) float32 CPU tensors as the
    others, without gradients; and the new state. `gated_scan_with_grad` is the same with a
    backward."""
    library = _checked(x, delta, A, B, C, D, z, state)
    x, delta, A, B, C, D = (t.contiguous() for t in (x, delta, A, B, C, D))
    return _forward(library, x, delta, A, B, C, state, gate=(D, z))


BACKWARD_CHUNK = 64  # tokens whose states the backward recomputes at a time


class _Scan(torch.autograd.Function):
    """selective_scan_forward, with selective_scan_backward as its backward (gradients of x,
    delta, A, B, C and the given state, from those of y and of the new state); with the skip
    D and the gate z (not None), the gated form, and their gradients too."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C, state, skip=None, z=None):
        library = _library()
        x, delta, A, B, C = (t.contiguous() for t in (x, delta, A, B, C))
        state = state.contiguous()
        (batch, T, D), N = x.shape, A.size(1)
        starts = torch.empty(batch, -(-T // BACKWARD_CHUNK), D, N)
        gate = ys = None
        if z is not None:
            gate, ys = (skip.contiguous(), _rows(z)[0]), torch.empty_like(x)
        y, h = _forward(library, x, delta, A, B, C, state, starts, gate, ys)
        # not the state: starts[:, 0] is it
        ctx.save_for_backward(x, delta, A, B, C, starts, *(gate or ()), ys)
        ctx.chunk = BACKWARD_CHUNK
        ctx.set_materialize_grads(False)
        return y, h

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, gh):
        x, delta, A, B, C, starts, *gated = ctx.saved_tensors
        skip, z, ys = gated if len(gated) == 3 else (None, None, None)
        (batch, T, D), N = x.shape, A.size(1)
        gy = torch.zeros_like(x) if gy is None else gy.contiguous()
        gh = None if gh is None else gh.contiguous()
        gx, gdelta, gh0 = torch.empty_like(x), torch.empty_like(x), torch.empty(batch, D, N)
        gA = torch.zeros_like(A)
        gz = None if z is None else torch.empty_like(x)
        gskip = None if z is None else torch.zeros_like(skip)
        ranges = channel_ranges(3 * batch * T * D * N, D)
        gB, gC = torch.zeros(2, len(ranges), batch, T, N)  # a buffer per thread
        shared = [t.data_ptr() for t in (x, delta, A, B, C, starts, gy)]
        shared += [None if gh is None else gh.data_ptr()]
        shared += [t.data_ptr() for t in (gx, gdelta, gA)]
        # split's calls, but with a gB, gC buffer per thread
        library = _library()
        backward_team = team(library, "selective_scan_backward_team")
        z, z_rows = (None, 0) if z is None else _rows(z)  # as the forward read it: no copy
        gate = [_pointer(skip), _pointer(z), z_rows, *(_pointer(t) for t in (ys, gz, gskip))]
        if backward_team:
            codes = [backward_team(len(ranges), batch, T, D, N, ctx.chunk, *shared,
                                   gB.data_ptr(), gC.data_ptr(), gh0.data_ptr(), *gate)]
        else:
            codes = run_ranges(lambda lo, hi, *rest: library.selective_scan_backward(
                batch, T, D, N, lo, hi, ctx.chunk, *rest),
                ranges, lambda i: (*shared, gB[i].data_ptr(), gC[i].data_ptr(), gh0.data_ptr(),
                                   *gate))
        if any(codes):
            raise MemoryError("the compiled selective-scan backward could not allocate its work "
                              "arrays")
        return gx, gdelta, gA, gB.sum(0), gC.sum(0), gh0, gskip, gz


@torch.compiler.disable  # torch.compile runs it between its graphs: it cannot trace the C call
def scan_with_grad(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`scan`, differentiable: autograd's gradients of every input, as the recurrence's."""
    _checked(x, delta, A, B, C, state)
    return _Scan.apply(x, delta, A, B, C, state)


@torch.compiler.disable
def gated_scan_with_grad(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                         B: torch.Tensor, C: torch.Tensor, D: torch.Tensor, z: torch.Tensor,
                         state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`gated_scan`, differentiable: autograd's gradients of every input, D and z included."""
    _checked(x, delta, A, B, C, D, z, state)
    return _Scan.apply(x, delta, A, B, C, state, D, z)
