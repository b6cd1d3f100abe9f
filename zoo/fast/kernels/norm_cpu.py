"""Mamba-2's gated RMSNorm as a small C loop, forward and backward, for the CPU.

zoo.mamba2.GatedRMSNorm computes, over groups of D / G channels of each token,
    g = y * silu(z),   out = w * g / sqrt(mean(g^2) + eps),
in six PyTorch passes over the (tokens, D) activations forward and about twice as many
backward: 3.75 ms of a `small` layer's training step at 1024 tokens, 7% of the step
(`python reports/train-cpu/gated-norm-probe.py`). Here it is one pass forward, which keeps each
group's 1 / rms, and one backward, which recomputes g from y and z:
    a = w * dout,   dg = rstd a - g rstd^3 mean(a g),
    dy = dg * silu(z),   dz = dg * y * sigmoid(z) (1 + z (1 - sigmoid(z))),
    dw = sum over tokens of dout * g * rstd,
each token's channels in SIMD lanes, tokens split between PyTorch's threads (the weight's
gradient summed from a row per thread).

`gated_rms_norm` has GatedRMSNorm's contract for float32 CPU weights, y float32 and z float32
or (under autocast) bfloat16, differentiable in all three; zoo.fast's "scan" route runs it
for Mamba-2's mixer. The source is compiled on first use with the system's C compiler and
cached (ckernel.py).
"""

from __future__ import annotations

import ctypes

import torch
from torch.autograd.function import once_differentiable

from zoo.fast.kernels import ckernel
from zoo.fast.kernels.ckernel import channel_ranges, run_ranges, split, team

SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* Rows r0 <= r < r1 of y and z (row strides ys, zs; D channels in G groups), w (D): out
   (R, D), rstd (R, G): each group's 1 / sqrt(mean(g^2) + eps). */
void gated_norm_forward(int64_t R, int64_t D, int64_t G, int64_t r0, int64_t r1, const float *y,
                        int64_t ys, const float *z, int64_t zs, const float *w, float eps,
                        float *out, float *rstd) {
    const int64_t Dg = D / G;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t g = 0; g < G; g++) {
            const float *yr = y + r * ys + g * Dg, *zr = z + r * zs + g * Dg, *wg = w + g * Dg;
            float *o = out + r * D + g * Dg, squares = 0.0f;
#pragma omp simd reduction(+:squares)
            for (int64_t c = 0; c < Dg; c++) {
                const float gv = yr[c] * zr[c] / (1.0f + expf(-zr[c]));
                o[c] = gv;
                squares += gv * gv;
            }
            const float rs = 1.0f / sqrtf(squares / Dg + eps);
            rstd[r * G + g] = rs;
#pragma omp simd
            for (int64_t c = 0; c < Dg; c++) o[c] *= rs * wg[c];
        }
}

/* The gradients of rows r0 <= r < r1 from dout (R, D): dy, dz (R, D), and this call's share of
   w's, added into dw (D). */
void gated_norm_backward(int64_t R, int64_t D, int64_t G, int64_t r0, int64_t r1,
                         const float *y, int64_t ys, const float *z, int64_t zs, const float *w,
                         const float *rstd, const float *dout, float *dy, float *dz, float *dw) {
    const int64_t Dg = D / G;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t g = 0; g < G; g++) {
            const float *yr = y + r * ys + g * Dg, *zr = z + r * zs + g * Dg, *wg = w + g * Dg;
            const float *dor = dout + r * D + g * Dg, rs = rstd[r * G + g];
            float *dyr = dy + r * D + g * Dg, *dzr = dz + r * D + g * Dg, *dwg = dw + g * Dg;
            float dot = 0.0f;
#pragma omp simd reduction(+:dot)
            for (int64_t c = 0; c < Dg; c++) {
                const float s = 1.0f / (1.0f + expf(-zr[c])), gv = yr[c] * zr[c] * s;
                dot += wg[c] * dor[c] * gv;
                dwg[c] += dor[c] * gv * rs;
            }
            const float k = rs * rs * rs * dot / Dg;
#pragma omp simd
            for (int64_t c = 0; c < Dg; c++) {
                const float s = 1.0f / (1.0f + expf(-zr[c])), zs_ = zr[c] * s;
                const float dg = wg[c] * dor[c] * rs - yr[c] * zs_ * k;
                dyr[c] = dg * zs_;
                dzr[c] = dg * yr[c] * s * (1.0f + zr[c] * (1.0f - s));
            }
        }
}

#ifdef _OPENMP
int omp_get_thread_num(void);
int omp_get_num_threads(void);

/* For training: the two above over all R rows, split between the threads of one OpenMP region
   of PyTorch's runtime (ckernel.py); thread p adds its share of w's gradient into
   dw + p D. */
void gated_norm_forward_team(int64_t threads, int64_t R, int64_t D, int64_t G, const float *y,
                             int64_t ys, const float *z, int64_t zs, const float *w, float eps,
                             float *out, float *rstd) {
#pragma omp parallel num_threads(threads)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads();
        gated_norm_forward(R, D, G, R * p / n, R * (p + 1) / n, y, ys, z, zs, w, eps, out,
                           rstd);
    }
}

void gated_norm_backward_team(int64_t threads, int64_t R, int64_t D, int64_t G, const float *y,
                              int64_t ys, const float *z, int64_t zs, const float *w,
                              const float *rstd, const float *dout, float *dy, float *dz,
                              float *dw) {
#pragma omp parallel num_threads(threads)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads();
        gated_norm_backward(R, D, G, R * p / n, R * (p + 1) / n, y, ys, z, zs, w, rstd, dout,
                            dy, dz, dw + p * D);
    }
}
#endif
"""


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("gated_norm", SOURCE, openmp=True)
    if library is not None and library.gated_norm_forward.argtypes is None:
        ints, ptr, real = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
        rows = [ptr, ints, ptr, ints, ptr]  # y, its row stride, z, its row stride, w
        forward = rows + [real, ptr, ptr]
        backward = rows + [ptr] * 5
        for name, rest, head in (("gated_norm_forward", forward, 5),
                                 ("gated_norm_backward", backward, 5)):
            getattr(library, name).restype = None
            getattr(library, name).argtypes = [ints] * head + rest
            if hasattr(library, f"{name}_team"):  # built with OpenMP
                getattr(library, f"{name}_team").restype = None
                getattr(library, f"{name}_team").argtypes = [ints] * 4 + rest
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """t (..., D) as rows with contiguous channels (a view of a wider projection stays a view),
    and the row stride in floats."""
    rows = t.reshape(-1, t.size(-1)) if t.stride(-1) == 1 else t.contiguous().view(-1, t.size(-1))
    return rows, rows.stride(0)


class _GatedNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, weight, groups, eps, training):
        shape, D = y.shape, y.size(-1)
        y2, ys = _rows(y)
        z2, zs = _rows(z)
        R = y2.size(0)
        out, rstd = torch.empty(R, D), torch.empty(R, groups)
        split(_library(), "gated_norm_forward", channel_ranges(R * D * 16, R), (R, D, groups),
              (y2.data_ptr(), ys, z2.data_ptr(), zs, weight.data_ptr(), eps, out.data_ptr(),
               rstd.data_ptr()), openmp=training)
        ctx.save_for_backward(y2, z2, weight, rstd)
        ctx.shapes = (shape, groups)
        return out.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        y2, z2, weight, rstd = ctx.saved_tensors
        shape, groups = ctx.shapes
        (R, D), ys, zs = y2.shape, y2.stride(0), z2.stride(0)
        dout = dout.contiguous()
        dy, dz = torch.empty(R, D), torch.empty(R, D)
        ranges = channel_ranges(R * D * 32, R)
        dw = torch.zeros(len(ranges), D)  # a row per thread, summed below
        shared = (y2.data_ptr(), ys, z2.data_ptr(), zs, weight.data_ptr(), rstd.data_ptr(),
                  dout.data_ptr(), dy.data_ptr(), dz.data_ptr())
        library = _library()
        backward_team = team(library, "gated_norm_backward_team")
        if backward_team:
            backward_team(len(ranges), R, D, groups, *shared, dw.data_ptr())
        else:
            run_ranges(lambda lo, hi, part: library.gated_norm_backward(
                R, D, groups, lo, hi, *shared, part), ranges, lambda i: (dw[i].data_ptr(),))
        return dy.view(shape), dz.view(shape), dw.sum(0), None, None, None


@torch.compiler.disable  # torch.compile runs it between its graphs: it cannot trace the C call
def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, groups: int,
                   eps: float) -> torch.Tensor:
    """weight * g / sqrt(mean(g^2) + eps) over `groups` groups of each row's channels, with
    g = y * silu(z) (zoo.mamba2.GatedRMSNorm), for CPU tensors: y and weight float32, z float32
    or bfloat16 (taken to float32, as GatedRMSNorm computes); the result float32 (GatedRMSNorm's
    float32 weight times its normalised g), differentiable in all three."""
    if _library() is None:
        raise RuntimeError("the compiled gated RMSNorm is not available (no C compiler?)")
    if not (all(t.device.type == "cpu" for t in (y, z, weight))
            and y.dtype == weight.dtype == torch.float32
            and z.dtype in (torch.float32, torch.bfloat16)):
        raise ValueError("the compiled gated RMSNorm takes float32 CPU y and weight, and z in "
                         "float32 or bfloat16")
    D = y.size(-1)
    if z.shape != y.shape or weight.shape != (D,) or D % groups:
        raise ValueError(f"shapes: y {tuple(y.shape)}, z {tuple(z.shape)}, weight "
                         f"{tuple(weight.shape)}, {groups} groups: expected y and z alike, "
                         "weight (channels,), the groups dividing the channels")
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (y, z, weight))
    return _GatedNorm.apply(y, z.float(), weight, groups, eps, training)
