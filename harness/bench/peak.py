"""The machine's matrix-multiply peak, which MFU is measured against."""

from __future__ import annotations

import math
import time

import torch

from harness.bench.workload import DTYPES, sync

PEAK_METHOD = 2  # 1: torch.mm alone; 2: the best of torch.mm and zoo.fast's linear route


def measure_matmul_peak(device: str = "cpu", dtype: str = "float32", threads: int | None = None,
                        seconds: float = 3.0) -> float:
    """FLOP/s of the best of several n x n matrix multiplies, n chosen for the device (2048 on
    CPU, 8192 on GPUs), each timed after a warm-up, for about `seconds`. Both torch.mm and the
    route the zoo's linear layers take (on the CPU, oneDNN's matmul, faster than MKL's on some
    processors) are timed, and the faster counts: MFU is measured against the machine's peak,
    not one library's."""
    from zoo import fast

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    n = 8192 if dev.type == "cuda" else 2048
    a = torch.randn(n, n, device=dev).to(DTYPES[dtype])
    b = torch.randn(n, n, device=dev).to(DTYPES[dtype])
    best = math.inf
    with torch.no_grad():
        for multiply in (lambda: torch.mm(a, b), lambda: fast.linear(a, b)):
            multiply()
            spent = 0.0
            while spent < seconds / 2 or best == math.inf:
                sync(dev)
                start = time.perf_counter()
                multiply()
                sync(dev)
                elapsed = time.perf_counter() - start
                best, spent = min(best, elapsed), spent + elapsed
    return 2 * n**3 / best
