"""Small C kernels for the CPU routes of zoo/fast/: compiled on first use, cached, loaded.

A kernel is one C source string. `load(name, source)` compiles it with the system's C compiler
(`cc`, else gcc or clang) into a shared library, once per source, flags and CPU, cached in
~/.cache/transformer-catalog/kernels/ (or the temporary folder when home is not writable), and
returns it as a ctypes library; None when no compiler manages it, so that a route can say it is
unavailable and the model keeps its PyTorch path.

Sources are compiled with -ffast-math so that loops over exp vectorise (glibc's libmvec), but
linked without it: a shared library linked with -ffast-math switches the whole process to
flush-denormals-to-zero when it is loaded (gcc < 13), which would change every other
computation of the process.

With OpenMP (`load(..., openmp=True)`), a source is compiled with -fopenmp first (its parallel
regions guarded by `#ifdef _OPENMP`), else without. The library then asks for libgomp.so.1,
which the loader finds already loaded by PyTorch (its wheel's own copy, the same soname), so
the kernels' regions run on PyTorch's OpenMP threads: threads that, after one of PyTorch's own
regions, spin on the other core waiting for more work, where a thread of our own would have to
share that core with them (see zoo/fast/measurements.md).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

# Tried in order: tuned for this CPU, then portable.
COMPILE_FLAGS = (("-O3", "-march=native", "-ffast-math", "-fopenmp-simd"),
                 ("-O3", "-ffast-math", "-fopenmp-simd"))


# exp for the kernels' vector loops, a C function a source puts before its own code
# (`EXP + r"""..."""`). glibc's vector expf (libmvec) is a call per vector, around which a loop
# saves and restores its registers, and the loops over a state or a row whose every element
# takes an exp spent much of their time there: Mamba's selective scan, 16 exps per token and
# channel, ran its forward in about half the time with this one inlined (5.3 -> 2.8 ms a layer
# at 1024 tokens, ad hoc; zoo/fast/measurements.md). x = k ln2 + r
# with |r| <= ln2 / 2 (ln2 in two parts, Cody and Waite's reduction), exp(r) by Cephes' expf
# polynomial, 2^k written into the exponent bits: within 1 ulp of exp
# (tests/zoo/test_ckernel.py). Below -87 (exp < 1.7e-38, where floats turn denormal) it is 0;
# above 88 it is exp(88): the ranges whose 2^k are normal floats.
EXP = r"""
#include <stdint.h>
static inline float exp_inline(float x) {
    const float clamped = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float k = __builtin_floorf(clamped * 1.44269504088896341f + 0.5f);
    float r = __builtin_fmaf(k, -0.693359375f, clamped);  /* fma: -ffast-math may not merge */
    r = __builtin_fmaf(k, 2.12194440e-4f, r);             /* the two parts of ln2 */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)k + 127) << 23};
    return x < -87.0f ? 0.0f : p * scale.f;
}
"""


def _machine_key() -> str:
    """What a -march=native build depends on: the architecture and the CPU's feature flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return platform.machine() + flags


def _flag_sets(openmp: bool) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """(compile flags, link flags) to try in order: with OpenMP first when asked."""
    plain = tuple((flags, ()) for flags in COMPILE_FLAGS)
    if not openmp:
        return plain
    with_openmp = tuple((tuple("-fopenmp" if f == "-fopenmp-simd" else f for f in flags),
                         ("-fopenmp",)) for flags in COMPILE_FLAGS)
    return with_openmp + plain


def _build(folder: Path, name: str, source: str, openmp: bool = False) -> Path | None:
    """Compile `source` into a shared library in `folder`; None when no compiler manages it."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    key = hashlib.sha256((source + repr(_flag_sets(openmp)) + _machine_key()).encode()
                         ).hexdigest()
    library = folder / f"{name}-{key[:16]}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        src, obj, out = (Path(scratch) / f"{name}{ext}" for ext in (".c", ".o", ".so"))
        src.write_text(source)
        for flags, link in _flag_sets(openmp):
            steps = ([compiler, *flags, "-fPIC", "-c", str(src), "-o", str(obj)],
                     [compiler, "-shared", str(obj), "-o", str(out), "-lm", *link])
            try:
                if all(subprocess.run(step, capture_output=True, timeout=120).returncode == 0
                       for step in steps):
                    out.replace(library)  # atomic: a concurrent build finds a whole file
                    return library
            except (OSError, subprocess.SubprocessError):
                continue
    return None


@functools.cache
def load(name: str, source: str, openmp: bool = False) -> ctypes.CDLL | None:
    """The compiled `source` as a ctypes library (built the first time), or None. `openmp`:
    compiled with OpenMP where the compiler can (see the module's text)."""
    cache = Path.home() / ".cache" / "transformer-catalog" / "kernels"
    for folder in (cache, Path(tempfile.gettempdir()) / "transformer-catalog-kernels"):
        try:
            path = _build(folder, name, source, openmp)
            if path is None:
                return None
            return ctypes.CDLL(str(path))
        except OSError:
            continue
    return None


def checked(library: ctypes.CDLL | None, kernel: str, tensors) -> ctypes.CDLL:
    """`library`, once it is known to have loaded and `tensors` to be float32 CPU tensors, as
    the kernels' float32 entry points need; otherwise the error, naming `kernel` ("the compiled
    WKV kernel")."""
    import torch

    if library is None:
        raise RuntimeError(f"{kernel} is not available (no C compiler?)")
    if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors):
        raise ValueError(f"{kernel} takes float32 CPU tensors")
    return library


# --- splitting a kernel's work between threads -------------------------------------------------
# Every kernel's call covers a range [lo, hi) of its rows, channels or heads: one range, or one
# per PyTorch thread, run in one OpenMP region (`split`) or in a pool of threads of our own.

SPLIT_MIN_WORK = 1 << 20  # tokens x channels x N below which one thread does it all
_POOL: ThreadPoolExecutor | None = None


def team(library: ctypes.CDLL, name: str):
    """`library`'s function `name`: a kernel's training form, its work split between the
    threads of one OpenMP region of PyTorch's runtime (see the module's docstring), or None
    where the library was built without OpenMP (the callers then split it with
    `run_ranges`)."""
    return getattr(library, name, None)


def _pool(threads: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < threads:  # noqa: SLF001 (its documented size)
        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="zoo-kernel")
    return _POOL


def channel_ranges(work: int, D: int) -> list[tuple[int, int]]:
    """The channels of each thread's call: one range, or as many as PyTorch's threads."""
    threads = min(torch.get_num_threads(), D)
    if threads <= 1 or work < SPLIT_MIN_WORK:
        return [(0, D)]
    bounds = [D * i // threads for i in range(threads + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def split(library: ctypes.CDLL, name: str, ranges: list[tuple[int, int]], head: tuple,
          tail: tuple, openmp: bool = True) -> list:
    """`library`'s kernel `name`, called as name(*head, lo, hi, *tail) for the work [lo, hi),
    over all of `ranges`: where `openmp` (training) and the library has it, as name_team(
    threads, *head, *tail), which splits the work in one OpenMP region of PyTorch's runtime
    (see the module's docstring); else one call per range in `run_ranges`'s threads. What the
    calls returned."""
    one_region = team(library, f"{name}_team") if openmp else None
    if one_region:
        return [one_region(len(ranges), *head, *tail)]
    function = getattr(library, name)
    return run_ranges(lambda lo, hi: function(*head, lo, hi, *tail), ranges, lambda i: ())


def run_ranges(function, ranges: list[tuple[int, int]], arguments) -> list:
    """function(lo, hi, *arguments(i)) for the i-th range (lo, hi), in parallel threads."""
    if len(ranges) == 1:
        return [function(*ranges[0], *arguments(0))]
    pool = _pool(len(ranges))
    runs = [pool.submit(function, lo, hi, *arguments(i)) for i, (lo, hi) in enumerate(ranges)]
    return [run.result() for run in runs]
