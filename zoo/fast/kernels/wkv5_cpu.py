"""RWKV-5's and RWKV-6's matrix WKV as a small C loop, for CPU inference.

`zoo.layers.matrix_wkv.matrix_wkv_recurrent` is the recurrence in PyTorch, one token at a time:
half a dozen tensor operations per token and layer whose dispatch, not the arithmetic, is the
cost of decoding. Prefill goes through `matrix_wkv_chunked` instead, whose pairwise decay
factors, (L, L, N) per chunk and head, take B T d L floats per layer. This module runs
the recurrence itself, compiled from the C source below: per head and token, with the bonus
b = sum_i r_i u_i k_i taken first, each row i of the state S (N x N, key channel by value
channel) is read out and updated in one pass over its N entries,
    y_j += r_i S_ij,    S_ij <- w_i S_ij + k_i v_j,            (then y_j += b v_j)
in SIMD lanes over the value channel j, the state (16 KiB for N = 64) staying in the cache. The
decay comes as log w per token, (B or 1, T, H, N) with any strides over the batch and the
tokens: RWKV-5's constant decay goes in as a (1, T, H, N) view of one (H, N) row (stride 0,
never expanded in memory, its exponentials taken once per head), RWKV-6's as one row per token.
Heads are independent, so a call splits them between the threads PyTorch uses (ctypes releases
the GIL during the call). `wkv_group_norm_gate` also applies, as it writes a head's output, what
the models do next with it: the GroupNorm of each head (ln_x) and the gate's product.

`wkv` and `wkv_group_norm_gate` run without gradients (prefill and decoding); `wkv_with_grad` is
differentiable, an autograd Function whose backward is `matrix_wkv_backward` below: the
gradients of every input in one sweep back in time, a row of the state and of its gradient at a
time, the states recomputed a chunk at a time from ones kept every BACKWARD_CHUNK tokens rather
than stored for every token (T x N x N floats a head). zoo.fast's "wkv5" route runs the three
for float32 CPU tensors (training through `wkv_with_grad`, with the GroupNorm and the gate left
to PyTorch), and the models keep their PyTorch paths otherwise (CUDA, other dtypes, no C
compiler). The source is compiled on first use with the system's C compiler and cached
(ckernel.py).
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

/* One (batch, head) pair over T tokens. N is a compile-time constant where the caller passes
   one (the heads of 64 of every released model), so that the pass over a row unrolls. With nw
   (not NULL), y is the head's GroupNorm (weight nw, bias nb, eps) times the gate g, else the
   WKV itself. */
static inline __attribute__((always_inline)) void
matrix_wkv_head(int64_t T, int64_t H, int64_t N, int64_t wt, const float *r, const float *log_w,
                const float *k, const float *v, const float *u, float *y, float *S,
                const float *nw, const float *nb, const float *g, float eps) {
    float w[N], acc[N];
    const float *exponentiated = 0;
    for (int64_t t = 0; t < T; t++) {
        const int64_t at = t * H * N;
        const float *rt = r + at, *kt = k + at, *vt = v + at, *lw = log_w + t * wt;
        if (lw != exponentiated) {  /* RWKV-5: the same row at every token (wt = 0) */
#pragma omp simd
            for (int64_t i = 0; i < N; i++) w[i] = expf(lw[i]);
            exponentiated = lw;
        }
        float bonus = 0.0f;
#pragma omp simd reduction(+:bonus)
        for (int64_t i = 0; i < N; i++) bonus += rt[i] * u[i] * kt[i];
#pragma omp simd
        for (int64_t j = 0; j < N; j++) acc[j] = bonus * vt[j];
        for (int64_t i = 0; i < N; i++) {
            float *row = S + i * N;
            const float ri = rt[i], ki = kt[i], wi = w[i];
#pragma omp simd
            for (int64_t j = 0; j < N; j++) {
                const float s = row[j];
                acc[j] += ri * s;
                row[j] = wi * s + ki * vt[j];
            }
        }
        if (!nw) {
#pragma omp simd
            for (int64_t j = 0; j < N; j++) y[at + j] = acc[j];
            continue;
        }
        float mean = 0.0f, var = 0.0f;
#pragma omp simd reduction(+:mean)
        for (int64_t j = 0; j < N; j++) mean += acc[j];
        mean /= N;
#pragma omp simd reduction(+:var)
        for (int64_t j = 0; j < N; j++) var += (acc[j] - mean) * (acc[j] - mean);
        const float rstd = 1.0f / sqrtf(var / N + eps);
#pragma omp simd
        for (int64_t j = 0; j < N; j++)
            y[at + j] = ((acc[j] - mean) * rstd * nw[j] + nb[j]) * g[at + j];
    }
}

/* r, k, v, y: (Bt, T, H, N), contiguous; log_w: the row of H * N floats of (batch b, token t)
   starts at log_w + b * wb + t * wt (strides in floats, 0 where one row serves every sequence
   or every token); u: (H, N); S: (Bt, H, N, N), S[key channel][value channel], updated in
   place. Float32, row-major. Pairs p0 <= p < p1 of the Bt * H (batch, head) pairs only: a call
   per thread. With nw (not NULL): y is the WKV's GroupNorm per head (weight nw, bias nb, both
   (H, N); eps) times the gate g (Bt, T, H, N). */
void matrix_wkv_forward(int64_t Bt, int64_t T, int64_t H, int64_t N, int64_t p0, int64_t p1,
                        int64_t wb, int64_t wt, const float *r, const float *log_w,
                        const float *k, const float *v, const float *u, float *y, float *S,
                        const float *nw, const float *nb, const float *g, float eps) {
    for (int64_t p = p0; p < p1; p++) {
        const int64_t b = p / H, h = p % H, at = (b * T * H + h) * N;
        const float *lw = log_w + b * wb + h * N;
        const float *nwh = nw ? nw + h * N : 0, *nbh = nw ? nb + h * N : 0, *gh = nw ? g + at : 0;
        if (N == 64)
            matrix_wkv_head(T, H, 64, wt, r + at, lw, k + at, v + at, u + h * N, y + at,
                            S + p * N * N, nwh, nbh, gh, eps);
        else
            matrix_wkv_head(T, H, N, wt, r + at, lw, k + at, v + at, u + h * N, y + at,
                            S + p * N * N, nwh, nbh, gh, eps);
    }
}

/* The gradients of one (batch, head) pair's WKV (matrix_wkv_head without the GroupNorm). With
   P_t the state before token t (P_0 the given one), w_t = exp(log w_t),
       y_t = r_t (P_t + diag(u) k_t^T v_t),        P_{t+1} = diag(w_t) P_t + k_t^T v_t,
   and D = dL/dP_{t+1} going back in time (from gS, the new state's gradient, or 0):
       gr_t = P_t gy_t + u k_t (v_t . gy_t),        gk_t = D v_t + u r_t (v_t . gy_t),
       gv_t = D^T k_t + (r_t u k_t) gy_t,           g(log w_t) = w_t * rowsum(D * P_t),
       gu += r_t k_t (v_t . gy_t),                  dL/dP_t = diag(w_t) D + r_t^T gy_t,
   row by row of D and P_t in one pass over their N entries. The states are recomputed, not
   stored: a first sweep keeps P at the start of every chunk of K tokens (in starts), then each
   chunk, last first, is recomputed into states (K of them) and swept backwards. gr, gk, gv, glw
   (the pair's rows of (Bt, T, H, N)), gu (N) and gS0 (N x N) are written. */
static inline __attribute__((always_inline)) void
matrix_wkv_head_backward(int64_t T, int64_t H, int64_t N, int64_t K, int64_t wt,
                         const float *r, const float *log_w, const float *k, const float *v,
                         const float *u, const float *S0, const float *gy, const float *gS,
                         float *gr, float *glw, float *gk, float *gv, float *gu, float *gS0,
                         float *starts, float *states, float *D) {
    float w[N], gvt[N], gut[N];
    const int64_t NN = N * N;
    const float *exponentiated = 0;
    /* first sweep: P at the start of every chunk */
    float *P = states;
    for (int64_t x = 0; x < NN; x++) P[x] = S0[x];
    for (int64_t t = 0; t < T; t++) {
        const int64_t at = t * H * N;
        const float *kt = k + at, *vt = v + at, *lw = log_w + t * wt;
        if (t % K == 0)
            for (int64_t x = 0; x < NN; x++) starts[(t / K) * NN + x] = P[x];
        if (lw != exponentiated) {
#pragma omp simd
            for (int64_t i = 0; i < N; i++) w[i] = expf(lw[i]);
            exponentiated = lw;
        }
        for (int64_t i = 0; i < N; i++) {
            float *row = P + i * N;
            const float wi = w[i], ki = kt[i];
#pragma omp simd
            for (int64_t j = 0; j < N; j++) row[j] = wi * row[j] + ki * vt[j];
        }
    }
    /* second sweep, backwards, chunk by chunk */
    for (int64_t x = 0; x < NN; x++) D[x] = gS ? gS[x] : 0.0f;
    for (int64_t i = 0; i < N; i++) gut[i] = 0.0f;
    exponentiated = 0;
    for (int64_t chunk = (T + K - 1) / K - 1; chunk >= 0; chunk--) {
        const int64_t t0 = chunk * K, t1 = (t0 + K < T) ? t0 + K : T;
        for (int64_t x = 0; x < NN; x++) states[x] = starts[chunk * NN + x];
        for (int64_t t = t0; t + 1 < t1; t++) {
            const int64_t at = t * H * N;
            const float *kt = k + at, *vt = v + at, *lw = log_w + t * wt;
            const float *prev = states + (t - t0) * NN;
            float *next = states + (t + 1 - t0) * NN;
            if (lw != exponentiated) {
#pragma omp simd
                for (int64_t i = 0; i < N; i++) w[i] = expf(lw[i]);
                exponentiated = lw;
            }
            for (int64_t i = 0; i < N; i++) {
                const float wi = w[i], ki = kt[i];
#pragma omp simd
                for (int64_t j = 0; j < N; j++)
                    next[i * N + j] = wi * prev[i * N + j] + ki * vt[j];
            }
        }
        for (int64_t t = t1 - 1; t >= t0; t--) {
            const int64_t at = t * H * N;
            const float *rt = r + at, *kt = k + at, *vt = v + at, *gyt = gy + at;
            const float *lw = log_w + t * wt, *Pt = states + (t - t0) * NN;
            if (lw != exponentiated) {
#pragma omp simd
                for (int64_t i = 0; i < N; i++) w[i] = expf(lw[i]);
                exponentiated = lw;
            }
            float vg = 0.0f, bonus = 0.0f;
#pragma omp simd reduction(+:vg)
            for (int64_t j = 0; j < N; j++) vg += vt[j] * gyt[j];
#pragma omp simd reduction(+:bonus)
            for (int64_t i = 0; i < N; i++) bonus += rt[i] * u[i] * kt[i];
#pragma omp simd
            for (int64_t j = 0; j < N; j++) gvt[j] = bonus * gyt[j];
            for (int64_t i = 0; i < N; i++) {
                const float *Pi = Pt + i * N;
                float *Di = D + i * N;
                const float wi = w[i], ki = kt[i], ri = rt[i];
                float read = 0.0f, back = 0.0f, decay = 0.0f;
#pragma omp simd reduction(+:read, back, decay)
                for (int64_t j = 0; j < N; j++) {
                    const float d = Di[j], p = Pi[j];
                    read += p * gyt[j];
                    back += d * vt[j];
                    decay += d * p;
                    gvt[j] += d * ki;
                    Di[j] = wi * d + ri * gyt[j];
                }
                gr[at + i] = read + u[i] * ki * vg;
                gk[at + i] = back + u[i] * ri * vg;
                glw[at + i] = wi * decay;
                gut[i] += ri * ki * vg;
            }
#pragma omp simd
            for (int64_t j = 0; j < N; j++) gv[at + j] = gvt[j];
        }
    }
    for (int64_t i = 0; i < N; i++) gu[i] = gut[i];
    for (int64_t x = 0; x < NN; x++) gS0[x] = D[x];
}

/* The gradients of matrix_wkv_forward (no GroupNorm), for pairs p0 <= p < p1, each as
   matrix_wkv_head_backward: r, log_w (strides wb, wt), k, v, u, S0 as the forward took them;
   gy (Bt, T, H, N); gS (Bt, H, N, N) or NULL. Written: gr, glw, gk, gv (Bt, T, H, N), gu
   (Bt, H, N), a row per pair (the caller sums over the batch), gS0 (Bt, H, N, N). K: tokens
   per recomputed chunk. Returns 1 when the work arrays cannot be allocated, else 0. */
int matrix_wkv_backward(int64_t Bt, int64_t T, int64_t H, int64_t N, int64_t p0, int64_t p1,
                        int64_t K, int64_t wb, int64_t wt, const float *r, const float *log_w,
                        const float *k, const float *v, const float *u, const float *S0,
                        const float *gy, const float *gS, float *gr, float *glw, float *gk,
                        float *gv, float *gu, float *gS0) {
    const int64_t chunks = (T + K - 1) / K, NN = N * N;
    float *starts = malloc(sizeof(float) * (chunks > 0 ? chunks : 1) * NN);
    float *states = malloc(sizeof(float) * K * NN), *D = malloc(sizeof(float) * NN);
    if (!starts || !states || !D) {
        free(starts); free(states); free(D);
        return 1;
    }
    for (int64_t p = p0; p < p1; p++) {
        const int64_t b = p / H, h = p % H, at = (b * T * H + h) * N;
        const float *lw = log_w + b * wb + h * N, *gSp = gS ? gS + p * NN : 0;
        if (N == 64)
            matrix_wkv_head_backward(T, H, 64, K, wt, r + at, lw, k + at, v + at, u + h * N,
                                     S0 + p * NN, gy + at, gSp, gr + at, glw + at, gk + at,
                                     gv + at, gu + p * N, gS0 + p * NN, starts, states, D);
        else
            matrix_wkv_head_backward(T, H, N, K, wt, r + at, lw, k + at, v + at, u + h * N,
                                     S0 + p * NN, gy + at, gSp, gr + at, glw + at, gk + at,
                                     gv + at, gu + p * N, gS0 + p * NN, starts, states, D);
    }
    free(starts); free(states); free(D);
    return 0;
}

#ifdef _OPENMP
int omp_get_thread_num(void);
int omp_get_num_threads(void);

/* For training: the forward and the backward over all Bt * H pairs, split between the threads
   of one OpenMP region of PyTorch's runtime (ckernel.py). */
void matrix_wkv_forward_team(int64_t threads, int64_t Bt, int64_t T, int64_t H, int64_t N,
                             int64_t wb, int64_t wt, const float *r, const float *log_w,
                             const float *k, const float *v, const float *u, float *y, float *S,
                             const float *nw, const float *nb, const float *g, float eps) {
#pragma omp parallel num_threads(threads)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads(), pairs = Bt * H;
        matrix_wkv_forward(Bt, T, H, N, pairs * p / n, pairs * (p + 1) / n, wb, wt, r, log_w,
                           k, v, u, y, S, nw, nb, g, eps);
    }
}

int matrix_wkv_backward_team(int64_t threads, int64_t Bt, int64_t T, int64_t H, int64_t N,
                             int64_t K, int64_t wb, int64_t wt, const float *r,
                             const float *log_w, const float *k, const float *v, const float *u,
                             const float *S0, const float *gy, const float *gS, float *gr,
                             float *glw, float *gk, float *gv, float *gu, float *gS0) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads(), pairs = Bt * H;
        failed |= matrix_wkv_backward(Bt, T, H, N, pairs * p / n, pairs * (p + 1) / n, K, wb,
                                      wt, r, log_w, k, v, u, S0, gy, gS, gr, glw, gk, gv, gu,
                                      gS0);
    }
    return failed;
}
#endif
"""


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("matrix_wkv", SOURCE, openmp=True)
    if library is not None and library.matrix_wkv_forward.argtypes is None:
        library.matrix_wkv_forward.restype = None
        library.matrix_wkv_forward.argtypes = ([ctypes.c_int64] * 8 + [ctypes.c_void_p] * 10
                                               + [ctypes.c_float])
        library.matrix_wkv_backward.restype = ctypes.c_int
        library.matrix_wkv_backward.argtypes = [ctypes.c_int64] * 9 + [ctypes.c_void_p] * 14
        if hasattr(library, "matrix_wkv_forward_team"):  # built with OpenMP
            library.matrix_wkv_forward_team.restype = None
            library.matrix_wkv_forward_team.argtypes = ([ctypes.c_int64] * 7
                                                        + [ctypes.c_void_p] * 10
                                                        + [ctypes.c_float])
            library.matrix_wkv_backward_team.restype = ctypes.c_int
            library.matrix_wkv_backward_team.argtypes = ([ctypes.c_int64] * 8
                                                         + [ctypes.c_void_p] * 14)
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _decay_rows(log_w: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """log_w (B or 1, T, H, N) as a tensor whose (H, N) rows are contiguous, with its batch and
    token strides in floats (0 where one row is shared): a broadcast view stays a view."""
    H, N = log_w.shape[2:]
    if log_w.stride(3) != 1 or (H > 1 and log_w.stride(2) != N):
        log_w = log_w.contiguous()
    return log_w, 0 if log_w.size(0) == 1 else log_w.stride(0), log_w.stride(1)


def _checked(*tensors: torch.Tensor) -> ctypes.CDLL:
    return ckernel.checked(_library(), "the compiled matrix-WKV kernel", tensors)


def _forward(library: ctypes.CDLL, r, log_w, k, v, u, state, norm=None, training=False):
    """y (or GroupNorm(y) * gate, for norm = (weight, bias, eps, gate)) and the new state;
    `training`: the pairs split in one OpenMP region where the library has it."""
    r, k, v, u = (t.contiguous() for t in (r, k, v, u))
    B, T, H, N = r.shape
    if log_w.shape not in ((B, T, H, N), (1, T, H, N)) or u.shape != (H, N) \
            or state.shape != (B, H, N, N) or k.shape != r.shape or v.shape != r.shape:
        raise ValueError(f"shapes: r, k, v {tuple(r.shape)}, log_w {tuple(log_w.shape)}, "
                         f"u {tuple(u.shape)}, state {tuple(state.shape)}")
    log_w, batch_stride, token_stride = _decay_rows(log_w)
    S = state.clone(memory_format=torch.contiguous_format)
    y = torch.empty_like(r)
    if y.numel() == 0:
        return y, S
    pointers = [t.data_ptr() for t in (r, log_w, k, v, u, y, S)]
    eps, keep = 0.0, []
    if norm is None:
        pointers += [None, None, None]
    else:
        weight, bias, eps, gate = norm
        keep = [t.contiguous() for t in (weight, bias, gate)]
        if keep[0].numel() != H * N or keep[1].numel() != H * N or keep[2].numel() != y.numel():
            raise ValueError(f"GroupNorm weight {tuple(weight.shape)}, bias "
                             f"{tuple(bias.shape)} and gate {tuple(gate.shape)} for heads "
                             f"{tuple(r.shape)}")
        pointers += [t.data_ptr() for t in keep]
    split(library, "matrix_wkv_forward", channel_ranges(B * T * H * N * N, B * H),
          (B, T, H, N), (batch_stride, token_stride, *pointers, eps), openmp=training)
    return y, S


@torch.compiler.disable  # torch.compile runs it between its graphs: it cannot trace the C call
def wkv(r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
        state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same contract as `zoo.layers.matrix_wkv_recurrent`, for float32 CPU tensors without
    gradients: r, k, v (B, T, H, N); log_w (B, T, H, N), or (1, T, H, N) when the decay is the
    same for every sequence, any strides (a broadcast view is read as such); u (H, N); state
    (B, H, N, N), S[key channel, value channel]. Returns y (B, T, H, N) and the new state; the
    given one is unchanged."""
    library = _checked(r, log_w, k, v, u, state)
    return _forward(library, r, log_w, k, v, u, state)


@torch.compiler.disable
def wkv_group_norm_gate(r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        u: torch.Tensor, state: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor, eps: float, gate: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """`wkv`, with its output y put through the models' GroupNorm, one group per head
    (zoo.layers.head_group_norm: weight and bias (H * N,), eps), and multiplied by the gate
    (B, T, H * N), in the same pass: what RWKV-5's and RWKV-6's TimeMix do with y before their
    output matrix. Returns that (B, T, H, N) and the new state."""
    library = _checked(r, log_w, k, v, u, state, weight, bias, gate)
    return _forward(library, r, log_w, k, v, u, state, (weight, bias, float(eps), gate))


BACKWARD_CHUNK = 32  # tokens whose states the backward recomputes at a time (32 x 16 KiB)


class _MatrixWKV(torch.autograd.Function):
    """matrix_wkv_forward, with matrix_wkv_backward as its backward: the gradients of r, log_w,
    k, v, u and the given state from those of y and of the new state."""

    @staticmethod
    def forward(ctx, r, log_w, k, v, u, state):
        library = _library()
        y, S = _forward(library, r, log_w, k, v, u, state, training=True)
        ctx.save_for_backward(r, log_w, k, v, u, state)
        ctx.set_materialize_grads(False)
        return y, S

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, gS):
        r, log_w, k, v, u, state = ctx.saved_tensors
        B, T, H, N = r.shape
        r, k, v, u, state = (t.contiguous() for t in (r, k, v, u, state))
        rows, batch_stride, token_stride = _decay_rows(log_w)
        gy = torch.zeros_like(r) if gy is None else gy.contiguous()
        gS = None if gS is None else gS.contiguous()
        gr, glw, gk, gv = (torch.empty_like(r) for _ in range(4))
        gu, gS0 = torch.empty(B, H, N), torch.empty_like(state)
        pointers = [t.data_ptr() for t in (r, rows, k, v, u, state, gy)]
        pointers += [None if gS is None else gS.data_ptr()]
        pointers += [t.data_ptr() for t in (gr, glw, gk, gv, gu, gS0)]
        codes = split(_library(), "matrix_wkv_backward",
                      channel_ranges(3 * B * T * H * N * N, B * H), (B, T, H, N),
                      (BACKWARD_CHUNK, batch_stride, token_stride, *pointers))
        if any(codes):
            raise MemoryError("the compiled matrix-WKV backward could not allocate its work "
                              "arrays")
        if log_w.size(0) == 1 and B > 1:  # one decay row for every sequence
            glw = glw.sum(0, keepdim=True)
        return gr, glw, gk, gv, gu.sum(0), gS0


@torch.compiler.disable
def wkv_with_grad(r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  u: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`wkv`, differentiable: autograd's gradients of r, log_w, k, v, u and the given state,
    from those of y and of the new state, as the recurrence's. A broadcast log_w (RWKV-5's one
    row, expanded over the tokens) gets its gradient per token, which the expansion sums."""
    _checked(r, log_w, k, v, u, state)
    return _MatrixWKV.apply(r, log_w, k, v, u, state)
