"""Attention with dropout for CPU training, float32 or bfloat16 under autocast: the softmax and
the dropout in one C pass, a backward written out, the products batched or a head at a time.

The plain form (zoo.fast.dropout's `_attention_rows`: q k^T, softmax, dropout, times v,
differentiated by autograd) passes over the (T, S) scores five times around its products (scale,
mask, softmax, dropout, and their backward), and under autocast casts them to float32 and back
as well. Here:

  forward   s = (q a) k^T (+ mask);  p = softmax(s);  pd = dropout(p);  y = pd v
  backward  dpd = dy v^T;  dv = pd^T dy;  ds = p * (dp - rowsum(dp * p)) with
            dp = dpd * keep / (1 - p_drop);  dq = a ds k;  dk = ds^T (q a);  dmask = ds

with `softmax_dropout_forward` computing p, pd and the keep mask of the rows in one pass, and
`softmax_dropout_backward` ds (in place of dpd) and pd again (it is not kept: the backward saves
p and the byte mask, less than autograd's p and pd). The mask is dropout_cpu.py's: element i of
a call (flat index over (B, nh, T, S)) is kept when its keyed hash clears the threshold, so the
same key draws the same mask as `dropout_cpu.mask`. The passes split the rows between PyTorch's
threads (one OpenMP region, ckernel.py), as the products around them do.

In the formulas above, a is the logits' scale, 1/sqrt(hs) unless given (T5's is 1), and dmask is
summed over the dimensions the mask broadcasts over, where the mask wants a gradient (T5's
position bias).

The products are torch.matmul's, every head at once, or with `per_head` oneDNN's matrix
multiply on one head's matrices: in float32 torch.matmul's batched product is MKL's, which ran at
150-190 GFLOP/s on the 2-core AMD Zen 4 host at (8 heads, 1024 x 1024, head size 64) where
oneDNN's ran at 380-400 on one head (`python benchmarks/training_parts.py`), but each call costs
some 40 us, which small heads do not repay; in bfloat16 the batched product is oneDNN's already.
zoo.fast.dropout chooses (PER_HEAD_MIN_KEYS; `python benchmarks/training_parts.py --attention`).

Causal rows are cut in C: query row r of a head, in a call whose first row is `first_row`, sees
keys 0..first_row + r, the rest are 0 in p. A row whose keys are all masked with -inf is 0 in p
(its output 0), as F.scaled_dot_product_attention gives, not the NaNs of a softmax over nothing.

In bfloat16 (q, k and v from autocast's linears) it computes what autocast's PyTorch form does:
bfloat16 products (s, and the gradients dpd, dq, dk, dv), the softmax in float32 from bfloat16
scores, and pd and ds rounded to bfloat16 once as the products' factors; p is kept in float32.

`runs` says what it takes: float32 or bfloat16 CPU tensors, a float mask (with or without a
gradient), a C compiler; elsewhere zoo.fast keeps the plain form, which the tests hold this one
to.
"""

from __future__ import annotations

import ctypes
import math

import torch

from zoo.fast.kernels import ckernel, dropout_cpu
from zoo.fast.kernels.ckernel import channel_ranges, split

SOURCE = dropout_cpu.HASH + dropout_cpu.BF16 + r"""
#include <math.h>

/* The keep bit of element c of a row whose flat index starts at base, as dropout_forward draws
   it. */
static inline uint8_t kept_at(uint32_t base, int64_t c, uint32_t threshold, uint32_t key0,
                              uint32_t key1) {
    return mix32(mix32((base + (uint32_t)c) ^ key0) ^ key1) >= threshold;
}

/* How many keys query row r sees: all cols, or first_row + r + 1 when first_row >= 0
   (causal). */
static inline int64_t visible(int64_t cols, int64_t first_row, int64_t r) {
    return first_row >= 0 && first_row + r + 1 < cols ? first_row + r + 1 : cols;
}

/* One row: p = softmax(s) over its first n columns, 0 past them (p may be s). */
static void softmax_row(int64_t cols, int64_t n, const float *sr, float *pr) {
    float m = sr[0];
    for (int64_t c = 1; c < n; c++) m = sr[c] > m ? sr[c] : m;
    /* Every key the row may see masked with -inf: a row of zeros, as SDPA gives. (Told by
       its bits: -ffast-math lets the compiler assume no float is infinite.) */
    union { float f; uint32_t u; } max_bits = { m };
    if (max_bits.u == 0xff800000U) n = 0;
    float sum = 0.0f;
    /* exp of x below -87 is under float's smallest normal: 0 here. The vector expf takes such
       arguments (a padding mask's -3.4e38 minus the max) one lane at a time, so they are
       clamped into its range first and zeroed after. */
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
}

/* Rows r0..r1 of scores s (rows x cols, rows contiguous; heads of head_rows rows each):
   p = softmax(s) over the columns row r sees (`visible`, r counted within its head); then,
   when pd is not NULL, dropout as dropout_forward draws it for the flat index
   start + r * cols + c: keep = hash >= threshold, pd = keep ? p * scale : 0. */
void softmax_dropout_forward(int64_t rows, int64_t cols, int64_t head_rows, int64_t first_row,
                             int64_t r0, int64_t r1, const float *s, float *p, float *pd,
                             uint8_t *keep, int64_t start, uint32_t threshold, float scale,
                             uint32_t key0, uint32_t key1) {
    for (int64_t r = r0; r < r1; r++) {
        float *pr = p + r * cols;
        softmax_row(cols, visible(cols, first_row, r % head_rows), s + r * cols, pr);
        if (pd == 0) continue;
        float *dr = pd + r * cols;
        uint8_t *kr = keep + r * cols;
        uint32_t base = (uint32_t)(start + r * cols);
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) {
            uint8_t kept = kept_at(base, c, threshold, key0, key1);
            kr[c] = kept;
            dr[c] = kept ? pr[c] * scale : 0.0f;
        }
    }
}

/* The same on bfloat16 scores (autocast's products): p in float32, as autocast's softmax
   gives it, and pd, the product's other factor, in bfloat16: keep ? p * scale : 0 rounded
   once, or p rounded when keep is NULL (no dropout). */
void softmax_dropout_forward_bf16(int64_t rows, int64_t cols, int64_t head_rows,
                                  int64_t first_row, int64_t r0, int64_t r1, const uint16_t *s,
                                  float *p, uint16_t *pd, uint8_t *keep, int64_t start,
                                  uint32_t threshold, float scale, uint32_t key0,
                                  uint32_t key1) {
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *sr = s + r * cols;
        float *pr = p + r * cols;
        uint16_t *dr = pd + r * cols;
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) pr[c] = from_bf16(sr[c]);
        softmax_row(cols, visible(cols, first_row, r % head_rows), pr, pr);
        if (keep == 0) {
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) dr[c] = to_bf16(pr[c]);
            continue;
        }
        uint8_t *kr = keep + r * cols;
        uint32_t base = (uint32_t)(start + r * cols);
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) {
            uint8_t kept = kept_at(base, c, threshold, key0, key1);
            kr[c] = kept;
            dr[c] = kept ? to_bf16(pr[c] * scale) : 0;
        }
    }
}

/* The backward of a head's rows: given p, the keep mask (NULL: no dropout) and dpd, the
   gradient of the dropped probabilities (overwritten by ds), ds = p * (dp - rowsum(dp * p))
   with dp = keep ? dpd * scale : 0; and, when pd is not NULL, pd = keep ? p * scale : 0 again,
   for dv. */
void softmax_dropout_backward(int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                              const float *p, const uint8_t *keep, float *ds,
                              float *pd, float scale) {
    for (int64_t r = r0; r < r1; r++) {
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

/* The same with dpd, ds and pd in bfloat16 (p float32): dp is read from dpd in both passes,
   so it is rounded only as ds; pd (keep ? p * scale : 0, or p without dropout) is always
   written, the bfloat16 factor of dv's product. */
void softmax_dropout_backward_bf16(int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                                   const float *p, const uint8_t *keep,
                                   uint16_t *ds, uint16_t *pd, float scale) {
    for (int64_t r = r0; r < r1; r++) {
        const float *pr = p + r * cols;
        uint16_t *dr = ds + r * cols;
        uint16_t *qr = pd + r * cols;
        float dot = 0.0f;
        if (keep) {
            const uint8_t *kr = keep + r * cols;
#pragma omp simd reduction(+:dot)
            for (int64_t c = 0; c < cols; c++)
                dot += (kr[c] ? from_bf16(dr[c]) * scale : 0.0f) * pr[c];
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) {
                float dp = kr[c] ? from_bf16(dr[c]) * scale : 0.0f;
                dr[c] = to_bf16(pr[c] * (dp - dot));
                qr[c] = kr[c] ? to_bf16(pr[c] * scale) : 0;
            }
        } else {
#pragma omp simd reduction(+:dot)
            for (int64_t c = 0; c < cols; c++) dot += from_bf16(dr[c]) * pr[c];
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) {
                dr[c] = to_bf16(pr[c] * (from_bf16(dr[c]) - dot));
                qr[c] = to_bf16(pr[c]);
            }
        }
    }
}
#ifdef _OPENMP
int omp_get_thread_num(void);
int omp_get_num_threads(void);

/* The four above over all of a head's rows, split between the threads of one OpenMP region
   of PyTorch's runtime (ckernel.py): the passes ran on one core while the head's products ran
   on all of them. */
#define ROWS_OF_THIS_THREAD \
    const int64_t t = omp_get_thread_num(), n = omp_get_num_threads(); \
    const int64_t r0 = rows * t / n, r1 = rows * (t + 1) / n

void softmax_dropout_forward_team(int64_t threads, int64_t rows, int64_t cols,
                                  int64_t head_rows, int64_t first_row, const float *s, float *p,
                                  float *pd, uint8_t *keep, int64_t start, uint32_t threshold,
                                  float scale, uint32_t key0, uint32_t key1) {
#pragma omp parallel num_threads(threads)
    {
        ROWS_OF_THIS_THREAD;
        softmax_dropout_forward(rows, cols, head_rows, first_row, r0, r1, s, p, pd, keep, start,
                                threshold, scale, key0, key1);
    }
}

void softmax_dropout_forward_bf16_team(int64_t threads, int64_t rows, int64_t cols,
                                       int64_t head_rows, int64_t first_row, const uint16_t *s,
                                       float *p, uint16_t *pd, uint8_t *keep, int64_t start,
                                       uint32_t threshold, float scale, uint32_t key0,
                                       uint32_t key1) {
#pragma omp parallel num_threads(threads)
    {
        ROWS_OF_THIS_THREAD;
        softmax_dropout_forward_bf16(rows, cols, head_rows, first_row, r0, r1, s, p, pd, keep,
                                     start, threshold, scale, key0, key1);
    }
}

void softmax_dropout_backward_team(int64_t threads, int64_t rows, int64_t cols, const float *p,
                                   const uint8_t *keep, float *ds, float *pd, float scale) {
#pragma omp parallel num_threads(threads)
    {
        ROWS_OF_THIS_THREAD;
        softmax_dropout_backward(rows, cols, r0, r1, p, keep, ds, pd, scale);
    }
}

void softmax_dropout_backward_bf16_team(int64_t threads, int64_t rows, int64_t cols,
                                        const float *p, const uint8_t *keep, uint16_t *ds,
                                        uint16_t *pd, float scale) {
#pragma omp parallel num_threads(threads)
    {
        ROWS_OF_THIS_THREAD;
        softmax_dropout_backward_bf16(rows, cols, r0, r1, p, keep, ds, pd, scale);
    }
}
#endif
"""


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("attention", SOURCE, openmp=True)
    if library is not None and library.softmax_dropout_forward.argtypes is None:
        ints, ptr, word, real = ctypes.c_int64, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_float
        # after (rows, cols[, head_rows, first_row]) and a range of rows:
        forward = [ptr] * 4 + [ints, word, real, word, word]  # s, p, pd, keep, start, ...
        backward = [ptr] * 4 + [real]  # p, keep, ds, pd, scale
        for name, rest, head in (("softmax_dropout_forward", forward, 4),
                                 ("softmax_dropout_backward", backward, 2)):
            for suffix in ("", "_bf16"):
                getattr(library, name + suffix).restype = None
                getattr(library, name + suffix).argtypes = [ints] * (head + 2) + rest
                if hasattr(library, f"{name}{suffix}_team"):  # built with OpenMP
                    getattr(library, f"{name}{suffix}_team").restype = None
                    getattr(library, f"{name}{suffix}_team").argtypes = [ints] * (head + 1) + rest
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x weight^T for matrices x (M, K) and weight (N, K), in oneDNN's matrix multiply."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


DTYPES = (torch.float32, torch.bfloat16)  # q, k and v's, all three the same


def runs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         attn_mask: torch.Tensor | None) -> bool:
    """Whether `attention` takes these inputs: float32 or bfloat16 CPU tensors (q, k and v of
    one dtype, a float32 mask or one of theirs, on the CPU), fewer than 2^32 scores, and the
    compiled kernel."""
    return (q.dtype in DTYPES
            and all(t.device.type == "cpu" and t.dtype == q.dtype for t in (q, k, v))
            and (attn_mask is None or (attn_mask.dtype in (torch.float32, q.dtype)
                                       and attn_mask.device.type == "cpu"))
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


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _forward_pass(library, rows: int, head_rows: int, first_row: int, scores, probs, dropped,
                  keep, start: int, threshold: int, scale: float, key) -> None:
    """softmax_dropout_forward (its bfloat16 form for bfloat16 scores) over `rows` rows of
    scores, heads of `head_rows` rows whose first score has flat index `start`, the rows split
    between the threads from 65536 scores (SPLIT_MIN_WORK / 16)."""
    cols = scores.size(-1)
    suffix = "_bf16" if scores.dtype == torch.bfloat16 else ""
    split(library, f"softmax_dropout_forward{suffix}", channel_ranges(rows * cols * 16, rows),
          (rows, cols, head_rows, first_row),
          (scores.data_ptr(), probs.data_ptr(), _pointer(dropped), _pointer(keep), start,
           threshold, scale, *key))


def _backward_pass(library, rows: int, probs, keep, ds, dropped, scale: float) -> None:
    """softmax_dropout_backward (bfloat16 form for a bfloat16 ds) over `rows` rows, split."""
    cols = ds.size(-1)
    suffix = "_bf16" if ds.dtype == torch.bfloat16 else ""
    split(library, f"softmax_dropout_backward{suffix}", channel_ranges(rows * cols * 16, rows),
          (rows, cols), (probs.data_ptr(), _pointer(keep), ds.data_ptr(), _pointer(dropped),
                         scale))


class _Attention(torch.autograd.Function):
    """The products batched (torch.matmul's, every head at once), or `per_head`, each product
    oneDNN's on one head's matrices: at 1024 float32 keys about twice MKL's batched product,
    torch.matmul's in float32, but each call costs some 40 us more, which small heads do not
    repay; in bfloat16 torch.matmul's batched product is oneDNN's already."""

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, first_row, p_drop, key, per_head, qk_scale):
        library = _library()
        B, nh, T, hs = q.shape
        S = k.size(-2)
        # The scale goes on q, a (T, hs) matrix a head, not on the (T, S) scores.
        q, k, v = q * qk_scale, _rows_laid_out(k), _rows_laid_out(v)
        ctx.mask_shape = ctx.mask_dtype = None
        if attn_mask is not None:  # 4-d, its broadcast dimensions of size 1
            ctx.mask_shape, ctx.mask_dtype = attn_mask.shape, attn_mask.dtype
            attn_mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + attn_mask.shape)
        probs = torch.empty(B, nh, T, S)  # float32, as autocast's softmax gives them
        keep = torch.empty(B, nh, T, S, dtype=torch.uint8) if p_drop > 0 else None
        scale = 1.0 / (1.0 - p_drop)
        threshold = dropout_cpu.threshold(p_drop) if p_drop > 0 else 0
        row = -1 if first_row is None else first_row
        # The dropped probabilities, the products' factor: in bfloat16 also without dropout
        dropping = keep is not None or q.dtype == torch.bfloat16
        if not per_head:
            scores = torch.matmul(q, k.transpose(-2, -1))  # (B, nh, T, S)
            if attn_mask is not None:
                scores.add_(attn_mask)
            dropped = torch.empty_like(scores) if dropping else None
            _forward_pass(library, B * nh * T, T, row, scores, probs, dropped, keep, 0,
                          threshold, scale, key)
            y = torch.matmul(dropped if dropping else probs, v)
        else:
            dropped = torch.empty(T, S, dtype=q.dtype) if dropping else None  # a head's
            y = torch.empty(B, nh, T, hs, dtype=q.dtype)
            for i, (b, h) in enumerate((b, h) for b in range(B) for h in range(nh)):
                scores = _product(q[b, h], k[b, h])  # (T, S)
                mask = _mask_of(attn_mask, b, h)
                if mask is not None:
                    scores.add_(mask)
                _forward_pass(library, T, T, row, scores, probs[b, h], dropped,
                              None if keep is None else keep[b, h], i * T * S, threshold,
                              scale, key)
                y[b, h] = _product(dropped if dropped is not None else probs[b, h],
                                   v[b, h].t())
        ctx.save_for_backward(q, k, v, probs, keep)  # q scaled
        ctx.scale, ctx.qk_scale, ctx.per_head = scale, qk_scale, per_head
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        q, k, v, probs, keep = ctx.saved_tensors
        library = _library()
        B, nh, T, hs = q.shape
        S = k.size(-2)
        dropping = keep is not None or q.dtype == torch.bfloat16
        # The mask's gradient is ds summed over the dimensions it broadcasts over, in float32
        mask_4d = None
        if ctx.needs_input_grad[3]:
            mask_4d = (1,) * (4 - len(ctx.mask_shape)) + tuple(ctx.mask_shape)
        if not ctx.per_head:
            ds = torch.matmul(dy, v.transpose(-2, -1))  # d(dropped probs), becomes ds in place
            dropped = torch.empty_like(ds) if dropping else None
            _backward_pass(library, B * nh * T, probs, keep, ds, dropped, ctx.scale)
            dv = torch.matmul((dropped if dropping else probs).transpose(-2, -1), dy)
            dq, dk = torch.matmul(ds, k), torch.matmul(ds.transpose(-2, -1), q)
            dmask = None if mask_4d is None else ds.float().sum_to_size(mask_4d)
        else:
            dy = _rows_laid_out(dy)
            dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            scratch = torch.empty(T, S, dtype=q.dtype) if dropping else None  # a head's pd
            dmask = None if mask_4d is None else torch.zeros(mask_4d)
            for b in range(B):
                for h in range(nh):
                    dyh = dy[b, h]
                    ds = _product(dyh, v[b, h])  # d(dropped probs) (T, S), becomes ds in place
                    _backward_pass(library, T, probs[b, h],
                                   None if keep is None else keep[b, h], ds, scratch, ctx.scale)
                    dropped = scratch if scratch is not None else probs[b, h]
                    dv[b, h] = _product(dyh.t(), dropped.t()).t()  # (dy^T pd)^T = pd^T dy
                    dq[b, h] = _product(ds, k[b, h].t())
                    dk[b, h] = _product(q[b, h].t(), ds.t()).t()  # (q^T ds)^T = ds^T q
                    if dmask is not None:
                        head = _mask_of(dmask, b, h)
                        head.add_(ds.float().sum_to_size(head.shape))
        if dmask is not None:
            dmask = dmask.reshape(ctx.mask_shape).to(ctx.mask_dtype)
        return dq.mul_(ctx.qk_scale), dk, dv, dmask, None, None, None, None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: torch.Tensor | None, first_row: int | None, p: float,
              key: tuple[int, int] | None = None, per_head: bool = False,
              scale: float | None = None) -> torch.Tensor:
    """softmax(scale q k^T + mask) v with dropout p (0 <= p < 1) on the probabilities, for
    queries at rows first_row.. of a causal attention (None: not causal) over keys 0..S-1;
    q (B, nh, T, hs), k and v (B, nh, S, hs), attn_mask None or additive, broadcasting to
    (B, nh, T, S), with its gradient where it wants one; `scale` 1/sqrt(hs) when None.
    `key` fixes the dropout mask (default: drawn as dropout_cpu.py draws). `per_head`: the
    products oneDNN's a head at a time, not torch.matmul's batched ones."""
    if not runs(q, k, v, attn_mask):
        raise ValueError("the CPU attention takes float32 or bfloat16 CPU tensors of one "
                         "dtype and a float32 mask or one of theirs")
    if key is None:
        key = dropout_cpu._key() if p > 0 else (0, 0)
    qk_scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    return _Attention.apply(q, k, v, attn_mask, first_row, p, key, per_head, qk_scale)
