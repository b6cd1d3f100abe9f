"""RWKV-4's WKV recurrence as a small C loop, with its backward, for the CPU.

`zoo.rwkv.wkv_recurrent` is the recurrence written in PyTorch, one token at a time: a dozen
tensor operations per token and layer, whose dispatch, not their arithmetic, is the cost on
a CPU (8192 tokens: ~100k operations per layer). `zoo.rwkv.wkv_chunked` removes the loop over
tokens but does O(chunk) work per token. This module runs the same stable recurrence (the
official CUDA kernel's, one thread per channel; here one SIMD lane per channel) compiled from
the C source below: about 15 ms per layer for 8192 tokens of width 512, against 170 ms for the
chunks. `wkv` runs it without gradients; `wkv_with_grad` is differentiable (an autograd
Function whose backward is `wkv_backward` below: a forward sweep that recomputes each token's
normaliser and sums dL/dw, then a reverse sweep for dL/dk, dL/dv, dL/du, every exponential
shifted by a running maximum as in the forward, so it is stable at any length and key size).
It takes gradients into the given state and out of the new one as well, so training through
chained calls, the state carried with its gradient, gets the PyTorch paths' gradients. It is
as accurate as PyTorch's float32 recurrence (measured: the same errors against a float64
reference, at up to 16384 tokens with keys up to +-100; tests/zoo/test_wkv_backward.py). For
1024 tokens of width 512, forward and backward take 8-13 ms per layer on one core, against
280-300 ms for the chunks under autograd (chunks of 8, checkpointed); RWKV's training step
became 2-3x faster (benchmarks/rwkv_training.py). Splitting the channels over two threads
saved 1 ms of the forward's 2.3 and 1.6 ms of the backward's 8, less than 1% of a training
step, whose time is in the matrix products: the loops run on one thread.

The source is compiled on first use with the system's C compiler, once per machine, and cached
(ckernel.py). zoo.fast's "wkv" route runs it; without a compiler `available()` is False
and the model keeps its PyTorch paths (same numbers; `zoo.fast.describe(model)` says which run).
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from zoo.fast.kernels import ckernel

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* k, v, y: (B, T, C) float32, row-major; w = -exp(time_decay), u = time_first: (C,).
   aa, bb, pp: (B, C), the state (a = aa e^pp, b = bb e^pp), updated in place. */
void wkv_forward(int64_t B, int64_t T, int64_t C, const float *w, const float *u,
                 const float *k, const float *v, float *y, float *aa, float *bb, float *pp) {
    for (int64_t b = 0; b < B; b++) {
        float *sa = aa + b * C, *sb = bb + b * C, *sp = pp + b * C;
        for (int64_t t = 0; t < T; t++) {
            const float *kt = k + (b * T + t) * C, *vt = v + (b * T + t) * C;
            float *yt = y + (b * T + t) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float kk = kt[c], vv = vt[c], a = sa[c], s = sb[c], p = sp[c];
                /* output: the past state plus the current token with its bonus u */
                float cur = u[c] + kk;
                float q = fmaxf(p, cur);
                float e1 = expf(p - q), e2 = expf(cur - q);
                yt[c] = (e1 * a + e2 * vv) / (e1 * s + e2);
                /* update: decay the past once by w, add the current token */
                float past = p + w[c];
                q = fmaxf(past, kk);
                e1 = expf(past - q);
                e2 = expf(kk - q);
                sa[c] = e1 * a + e2 * vv;
                sb[c] = e1 * s + e2;
                sp[c] = q;
            }
        }
    }
}

/* The gradients of wkv_forward. With A_t = a_t e^{p_t}, B_t = b_t e^{p_t} the state before
   token t (A_t = sum_{i<t} e^{(t-1-i)w + k_i} v_i + e^{tw} A_0, B_t likewise without v_i),
   D_t = B_t + e^{u+k_t}, y_t = (A_t + e^{u+k_t} v_t) / D_t and g_t = dL/dy_t:
     dL/dv_i = g_i e^{u+k_i}/D_i + e^{k_i} GA_i,
     dL/dk_i = g_i e^{u+k_i} (v_i - y_i)/D_i + e^{k_i} (v_i GA_i + GB_i),
     dL/du   = sum_i g_i e^{u+k_i} (v_i - y_i)/D_i,
   where GA_i = sum_{s>i} e^{(s-1-i)w} g_s/D_s and GB_i the same with -g_s y_s: what a unit of
   e^{k_i} v_i, of e^{k_i}, in the state is worth to the outputs after i; reversed, GA_{i-1} =
   e^w GA_i + g_i/D_i. The final state is an output at s = T (dL/dA_T, dL/dB_T start GA, GB)
   and the given state a token at i = -1 (dL/dA_0 = GA_{-1}).
   dL/dw = sum_t g_t dy_t/dw, forward, in the state's mean m_t = A_t/B_t and beta_t =
   dlog(B_t)/dw (the mean age of the state, >= 0): with mu_t = B_t/D_t, nu_t = 1 - mu_t,
     dy_t/dw = mu_t (dm_t/dw + nu_t (m_t - v_t) beta_t),
   and with lambda = e^w B_t / B_{t+1}, kappa = 1 - lambda,
     m_{t+1} = lambda m_t + kappa v_t,  beta_{t+1} = lambda (1 + beta_t),
     dm_{t+1}/dw = lambda (dm_t/dw + kappa (m_t - v_t)(1 + beta_t)).
   (The same sum as dA_t/dw - y_t dB_t/dw over D_t, without its cancellation: when one token
   dominates a long-memory channel, y_t ~ v_i and that difference loses ~1e-3 in float32.)
   Two sweeps per batch row: forward, recomputing each token's shift q_t (D_t = d_t e^{q_t})
   and 1/d_t into `scratch` (2 T C floats), summing dL/dw; then reverse, with GA, GB kept as
   (ga, gb) e^{o}, o their largest log-scale, as the forward keeps its state: every exp below
   has an argument <= 0. pp_T, the final state's scale, is the largest log-weight
   max_i (T-1-i)w + k_i (or pp_0 + Tw): what dL/dpp_T holds beyond what moves with aa_T, bb_T
   (dL/dpp_T - aa_T dL/daa_T - bb_T dL/dbb_T) goes to that one k_i and to w.
   The per-channel sums are float: double ones gave the same errors against a float64
   reference at 4096 tokens (the float32 state's rounding sets them, as in PyTorch's).
   y, gy: (B, T, C); aa, bb, pp: the given state; gaa, gbb, gpp: dL/d(final state) (B, C) or
   NULL (zero). Out: gk, gv (B, T, C); gw, gu (B, C) (the caller sums them over b);
   gaa0, gbb0, gpp0 (B, C), dL/d(given state). Returns 0, or -1 when out of memory. */
int wkv_backward(int64_t B, int64_t T, int64_t C, const float *w, const float *u,
                 const float *k, const float *v, const float *y, const float *gy,
                 const float *aa, const float *bb, const float *pp,
                 const float *gaa, const float *gbb, const float *gpp,
                 float *gk, float *gv, float *gw, float *gu,
                 float *gaa0, float *gbb0, float *gpp0, float *scratch) {
    float *work = malloc(sizeof(float) * 9 * C);
    int32_t *arg = malloc(sizeof(int32_t) * C);
    if (work == NULL || arg == NULL) {
        free(work);
        free(arg);
        return -1;
    }
    float *sa = work, *sb = work + C, *sp = work + 2 * C, *sm = work + 3 * C;
    float *beta = work + 4 * C, *dm = work + 5 * C, *ga = work + 6 * C, *gb = work + 7 * C;
    float *so = work + 8 * C, *rest = sm; /* sm is free again when rest is needed */
    float *inv_d = scratch, *shift = scratch + T * C;
    for (int64_t b = 0; b < B; b++) {
        const int64_t bc = b * C;
        float *gwb = gw + bc, *gub = gu + bc;
        /* forward: the state before each token, as wkv_forward computes it; dL/dw */
        for (int64_t c = 0; c < C; c++) {
            float a0 = aa[bc + c], b0 = bb[bc + c];
            sa[c] = a0;
            sb[c] = b0;
            sp[c] = pp[bc + c];
            sm[c] = b0 > 0.0f ? a0 / b0 : 0.0f;
            beta[c] = 0.0f; /* the given state does not depend on w */
            dm[c] = 0.0f;
            gwb[c] = 0.0f;
            arg[c] = -1;
        }
        for (int64_t t = 0; t < T; t++) {
            const int64_t row = (b * T + t) * C;
            const float *kt = k + row, *vt = v + row, *gt = gy + row;
            float *dt = inv_d + t * C, *qt = shift + t * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float kk = kt[c], vv = vt[c], a = sa[c], s = sb[c], p = sp[c];
                float m = sm[c], be = beta[c], dmw = dm[c];
                float cur = u[c] + kk;
                float q = fmaxf(p, cur);
                float e1 = expf(p - q), e2 = expf(cur - q);
                float id = 1.0f / (e1 * s + e2);
                dt[c] = id;
                qt[c] = q;
                float mu = e1 * s * id, nu = e2 * id;
                gwb[c] += gt[c] * mu * (dmw + nu * (m - vv) * be);
                float past = p + w[c];
                q = fmaxf(past, kk);
                e1 = expf(past - q);
                e2 = expf(kk - q);
                float s_new = e1 * s + e2;
                float inv = s_new > 0.0f ? 1.0f / s_new : 0.0f;
                float lambda = e1 * s * inv, kappa = e2 * inv;
                dm[c] = lambda * (dmw + kappa * (m - vv) * (1.0f + be));
                beta[c] = lambda * (1.0f + be);
                sm[c] = lambda * m + kappa * vv;
                sa[c] = e1 * a + e2 * vv;
                sb[c] = s_new;
                sp[c] = q;
                arg[c] = past >= kk ? arg[c] : (int32_t)t; /* whose log-weight pp is */
            }
        }
        /* the final state's gradient: into dL/dw, and where the reverse sweep starts */
        for (int64_t c = 0; c < C; c++) {
            float g_a = gaa ? gaa[bc + c] : 0.0f, g_b = gbb ? gbb[bc + c] : 0.0f;
            float r = gpp ? gpp[bc + c] - g_a * sa[c] - g_b * sb[c] : 0.0f;
            /* dA_T/dw = B_T (dm/dw + m beta), dB_T/dw = B_T beta; dL/dA_T = g_a e^{-pp_T} */
            float dw = sb[c] * (g_a * (dm[c] + sm[c] * beta[c]) + g_b * beta[c]);
            dw += r * (float)(arg[c] < 0 ? T : T - 1 - arg[c]);
            gwb[c] += dw;
            rest[c] = r;
            ga[c] = g_a;
            gb[c] = g_b;
            so[c] = -sp[c];
            gub[c] = 0.0f;
        }
        for (int64_t t = T - 1; t >= 0; t--) {
            const int64_t row = (b * T + t) * C;
            const float *kt = k + row, *vt = v + row, *yt = y + row, *gt = gy + row;
            const float *dt = inv_d + t * C, *qt = shift + t * C;
            float *gkt = gk + row, *gvt = gv + row;
            const int32_t ti = (int32_t)t;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float kk = kt[c], vv = vt[c], yy = yt[c], q = qt[c], o = so[c];
                float a_ = ga[c], b_ = gb[c];
                float g_d = gt[c] * dt[c];             /* g_t / d_t */
                float now = g_d * expf(u[c] + kk - q); /* g_t e^{u+k_t} / D_t */
                float ek = expf(kk + o);               /* e^{k_t} against GA's scale */
                float gk_now = now * (vv - yy);
                gkt[c] = gk_now + ek * (a_ * vv + b_) + (arg[c] == ti ? rest[c] : 0.0f);
                gvt[c] = now + ek * a_;
                gub[c] += gk_now;
                /* to token t - 1: decay once, add this output's g_t / D_t */
                float no = fmaxf(o + w[c], -q);
                float decay = expf(o + w[c] - no), add = g_d * expf(-q - no);
                ga[c] = decay * a_ + add;
                gb[c] = decay * b_ - add * yy;
                so[c] = no;
            }
        }
        /* the given state, a token at i = -1 */
        for (int64_t c = 0; c < C; c++) {
            float scale = expf(pp[bc + c] + so[c]);
            float g_a = scale * ga[c], g_b = scale * gb[c];
            gaa0[bc + c] = g_a;
            gbb0[bc + c] = g_b;
            gpp0[bc + c] = g_a * aa[bc + c] + g_b * bb[bc + c] + (arg[c] < 0 ? rest[c] : 0.0f);
        }
    }
    free(work);
    free(arg);
    return 0;
}
"""
def _library() -> ctypes.CDLL | None:
    library = ckernel.load("wkv", SOURCE)
    if library is not None and library.wkv_forward.argtypes is None:
        library.wkv_forward.restype = None
        library.wkv_forward.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 8
        library.wkv_backward.restype = ctypes.c_int
        library.wkv_backward.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 20
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _checked_library(w, u, k, v, state) -> ctypes.CDLL:
    return ckernel.checked(_library(), "the compiled WKV kernel", (w, u, k, v, *state))


def _forward(library: ctypes.CDLL, w, u, k, v, aa, bb, pp):
    """wkv_forward on contiguous tensors: y and a new state (the given one is not changed)."""
    B, T, C = k.shape
    aa, bb, pp = (s.clone(memory_format=torch.contiguous_format) for s in (aa, bb, pp))
    y = torch.empty_like(k)
    library.wkv_forward(B, T, C, *(t.data_ptr() for t in (w, u, k, v, y, aa, bb, pp)))
    return y, aa, bb, pp


def wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
    """The same contract as `zoo.rwkv.wkv_recurrent`, for float32 CPU tensors without
    gradients: (wkv (B, T, d), the new state (aa, bb, pp)). The given state is not changed.
    `wkv_with_grad` is the same with a backward."""
    library = _checked_library(w, u, k, v, state)
    w, u, k, v = (t if t.is_contiguous() else t.contiguous() for t in (w, u, k, v))
    y, aa, bb, pp = _forward(library, w, u, k, v, *state)
    return y, (aa, bb, pp)


class _WKV(torch.autograd.Function):
    """wkv_forward, with wkv_backward as its backward (gradients of w, u, k, v and of the given
    state, from those of the output and of the new state). Not twice differentiable."""

    @staticmethod
    def forward(ctx, w, u, k, v, aa, bb, pp):
        library = _library()
        y, *state = _forward(library, w, u, k, v, aa, bb, pp)
        ctx.save_for_backward(w, u, k, v, y, aa, bb, pp)
        ctx.set_materialize_grads(False)  # None, not zeros, for an output no loss uses
        return y, *state

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, gaa, gbb, gpp):
        w, u, k, v, y, aa, bb, pp = ctx.saved_tensors
        B, T, C = k.shape
        gy = torch.zeros_like(y) if gy is None else gy.contiguous()
        finals = [None if g is None else g.contiguous() for g in (gaa, gbb, gpp)]
        gk, gv = torch.empty_like(k), torch.empty_like(v)
        gw, gu = torch.empty(2, B, C)
        g0 = torch.empty(3, B, C)
        scratch = torch.empty(2 * T * C)
        tensors = (w, u, k, v, y, gy, aa, bb, pp, *finals, gk, gv, gw, gu, *g0, scratch)
        pointers = [None if t is None else t.data_ptr() for t in tensors]
        if _library().wkv_backward(B, T, C, *pointers) != 0:
            raise MemoryError("the compiled WKV backward could not allocate its work arrays")
        needs = ctx.needs_input_grad
        return (gw.sum(0) if needs[0] else None, gu.sum(0) if needs[1] else None,
                gk if needs[2] else None, gv if needs[3] else None,
                *(g if need else None for g, need in zip(g0, needs[4:], strict=True)))


@torch.compiler.disable  # torch.compile runs it between its graphs: it cannot trace the C call
def wkv_with_grad(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  state: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
    """`wkv`, differentiable: autograd's gradients of w, u (C,), k, v (B, T, C) and of the given
    state (aa, bb, pp), from those of the output and of the new state, as `wkv_recurrent`'s
    (for the new state's pp: through the one log-weight that is its maximum, as
    torch.maximum's gradient goes, ties aside). float32 CPU tensors; w and u of shape (C,)."""
    _checked_library(w, u, k, v, state)
    B, T, C = k.shape
    if w.shape != (C,) or u.shape != (C,) or v.shape != k.shape or \
            any(s.shape != (B, C) for s in state):
        raise ValueError(f"wkv_with_grad: w, u ({C},), k, v ({B}, {T}, {C}), state ({B}, {C}); "
                         f"got {tuple(w.shape)}, {tuple(u.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}, {[tuple(s.shape) for s in state]}")
    inputs = (t if t.is_contiguous() else t.contiguous() for t in (w, u, k, v, *state))
    y, aa, bb, pp = _WKV.apply(*inputs)
    return y, (aa, bb, pp)
