"""A decoding step of an RWKV-7 block as one compiled call, for CPU inference.

The plain block (zoo/rwkv7.py) decodes a token in about 60 PyTorch operations on vectors of
width d plus its weight products; as for RWKV-5/6 (wkv5_step_cpu.py), their dispatch, not
their arithmetic, is much of a step. This module runs the block for a few rows, written out in
C from zoo/rwkv7.py, which stays its oracle:
    x = LN0(x) (block 0);  xa = LN1(x);  x_r, x_w, x_k, x_v, x_a, x_g = xa + (prev - xa) mu,
        prev the token before (the cached att_x for the first);
    r, k, v = products of x_r, x_k, x_v;  log w = -e^-0.5 sigmoid(w0 + tanh(x_w W1) W2);
        a = sigmoid(a0 + x_a A1 A2);  g = sigmoid(x_g G1) G2;
    v moves toward layer 0's v by sigmoid(v0 + x_v V1 V2) (blocks after the first; block 0
        returns its v as v_first);  kk = normalise(k k_k) per head;  k = k (1 + (a - 1) k_a);
    the WKV-7 state update per head (wkv7_cpu.py's loop), from the cached state to a new one;
    y = GroupNorm(y) + (sum r k r_k) v per head;  x += W_o (y g);
    xf = LN2(x);  x += W_v relu(W_k (xf + (prev_f - xf) mu_k))^2 (the channel mix);
returning x, v_first and the new att_x (the last xa), WKV state and ffn_x (the last xf); the
given ones are unchanged. The norms, the adapters' products, the token shift and the weight
products (matvec_cpu.py's, through a pointer to that library) are wkv5_step_cpu.py's
BLOCK_SOURCE, shared with RWKV-5/6's step.

Inference only: zoo.fast's "wkv7" route runs it for float32 CPU blocks without gradients on
at most FEW_ROWS rows (batch x tokens; the step takes up to matvec_cpu.MAX_ROWS); longer inputs
(prefill) take the block's forward. Compiled on first use and cached (ckernel.py).
"""

from __future__ import annotations

import ctypes

import torch

from zoo import rwkv7
from zoo.fast.kernels import matvec_cpu, wkv7_cpu
from zoo.fast.kernels.wkv5_step_cpu import block_parts, cpu_float32, load_step, run_step, weights

STEP_SOURCE = r"""
enum { LN0_W, LN0_B, LN1_W, LN1_B, LN2_W, LN2_B, X_R, X_W, X_K, X_V, X_A, X_G, W0, W1, W2,
       A0, A1, A2, V0, V1, V2, G1, G2, K_K, K_A, R_K, ATT_R, ATT_K, ATT_V, ATT_O, LNX_W, LNX_B,
       FFN_X_K, FFN_K, FFN_V };

/* One block, Bt sequences of T tokens (rows b * T + t, R = Bt * T of them): x (R, d) in and out
   (the residual stream); att_x, ffn_x (Bt, d) and S (Bt, H, N, N, S[value][key]) the cached
   state in, new_att_x, new_ffn_x, new_S the state out. `p` holds the block's tensors in the
   order of the enum above (`_tensors` below; p[LN0_W] NULL except in block 0; p[V0] NULL:
   no value residual, and v is written to v_first (R, d); else v moves toward v_first; F = 0:
   no channel mix). `lora` holds the adapters' widths (w, a, v, g); `work` scratch floats
   (work_floats below). Returns matvec's answer for the last shared product, or 1 << 63 when
   the sizes are out of range. */
uint64_t wkv7_step(int share, const float **p, int64_t Bt, int64_t T, int64_t H, int64_t N,
                   int64_t F, const int64_t *lora, float ln_eps, float gn_eps,
                   float log_decay_floor, float *x, float *v_first, const float *att_x,
                   const float *ffn_x, const float *S, float *new_att_x, float *new_ffn_x,
                   float *new_S, float *work) {
    const int64_t d = H * N, R = Bt * T, Rd = R * d;
    if (!matvec || R < 1 || R > 8) return (uint64_t)1 << 63;
    last_product = 0xffffffffu;
    float *xa = work, *xr = xa + Rd, *xw = xr + Rd, *xk = xw + Rd, *xv = xk + Rd;
    float *xi = xv + Rd, *xg = xi + Rd, *r = xg + Rd, *k = r + Rd, *v = k + Rd, *kk = v + Rd;
    float *a = kk + Rd, *lw = a + Rd, *g = lw + Rd, *y = g + Rd, *o = y + Rd, *hidden = o + Rd;
    float *low = hidden + R * F;  /* an adapter's hidden layer */

    /* the time mix's inputs, shifted toward the previous token */
    input_norms(R, d, p[LN0_W], p[LN0_B], p[LN1_W], p[LN1_B], ln_eps, x, xa);
    for (int64_t row = 0; row < R; row++) {
        const int64_t at = row * d;
        const float *cur = xa + at, *prev = previous(row, T, d, xa, att_x);
        float *mixed[6] = {xr + at, xw + at, xk + at, xv + at, xi + at, xg + at};
        for (int m = 0; m < 6; m++) lerp(d, cur, prev, p[X_R + m], mixed[m]);
    }
    product(R, d, d, p[ATT_R], xr, r, share);
    product(R, d, d, p[ATT_K], xk, k, share);
    product(R, d, d, p[ATT_V], xv, v, share);

    /* the adapters, the value residual and the keys, row by row */
    for (int64_t row = 0; row < R; row++) {
        const int64_t at = row * d;
        vector_matrix(d, lora[0], xw + at, p[W1], low);  /* log w */
        for (int64_t i = 0; i < lora[0]; i++) low[i] = tanhf(low[i]);
        vector_matrix(lora[0], d, low, p[W2], lw + at);
        for (int64_t i = 0; i < d; i++)
            lw[at + i] = log_decay_floor * sigmoid(p[W0][i] + lw[at + i]);
        vector_matrix(d, lora[1], xi + at, p[A1], low);  /* a, the in-context learning rate */
        vector_matrix(lora[1], d, low, p[A2], a + at);
        for (int64_t i = 0; i < d; i++) a[at + i] = sigmoid(p[A0][i] + a[at + i]);
        vector_matrix(d, lora[3], xg + at, p[G1], low);  /* the gate */
        for (int64_t i = 0; i < lora[3]; i++) low[i] = sigmoid(low[i]);
        vector_matrix(lora[3], d, low, p[G2], g + at);
        if (p[V0]) {  /* v toward layer 0's v; o is scratch until the output product */
            vector_matrix(d, lora[2], xv + at, p[V1], low);
            vector_matrix(lora[2], d, low, p[V2], o + at);
            for (int64_t i = 0; i < d; i++)
                v[at + i] += (v_first[at + i] - v[at + i]) * sigmoid(p[V0][i] + o[at + i]);
        } else {
            memcpy(v_first + at, v + at, sizeof(float) * d);
        }
        for (int64_t h = 0; h < H; h++) {  /* kk: k k_k with unit length per head */
            const int64_t hn = at + h * N;
            float norm = 0.0f;
            for (int64_t i = 0; i < N; i++) {
                kk[hn + i] = k[hn + i] * p[K_K][h * N + i];
                norm += kk[hn + i] * kk[hn + i];
            }
            norm = sqrtf(norm);
            const float scale = 1.0f / (norm > 1e-12f ? norm : 1e-12f);  /* F.normalize */
            for (int64_t i = 0; i < N; i++) kk[hn + i] *= scale;
        }
#pragma omp simd
        for (int64_t i = 0; i < d; i++) k[at + i] *= 1.0f + (a[at + i] - 1.0f) * p[K_A][i];
    }

    /* the WKV from S into new_S; per head its GroupNorm, the current token's bonus, the gate */
    memcpy(new_S, S, sizeof(float) * Bt * H * N * N);
    wkv7_forward(Bt, T, H, N, 0, Bt * H, r, lw, k, v, kk, a, y, new_S);
    for (int64_t row = 0; row < R; row++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t hn = row * d + h * N;
            layer_norm(N, y + hn, p[LNX_W] + h * N, p[LNX_B] + h * N, gn_eps, y + hn);
            float bonus = 0.0f;
#pragma omp simd reduction(+:bonus)
            for (int64_t i = 0; i < N; i++) bonus += r[hn + i] * k[hn + i] * p[R_K][h * N + i];
#pragma omp simd
            for (int64_t i = 0; i < N; i++)
                y[hn + i] = (y[hn + i] + bonus * v[hn + i]) * g[hn + i];
        }
    product(R, d, d, p[ATT_O], y, o, share);
#pragma omp simd
    for (int64_t i = 0; i < Rd; i++) x[i] += o[i];
    last_rows(Bt, T, d, xa, new_att_x);

    /* the channel mix */
    if (F == 0) return last_product;
    float *xf = xa;  /* the time mix's input is no longer needed */
    for (int64_t row = 0; row < R; row++)
        layer_norm(d, x + row * d, p[LN2_W], p[LN2_B], ln_eps, xf + row * d);
    for (int64_t row = 0; row < R; row++)
        lerp(d, xf + row * d, previous(row, T, d, xf, ffn_x), p[FFN_X_K], xk + row * d);
    last_rows(Bt, T, d, xf, new_ffn_x);
    product(R, d, F, p[FFN_K], xk, hidden, share);
    squared_relu(R * F, hidden);
    product(R, F, d, p[FFN_V], hidden, o, share);
#pragma omp simd
    for (int64_t i = 0; i < Rd; i++) x[i] += o[i];
    return last_product;
}
"""

ADAPTERS = ("w", "a", "v", "g")  # the low-rank adapters, in the order of the C step's `lora`
V0 = 18  # places in the C step's enum: the value residual's v0,
DOWN = (13, 16, 19, 21)  # and the adapters' first matrices (W1, A1, V1, G1), (d, width)


def work_floats(rows: int, d: int, ffn: int, widest_adapter: int) -> int:
    """The scratch floats of a step: 16 (rows, d) buffers, the hidden layer, an adapter's."""
    return rows * (16 * d + ffn) + widest_adapter


def _library() -> ctypes.CDLL | None:
    return load_step("wkv7_step", wkv7_cpu.SOURCE + STEP_SOURCE, "wkv7_step",
                     [ctypes.c_int64] * 5 + [ctypes.c_void_p] + [ctypes.c_float] * 3
                     + [ctypes.c_void_p] * 9)


def available() -> bool:
    """Whether the compiled step can run here (compiles it the first time it is asked)."""
    return _library() is not None


def _tensors(block, value_residual: bool) -> list | None:
    """The block's tensors in the C step's order (its enum; None for absent ones, and for the
    value residual's without `value_residual`), or None when one of them is not a contiguous
    float32 CPU tensor."""
    tensors, a, am, ln_x, ffn = block_parts(block)
    tensors += [a[f"x_{m}"] for m in "rwkvag"]
    tensors += [a.get(f"{m}{i}") if value_residual or m != "v" else None
                for m in ADAPTERS[:3] for i in range(3)]
    tensors += [a["g1"], a["g2"], a["k_k"], a["k_a"], a["r_k"]]
    tensors += weights(am, ("receptance", "key", "value", "output"))
    tensors += [ln_x["weight"], ln_x["bias"]]
    tensors += ([None] * 3 if ffn is None else
                [ffn._parameters["x_k"], *weights(ffn._modules, ("key", "value"))])
    return tensors if cpu_float32(tensors) else None


def step(block, x: torch.Tensor, v_first: torch.Tensor | None, att_x: torch.Tensor,
         wkv: torch.Tensor, ffn_x: torch.Tensor):
    """zoo.rwkv7.Block's forward on x (B, T, d) with B T <= matvec_cpu.MAX_ROWS, float32 CPU,
    no autograd: (x, v_first, (att_x, wkv, ffn_x)) as the block returns them, or None when its
    tensors are not all contiguous float32 CPU ones or v_first is given to a block without a
    value residual (the first)."""
    library = _library()
    if library is None:
        raise RuntimeError("the compiled RWKV-7 step is not available (no C compiler?)")
    tensors = _tensors(block, v_first is not None)
    B, T, d = x.shape
    if tensors is None or (v_first is not None and tensors[V0] is None):
        return None
    att = block.att
    H, N = att.n_head, att.head_size
    F = 0 if tensors[-1] is None else tensors[-1].size(1)
    lora = [0 if tensors[i] is None else tensors[i].size(1) for i in DOWN]
    if B * T > matvec_cpu.MAX_ROWS or (B, H, N, N) != wkv.shape:
        raise ValueError(f"x {tuple(x.shape)}, state {tuple(wkv.shape)}: at most "
                         f"{matvec_cpu.MAX_ROWS} rows of {H} heads of {N}")
    out = x.clone(memory_format=torch.contiguous_format)
    att_x, ffn_x, wkv = att_x.contiguous(), ffn_x.contiguous(), wkv.contiguous()
    new_v_first = torch.empty(B, T, d) if v_first is None else v_first.contiguous()
    new_att_x, new_wkv = torch.empty(B, d), torch.empty(B, H, N, N)
    new_ffn_x = ffn_x if F == 0 else torch.empty(B, d)
    work = torch.empty(work_floats(B * T, d, F, max(lora)))
    widths = (ctypes.c_int64 * 4)(*lora)
    run_step(library.wkv7_step, tensors, work, B, T, H, N, F, widths, block.ln1.eps,
             att.ln_x.eps, rwkv7.LOG_DECAY_FLOOR, out.data_ptr(), new_v_first.data_ptr(),
             att_x.data_ptr(), ffn_x.data_ptr(), wkv.data_ptr(), new_att_x.data_ptr(),
             new_ffn_x.data_ptr(), new_wkv.data_ptr(), work.data_ptr())
    return out, (new_v_first if v_first is None else v_first), (new_att_x, new_wkv, new_ffn_x)
