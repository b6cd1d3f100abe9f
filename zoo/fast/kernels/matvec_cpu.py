"""Matrix-vector products for a few rows (decoding), as a small C loop whose threads share the
work without waiting for one another.

Decoding one token at a time multiplies each weight matrix by one row (or a few): the speed is
the speed at which the weight streams from memory, and a second core streams a second half.
PyTorch's ways of using it (an intra-op parallel region: OpenMP's threads, as `torch.bmm` over
the weight's two halves takes) end in a barrier that waits for every thread, so a product takes
as long as the slowest thread to be scheduled: on a quiet machine microseconds, but where other
jobs keep the cores busy a scheduler's time slice. On the shared 2-core AMD EPYC this project is
measured on, with 8 to 10 runnable threads from other jobs, a 512 x 512 product by one row took
32 ms that way (median of 200), against 35 us for MKL's single-threaded product (F.linear), and
a decoding step of RWKV-5 small spent nine tenths of its time in such barriers.

Here the calling thread never waits for a thread that has not started: the output rows come in
chunks, and each thread, the caller included, claims the next chunk with one atomic
compare-and-swap until none is left. A helper computes its chunk into a buffer of its own and
copies it out only if the caller has not taken the chunk over; the caller, its own chunks done,
waits a few tens of microseconds for the helpers' and then computes those still pending itself,
so a helper descheduled in the middle of a chunk costs the caller that chunk, never a time slice.
The helpers (PyTorch's thread count less one, started on first use) poll for 30 us after their
last work, long enough for the next product of a decoding step, then sleep on a condition
variable: a polling helper takes a core that the caller, OpenMP's threads or another job could
use (with 100 us, RWKV-5 small decoded 10-25% slower beside a busy job). When the helpers are
not scheduled the caller does every chunk itself, at the speed of one thread; when they are, the
work is shared. A product is the same sums in the same order whichever thread computes a row:
the result does not depend on the threads.

The loop reads four weight rows at a time (four independent sums in SIMD lanes over the input
channels) and multiplies each by every input row (at most MAX_ROWS): one pass over the weight,
whatever the rows. zoo.fast's "wkv5" and "wkv7" routes run it in RWKV-5/6/7's decoding (their
block steps, wkv5_step_cpu.py and wkv7_step_cpu.py, through a pointer to this library,
and their output heads), where no OpenMP region competes with the helpers for the cores; the
linear route keeps its split product for the other models, whose decoding steps still have such
regions (see zoo/fast/measurements.md).
The source is compiled on first use with the system's C compiler and cached (ckernel.py).
"""

from __future__ import annotations

import ctypes
from collections import deque

import torch

from zoo.fast.kernels import ckernel

MAX_ROWS = 8  # input rows per call (the route takes at most FEW_ROWS)
MAX_CHUNKS = 4096
MAX_CHUNK_VALUES = 2048  # rows per chunk x input rows: a helper's results, on its stack

SOURCE = r"""
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#define MAX_HELPERS 63

/* y[r][o] = b[o] + sum_i W[o][i] x[r][i] for the output rows o0 <= o < o1 and the R input rows:
   W (out, in), x (R, in), y (R, out), row-major float32; b may be NULL. */
static void product_rows(int64_t R, int64_t in, int64_t out, int64_t o0, int64_t o1,
                         const float *W, const float *x, const float *b, float *y) {
    int64_t o = o0;
    for (; o + 4 <= o1; o += 4) {
        const float *w0 = W + o * in, *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;
        for (int64_t r = 0; r < R; r++) {
            const float *xr = x + r * in;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+:a0, a1, a2, a3)
            for (int64_t i = 0; i < in; i++) {
                a0 += w0[i] * xr[i];
                a1 += w1[i] * xr[i];
                a2 += w2[i] * xr[i];
                a3 += w3[i] * xr[i];
            }
            float *yr = y + r * out + o;
            yr[0] = a0; yr[1] = a1; yr[2] = a2; yr[3] = a3;
            if (b) { yr[0] += b[o]; yr[1] += b[o + 1]; yr[2] += b[o + 2]; yr[3] += b[o + 3]; }
        }
    }
    for (; o < o1; o++) {
        const float *w0 = W + o * in;
        for (int64_t r = 0; r < R; r++) {
            const float *xr = x + r * in;
            float a0 = 0.0f;
#pragma omp simd reduction(+:a0)
            for (int64_t i = 0; i < in; i++) a0 += w0[i] * xr[i];
            y[r * out + o] = b ? a0 + b[o] : a0;
        }
    }
}

#if defined(__x86_64__) || defined(__i386__)
#define PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define PAUSE() __asm__ __volatile__("yield")
#else
#define PAUSE() do {} while (0)
#endif

#define MAX_CHUNKS 4096
#define MAX_CHUNK_VALUES 2048  /* rows_per_chunk * R: a helper's results, on its stack */
#define HELPER_SPIN_NS 30000   /* a helper polls this long after its last work, then sleeps */
#define CALLER_SPIN 2000       /* polls before the caller computes a helper's chunk itself */

enum { PENDING, COMMITTING, DONE };  /* a chunk's state, tagged with its generation */
#define NOT_READING 0xffffffffu

typedef struct {
    int64_t R, in, out, rows_per_chunk, chunks;
    const float *W, *x, *b;
    float *y;
} job_t;

/* The job of generation g is jobs[g & 1]; `ticket` holds (generation << 32) | next chunk, so
   that a chunk is claimed, with one compare-and-swap, for the generation its claimer read. */
static job_t jobs[2];
static _Atomic uint64_t ticket = 0;
static _Atomic uint64_t chunk_state[MAX_CHUNKS];  /* (generation << 2) | PENDING/COMMITTING/DONE */
static _Atomic uint32_t reading[MAX_HELPERS];     /* the generation each helper may be reading */
static _Atomic int sleepers = 0;
static _Atomic int caller_busy = 0;  /* one caller at a time uses the helpers */
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int helpers = 0, fork_handler = 0;

static inline uint64_t tag(uint32_t gen, int status) { return ((uint64_t)gen << 2) | status; }
static inline uint32_t generation(void) { return (uint32_t)(atomic_load(&ticket) >> 32); }

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Helper `h` claims chunks of generation `gen` until none is left or the generation changes.
   It computes a chunk into its own buffer and copies it to y only if the caller has not taken
   the chunk over meanwhile: a helper descheduled in the middle of a chunk never holds up the
   caller, which computes that chunk itself. While it may read a job's inputs it announces the
   job's generation in reading[h], and the caller keeps those inputs alive until no helper
   announces that generation or an older one (matvec's return value). */
static void help(int h, uint32_t gen) {
    float buffer[MAX_CHUNK_VALUES];
    for (;;) {
        atomic_store(&reading[h], gen);
        uint64_t t = atomic_load(&ticket);
        if ((uint32_t)(t >> 32) != gen) break;  /* seen after the announcement: the caller
                                                   had not moved on when it was made */
        const int64_t c = (uint32_t)t;
        if (c >= jobs[gen & 1].chunks) break;
        if (!atomic_compare_exchange_weak(&ticket, &t, t + 1)) continue;
        const job_t j = jobs[gen & 1];
        atomic_thread_fence(memory_order_acquire);  /* the copy is read before the check */
        if (generation() != gen) continue;  /* the chunk was taken over and the job slot reused
                                               while it was copied: not this job's fields */
        const int64_t o0 = c * j.rows_per_chunk;
        const int64_t o1 = o0 + j.rows_per_chunk < j.out ? o0 + j.rows_per_chunk : j.out;
        const int64_t n = o1 - o0;
        product_rows(j.R, j.in, n, 0, n, j.W + o0 * j.in, j.x, j.b ? j.b + o0 : 0, buffer);
        uint64_t pending = tag(gen, PENDING);
        if (atomic_compare_exchange_strong(&chunk_state[c], &pending, tag(gen, COMMITTING))) {
            for (int64_t r = 0; r < j.R; r++)
                for (int64_t o = 0; o < n; o++) j.y[r * j.out + o0 + o] = buffer[r * n + o];
            atomic_store(&chunk_state[c], tag(gen, DONE));
        }
    }
    atomic_store(&reading[h], NOT_READING);
}

static void *helper(void *index) {
    const int h = (int)(intptr_t)index;
    uint32_t seen = generation();
    for (;;) {
        uint32_t gen = seen;
        const int64_t until = now_ns() + HELPER_SPIN_NS;
        for (int spin = 1; gen == seen; spin++) {
            PAUSE();
            gen = (uint32_t)(atomic_load_explicit(&ticket, memory_order_acquire) >> 32);
            if (spin % 64 == 0 && now_ns() > until) break;
        }
        if (gen == seen) {
            pthread_mutex_lock(&sleep_lock);
            atomic_fetch_add(&sleepers, 1);
            while ((gen = generation()) == seen) pthread_cond_wait(&wake, &sleep_lock);
            atomic_fetch_sub(&sleepers, 1);
            pthread_mutex_unlock(&sleep_lock);
        }
        help(h, gen);
        seen = gen;
    }
    return 0;
}

/* In a forked child the helpers are gone: start again from none. */
static void after_fork_in_child(void) {
    helpers = 0;
    for (int h = 0; h < MAX_HELPERS; h++) atomic_store(&reading[h], NOT_READING);
    atomic_store(&sleepers, 0);
    atomic_store(&caller_busy, 0);
    pthread_mutex_init(&sleep_lock, 0);
    pthread_cond_init(&wake, 0);
}

/* Start helpers up to `wanted` (at most MAX_HELPERS); returns how many run. */
int matvec_start_helpers(int wanted) {
    if (!fork_handler) {
        for (int h = 0; h < MAX_HELPERS; h++) atomic_store(&reading[h], NOT_READING);
        fork_handler = pthread_atfork(0, 0, after_fork_in_child) == 0;
        if (!fork_handler) return 0;
    }
    if (wanted > MAX_HELPERS) wanted = MAX_HELPERS;
    while (helpers < wanted) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int failed = pthread_create(&thread, &attr, helper, (void *)(intptr_t)helpers);
        pthread_attr_destroy(&attr);
        if (failed) break;
        helpers++;
    }
    return helpers;
}

/* y = x W^T + b for R rows x (R, in), W (out, in), y (R, out); b may be NULL. Shared with the
   helpers when `share`, they run and the chunks fit; otherwise computed by the caller alone.
   Returns (the generation of this product, 0 when not shared) << 32 | the oldest generation a
   helper may still read (NOT_READING when none): the caller keeps the inputs (W, x, b) of a
   shared product alive until that is later than its generation. y is written by the time
   matvec returns, and never after. */
uint64_t matvec(int64_t R, int64_t in, int64_t out, int64_t rows_per_chunk, int share,
                const float *W, const float *x, const float *b, float *y) {
    const int64_t chunks = (out + rows_per_chunk - 1) / rows_per_chunk;
    int expected = 0;
    if (!share || helpers == 0 || chunks < 2 || chunks > MAX_CHUNKS || rows_per_chunk % 4
        || rows_per_chunk * R > MAX_CHUNK_VALUES
        || !atomic_compare_exchange_strong(&caller_busy, &expected, 1)) {
        product_rows(R, in, out, 0, out, W, x, b, y);
        return NOT_READING;
    }
    const uint32_t gen = generation() + 1;
    job_t *j = &jobs[gen & 1];
    j->R = R; j->in = in; j->out = out; j->rows_per_chunk = rows_per_chunk; j->chunks = chunks;
    j->W = W; j->x = x; j->b = b; j->y = y;
    for (int64_t c = 0; c < chunks; c++) atomic_store(&chunk_state[c], tag(gen, PENDING));
    atomic_store(&ticket, (uint64_t)gen << 32);  /* publishes the job */
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&sleep_lock);
    }
    /* The caller's share: claim chunks as the helpers do, computed straight into y. */
    for (;;) {
        uint64_t t = atomic_load(&ticket);
        const int64_t c = (uint32_t)t;
        if (c >= chunks) break;
        if (!atomic_compare_exchange_weak(&ticket, &t, t + 1)) continue;
        const int64_t o0 = c * rows_per_chunk;
        const int64_t o1 = o0 + rows_per_chunk < out ? o0 + rows_per_chunk : out;
        product_rows(R, in, out, o0, o1, W, x, b, y);
        atomic_store(&chunk_state[c], tag(gen, DONE));
    }
    /* Every chunk is claimed. Those of helpers: wait a little, then compute them here. */
    for (int64_t c = 0; c < chunks; c++) {
        for (int spin = 0;; spin++) {
            uint64_t s = atomic_load(&chunk_state[c]);
            if (s == tag(gen, DONE)) break;
            if (s == tag(gen, PENDING) && spin >= CALLER_SPIN
                && atomic_compare_exchange_strong(&chunk_state[c], &s, tag(gen, DONE))) {
                const int64_t o0 = c * rows_per_chunk;
                const int64_t o1 = o0 + rows_per_chunk < out ? o0 + rows_per_chunk : out;
                product_rows(R, in, out, o0, o1, W, x, b, y);
                break;
            }
            PAUSE();
        }
    }
    uint32_t oldest = NOT_READING;
    for (int h = 0; h < helpers; h++) {
        const uint32_t g = atomic_load(&reading[h]);
        if (g < oldest) oldest = g;
    }
    atomic_store(&caller_busy, 0);
    return ((uint64_t)gen << 32) | oldest;
}
"""


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("matvec", SOURCE)
    if library is not None and library.matvec.argtypes is None:
        library.matvec.restype = ctypes.c_uint64
        library.matvec.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int] + [ctypes.c_void_p] * 4
        library.matvec_start_helpers.restype = ctypes.c_int
        library.matvec_start_helpers.argtypes = [ctypes.c_int]
    return library


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


CHUNK_BYTES = 64 * 1024  # weight bytes per chunk of rows: ~4 us of streaming
NOT_READING = 0xFFFFFFFF
# The inputs of shared products that a helper may still read: (generation, inputs), oldest
# first. Almost always empty or one entry: a helper announces a generation only while it works.
_in_use: deque = deque()


def rows_per_chunk(in_features: int, out_features: int) -> int:
    """Output rows per chunk: about CHUNK_BYTES of the weight, a multiple of 4 (the loop's
    step), and at most MAX_CHUNKS chunks."""
    most = MAX_CHUNK_VALUES // MAX_ROWS
    rows = min(most, max(4, CHUNK_BYTES // (4 * max(in_features, 1)) // 4 * 4))
    while -(-out_features // rows) > MAX_CHUNKS and rows * 2 <= most:
        rows *= 2
    return rows


def matvec(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           threads: int | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for a float32 CPU x of at most MAX_ROWS rows (x (..., in),
    weight (out, in)), the weight streamed once, shared between `threads` threads (default:
    PyTorch's count) that never wait for one another. No autograd."""
    library = _library()
    if library is None:
        raise RuntimeError("the compiled matrix-vector kernel is not available (no C compiler?)")
    out_features, in_features = weight.shape
    rows = x.numel() // in_features if in_features else 0
    if rows > MAX_ROWS:
        raise ValueError(f"{rows} rows: the matrix-vector kernel takes at most {MAX_ROWS}")
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors):
        raise ValueError("the matrix-vector kernel takes float32 CPU tensors")
    x, weight = x.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    y = torch.empty(*x.shape[:-1], out_features)
    if y.numel() == 0:
        return y
    threads = torch.get_num_threads() if threads is None else threads
    share = threads > 1 and _helpers(threads - 1) > 0
    result = library.matvec(rows, in_features, out_features,
                            rows_per_chunk(in_features, out_features), share, weight.data_ptr(),
                            x.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr())
    keep_while_read(result, weight, x, bias)
    return y


def keep_while_read(answer: int, *inputs) -> None:
    """Keep the inputs of shared products alive while a helper may still read them: `answer`
    is what the C function `matvec` returned for the last of them (its generation << 32 | the
    oldest generation a helper may still read)."""
    generation, oldest = answer >> 32, answer & NOT_READING
    if generation and oldest <= generation:
        _in_use.append((generation, inputs))
    while _in_use and _in_use[0][0] < oldest:
        _in_use.popleft()


_started = 0


def _helpers(wanted: int) -> int:
    """Start helper threads up to `wanted` (once each); how many run."""
    global _started
    if _started < wanted:
        _started = _library().matvec_start_helpers(wanted)
    return _started
