"""RWKV-4's WKV recurrence as a small C loop, for inference on the CPU.

`zoo.rwkv.wkv_recurrent` is the recurrence written in PyTorch, one token at a time: a dozen
tensor operations per token and layer, whose dispatch, not their arithmetic, is the cost on
a CPU (8192 tokens: ~100k operations per layer). `zoo.rwkv.wkv_chunked` removes the loop over
tokens but does O(chunk) work per token. This module runs the same stable recurrence (the
official CUDA kernel's, one thread per channel; here one SIMD lane per channel) compiled from
the C source below: about 15 ms per layer for 8192 tokens of width 512, against 170 ms for the
chunks. Inference only: it has no backward, so training keeps the PyTorch paths.

The source is compiled on first use with the system's C compiler (`cc`), once per machine, and
cached in ~/.cache/transformer-catalog/kernels/. zoo/fast.py's "wkv" route runs it; without a
compiler `available()` is False and the model keeps its PyTorch paths (same numbers;
`zoo.fast.describe(model)` says which run).
It is compiled with -ffast-math so that expf is vectorised (glibc's libmvec), but linked
without it: a shared library linked with -ffast-math would switch the whole process to
flush-denormals-to-zero when loaded (gcc < 13), changing every other computation.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* k, v, y: (B, T, C) float32, row-major; w = -exp(time_decay), u = time_first: (C,).
   aa, bb, pp: (B, C), the state (a = aa e^pp, b = bb e^pp), updated in place. */
void wkv_forward(int64_t B, int64_t T, int64_t C, const float *w, const float *u,
                 const float *k, const float *v, float *y, float *aa, float *bb, float *pp) {
    for (int64_t b = 0; b < B; b++) {
        float *sa = aa + b * C, *sb = bb + b * C, *sp = pp + b * C;
        for (int64_t t = 0; t < T; t++) {
            const float *kt = k + (b * T + t) * C, *vt = v + (b * T + t) * C;
            float *yt = y + (b * T + t) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                float kk = kt[c], vv = vt[c], a = sa[c], s = sb[c], p = sp[c];
                /* output: the past state plus the current token with its bonus u */
                float cur = u[c] + kk;
                float q = fmaxf(p, cur);
                float e1 = expf(p - q), e2 = expf(cur - q);
                yt[c] = (e1 * a + e2 * vv) / (e1 * s + e2);
                /* update: decay the past once by w, add the current token */
                float past = p + w[c];
                q = fmaxf(past, kk);
                e1 = expf(past - q);
                e2 = expf(kk - q);
                sa[c] = e1 * a + e2 * vv;
                sb[c] = e1 * s + e2;
                sp[c] = q;
            }
        }
    }
}
"""
# Tried in order: tuned for this CPU, then portable.
COMPILE_FLAGS = (("-O3", "-march=native", "-ffast-math", "-fopenmp-simd"),
                 ("-O3", "-ffast-math", "-fopenmp-simd"))


def _machine_key() -> str:
    """What a -march=native build depends on: the architecture and the CPU's feature flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return platform.machine() + flags


def _build(folder: Path) -> Path | None:
    """Compile SOURCE into a shared library in `folder`; None when no compiler manages it."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    key = hashlib.sha256((SOURCE + repr(COMPILE_FLAGS) + _machine_key()).encode()).hexdigest()
    library = folder / f"wkv-{key[:16]}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        source, obj, out = (Path(scratch) / name for name in ("wkv.c", "wkv.o", "wkv.so"))
        source.write_text(SOURCE)
        for flags in COMPILE_FLAGS:
            steps = ([compiler, *flags, "-fPIC", "-c", str(source), "-o", str(obj)],
                     [compiler, "-shared", str(obj), "-o", str(out), "-lm"])
            try:
                if all(subprocess.run(step, capture_output=True, timeout=120).returncode == 0
                       for step in steps):
                    out.replace(library)  # atomic: a concurrent build finds a whole file
                    return library
            except (OSError, subprocess.SubprocessError):
                continue
    return None


@functools.cache
def _library() -> ctypes.CDLL | None:
    cache = Path.home() / ".cache" / "transformer-catalog" / "kernels"
    for folder in (cache, Path(tempfile.gettempdir()) / "transformer-catalog-kernels"):
        try:
            path = _build(folder)
            if path is None:
                return None
            library = ctypes.CDLL(str(path))
        except OSError:
            continue
        library.wkv_forward.restype = None
        library.wkv_forward.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 8
        return library
    return None


def available() -> bool:
    """Whether the compiled kernel can run here (compiles it the first time it is asked)."""
    return _library() is not None


def wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
    """The same contract as `zoo.rwkv.wkv_recurrent`, for float32 CPU tensors without
    gradients: (wkv (B, T, d), the new state (aa, bb, pp)). The given state is not changed."""
    library = _library()
    if library is None:
        raise RuntimeError("the compiled WKV kernel is not available (no C compiler?)")
    B, T, C = k.shape
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (w, u, k, v, *state)):
        raise ValueError("the compiled WKV kernel takes float32 CPU tensors")
    w, u, k, v = (t if t.is_contiguous() else t.contiguous() for t in (w, u, k, v))
    aa, bb, pp = (s.clone(memory_format=torch.contiguous_format) for s in state)
    y = torch.empty_like(k)
    library.wkv_forward(B, T, C, *(t.data_ptr() for t in (w, u, k, v, y, aa, bb, pp)))
    return y, (aa, bb, pp)
