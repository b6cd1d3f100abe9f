"""The state-space models' short causal convolution and its SiLU as a small C loop, forward and
backward, for the CPU.

Mamba and Mamba-2 run their inputs (b, T, channels) through a depthwise convolution of k = 4
taps over the current token and the k - 1 before it, continued across calls through a conv
state, then SiLU (zoo.layers.causal_depthwise_conv). In PyTorch that is a concatenation that
transposes the input to channels-first, F.conv1d, a transposed view back, the SiLU, and the
copies the scan's contiguous input and the backward make of those views: about 15 ms of a
Mamba small layer's 1024-token training step (`python benchmarks/training_parts.py --profile
mamba:1024`). Here it is one pass over the tokens in their own layout, each token's row of
channels in SIMD lanes:
    pre_t = bias + sum_i w_i * x_{t + i - (k - 1)},     out_t = pre_t * sigmoid(pre_t),
with x_s for s < 0 read from the conv state. The backward recomputes pre_t rather than storing
it, and writes the gradients of x, the conv state, the weights and the bias in two passes (the
pre-activations' gradients, then their transposed convolution). Channels are independent, so a
call splits them between the threads PyTorch uses.

`conv_silu` has `causal_depthwise_conv`'s contract followed by the SiLU, for float32 CPU tensors,
differentiable; zoo.fast's "scan" route runs it for Mamba's and Mamba-2's mixers. The source
is compiled on first use with the system's C compiler and cached (ckernel.py).
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

/* x: row (b, t) at x + b * xb + t * xt, its C channels contiguous; state: (Bt, C, K - 1), the
   K - 1 inputs before x; wT: (K, C), tap i of every channel (tap K - 1 on the current token);
   bias: (C) or NULL. Row t of pre (C floats) for channels c0 <= c < c1. */
static inline void conv_row(int64_t b, int64_t t, int64_t C, int64_t K, int64_t c0, int64_t c1,
                            const float *x, int64_t xb, int64_t xt, const float *state,
                            const float *wT, const float *bias, float *pre) {
#pragma omp simd
    for (int64_t c = c0; c < c1; c++) pre[c] = bias ? bias[c] : 0.0f;
    for (int64_t i = 0; i < K; i++) {
        const int64_t s = t + i - (K - 1);
        const float *wi = wT + i * C;
        if (s >= 0) {
            const float *row = x + b * xb + s * xt;
#pragma omp simd
            for (int64_t c = c0; c < c1; c++) pre[c] += wi[c] * row[c];
        } else {
            const float *st = state + b * C * (K - 1) + (K - 1 + s);
            for (int64_t c = c0; c < c1; c++) pre[c] += wi[c] * st[c * (K - 1)];
        }
    }
}

/* out (Bt, T, C), contiguous: SiLU of the convolution, channels c0 <= c < c1. */
void conv_silu_forward(int64_t Bt, int64_t T, int64_t C, int64_t K, int64_t c0, int64_t c1,
                       const float *x, int64_t xb, int64_t xt, const float *state,
                       const float *wT, const float *bias, float *out) {
    for (int64_t b = 0; b < Bt; b++)
        for (int64_t t = 0; t < T; t++) {
            float *o = out + (b * T + t) * C;
            conv_row(b, t, C, K, c0, c1, x, xb, xt, state, wT, bias, o);
#pragma omp simd
            for (int64_t c = c0; c < c1; c++) o[c] = o[c] / (1.0f + expf(-o[c]));
        }
}

/* The gradients, for channels c0 <= c < c1, from gout (Bt, T, C): first, token by token, the
   pre-activations' gradients gpre = gout * silu'(pre) (into gpre, (Bt, T, C)), with the
   weights' (gwT, (K, C)) and the bias's (gbias, (C), or NULL) summed over tokens and
   sequences; then x's (gx, (Bt, T, C)) and the state's (gstate, (Bt, C, K - 1)), each input's
   sum over the outputs that read it: gx_s = sum_i w_i gpre_{s + (K - 1) - i}. */
void conv_silu_backward(int64_t Bt, int64_t T, int64_t C, int64_t K, int64_t c0, int64_t c1,
                        const float *x, int64_t xb, int64_t xt, const float *state,
                        const float *wT, const float *bias, const float *gout, float *gpre,
                        float *gx, float *gstate, float *gwT, float *gbias) {
    for (int64_t i = 0; i < K; i++)
        for (int64_t c = c0; c < c1; c++) gwT[i * C + c] = 0.0f;
    if (gbias)
        for (int64_t c = c0; c < c1; c++) gbias[c] = 0.0f;
    for (int64_t b = 0; b < Bt; b++) {
        for (int64_t t = 0; t < T; t++) {
            float *g = gpre + (b * T + t) * C;
            const float *go = gout + (b * T + t) * C;
            conv_row(b, t, C, K, c0, c1, x, xb, xt, state, wT, bias, g);
#pragma omp simd
            for (int64_t c = c0; c < c1; c++) {
                const float p = g[c], s = 1.0f / (1.0f + expf(-p));
                g[c] = go[c] * s * (1.0f + p * (1.0f - s));
            }
            if (gbias)
#pragma omp simd
                for (int64_t c = c0; c < c1; c++) gbias[c] += g[c];
            for (int64_t i = 0; i < K; i++) {
                const int64_t s = t + i - (K - 1);
                float *gwi = gwT + i * C;
                if (s >= 0) {
                    const float *row = x + b * xb + s * xt;
#pragma omp simd
                    for (int64_t c = c0; c < c1; c++) gwi[c] += g[c] * row[c];
                } else {
                    const float *st = state + b * C * (K - 1) + (K - 1 + s);
                    for (int64_t c = c0; c < c1; c++) gwi[c] += g[c] * st[c * (K - 1)];
                }
            }
        }
        /* inputs s = -(K - 1) .. T - 1: read by outputs t = s + (K - 1) - i, 0 <= t < T */
        for (int64_t s = -(K - 1); s < T; s++) {
            float acc_buf[c1 - c0 > 0 ? c1 - c0 : 1];
            float *acc = acc_buf - c0;
#pragma omp simd
            for (int64_t c = c0; c < c1; c++) acc[c] = 0.0f;
            for (int64_t i = 0; i < K; i++) {
                const int64_t t = s + (K - 1) - i;
                if (t < 0 || t >= T) continue;
                const float *g = gpre + (b * T + t) * C, *wi = wT + i * C;
#pragma omp simd
                for (int64_t c = c0; c < c1; c++) acc[c] += wi[c] * g[c];
            }
            if (s >= 0) {
                float *out = gx + (b * T + s) * C;
#pragma omp simd
                for (int64_t c = c0; c < c1; c++) out[c] = acc[c];
            } else {
                float *out = gstate + b * C * (K - 1) + (K - 1 + s);
                for (int64_t c = c0; c < c1; c++) out[c * (K - 1)] = acc[c];
            }
        }
    }
}

#ifdef _OPENMP
int omp_get_thread_num(void);
int omp_get_num_threads(void);

/* For training: the two above over all C channels, split between the threads of one OpenMP
   region of PyTorch's runtime (ckernel.py). */
void conv_silu_forward_team(int64_t threads, int64_t Bt, int64_t T, int64_t C, int64_t K,
                            const float *x, int64_t xb, int64_t xt, const float *state,
                            const float *wT, const float *bias, float *out) {
#pragma omp parallel num_threads(threads)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads();
        conv_silu_forward(Bt, T, C, K, C * p / n, C * (p + 1) / n, x, xb, xt, state, wT, bias,
                          out);
    }
}

void conv_silu_backward_team(int64_t threads, int64_t Bt, int64_t T, int64_t C, int64_t K,
                             const float *x, int64_t xb, int64_t xt, const float *state,
                             const float *wT, const float *bias, const float *gout,
                             float *gpre, float *gx, float *gstate, float *gwT, float *gbias) {
#pragma omp parallel num_threads(threads)
    {
        const int64_t p = omp_get_thread_num(), n = omp_get_num_threads();
        conv_silu_backward(Bt, T, C, K, C * p / n, C * (p + 1) / n, x, xb, xt, state, wT, bias,
                           gout, gpre, gx, gstate, gwT, gbias);
    }
}
#endif
"""


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("conv_silu", SOURCE, openmp=True)
    if library is not None and library.conv_silu_forward.argtypes is None:
        ints, ptr = ctypes.c_int64, ctypes.c_void_p
        library.conv_silu_forward.restype = None
        library.conv_silu_forward.argtypes = [ints] * 6 + [ptr, ints, ints] + [ptr] * 4
        library.conv_silu_backward.restype = None
        library.conv_silu_backward.argtypes = [ints] * 6 + [ptr, ints, ints] + [ptr] * 9
        if hasattr(library, "conv_silu_forward_team"):  # built with OpenMP
            library.conv_silu_forward_team.restype = None
            library.conv_silu_forward_team.argtypes = [ints] * 5 + [ptr, ints, ints] + [ptr] * 4
            library.conv_silu_backward_team.restype = None
            library.conv_silu_backward_team.argtypes = [ints] * 5 + [ptr, ints, ints] + [ptr] * 9
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """x (b, T, C) with its channels contiguous (a view of a wider projection stays a view),
    and its batch and token strides in floats."""
    if x.stride(2) != 1:
        x = x.contiguous()
    return x, x.stride(0), x.stride(1)


class _ConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, state, weight, bias, training):
        library = _library()
        x, xb, xt = _rows(x)
        state = state.contiguous()
        B, T, C = x.shape
        K = weight.size(-1)
        wT = weight.reshape(C, K).t().contiguous()
        out = torch.empty(B, T, C)
        pointers = (x.data_ptr(), xb, xt, state.data_ptr(), wT.data_ptr(),
                    None if bias is None else bias.data_ptr(), out.data_ptr())
        split(library, "conv_silu_forward", channel_ranges(B * T * C * K, C), (B, T, C, K),
              pointers, openmp=training)
        ctx.save_for_backward(x, state, wT, bias)
        ctx.weight_shape = weight.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        x, state, wT, bias = ctx.saved_tensors
        x, xb, xt = _rows(x)
        B, T, C = x.shape
        K = wT.size(0)
        gout = gout.contiguous()
        gpre, gx = torch.empty(B, T, C), torch.empty(B, T, C)
        gstate, gwT = torch.empty_like(state), torch.empty(K, C)
        gbias = None if bias is None else torch.empty(C)
        pointers = (x.data_ptr(), xb, xt, state.data_ptr(), wT.data_ptr(),
                    None if bias is None else bias.data_ptr(), gout.data_ptr(), gpre.data_ptr(),
                    gx.data_ptr(), gstate.data_ptr(), gwT.data_ptr(),
                    None if gbias is None else gbias.data_ptr())
        split(_library(), "conv_silu_backward", channel_ranges(3 * B * T * C * K, C),
              (B, T, C, K), pointers)
        return gx, gstate, gwT.t().reshape(ctx.weight_shape), gbias, None


@torch.compiler.disable  # torch.compile runs it between its graphs: it cannot trace the C call
def conv_silu(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """SiLU(causal_depthwise_conv(x, conv_state, weight, bias)) and the new conv state, for
    float32 CPU tensors, with gradients for all four: x (b, T, channels), any strides;
    conv_state (b, channels, k - 1); weight (channels, 1, k); bias (channels,) or None."""
    tensors = (x, conv_state, weight) + (() if bias is None else (bias,))
    ckernel.checked(_library(), "the compiled convolution", tensors)
    B, T, C = x.shape
    K = weight.size(-1)
    if weight.shape != (C, 1, K) or conv_state.shape != (B, C, K - 1) or \
            (bias is not None and bias.shape != (C,)):
        raise ValueError(f"shapes: x {tuple(x.shape)}, conv_state {tuple(conv_state.shape)}, "
                         f"weight {tuple(weight.shape)}, bias "
                         f"{None if bias is None else tuple(bias.shape)}: expected (b, T, C), "
                         "(b, C, k - 1), (C, 1, k), (C,)")
    training = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    out = _ConvSiLU.apply(x, conv_state, weight, bias, training)
    if K == 1:
        return out, conv_state
    window = torch.cat([conv_state, x[:, -(K - 1):].transpose(1, 2)], dim=2)
    return out, window[:, :, window.size(2) - (K - 1):]
