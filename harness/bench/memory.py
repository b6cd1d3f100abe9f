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


def peak_rss() -> int:
    peak = _status_field("self", "VmHWM")
    if peak is not None:
        return peak
    import resource  # ru_maxrss: kilobytes on Linux, bytes on macOS

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if platform.system() == "Darwin" else maxrss * 1024
