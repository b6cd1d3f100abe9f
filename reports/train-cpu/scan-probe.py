"""Mamba's whole training step (or forward) with the selective scan's C kernel as it is now and
as it was at an earlier commit (its source read from git), alternated step by step in one
process; and one layer's scan alone each way, fastest of 15. The earlier way runs that commit's
scan_cpu.scan and scan_with_grad (its Python with its C) with the step sizes' softplus, the
skip and the gate in PyTorch (MambaMixer.gated_scan), as the model did before they moved into
the kernel (2fe6586); the way now, the scan route as it is.

    python reports/train-cpu/scan-probe.py --before 608e032 mamba:small:1024:float32 \
        mamba:small:1024:float32:forward
"""

from __future__ import annotations

import time
import types

import torch
import torch.nn.functional as F
from probes import alternate_cells, fastest_ms, module_at, parser, prepare

from zoo.fast.kernels import scan_cpu
from zoo.fast.state_space import CompiledScanMambaMixer
from zoo.mamba import MambaMixer


def one_layer(module: types.ModuleType, T: int, D: int = 1024, N: int = 16) -> tuple[float, ...]:
    """One layer's scan with Mamba small's width (d_inner 1024, N 16), A as Mamba initialises
    it: forward with the states kept for the backward, the backward, and inference, in ms."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, T, D, generator=g)
    delta = F.softplus(torch.randn(1, T, D, generator=g) - 4)
    A = -torch.arange(1, N + 1).float().repeat(D, 1)
    B, C = torch.randn(1, T, N, generator=g), torch.randn(1, T, N, generator=g)
    args = [t.requires_grad_() for t in (x, delta, A, B, C)] + [torch.zeros(1, D, N)]
    gy = torch.randn(1, T, D, generator=g)
    forward = fastest_ms(lambda: module.scan_with_grad(*args), 15)

    def backward():
        y, _ = module.scan_with_grad(*args)
        torch.autograd.backward([y], [gy])

    both = fastest_ms(backward, 15)  # a forward and its backward
    with torch.no_grad():
        inference = fastest_ms(lambda: module.scan(*(a.detach() for a in args)), 15)
    return forward, both - forward, inference


def main(cells: list[str], before: str, rounds: int) -> None:
    prepare()
    old = module_at("zoo.fast.kernels.scan_cpu", before)
    for label, module in ((before, old), ("now", scan_cpu), (before, old), ("now", scan_cpu)):
        start = time.perf_counter()
        forward, backward, inference = one_layer(module, 1024)
        print(f"one layer's scan at 1024 tokens, {label}: forward {forward:.2f} ms, backward "
              f"{backward:.2f} ms, inference {inference:.2f} ms "
              f"({time.perf_counter() - start:.0f} s)")
    now = (scan_cpu.scan, scan_cpu.scan_with_grad, CompiledScanMambaMixer.gated_scan)
    then = (old.scan, old.scan_with_grad, MambaMixer.gated_scan)

    def switch(functions):
        scan_cpu.scan, scan_cpu.scan_with_grad, CompiledScanMambaMixer.gated_scan = functions

    alternate_cells(cells, {"now": lambda: switch(now), before: lambda: switch(then)}, rounds)


if __name__ == "__main__":
    arguments = parser(__doc__, cells="*")
    arguments.add_argument("--before", required=True, help="the commit to compare with")
    args = arguments.parse_args()
    main(args.cells, args.before, args.rounds)
