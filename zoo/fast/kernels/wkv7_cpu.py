"""RWKV-7's WKV recurrence as a small C loop, for CPU inference.

`zoo.rwkv7.wkv7_recurrent` is the generalised delta rule in PyTorch, one token at a time: half
a dozen tensor operations per token and layer whose dispatch, not the arithmetic, is the cost
of decoding. This module runs the same recurrence compiled from the C source below: per head
and token, each row i of the state S (N x N, value channel by key channel) is read along the
removal key (sa = S_i . kk), then updated and read out in one pass over its N entries,
    S_ij <- S_ij w_j - sa (a_j kk_j) + v_i k_j,    y_i = S_i . r,
in SIMD lanes over j, the state staying in the cache. Heads are independent, so a call splits
them between the threads PyTorch uses (ctypes releases the GIL during the call).

`wkv` runs without gradients (prefill and decoding); `wkv_with_grad` is differentiable, an
autograd Function whose backward is `wkv7_backward` below: every input's gradient in one sweep
back in time, two passes over each row of the state and of its gradient, the states
recomputed a chunk at a time from ones kept every BACKWARD_CHUNK tokens. zoo.fast's "wkv7"
route runs them for float32 CPU tensors, and the model keeps its PyTorch paths otherwise (CUDA,
other dtypes, no C compiler). The source is compiled on first use with the system's C compiler
and cached (ckernel.py).
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

/* r, log_w, k, v, kk, a, y: (Bt, T, H, N); S: (Bt, H, N, N), updated in place. Float32,
   row-major. Heads p0 <= p < p1 of the Bt * H (batch, head) pairs only: a call per thread. */
void wkv7_forward(int64_t Bt, int64_t T, int64_t H, int64_t N, int64_t p0, int64_t p1,
                  const float *r, const float *log_w, const float *k, const float *v,
                  const float *kk, const float *a, float *y, float *S) {
    float w[N], ak[N];
    for (int64_t p = p0; p < p1; p++) {
        const int64_t b = p / H, h = p % H;
        float *Sp = S + p * N * N;
        for (int64_t t = 0; t < T; t++) {
            const int64_t at = ((b * T + t) * H + h) * N;
            const float *rt = r + at, *kt = k + at, *kkt = kk + at;
            for (int64_t j = 0; j < N; j++) {
                w[j] = expf(log_w[at + j]);
                ak[j] = a[at + j] * kkt[j];
            }
            for (int64_t i = 0; i < N; i++) {
                float *row = Sp + i * N;
                float sa = 0.0f, acc = 0.0f;
                const float vi = v[at + i];
#pragma omp simd reduction(+:sa)
                for (int64_t j = 0; j < N; j++) sa += row[j] * kkt[j];
#pragma omp simd reduction(+:acc)
                for (int64_t j = 0; j < N; j++) {
                    const float s = row[j] * w[j] - sa * ak[j] + vi * kt[j];
                    row[j] = s;
                    acc += s * rt[j];
                }
                y[at + i] = acc;
            }
        }
    }
}

/* One token of the recurrence for one head: Sn = Sp diag(w) - (Sp kk) b^T + v k^T, b = a * kk.
   Sn may be Sp (in place). (wkv7_step_cpu.py compiles this source with its own, whose
   names these must not take.) */
static inline __attribute__((always_inline)) void
wkv7_token(int64_t N, const float *Sp, float *Sn, const float *w, const float *b,
          const float *kk, const float *k, const float *v) {
    for (int64_t i = 0; i < N; i++) {
        const float *row = Sp + i * N;
        float *out = Sn + i * N;
        float sa = 0.0f;
        const float vi = v[i];
#pragma omp simd reduction(+:sa)
        for (int64_t j = 0; j < N; j++) sa += row[j] * kk[j];
#pragma omp simd
        for (int64_t j = 0; j < N; j++) out[j] = row[j] * w[j] - sa * b[j] + vi * k[j];
    }
}

/* The gradients of one (batch, head) pair's WKV-7. With P_t the state before token t (P_0 the
   given one), sa = P_t kk_t, b_t = a_t * kk_t, P_{t+1} = P_t diag(w_t) - sa b_t^T + v_t k_t^T
   and y_t = P_{t+1} r_t, going back in time with D = dL/dP_{t+1} (from gS, the new state's
   gradient, or 0), first D += gy_t r_t^T and gr_t = P_{t+1}^T gy_t, then, row i by row i,
       gv_i = D_i . k,   gsa_i = -D_i . b,   gk += v_i D_i,   gw += D_i * P_i,   gb -= sa_i D_i,
       gkk += gsa_i P_i,   D_i <- D_i * w + gsa_i kk,
   and g(log w) = w * gw, ga = gb * kk, gkk += gb * a. The states are recomputed a chunk of K
   tokens at a time from ones kept at every chunk's start (starts), into states (K + 1 of
   them). gr, glw, gk, gv, gkk, ga (the pair's rows of (Bt, T, H, N)) and gS0 are written. */
static inline __attribute__((always_inline)) void
wkv7_head_backward(int64_t T, int64_t H, int64_t N, int64_t K, const float *r,
                   const float *log_w, const float *k, const float *v, const float *kk,
                   const float *a, const float *S0, const float *gy, const float *gS, float *gr,
                   float *glw, float *gk, float *gv, float *gkk, float *ga, float *gS0,
                   float *starts, float *states, float *D) {
    float w[N], b[N], cr[N], ck[N], cw[N], cb[N], ckk[N];
    const int64_t NN = N * N, HN = H * N;
    float *P = states;
    for (int64_t x = 0; x < NN; x++) P[x] = S0[x];
    for (int64_t t = 0; t < T; t++) {
        const int64_t at = t * HN;
        if (t % K == 0)
            for (int64_t x = 0; x < NN; x++) starts[(t / K) * NN + x] = P[x];
#pragma omp simd
        for (int64_t j = 0; j < N; j++) {
            w[j] = expf(log_w[at + j]);
            b[j] = a[at + j] * kk[at + j];
        }
        wkv7_token(N, P, P, w, b, kk + at, k + at, v + at);
    }
    for (int64_t x = 0; x < NN; x++) D[x] = gS ? gS[x] : 0.0f;
    for (int64_t chunk = (T + K - 1) / K - 1; chunk >= 0; chunk--) {
        const int64_t t0 = chunk * K, t1 = (t0 + K < T) ? t0 + K : T;
        for (int64_t x = 0; x < NN; x++) states[x] = starts[chunk * NN + x];
        for (int64_t t = t0; t < t1; t++) {
            const int64_t at = t * HN;
#pragma omp simd
            for (int64_t j = 0; j < N; j++) {
                w[j] = expf(log_w[at + j]);
                b[j] = a[at + j] * kk[at + j];
            }
            wkv7_token(N, states + (t - t0) * NN, states + (t + 1 - t0) * NN, w, b, kk + at,
                      k + at, v + at);
        }
        for (int64_t t = t1 - 1; t >= t0; t--) {
            const int64_t at = t * HN;
            const float *rt = r + at, *kt = k + at, *vt = v + at, *kkt = kk + at, *gyt = gy + at;
            const float *Pt = states + (t - t0) * NN, *St = states + (t + 1 - t0) * NN;
#pragma omp simd
            for (int64_t j = 0; j < N; j++) {
                w[j] = expf(log_w[at + j]);
                b[j] = a[at + j] * kkt[j];
                cr[j] = ck[j] = cw[j] = cb[j] = ckk[j] = 0.0f;
            }
            for (int64_t i = 0; i < N; i++) {
                const float *Pi = Pt + i * N, *Si = St + i * N;
                float *Di = D + i * N;
                const float gi = gyt[i], vi = vt[i];
                float sa = 0.0f, gsa = 0.0f, gvi = 0.0f;
#pragma omp simd reduction(+:sa, gsa, gvi)
                for (int64_t j = 0; j < N; j++) {
                    const float d = Di[j] + gi * rt[j];
                    Di[j] = d;
                    cr[j] += gi * Si[j];
                    sa += Pi[j] * kkt[j];
                    gsa -= d * b[j];
                    gvi += d * kt[j];
                }
                gv[at + i] = gvi;
#pragma omp simd
                for (int64_t j = 0; j < N; j++) {
                    const float d = Di[j], p = Pi[j];
                    ck[j] += vi * d;
                    cw[j] += d * p;
                    cb[j] -= sa * d;
                    ckk[j] += gsa * p;
                    Di[j] = d * w[j] + gsa * kkt[j];
                }
            }
#pragma omp simd
            for (int64_t j = 0; j < N; j++) {
                gr[at + j] = cr[j];
                gk[at + j] = ck[j];
                glw[at + j] = w[j] * cw[j];
                ga[at + j] = cb[j] * kkt[j];
                gkk[at + j] = ckk[j] + cb[j] * a[at + j];
            }
        }
    }
    for (int64_t x = 0; x < NN; x++) gS0[x] = D[x];
}

/* The gradients of wkv7_forward for pairs p0 <= p < p1, each as wkv7_head_backward: inputs as
   the forward took them, gy (Bt, T, H, N), gS (Bt, H, N, N) or NULL; written: gr, glw, gk, gv,
   gkk, ga (Bt, T, H, N) and gS0 (Bt, H, N, N). K: tokens per recomputed chunk. Returns 1 when
   the work arrays cannot be allocated, else 0. */
int wkv7_backward(int64_t Bt, int64_t T, int64_t H, int64_t N, int64_t p0, int64_t p1,
                  int64_t K, const float *r, const float *log_w, const float *k,
                  const float *v, const float *kk, const float *a, const float *S0,
                  const float *gy, const float *gS, float *gr, float *glw, float *gk, float *gv,
                  float *gkk, float *ga, float *gS0) {
    const int64_t chunks = (T + K - 1) / K, NN = N * N;
    float *starts = malloc(sizeof(float) * (chunks > 0 ? chunks : 1) * NN);
    float *states = malloc(sizeof(float) * (K + 1) * NN), *D = malloc(sizeof(float) * NN);
    if (!starts || !states || !D) {
        free(starts); free(states); free(D);
        return 1;
    }
    for (int64_t p = p0; p < p1; p++) {
        const int64_t b = p / H, h = p % H, at = (b * T * H + h) * N;
        const float *gSp = gS ? gS + p * NN : 0;
        if (N == 64)
            wkv7_head_backward(T, H, 64, K, r + at, log_w + at, k + at, v + at, kk + at,
                               a + at, S0 + p * NN, gy + at, gSp, gr + at, glw + at, gk + at,
                               gv + at, gkk + at, ga + at, gS0 + p * NN, starts, states, D);
        else
            wkv7_head_backward(T, H, N, K, r + at, log_w + at, k + at, v + at, kk + at,
                               a + at, S0 + p * NN, gy + at, gSp, gr + at, glw + at, gk + at,
                               gv + at, gkk + at, ga + at, gS0 + p * NN, starts, states, D);
    }
    free(starts); free(states); free(D);
    return 0;
}

#ifdef _OPENMP
int omp_get_thread_num(void);
int omp_get_num_threads(void);

/* For training: the forward and the backward over all Bt * H pairs, split between the threads
   of one OpenMP region of PyTorch's runtime (ckernel.py). */
void wkv7_forward_team(int64_t threads, int64_t Bt, int64_t T, int64_t H, int64_t N,
                       const float *r, const float *log_w, const float *k, const float *v,
                       const float *kk, const float *a, float *y, float *S) {
#pragma omp parallel num_threads(threads)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads(), pairs = Bt * H;
        wkv7_forward(Bt, T, H, N, pairs * p / n, pairs * (p + 1) / n, r, log_w, k, v, kk, a,
                     y, S);
    }
}

int wkv7_backward_team(int64_t threads, int64_t Bt, int64_t T, int64_t H, int64_t N,
                       int64_t K, const float *r, const float *log_w, const float *k,
                       const float *v, const float *kk, const float *a, const float *S0,
                       const float *gy, const float *gS, float *gr, float *glw, float *gk,
                       float *gv, float *gkk, float *ga, float *gS0) {
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads(), pairs = Bt * H;
        failed |= wkv7_backward(Bt, T, H, N, pairs * p / n, pairs * (p + 1) / n, K, r, log_w,
                                k, v, kk, a, S0, gy, gS, gr, glw, gk, gv, gkk, ga, gS0);
    }
    return failed;
}
#endif
"""


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("wkv7", SOURCE, openmp=True)
    if library is not None and library.wkv7_forward.argtypes is None:
        library.wkv7_forward.restype = None
        library.wkv7_forward.argtypes = [ctypes.c_int64] * 6 + [ctypes.c_void_p] * 8
        library.wkv7_backward.restype = ctypes.c_int
        library.wkv7_backward.argtypes = [ctypes.c_int64] * 7 + [ctypes.c_void_p] * 16
        if hasattr(library, "wkv7_forward_team"):  # built with OpenMP
            library.wkv7_forward_team.restype = None
            library.wkv7_forward_team.argtypes = [ctypes.c_int64] * 5 + [ctypes.c_void_p] * 8
            library.wkv7_backward_team.restype = ctypes.c_int
            library.wkv7_backward_team.argtypes = [ctypes.c_int64] * 6 + [ctypes.c_void_p] * 16
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def wkv(r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        kk: torch.Tensor, a: torch.Tensor, state: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same contract as `zoo.rwkv7.wkv7_recurrent`, for float32 CPU tensors without
    gradients: r, log_w, k, v, kk, a (B, T, H, N); state (B, H, N, N). Returns y (B, T, H, N)
    and the new state; the given one is unchanged."""
    library = _checked(r, log_w, k, v, kk, a, state)
    return _forward(library, *(t.contiguous() for t in (r, log_w, k, v, kk, a)), state)


def _checked(*tensors: torch.Tensor) -> ctypes.CDLL:
    library = ckernel.checked(_library(), "the compiled WKV-7 kernel", tensors)
    shape = tensors[0].shape
    if len(shape) != 4 or any(t.shape != shape for t in tensors[1:6]) \
            or tensors[6].shape != (shape[0], shape[2], shape[3], shape[3]):
        raise ValueError(f"shapes: r, log_w, k, v, kk, a {[tuple(t.shape) for t in tensors[:6]]}"
                         f", state {tuple(tensors[6].shape)}: expected (B, T, H, N) each and "
                         "(B, H, N, N)")
    return library


def _forward(library: ctypes.CDLL, r, log_w, k, v, kk, a, state, training=False):
    """wkv7_forward on contiguous r, log_w, k, v, kk, a: y and the new state; `training`: the
    pairs split in one OpenMP region where the library has it."""
    tensors = (r, log_w, k, v, kk, a)
    S = state.clone(memory_format=torch.contiguous_format)
    y = torch.empty_like(tensors[0])
    B, T, H, N = y.shape
    pointers = [t.data_ptr() for t in (*tensors, y, S)]
    split(library, "wkv7_forward", channel_ranges(B * T * H * N * N, B * H), (B, T, H, N),
          pointers, openmp=training)
    return y, S


BACKWARD_CHUNK = 32  # tokens whose states the backward recomputes at a time (33 x 16 KiB)


class _WKV7(torch.autograd.Function):
    """wkv7_forward, with wkv7_backward as its backward: the gradients of r, log_w, k, v, kk, a
    and the given state from those of y and of the new state."""

    @staticmethod
    def forward(ctx, r, log_w, k, v, kk, a, state):
        tensors = [t.contiguous() for t in (r, log_w, k, v, kk, a)]
        state = state.contiguous()
        y, S = _forward(_library(), *tensors, state, training=True)
        ctx.save_for_backward(*tensors, state)
        ctx.set_materialize_grads(False)
        return y, S

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, gS):
        r, log_w, k, v, kk, a, state = ctx.saved_tensors
        B, T, H, N = r.shape
        gy = torch.zeros_like(r) if gy is None else gy.contiguous()
        gS = None if gS is None else gS.contiguous()
        grads = [torch.empty_like(r) for _ in range(6)]  # r, log_w, k, v, kk, a
        gS0 = torch.empty_like(state)
        pointers = [t.data_ptr() for t in (r, log_w, k, v, kk, a, state, gy)]
        pointers += [None if gS is None else gS.data_ptr()]
        pointers += [t.data_ptr() for t in (*grads, gS0)]
        codes = split(_library(), "wkv7_backward", channel_ranges(4 * B * T * H * N * N, B * H),
                      (B, T, H, N), (BACKWARD_CHUNK, *pointers))
        if any(codes):
            raise MemoryError("the compiled WKV-7 backward could not allocate its work arrays")
        return (*grads, gS0)


@torch.compiler.disable  # torch.compile runs it between its graphs: it cannot trace the C call
def wkv_with_grad(r: torch.Tensor, log_w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  kk: torch.Tensor, a: torch.Tensor, state: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`wkv`, differentiable: autograd's gradients of r, log_w, k, v, kk, a and the given
    state, from those of y and of the new state, as the recurrence's."""
    _checked(r, log_w, k, v, kk, a, state)
    return _WKV7.apply(r, log_w, k, v, kk, a, state)
