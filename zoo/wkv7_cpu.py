"""RWKV-7's WKV recurrence as a small C loop, for CPU inference.

`zoo.rwkv7.wkv7_recurrent` is the generalised delta rule in PyTorch, one token at a time: half
a dozen tensor operations per token and layer whose dispatch, not the arithmetic, is the cost
of decoding. This module runs the same recurrence compiled from the C source below: per head
and token, each row i of the state S (N x N, value channel by key channel) is read along the
removal key (sa = S_i . kk), then updated and read out in one pass over its N entries,
    S_ij <- S_ij w_j - sa (a_j kk_j) + v_i k_j,    y_i = S_i . r,
in SIMD lanes over j, the state staying in the cache. Heads are independent, so a call splits
them between the threads PyTorch uses (ctypes releases the GIL during the call).

Inference only (no backward): zoo/fast.py's "wkv7" route runs it for float32 CPU tensors
without gradients, prefill and decoding alike, and the model keeps its PyTorch paths otherwise
(training, CUDA, other dtypes, no C compiler). The source is compiled on first use with the
system's C compiler and cached (zoo/ckernel.py).
"""

from __future__ import annotations

import ctypes

import torch

from zoo import ckernel
from zoo.scan_cpu import _channel_ranges, _run

SOURCE = r"""
#include <math.h>
#include <stdint.h>

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
"""


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("wkv7", SOURCE)
    if library is not None and library.wkv7_forward.argtypes is None:
        library.wkv7_forward.restype = None
        library.wkv7_forward.argtypes = [ctypes.c_int64] * 6 + [ctypes.c_void_p] * 8
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
    library = _library()
    if library is None:
        raise RuntimeError("the compiled WKV-7 kernel is not available (no C compiler?)")
    tensors = [t.contiguous() for t in (r, log_w, k, v, kk, a)]
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (*tensors, state)):
        raise ValueError("the compiled WKV-7 kernel takes float32 CPU tensors")
    S = state.clone(memory_format=torch.contiguous_format)
    y = torch.empty_like(tensors[0])
    B, T, H, N = y.shape
    pointers = [t.data_ptr() for t in (*tensors, y, S)]
    _run(lambda lo, hi: library.wkv7_forward(B, T, H, N, lo, hi, *pointers),
         _channel_ranges(B * T * H * N * N, B * H), lambda i: ())
    return y, S
