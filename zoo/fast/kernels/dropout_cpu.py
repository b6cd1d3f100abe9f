"""Dropout for CPU training (float32, and bfloat16 under autocast), its mask drawn by a
counter-based hash in C.

PyTorch draws a CPU dropout mask with its Mersenne Twister one number at a time, plus two more
passes to scale. At training lengths the masks of attention probabilities are (B, heads, T, T):
for the `small` GPT at 1024 tokens, 8M elements per layer, whose mask takes PyTorch 61 ms on the
2-core AMD EPYC this project is measured on and this kernel 13 ms
(benchmarks/training_parts.py). In a profile of that model's training step on the plain path,
PyTorch's masks are about a fifth of the step (`training_parts.py --profile gpt:1024 --plain`).

Here element i of a call is kept when h(i) >= p * 2^32, with h a keyed 32-bit integer hash
(two rounds of the "lowbias32" mixer, keyed between them) of its index: one pass that draws the
mask, scales the kept values by 1 / (1 - p) and stores the mask as bytes for the backward,
vectorised across elements. Each call takes a fresh 64-bit key from torch's default generator,
so `torch.manual_seed` makes training reproducible, as with `nn.Dropout`; the masks themselves
differ from PyTorch's (a different generator), not their distribution.

zoo.fast's "dropout" route runs it (nn.Dropout and attention-probability dropout); without a
C compiler `available()` is False and the model keeps PyTorch's dropout.
"""

from __future__ import annotations

import ctypes

import torch

from zoo.fast.kernels import ckernel

# The hash, shared with attention_cpu.py's kernel, which draws the same masks.
HASH = r"""
#include <stdint.h>

static inline uint32_t mix32(uint32_t x) {  /* an integer hash with strong avalanche */
    x ^= x >> 16; x *= 0x7feb352dU;
    x ^= x >> 15; x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}
"""

# bfloat16 (the top half of a float32) to float32 and back, also attention_cpu.py's.
BF16 = r"""
#include <stdint.h>

/* Rounding to nearest even, as torch rounds; a NaN stays a (quiet) NaN. */
static inline float from_bf16(uint16_t b) {
    union { uint32_t u; float f; } v = { (uint32_t)b << 16 };
    return v.f;
}
static inline uint16_t to_bf16(float f) {
    union { float f; uint32_t u; } v = { f };
    if ((v.u & 0x7fffffffU) > 0x7f800000U) return (uint16_t)((v.u >> 16) | 0x40);
    return (uint16_t)((v.u + 0x7fffU + ((v.u >> 16) & 1U)) >> 16);
}
"""

SOURCE = HASH + BF16 + r"""

/* keep[i] = hash(start + i) >= threshold; y = x * keep * scale, for i < n. */
void dropout_forward(int64_t n, int64_t start, const float *x, float *y, uint8_t *keep,
                     uint32_t threshold, float scale, uint32_t key0, uint32_t key1) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        uint32_t h = mix32(mix32((uint32_t)(start + i) ^ key0) ^ key1);
        uint8_t kept = h >= threshold;
        keep[i] = kept;
        y[i] = kept ? x[i] * scale : 0.0f;
    }
}

/* dx = dy * keep * scale */
void dropout_backward(int64_t n, const float *dy, const uint8_t *keep, float *dx, float scale) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        dx[i] = keep[i] ? dy[i] * scale : 0.0f;
}

/* The same two passes on bfloat16 tensors (autocast's activations): the same mask for the
   same key, each kept value scaled in float32 and rounded once. */
void dropout_forward_bf16(int64_t n, int64_t start, const uint16_t *x, uint16_t *y,
                          uint8_t *keep, uint32_t threshold, float scale, uint32_t key0,
                          uint32_t key1) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        uint32_t h = mix32(mix32((uint32_t)(start + i) ^ key0) ^ key1);
        uint8_t kept = h >= threshold;
        keep[i] = kept;
        y[i] = kept ? to_bf16(from_bf16(x[i]) * scale) : 0;
    }
}

void dropout_backward_bf16(int64_t n, const uint16_t *dy, const uint8_t *keep, uint16_t *dx,
                           float scale) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        dx[i] = keep[i] ? to_bf16(from_bf16(dy[i]) * scale) : 0;
}
"""

DTYPES = (torch.float32, torch.bfloat16)  # the tensors the kernel takes

MAX_ELEMENTS = 2**32  # the hash's counter is 32 bits: larger tensors take PyTorch's dropout


def _library() -> ctypes.CDLL | None:
    library = ckernel.load("dropout", SOURCE)
    if library is not None and library.dropout_forward.argtypes is None:
        for suffix in ("", "_bf16"):
            forward = getattr(library, f"dropout_forward{suffix}")
            forward.restype = None
            forward.argtypes = ([ctypes.c_int64] * 2 + [ctypes.c_void_p] * 3
                                + [ctypes.c_uint32, ctypes.c_float] + [ctypes.c_uint32] * 2)
            backward = getattr(library, f"dropout_backward{suffix}")
            backward.restype = None
            backward.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 3 + [ctypes.c_float]
    return library


def _suffix(x: torch.Tensor) -> str:
    return "_bf16" if x.dtype == torch.bfloat16 else ""


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def runs(x: torch.Tensor, p: float) -> bool:
    """Whether `dropout` takes the kernel for x: float32 or bfloat16 on the CPU, 0 < p < 1,
    fewer than 2^32 elements, and a compiler built it."""
    return (x.device.type == "cpu" and x.dtype in DTYPES and 0.0 < p < 1.0
            and x.numel() < MAX_ELEMENTS and available())


def threshold(p: float) -> int:
    """The hash value below which an element is dropped: round(p * 2^32)."""
    return min(round(p * 2**32), 2**32 - 1)


def mask(n: int, p: float, key: tuple[int, int]) -> torch.Tensor:
    """The keep mask (n,) bool that the kernel draws for `key`: for tests and inspection."""
    ones = torch.ones(n)
    kept, _ = _forward(ones, p, key)
    return kept != 0


def _key() -> tuple[int, int]:
    """Two 32-bit words from torch's default generator, so that manual_seed governs the masks."""
    words = torch.randint(0, 2**32, (2,), dtype=torch.int64)
    return int(words[0]), int(words[1])


def _forward(x: torch.Tensor, p: float, key: tuple[int, int]):
    library = _library()
    x = x.contiguous()
    y = torch.empty_like(x)
    keep = torch.empty(x.shape, dtype=torch.uint8)
    forward = getattr(library, f"dropout_forward{_suffix(x)}")
    forward(x.numel(), 0, x.data_ptr(), y.data_ptr(), keep.data_ptr(), threshold(p),
            1.0 / (1.0 - p), *key)
    return y, keep


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, key: tuple[int, int]) -> torch.Tensor:
        y, keep = _forward(x, p, key)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: torch.Tensor):
        (keep,) = ctx.saved_tensors
        dy = dy.contiguous()
        dx = torch.empty_like(dy)
        backward = getattr(_library(), f"dropout_backward{_suffix(dy)}")
        backward(dy.numel(), dy.data_ptr(), keep.data_ptr(), dx.data_ptr(), ctx.scale)
        return dx, None, None


def dropout(x: torch.Tensor, p: float, key: tuple[int, int] | None = None) -> torch.Tensor:
    """Training-mode dropout of x with probability p (see `runs` for where it applies): kept
    elements scaled by 1 / (1 - p). `key` fixes the mask (default: drawn from torch's
    generator)."""
    if not runs(x, p):
        raise ValueError("the compiled dropout takes float32 or bfloat16 CPU tensors, "
                         "0 < p < 1")
    return _Dropout.apply(x, p, _key() if key is None else key)
