"""A language model's cross-entropy as a small C loop, forward and backward, for the CPU.

F.cross_entropy computes log_softmax over the vocabulary (one pass to read the logits, one to
write the log-probabilities, which it keeps for the backward), then gathers the targets'; its
backward fills a zeroed (rows, V) tensor with the targets' gradient and passes it and the kept
log-probabilities through log_softmax's backward into a third, the logits' gradient: three
(rows, V) tensors alive at once at the start of the backward, when every activation is (each
196 MiB for a 50257-word vocabulary at 1024 tokens). Here the forward reads each row of logits
twice (its maximum, then the sum of exponentials, from the cache) and keeps the logits and one
number a row, log sum exp; the backward writes the gradient in one pass,
    d loss / d z_rj = scale (exp(z_rj - lse_r) - [j = t_r]),   scale = d loss / (valid rows),
and zeros for a row whose target is `ignore_index`: two (rows, V) tensors at once. Rows are
split between PyTorch's threads.

`cross_entropy` has F.cross_entropy's contract (mean over the rows whose target is not
`ignore_index`) for float32 CPU logits (rows, V) and int64 targets; zoo.fast's "loss" route runs
it for the models' LMLoss. Where the plain function's answer is not a number (no row to score,
a logit that is not finite) or it raises (a target out of range), the plain function runs, so
that a diverging run shows its NaN and a wrong target its error. The source is compiled on
first use with the system's C compiler and cached (ckernel.py).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from zoo.fast.kernels import ckernel
from zoo.fast.kernels.ckernel import channel_ranges, split

SOURCE = r"""
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Rows r0 <= r < r1 of z (R, V): lse[r] = log sum_j exp(z[r, j]), and loss[r] = lse[r] -
   z[r, t[r]], 0 where t[r] == ignore. */
void cross_entropy_forward(int64_t R, int64_t V, int64_t r0, int64_t r1, const float *z,
                           const int64_t *t, int64_t ignore, float *lse, float *loss) {
    for (int64_t r = r0; r < r1; r++) {
        const float *zr = z + r * V;
        float top = -FLT_MAX, sum = 0.0f;
#pragma omp simd reduction(max:top)
        for (int64_t j = 0; j < V; j++) top = zr[j] > top ? zr[j] : top;
#pragma omp simd reduction(+:sum)
        for (int64_t j = 0; j < V; j++) sum += expf(zr[j] - top);
        lse[r] = top + logf(sum);
        loss[r] = t[r] == ignore ? 0.0f : lse[r] - zr[t[r]];
    }
}

/* The gradient of rows r0 <= r < r1: dz[r, j] = scale (exp(z[r, j] - lse[r]) - [j == t[r]]),
   a row of zeros where t[r] == ignore. */
void cross_entropy_backward(int64_t R, int64_t V, int64_t r0, int64_t r1, const float *z,
                            const int64_t *t, int64_t ignore, const float *lse, float scale,
                            float *dz) {
    for (int64_t r = r0; r < r1; r++) {
        float *dr = dz + r * V;
        if (t[r] == ignore) {
            memset(dr, 0, V * sizeof(float));
            continue;
        }
        const float *zr = z + r * V, l = lse[r];
#pragma omp simd
        for (int64_t j = 0; j < V; j++) dr[j] = expf(zr[j] - l) * scale;
        dr[t[r]] -= scale;
    }
}

#ifdef _OPENMP
int omp_get_thread_num(void);
int omp_get_num_threads(void);

/* The two above over all R rows, split between the threads of one OpenMP region of PyTorch's
   runtime (ckernel.py). */
void cross_entropy_forward_team(int64_t threads, int64_t R, int64_t V, const float *z,
                                const int64_t *t, int64_t ignore, float *lse, float *loss) {
#pragma omp parallel num_threads(threads)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads();
        cross_entropy_forward(R, V, R * p / n, R * (p + 1) / n, z, t, ignore, lse, loss);
    }
}

void cross_entropy_backward_team(int64_t threads, int64_t R, int64_t V, const float *z,
                                 const int64_t *t, int64_t ignore, const float *lse,
                                 float scale, float *dz) {
#pragma omp parallel num_threads(threads)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads();
        cross_entropy_backward(R, V, R * p / n, R * (p + 1) / n, z, t, ignore, lse, scale, dz);
    }
}
#endif
"""


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("cross_entropy", SOURCE, openmp=True)
    if library is not None and library.cross_entropy_forward.argtypes is None:
        ints, ptr, real = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
        forward = [ptr, ptr, ints, ptr, ptr]  # z, t, ignore, lse, loss
        backward = [ptr, ptr, ints, ptr, real, ptr]  # z, t, ignore, lse, scale, dz
        for name, rest in (("cross_entropy_forward", forward),
                           ("cross_entropy_backward", backward)):
            getattr(library, name).restype = None
            getattr(library, name).argtypes = [ints] * 4 + rest
            if hasattr(library, f"{name}_team"):  # built with OpenMP
                getattr(library, f"{name}_team").restype = None
                getattr(library, f"{name}_team").argtypes = [ints] * 3 + rest
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _ranges(R: int, V: int) -> list[tuple[int, int]]:
    return channel_ranges(R * V * 8, R)


class _CrossEntropy(torch.autograd.Function):
    """The mean loss from the forward's per-row numbers, with the written-out backward."""

    @staticmethod
    def forward(ctx, z, targets, ignore_index, lse, losses, valid, overwrite):
        ctx.save_for_backward(z, targets, lse)
        ctx.ignore_index, ctx.valid, ctx.overwrite = ignore_index, valid, overwrite
        return losses.sum() / valid

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        z, targets, lse = ctx.saved_tensors
        R, V = z.shape
        dz = z if ctx.overwrite else torch.empty_like(z)  # each entry read, then written
        split(_library(), "cross_entropy_backward", _ranges(R, V), (R, V),
              (z.data_ptr(), targets.data_ptr(), ctx.ignore_index, lse.data_ptr(),
               float(grad) / ctx.valid, dz.data_ptr()))
        return dz, None, None, None, None, None, None


@torch.compiler.disable  # torch.compile runs it between its graphs: it cannot trace the C call
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
                  overwrite: bool = False) -> torch.Tensor:
    """F.cross_entropy(logits, targets, ignore_index=ignore_index) for float32 CPU logits
    (rows, V) and int64 targets (rows,): the mean over the rows whose target is not
    `ignore_index`, differentiable in the logits. `overwrite`: the backward may write the
    logits' gradient over them (a copy that nothing else reads, as autocast's bfloat16 logits
    taken to float32 are): one (rows, V) tensor less."""
    if _library() is None:
        raise RuntimeError("the compiled cross-entropy is not available (no C compiler?)")
    if not (logits.device.type == targets.device.type == "cpu"
            and logits.dtype == torch.float32 and targets.dtype == torch.int64):
        raise ValueError("the compiled cross-entropy takes float32 CPU logits and int64 targets")
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"shapes: logits {tuple(logits.shape)}, targets "
                         f"{tuple(targets.shape)}: expected (rows, V) and (rows,)")
    R, V = logits.shape
    scored = targets != ignore_index
    valid = int(scored.sum())
    if valid == 0 or V == 0 or not bool(((targets >= 0) & (targets < V) | ~scored).all()):
        return F.cross_entropy(logits, targets, ignore_index=ignore_index)  # NaN, or its error
    z, targets = logits.contiguous(), targets.contiguous()
    lse, losses = torch.empty(R), torch.empty(R)
    split(_library(), "cross_entropy_forward", _ranges(R, V), (R, V),
          (z.data_ptr(), targets.data_ptr(), ignore_index, lse.data_ptr(), losses.data_ptr()))
    if not bool(torch.isfinite(lse).all()):  # a logit that is not finite: the plain NaN or inf
        return F.cross_entropy(logits, targets, ignore_index=ignore_index)
    return _CrossEntropy.apply(z, targets, ignore_index, lse, losses, valid,
                               overwrite and z is logits)
