"""Attention with dropout for CPU float32 training: each head's four matrix products in oneDNN,
the softmax and the dropout in one C pass, a backward written out.

The plain form (zoo.fast.attention_with_dropout's `_attention_rows`: q k^T, softmax, dropout,
times v, differentiated by autograd) runs its products as batched MKL products, which reach
150-190 GFLOP/s on the 2-core AMD Zen 4 host at (8 heads, 1024 x 1024, head size 64), where
oneDNN's matrix multiply reaches 380-400 on one head's matrices
(`python benchmarks/training_parts.py`), and it passes over the (T, S) scores five times
around them (scale, mask, softmax, dropout, and their backward). Here, head by head:

  forward   s = (q / sqrt(hs)) k^T (+ mask);  p = softmax(s);  pd = dropout(p);  y = pd v
  backward  dpd = dy v^T;  dv = pd^T dy;  ds = p * (dp - rowsum(dp * p)) / sqrt(hs) with
            dp = dpd * keep / (1 - p_drop);  dq = ds k;  dk = ds^T q

with `softmax_dropout_forward` computing p, pd and the keep mask of a head's rows in one pass,
and `softmax_dropout_backward` ds (in place of dpd) and pd again (it is not kept: the backward
saves p and the byte mask, less than autograd's p and pd). The mask is dropout_cpu.py's:
element i of a call (flat index over (B, nh, T, S)) is kept when its keyed hash clears the
threshold, so the same key draws the same mask as `dropout_cpu.mask`.

Causal rows are cut in C: query row r of a call whose first row is `first_row` sees keys
0..first_row + r, the rest are 0 in p. A row whose keys are all masked with -inf is 0 in p (its
output 0), as F.scaled_dot_product_attention gives, not the NaNs of a softmax over nothing.

`runs` says what it takes: float32 CPU tensors, a float mask without gradient, a C compiler.
zoo.fast calls it where oneDNN is the linear kernel (zoo.fast.many_rows_kernel) and the rows are
causal or the keys at least zoo.fast.ATTENTION_MIN_KEYS (512; below that, not causal, it was
no faster); elsewhere zoo.fast keeps the plain form, which the tests hold this one to.
"""

from __future__ import annotations

import ctypes
import math

import torch

from zoo.fast.kernels import ckernel, dropout_cpu

SOURCE = dropout_cpu.HASH + r"""
#include <math.h>

/* Rows of a head's scores s (rows x cols, rows contiguous): p = softmax(s) over the first
   n(r) columns of row r (all of them, or first_row + r + 1 when first_row >= 0: causal), 0
   past them; then, when pd is not NULL, dropout as dropout_forward draws it for the flat
   index start + r * cols + c: keep = hash >= threshold, pd = keep ? p * scale : 0. */
void softmax_dropout_forward(int64_t rows, int64_t cols, int64_t first_row, const float *s,
                             float *p, float *pd, uint8_t *keep, int64_t start,
                             uint32_t threshold, float scale, uint32_t key0, uint32_t key1) {
    for (int64_t r = 0; r < rows; r++) {
        const float *sr = s + r * cols;
        float *pr = p + r * cols;
        int64_t n = cols;
        if (first_row >= 0 && first_row + r + 1 < cols) n = first_row + r + 1;
        float m = sr[0];
        for (int64_t c = 1; c < n; c++) m = sr[c] > m ? sr[c] : m;
        /* Every key the row may see masked with -inf: a row of zeros, as SDPA gives. (Told by
           its bits: -ffast-math lets the compiler assume no float is infinite.) */
        union { float f; uint32_t u; } max_bits = { m };
        if (max_bits.u == 0xff800000U) n = 0;
        float sum = 0.0f;
        /* exp of x below -87 is under float's smallest normal: 0 here. The vector expf
           takes such arguments (a padding mask's -3.4e38 minus the max) one lane at a time,
           so they are clamped into its range first and zeroed after. */
#pragma omp simd reduction(+:sum)
        for (int64_t c = 0; c < n; c++) {
            float x = sr[c] - m;
            float e = expf(x > -87.0f ? x : -87.0f);
            e = x > -87.0f ? e : 0.0f;
            pr[c] = e;
            sum += e;
        }
        float inv = n > 0 ? 1.0f / sum : 0.0f;
#pragma omp simd
        for (int64_t c = 0; c < n; c++) pr[c] *= inv;
        for (int64_t c = n; c < cols; c++) pr[c] = 0.0f;
        if (pd == 0) continue;
        float *dr = pd + r * cols;
        uint8_t *kr = keep + r * cols;
        uint32_t base = (uint32_t)(start + r * cols);
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) {
            uint32_t h = mix32(mix32((base + (uint32_t)c) ^ key0) ^ key1);
            uint8_t kept = h >= threshold;
            kr[c] = kept;
            dr[c] = kept ? pr[c] * scale : 0.0f;
        }
    }
}

/* The backward of a head's rows: given p, the keep mask (NULL: no dropout) and dpd, the
   gradient of the dropped probabilities (overwritten by ds), ds = p * (dp - rowsum(dp * p))
   with dp = keep ? dpd * scale : 0; and, when pd is not NULL, pd = keep ? p * scale : 0 again,
   for dv. */
void softmax_dropout_backward(int64_t rows, int64_t cols, const float *p, const uint8_t *keep,
                              float *ds, float *pd, float scale) {
    for (int64_t r = 0; r < rows; r++) {
        const float *pr = p + r * cols;
        float *dr = ds + r * cols;
        float dot = 0.0f;
        if (keep) {
            const uint8_t *kr = keep + r * cols;
#pragma omp simd reduction(+:dot)
            for (int64_t c = 0; c < cols; c++) {
                float dp = kr[c] ? dr[c] * scale : 0.0f;
                dr[c] = dp;
                dot += dp * pr[c];
            }
            if (pd) {
                float *qr = pd + r * cols;
#pragma omp simd
                for (int64_t c = 0; c < cols; c++) qr[c] = kr[c] ? pr[c] * scale : 0.0f;
            }
        } else {
#pragma omp simd reduction(+:dot)
            for (int64_t c = 0; c < cols; c++) dot += dr[c] * pr[c];
        }
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) dr[c] = pr[c] * (dr[c] - dot);
    }
}
"""


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("attention", SOURCE)
    if library is not None and library.softmax_dropout_forward.argtypes is None:
        forward = library.softmax_dropout_forward
        forward.restype = None
        forward.argtypes = ([ctypes.c_int64] * 3 + [ctypes.c_void_p] * 4 + [ctypes.c_int64]
                            + [ctypes.c_uint32, ctypes.c_float] + [ctypes.c_uint32] * 2)
        backward = library.softmax_dropout_backward
        backward.restype = None
        backward.argtypes = [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 4 + [ctypes.c_float]
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x weight^T for matrices x (M, K) and weight (N, K), in oneDNN's matrix multiply."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


def runs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         attn_mask: torch.Tensor | None) -> bool:
    """Whether `attention` takes these inputs: float32 CPU tensors (q, k, v and a float mask),
    no gradient wanted for the mask, fewer than 2^32 scores, and the compiled kernel."""
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (q, k, v))
            and (attn_mask is None or (attn_mask.dtype == torch.float32
                                       and not attn_mask.requires_grad))
            and q.numel() // q.size(-1) * k.size(-2) < dropout_cpu.MAX_ELEMENTS
            and available())


def _mask_of(attn_mask: torch.Tensor | None, b: int, h: int) -> torch.Tensor | None:
    """Head (b, h)'s additive mask from a 4-d one, its broadcast dimensions kept at size 1."""
    if attn_mask is None:
        return None
    return attn_mask[b if attn_mask.size(0) > 1 else 0, h if attn_mask.size(1) > 1 else 0]


def _rows_laid_out(t: torch.Tensor) -> torch.Tensor:
    """t, or a contiguous copy where a head's matrix t[b, h] has strided rows: oneDNN takes
    such a matrix (a head of a (B, T, C) view) some 2000x slower than one whose rows are
    contiguous. A causal block's key prefix of laid-out heads is not copied again."""
    return t if t.stride(-1) == 1 and t.stride(-2) == t.size(-1) else t.contiguous()


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, attn_mask, first_row, p_drop, key):
        library = _library()
        B, nh, T, hs = q.shape
        S = k.size(-2)
        # The scale goes on q, a (T, hs) matrix a head, not on the (T, S) scores.
        qk_scale = 1.0 / math.sqrt(hs)
        q, k, v = q * qk_scale, _rows_laid_out(k), _rows_laid_out(v)
        if attn_mask is not None:  # 4-d, its broadcast dimensions of size 1
            attn_mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + attn_mask.shape)
        probs = torch.empty(B, nh, T, S)
        keep = torch.empty(B, nh, T, S, dtype=torch.uint8) if p_drop > 0 else None
        dropped = torch.empty(T, S) if keep is not None else None  # a head's, reused
        y = torch.empty(B, nh, T, hs)
        scale = 1.0 / (1.0 - p_drop)
        threshold = dropout_cpu.threshold(p_drop) if p_drop > 0 else 0
        row = -1 if first_row is None else first_row
        for i, (b, h) in enumerate((b, h) for b in range(B) for h in range(nh)):
            scores = _product(q[b, h], k[b, h])  # (T, S)
            mask = _mask_of(attn_mask, b, h)
            if mask is not None:
                scores.add_(mask)
            library.softmax_dropout_forward(
                T, S, row, scores.data_ptr(), probs[b, h].data_ptr(),
                dropped.data_ptr() if dropped is not None else None,
                keep[b, h].data_ptr() if keep is not None else None,
                i * T * S, threshold, scale, *key)
            y[b, h] = _product(dropped if dropped is not None else probs[b, h], v[b, h].t())
        ctx.save_for_backward(q, k, v, probs, keep)  # q scaled
        ctx.scale, ctx.qk_scale = scale, qk_scale
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        q, k, v, probs, keep = ctx.saved_tensors
        library = _library()
        dy = _rows_laid_out(dy)
        B, nh, T, hs = q.shape
        S = k.size(-2)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        scratch = torch.empty(T, S) if keep is not None else None  # a head's pd, reused
        for b in range(B):
            for h in range(nh):
                dyh = dy[b, h]
                ds = _product(dyh, v[b, h])  # d(dropped probs) (T, S), becomes ds in place
                dropped = scratch if keep is not None else probs[b, h]
                library.softmax_dropout_backward(
                    T, S, probs[b, h].data_ptr(),
                    keep[b, h].data_ptr() if keep is not None else None, ds.data_ptr(),
                    dropped.data_ptr() if keep is not None else None, ctx.scale)
                dv[b, h] = _product(dyh.t(), dropped.t()).t()  # (dy^T pd)^T = pd^T dy
                dq[b, h] = _product(ds, k[b, h].t())
                dk[b, h] = _product(q[b, h].t(), ds.t()).t()  # (q^T ds)^T = ds^T q
        return dq.mul_(ctx.qk_scale), dk, dv, None, None, None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: torch.Tensor | None, first_row: int | None, p: float,
              key: tuple[int, int] | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) + mask) v with dropout p (0 <= p < 1) on the probabilities, for
    queries at rows first_row.. of a causal attention (None: not causal) over keys 0..S-1;
    q (B, nh, T, hs), k and v (B, nh, S, hs), attn_mask None or additive, broadcasting to
    (B, nh, T, S). `key` fixes the dropout mask (default: drawn as dropout_cpu.py draws)."""
    if not runs(q, k, v, attn_mask):
        raise ValueError("the CPU attention takes float32 CPU tensors and a float32 mask")
    if key is None:
        key = dropout_cpu._key() if p > 0 else (0, 0)
    return _Attention.apply(q, k, v, attn_mask, first_row, p, key)
