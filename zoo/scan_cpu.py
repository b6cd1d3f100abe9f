"""Mamba's selective scan as a small C loop, for CPU inference.

`zoo.mamba.selective_scan_recurrent` is the paper's recurrence in PyTorch, one token at a time:
a handful of tensor operations per token and layer whose dispatch is the cost. The chunked scan
(`selective_scan_chunked`) removes the loop over tokens but builds (chunk, d_inner, N) tables
and composes them log2(chunk) times: at 2048 tokens two thirds of Mamba small's forward went
to its concatenations, products and exponentials. This module runs the recurrence itself,
compiled from the C source below: per token and channel, the N state entries decay by
exp(delta A), take delta x B and are read out by C, in SIMD lanes over N, the state (d_inner, N)
staying in the cache. The channels are independent, so a call splits them between the threads
PyTorch uses (ctypes releases the GIL during the call).

`scan` runs it without gradients (inference: prefill and decoding); a gradient takes the
chunked PyTorch path. The source is compiled on first use with the system's C compiler and
cached (zoo/ckernel.py); zoo/fast.py's "scan" route runs it, and without a compiler
`available()` is False and the model keeps its PyTorch paths.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor

import torch

from zoo import ckernel

SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* x, delta, y: (Bt, T, D); A: (D, N); Bm, Cm: (Bt, T, N); h: (Bt, D, N), the state, updated in
   place. Float32, row-major. Channels d0 <= d < d1 only: a call per thread. */
void selective_scan_forward(int64_t Bt, int64_t T, int64_t D, int64_t N, int64_t d0, int64_t d1,
                            const float *x, const float *delta, const float *A,
                            const float *Bm, const float *Cm, float *y, float *h) {
    for (int64_t b = 0; b < Bt; b++) {
        for (int64_t t = 0; t < T; t++) {
            const int64_t row = b * T + t;
            const float *Bt_ = Bm + row * N, *Ct = Cm + row * N;
            for (int64_t d = d0; d < d1; d++) {
                const float dt = delta[row * D + d], u = dt * x[row * D + d];
                const float *Ad = A + d * N;
                float *hd = h + (b * D + d) * N;
                float acc = 0.0f;
#pragma omp simd reduction(+:acc)
                for (int64_t n = 0; n < N; n++) {
                    float s = expf(dt * Ad[n]) * hd[n] + u * Bt_[n];
                    hd[n] = s;
                    acc += s * Ct[n];
                }
                y[row * D + d] = acc;
            }
        }
    }
}
"""

SPLIT_MIN_WORK = 1 << 20  # tokens x channels x N below which one thread does it all
_POOL: ThreadPoolExecutor | None = None


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("selective_scan", SOURCE)
    if library is not None and library.selective_scan_forward.argtypes is None:
        library.selective_scan_forward.restype = None
        library.selective_scan_forward.argtypes = [ctypes.c_int64] * 6 + [ctypes.c_void_p] * 7
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _pool(threads: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < threads:  # noqa: SLF001 (its documented size)
        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="zoo-scan")
    return _POOL


def scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
         C: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same contract as `zoo.mamba.selective_scan_recurrent`, for float32 CPU tensors
    without gradients: x, delta (b, T, d_inner); A (d_inner, N); B, C (b, T, N); state
    (b, d_inner, N). Returns y (b, T, d_inner) and the new state; the given one is unchanged."""
    library = _library()
    if library is None:
        raise RuntimeError("the compiled selective-scan kernel is not available (no C compiler?)")
    tensors = (x, delta, A, B, C, state)
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors):
        raise ValueError("the compiled selective-scan kernel takes float32 CPU tensors")
    x, delta, A, B, C = (t.contiguous() for t in (x, delta, A, B, C))
    h = state.clone(memory_format=torch.contiguous_format)
    y = torch.empty_like(x)
    (batch, T, D), N = x.shape, A.size(1)
    pointers = [t.data_ptr() for t in (x, delta, A, B, C, y, h)]
    threads = min(torch.get_num_threads(), D)
    if threads <= 1 or batch * T * D * N < SPLIT_MIN_WORK:
        library.selective_scan_forward(batch, T, D, N, 0, D, *pointers)
        return y, h
    bounds = [D * i // threads for i in range(threads + 1)]
    pool = _pool(threads)
    runs = [pool.submit(library.selective_scan_forward, batch, T, D, N, lo, hi, *pointers)
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    for run in runs:
        run.result()
    return y, h
