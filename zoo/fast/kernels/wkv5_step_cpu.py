"""A decoding step of an RWKV-5 or RWKV-6 block as one compiled call, for CPU inference.

Decoding one token, a block of RWKV-6 small runs about 250 PyTorch operations in the plain
path, almost all on vectors of 512 floats: their dispatch, not their arithmetic, took half of a
decoding step on the 2-core AMD EPYC this project is measured on (RWKV-6 small: ~5 of ~10 ms a
token, where its weights stream in 4.2 ms). This module runs the whole block for a few rows,
written out in C from the model files (zoo/rwkv5.py, zoo/rwkv6.py), which stay its oracle:
    x = LN0(x) (block 0);  xa = LN1(x);  the token shift and mixes of xa with the cached att_x
        (RWKV-5: one learned mix per input; RWKV-6: the data-dependent mixes, tanh(. W1) W2,
        and the decay's adapter);
    r, k, v, g = products of the mixes (g through SiLU);  the matrix WKV per head, from the
        cached state to a new one, its GroupNorm (ln_x) and the gate (wkv5_cpu.py's loop);
    x += W_o y;  xf = LN2(x);  x += sigmoid(W_r xf_r) * W_v relu(W_k xf_k)^2 (the channel mix,
        shifted against the cached ffn_x);
returning x and the new att_x (the last xa), WKV state and ffn_x; the given ones are unchanged.
The weight products are matvec_cpu.py's, called through a pointer to that library, so they
share its helper threads (which never hold up the caller) and its results bit for bit.
The C pieces any block step needs (BLOCK_SOURCE: the norms, the adapters' products, the token
shift, the weight products) and the Python call around it (load_step, block_parts, run_step)
serve RWKV-7's step, wkv7_step_cpu.py, as well.

Inference only: zoo.fast's "wkv5" route runs it for float32 CPU blocks without gradients on
at most FEW_ROWS rows (batch x tokens; the step takes up to matvec_cpu.MAX_ROWS); longer inputs
(prefill) take the blocks' forward, whose products are matrix multiplies. The source is
compiled on first use with the system's C compiler and cached (ckernel.py).
"""

from __future__ import annotations

import ctypes

import torch

from zoo.fast.kernels import ckernel, matvec_cpu, wkv5_cpu

# The C pieces every block step shares (wkv7_step_cpu.py's too): the norms, the adapters'
# vector-matrix product, the token shift, and the weight products through matvec_cpu.py.
BLOCK_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t (*matvec_fn)(int64_t, int64_t, int64_t, int64_t, int, const float *,
                              const float *, const float *, float *);

static void layer_norm(int64_t d, const float *x, const float *w, const float *b, float eps,
                       float *y) {
    float mean = 0.0f, var = 0.0f;
#pragma omp simd reduction(+:mean)
    for (int64_t i = 0; i < d; i++) mean += x[i];
    mean /= d;
#pragma omp simd reduction(+:var)
    for (int64_t i = 0; i < d; i++) var += (x[i] - mean) * (x[i] - mean);
    const float rstd = 1.0f / sqrtf(var / d + eps);
#pragma omp simd
    for (int64_t i = 0; i < d; i++) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
}

/* A block's input norms over its R rows: LN0 of x in place (block 0: ln0_w not NULL), then LN1
   of x into xa, the time mix's input. */
static void input_norms(int64_t R, int64_t d, const float *ln0_w, const float *ln0_b,
                        const float *ln1_w, const float *ln1_b, float eps, float *x, float *xa) {
    for (int64_t row = 0; row < R; row++) {
        float *xrow = x + row * d;
        if (ln0_w) layer_norm(d, xrow, ln0_w, ln0_b, eps, xrow);
        layer_norm(d, xrow, ln1_w, ln1_b, eps, xa + row * d);
    }
}

/* The last row of each of the Bt sequences of T rows: the token shift's cached input. */
static void last_rows(int64_t Bt, int64_t T, int64_t d, const float *rows, float *last) {
    for (int64_t b = 0; b < Bt; b++)
        memcpy(last + b * d, rows + (b * T + T - 1) * d, sizeof(float) * d);
}

/* y (n) = x (m) W, W (m, n) row-major: the adapters' layout (x @ W). */
static void vector_matrix(int64_t m, int64_t n, const float *x, const float *W, float *y) {
    for (int64_t j = 0; j < n; j++) y[j] = 0.0f;
    for (int64_t i = 0; i < m; i++) {
        const float xi = x[i];
        const float *row = W + i * n;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) y[j] += xi * row[j];
    }
}

/* The token shift: the input of the token before row `row` (of rows b * T + t, width d), the
   cached one (row b of `cached`) for a sequence's first token. */
static inline const float *previous(int64_t row, int64_t T, int64_t d, const float *rows,
                                    const float *cached) {
    return row % T ? rows + (row - 1) * d : cached + row / T * d;
}

/* y = a + (b - a) mu, elementwise over d: the mixes of a token with the one before it. */
static void lerp(int64_t d, const float *a, const float *b, const float *mu, float *y) {
#pragma omp simd
    for (int64_t i = 0; i < d; i++) y[i] = a[i] + (b[i] - a[i]) * mu[i];
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

static void squared_relu(int64_t n, float *h) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        const float relu = h[i] > 0.0f ? h[i] : 0.0f;
        h[i] = relu * relu;
    }
}

static matvec_fn matvec = 0;
static uint64_t last_product = 0xffffffffu;  /* matvec's answer for the last shared product */

void block_step_init(matvec_fn product) { matvec = product; }

/* y (R, out) = x (R, in) W^T, W (out, in): zoo.fast.kernels.matvec_cpu.matvec's product. */
static void product(int64_t R, int64_t in, int64_t out, const float *W, const float *x,
                    float *y, int share) {
    int64_t rows = 16384 / (in > 0 ? in : 1) / 4 * 4;  /* matvec_cpu.rows_per_chunk */
    if (rows > 256) rows = 256;
    if (rows < 4) rows = 4;
    while ((out + rows - 1) / rows > 4096 && rows * 2 <= 256) rows *= 2;
    const uint64_t answer = matvec(R, in, out, rows, share, W, x, 0, y);
    if (answer >> 32) last_product = answer;
}
"""

STEP_SOURCE = r"""
enum { LN0_W, LN0_B, LN1_W, LN1_B, LN2_W, LN2_B, ATT_R, ATT_K, ATT_V, ATT_G, ATT_O, LNX_W,
       LNX_B, FAAAA, DECAY, FFN_K, FFN_R, FFN_V, VERSION_SPECIFIC };
enum { V5_MIX_K = VERSION_SPECIFIC, V5_MIX_V, V5_MIX_R, V5_MIX_G, V5_FFN_K, V5_FFN_R };
enum { V6_MAA_X = VERSION_SPECIFIC, V6_MAA_W, V6_MAA_K, V6_MAA_V, V6_MAA_R, V6_MAA_G,
       V6_MAA_W1, V6_MAA_W2, V6_DECAY_W1, V6_DECAY_W2, V6_FFN_K, V6_FFN_R };

/* One block, Bt sequences of T tokens (rows r = b * T + t, R = Bt * T of them): x (R, d) in
   and out (the residual stream); att_x, ffn_x (Bt, d) and S (Bt, H, N, N) the cached state in,
   new_att_x, new_ffn_x, new_S the state out. `p` holds the block's tensors in the order of
   the enums above (`_tensors` below; p[LN0_W] NULL except in block 0; F = 0: no channel mix).
   `work` holds scratch floats (work_floats below). Returns matvec's answer for the last
   shared product (the caller keeps `work` alive while a helper may read it), or 1 << 63 when
   the sizes are out of range. */
uint64_t wkv5_step(int share, const float **p, int version, int64_t Bt, int64_t T, int64_t H,
                   int64_t N, int64_t F, int64_t mix_width, int64_t decay_width, float ln_eps,
                   float gn_eps, float *x, const float *att_x, const float *ffn_x,
                   const float *S, float *new_att_x, float *new_ffn_x, float *new_S,
                   float *work) {
    const int64_t d = H * N, R = Bt * T;
    if (!matvec || R < 1 || R > 8) return (uint64_t)1 << 63;
    last_product = 0xffffffffu;
    float *xa = work, *xr = xa + R * d, *xk = xr + R * d, *xv = xk + R * d, *xg = xv + R * d;
    float *xw = xg + R * d, *r = xw + R * d, *k = r + R * d, *v = k + R * d, *g = v + R * d;
    float *y = g + R * d, *o = y + R * d, *lw = o + R * d, *hidden = lw + R * d;
    float *lora = hidden + R * (F > 5 * mix_width ? F : 5 * mix_width);
    float *extra = lora + 5 * mix_width + decay_width;

    /* the time mix's inputs */
    input_norms(R, d, p[LN0_W], p[LN0_B], p[LN1_W], p[LN1_B], ln_eps, x, xa);
    for (int64_t row = 0; row < R; row++) {
        const int64_t at = row * d;
        const float *cur = xa + at, *prev = previous(row, T, d, xa, att_x);
        if (version == 5) {  /* lerp(prev, x, mix) */
            lerp(d, prev, cur, p[V5_MIX_K], xk + at);
            lerp(d, prev, cur, p[V5_MIX_V], xv + at);
            lerp(d, prev, cur, p[V5_MIX_R], xr + at);
            lerp(d, prev, cur, p[V5_MIX_G], xg + at);
            continue;
        }
        /* RWKV-6: dx toward the previous token; the adapter adds a part per mix */
        const int64_t M = mix_width;
        float *shifted = o + at;  /* scratch until the output product */
        lerp(d, cur, prev, p[V6_MAA_X], shifted);
        vector_matrix(d, 5 * M, shifted, p[V6_MAA_W1], lora);
        for (int64_t i = 0; i < 5 * M; i++) lora[i] = tanhf(lora[i]);
        float *mixed[5] = {xw + at, xk + at, xv + at, xr + at, xg + at};
        const float *maa[5] = {p[V6_MAA_W], p[V6_MAA_K], p[V6_MAA_V], p[V6_MAA_R], p[V6_MAA_G]};
        for (int m = 0; m < 5; m++) {
            vector_matrix(M, d, lora + m * M, p[V6_MAA_W2] + m * M * d, extra);
#pragma omp simd
            for (int64_t i = 0; i < d; i++)
                mixed[m][i] = cur[i] + (prev[i] - cur[i]) * (maa[m][i] + extra[i]);
        }
        /* the decay: log w = -exp(time_decay + tanh(x_w W1) W2) */
        float *hid = lora + 5 * M;
        vector_matrix(d, decay_width, xw + at, p[V6_DECAY_W1], hid);
        for (int64_t i = 0; i < decay_width; i++) hid[i] = tanhf(hid[i]);
        vector_matrix(decay_width, d, hid, p[V6_DECAY_W2], extra);
#pragma omp simd
        for (int64_t i = 0; i < d; i++) lw[at + i] = -expf(p[DECAY][i] + extra[i]);
    }
    product(R, d, d, p[ATT_R], xr, r, share);
    product(R, d, d, p[ATT_K], xk, k, share);
    product(R, d, d, p[ATT_V], xv, v, share);
    product(R, d, d, p[ATT_G], xg, g, share);
#pragma omp simd
    for (int64_t i = 0; i < R * d; i++) g[i] = g[i] * sigmoid(g[i]);  /* SiLU */

    /* the WKV per (sequence, head), GroupNorm and gate: from S into new_S */
    float decay5[version == 5 ? d : 1];
    if (version == 5)
        for (int64_t i = 0; i < d; i++) decay5[i] = -expf(p[DECAY][i]);
    memcpy(new_S, S, sizeof(float) * Bt * H * N * N);
    for (int64_t b = 0; b < Bt; b++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t at = b * T * d + h * N;
            const float *lwh = version == 5 ? decay5 + h * N : lw + at;
            float *Sh = new_S + (b * H + h) * N * N;
            if (N == 64)
                matrix_wkv_head(T, H, 64, version == 5 ? 0 : d, r + at, lwh, k + at, v + at,
                                p[FAAAA] + h * N, y + at, Sh, p[LNX_W] + h * N,
                                p[LNX_B] + h * N, g + at, gn_eps);
            else
                matrix_wkv_head(T, H, N, version == 5 ? 0 : d, r + at, lwh, k + at, v + at,
                                p[FAAAA] + h * N, y + at, Sh, p[LNX_W] + h * N,
                                p[LNX_B] + h * N, g + at, gn_eps);
        }
    product(R, d, d, p[ATT_O], y, o, share);
#pragma omp simd
    for (int64_t i = 0; i < R * d; i++) x[i] += o[i];
    last_rows(Bt, T, d, xa, new_att_x);

    /* the channel mix */
    if (F == 0) return last_product;
    float *xf = xa;  /* the time mix's input is no longer needed */
    for (int64_t row = 0; row < R; row++)
        layer_norm(d, x + row * d, p[LN2_W], p[LN2_B], ln_eps, xf + row * d);
    const float *fk = p[version == 5 ? V5_FFN_K : V6_FFN_K];
    const float *fr = p[version == 5 ? V5_FFN_R : V6_FFN_R];
    for (int64_t row = 0; row < R; row++) {
        const int64_t at = row * d;
        const float *cur = xf + at, *prev = previous(row, T, d, xf, ffn_x);
        if (version == 5) {  /* lerp(prev, x, mix) */
            lerp(d, prev, cur, fk, xk + at);
            lerp(d, prev, cur, fr, xr + at);
        } else {  /* lerp(x, prev, maa) */
            lerp(d, cur, prev, fk, xk + at);
            lerp(d, cur, prev, fr, xr + at);
        }
    }
    last_rows(Bt, T, d, xf, new_ffn_x);
    product(R, d, F, p[FFN_K], xk, hidden, share);
    squared_relu(R * F, hidden);
    product(R, d, d, p[FFN_R], xr, r, share);
    product(R, F, d, p[FFN_V], hidden, v, share);
#pragma omp simd
    for (int64_t i = 0; i < R * d; i++) x[i] += v[i] * sigmoid(r[i]);
    return last_product;
}
"""


def work_floats(rows: int, d: int, ffn: int, mix_width: int, decay_width: int) -> int:
    """The scratch floats of a step: 14 (rows, d) buffers, the hidden layer, the adapters'."""
    return rows * (14 * d + max(ffn, 5 * mix_width)) + 5 * mix_width + decay_width + d


def load_step(name: str, source: str, function: str, argtypes: list) -> ctypes.CDLL | None:
    """A block step's library: BLOCK_SOURCE + `source` compiled as `name`, its products pointed at
    zoo.fast.kernels.matvec_cpu's library (so they share its helper threads), and `function`'s C
    type set (it returns matvec's answer; its first two arguments: share, the block's tensors); None
    without a compiler."""
    products = matvec_cpu._library()
    if products is None:
        return None
    library = ckernel.load(name, BLOCK_SOURCE + source)
    if library is not None and getattr(library, function).argtypes is None:
        library.block_step_init.restype = None
        library.block_step_init.argtypes = [ctypes.c_void_p]
        library.block_step_init(ctypes.cast(products.matvec, ctypes.c_void_p))
        getattr(library, function).restype = ctypes.c_uint64
        getattr(library, function).argtypes = [ctypes.c_int, ctypes.c_void_p, *argtypes]
    return library


def cpu_float32(tensors: list) -> bool:
    """Whether every tensor (None: an absent one) is a contiguous float32 CPU tensor, as the C
    steps read them."""
    return all(t is None or (t.dtype == torch.float32 and t.is_contiguous()
                             and t.device.type == "cpu") for t in tensors)


def weights(modules: dict, names) -> list:
    """The weights of the linear layers `names` of a module dictionary (`module._modules`)."""
    return [modules[name]._parameters["weight"] for name in names]


def block_parts(block) -> tuple:
    """What the steps' `_tensors` read from an RWKV block, from the modules' dictionaries
    (nn.Module's attribute lookup took 70 us a block): the LayerNorms' tensors in the steps'
    order (LN0_W, LN0_B, None outside block 0; LN1_W, LN1_B, LN2_W, LN2_B), the time mix's
    parameter and module dictionaries, its ln_x's parameters, and the channel mix (None:
    absent)."""
    modules = block._modules
    att, ffn, ln0 = modules["att"], modules.get("ffn"), modules.get("ln0")  # None: absent
    ln1, ln2 = modules["ln1"]._parameters, modules["ln2"]._parameters
    norms = [None, None] if ln0 is None else [ln0._parameters["weight"], ln0._parameters["bias"]]
    norms += [ln1["weight"], ln1["bias"], ln2["weight"], ln2["bias"]]
    return norms, att._parameters, att._modules, att._modules["ln_x"]._parameters, ffn


def run_step(function, tensors: list, work: torch.Tensor, *args) -> None:
    """Call a block step, function(share, tensors' pointers, *args), with the products shared
    with matvec_cpu's helpers when PyTorch has more than one thread; keep `work` and the
    tensors alive while a helper may still read them."""
    pointers = (ctypes.c_void_p * len(tensors))(*(None if t is None else t.data_ptr()
                                                  for t in tensors))
    threads = torch.get_num_threads()
    share = threads > 1 and matvec_cpu._helpers(threads - 1) > 0
    answer = function(share, pointers, *args)
    if answer >> 63:
        raise ValueError("the compiled block step refused its sizes")
    matvec_cpu.keep_while_read(answer, work, tensors)


def _library() -> ctypes.CDLL | None:
    return load_step("wkv5_step", wkv5_cpu.SOURCE + STEP_SOURCE, "wkv5_step",
                     [ctypes.c_int] + [ctypes.c_int64] * 7 + [ctypes.c_float] * 2
                     + [ctypes.c_void_p] * 8)


def available() -> bool:
    """Whether the compiled step can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _tensors(block, version: int) -> list | None:
    """The block's tensors in the C step's order (its enums: LN0_W ... FFN_V, then V5_... or
    V6_...; None for absent ones), or None when one of them is not a contiguous float32 CPU
    tensor (the step would misread it)."""
    tensors, a, am, ln_x, ffn = block_parts(block)
    tensors += weights(am, ("receptance", "key", "value", "gate", "output"))
    tensors += [ln_x["weight"], ln_x["bias"], a["time_faaaa"], a["time_decay"]]
    f = None if ffn is None else ffn._parameters
    fm = None if ffn is None else ffn._modules
    tensors += [None] * 3 if ffn is None else weights(fm, ("key", "receptance", "value"))
    if version == 5:
        tensors += [a[f"time_mix_{m}"] for m in "kvrg"]
        tensors += [None] * 2 if ffn is None else [f["time_mix_k"], f["time_mix_r"]]
    else:
        tensors += [a[f"time_maa_{m}"] for m in "xwkvrg"]
        tensors += [a["time_maa_w1"], a["time_maa_w2"], a["time_decay_w1"], a["time_decay_w2"]]
        tensors += [None] * 2 if ffn is None else [f["time_maa_k"], f["time_maa_r"]]
    return tensors if cpu_float32(tensors) else None


def step(block, version: int, x: torch.Tensor, att_x: torch.Tensor, wkv: torch.Tensor,
         ffn_x: torch.Tensor):
    """The block's forward (zoo.rwkv5.Block or zoo.rwkv6.Block, `version` 5 or 6) on x
    (B, T, d) with B T <= matvec_cpu.MAX_ROWS, float32 CPU, no autograd: (x, (att_x, wkv,
    ffn_x)) as the block returns them, or None when its tensors are not all contiguous float32
    CPU ones."""
    library = _library()
    if library is None:
        raise RuntimeError("the compiled RWKV-5/6 step is not available (no C compiler?)")
    tensors = _tensors(block, version)
    if tensors is None:
        return None
    B, T, d = x.shape
    att = block.att
    H, N = att.n_head, att.head_size
    F = 0 if block.ffn is None else block.ffn.key.out_features
    mix = att.time_maa_w1.size(1) // 5 if version == 6 else 0
    decay = att.time_decay_w1.size(1) if version == 6 else 0
    if B * T > matvec_cpu.MAX_ROWS or (B, H, N, N) != wkv.shape:
        raise ValueError(f"x {tuple(x.shape)}, state {tuple(wkv.shape)}: at most "
                         f"{matvec_cpu.MAX_ROWS} rows of {H} heads of {N}")
    out = x.clone(memory_format=torch.contiguous_format)
    att_x, ffn_x, wkv = att_x.contiguous(), ffn_x.contiguous(), wkv.contiguous()
    new_att_x, new_wkv = torch.empty(B, d), torch.empty(B, H, N, N)
    new_ffn_x = ffn_x if F == 0 else torch.empty(B, d)
    work = torch.empty(work_floats(B * T, d, F, mix, decay))
    run_step(library.wkv5_step, tensors, work, version, B, T, H, N, F, mix, decay,
             block.ln1.eps, att.ln_x.eps, out.data_ptr(), att_x.data_ptr(), ffn_x.data_ptr(),
             wkv.data_ptr(), new_att_x.data_ptr(), new_ffn_x.data_ptr(), new_wkv.data_ptr(),
             work.data_ptr())
    return out, (new_att_x, new_wkv, new_ffn_x)
