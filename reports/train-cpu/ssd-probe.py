"""One Mamba-2 layer's SSD, forward and backward, in PyTorch (zoo.mamba2.ssd_chunked, autograd) and
by zoo/fast/kernels/ssd_cpu.py, alternated in one process; with --products, the oneDNN products the
kernel's state takes in the layouts it could have.

    python reports/train-cpu/ssd-probe.py [--seqlen 1024] [--batch 1] [--rounds 3] [--chunk 128]
    python reports/train-cpu/ssd-probe.py --products

The shape is the `small` Mamba-2's (16 heads of 64 channels, one group, d_state 128), each form in
the chunks it takes by default (PyTorch's 64, zoo.fast.kernels.ssd_cpu.CHUNK for the kernel; --chunk
sets the kernel's). Each figure is the fastest of 7 runs (a shared machine only slows a run down);
the rounds alternate the two forms. Run with the benchmark's allocator settings (MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=4294967295) to leave out page faults, as the training cells do.
"""

from __future__ import annotations

import argparse

import torch
from probes import fastest_ms

from zoo.fast.kernels import ssd_cpu
from zoo.mamba2 import chunk_length, ssd_chunked

H, P, G, N = 16, 64, 1, 128
PLAIN_CHUNK = chunk_length(None, cuda=False)


def layer(batch: int, seqlen: int, rounds: int, chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, seqlen, H, P, generator=g).requires_grad_()
    dt = (torch.rand(batch, seqlen, H, generator=g) * 0.1).requires_grad_()
    A = (-torch.rand(H, generator=g) * 4 - 1).requires_grad_()
    B = torch.randn(batch, seqlen, G, N, generator=g).requires_grad_()
    C = torch.randn(batch, seqlen, G, N, generator=g).requires_grad_()
    state = torch.zeros(batch, H, P, N)
    gy = torch.randn(batch, seqlen, H, P, generator=g)

    def step(function):
        size = PLAIN_CHUNK if function is ssd_chunked else chunk
        y, _ = function(x, dt, A, B, C, state, chunk_size=size)
        y.backward(gy)

    def forward(function):
        size = PLAIN_CHUNK if function is ssd_chunked else chunk
        with torch.no_grad():
            function(x, dt, A, B, C, state, chunk_size=size)

    print(f"one layer's SSD, {batch} x {seqlen} tokens, chunks of {PLAIN_CHUNK} -> {chunk}, "
          f"{torch.get_num_threads()} threads (ms):")
    for r in range(rounds):
        plain, ours = fastest_ms(lambda: step(ssd_chunked)), fastest_ms(lambda: step(ssd_cpu.ssd))
        plain_f = fastest_ms(lambda: forward(ssd_chunked))
        ours_f = fastest_ms(lambda: forward(ssd_cpu.ssd))
        print(f"  round {r + 1}: forward and backward {plain:.1f} -> {ours:.1f} "
              f"({plain / ours:.2f}x); forward alone {plain_f:.1f} -> {ours_f:.1f} "
              f"({plain_f / ours_f:.2f}x)")


def products() -> None:
    """A chunk's products with the state over the 1024-token layer's chunks: oneDNN's matrix
    multiply (x weight^T) with x contiguous, against x a transposed view, and batched MKL."""
    L, HP = ssd_cpu.CHUNK, H * P
    n = 1024 // L
    g = torch.Generator().manual_seed(0)
    V, B, h = (torch.randn(n, L, HP, generator=g), torch.randn(n, L, N, generator=g),
               torch.randn(n, N, HP, generator=g))
    Bt = B.transpose(1, 2).contiguous()
    flops = 2 * n * L * N * HP
    cases = {
        "B^T V, x = B^T contiguous (the kernel's)": lambda: [
            ssd_cpu._product(Bt[c], V[c].t()) for c in range(n)],
        "V^T B, x = V^T a transposed view": lambda: [
            ssd_cpu._product(V[c].t(), Bt[c]) for c in range(n)],
        "V^T B, batched MKL (torch.bmm)": lambda: torch.bmm(V.transpose(1, 2), B),
        "V dh^T (B's gradient), x = V contiguous (the kernel's)": lambda: [
            ssd_cpu._product(V[c], h[c]) for c in range(n)],
        "V dh^T, x = V a transposed view": lambda: [
            ssd_cpu._product(V[c].t().contiguous().t(), h[c]) for c in range(n)],
    }
    for name, run in cases.items():
        ms = fastest_ms(run, repeat=20)
        print(f"  {name}: {ms:.2f} ms, {flops / ms / 1e6:.0f} GFLOP/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqlen", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=ssd_cpu.CHUNK)
    parser.add_argument("--products", action="store_true")
    args = parser.parse_args()
    if args.products:
        products()
    else:
        layer(args.batch, args.seqlen, args.rounds, args.chunk)
