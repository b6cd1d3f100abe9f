"""Memory of the cell's process: peak RSS on the CPU (Linux's VmHWM, reset before timing),
and handing freed memory back to the OS so that what is measured is what is live."""

from __future__ import annotations

import gc
import platform


def _status_field(pid: int | str, field: str) -> int | None:
    """A `VmRSS`/`VmHWM` line of /proc/<pid>/status, in bytes (None off Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss(pid: int | str = "self") -> int | None:
    return _status_field(pid, "VmRSS")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> None:
    """Hand memory that was freed back to the OS (glibc keeps it otherwise), so that the RSS
    measured next is what is live: the weights, the inputs, a KV cache or a state."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the OS, as the
    jemalloc or tcmalloc that CPU training guides preload do. glibc serves every allocation over
    32 MiB with a fresh mmap and unmaps it when freed, and trims its heap when freed memory sits
    on top: a training step's large temporaries then cost a page fault per 4 KiB every step
    (on the machine here a 32 MiB elementwise product takes 15 ms in fresh pages, 2.5 ms in
    reused ones: benchmarks/training_parts.py). With no mmap and no trimming the heap keeps its
    pages; the peak RSS is then the heap's high-water mark. `release_freed_memory` still trims
    on request. False where this is not glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def peak_rss() -> int:
    peak = _status_field("self", "VmHWM")
    if peak is not None:
        return peak
    import resource  # ru_maxrss: kilobytes on Linux, bytes on macOS

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if platform.system() == "Darwin" else maxrss * 1024
