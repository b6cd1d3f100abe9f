"""zoo/scan_cpu.py, Mamba's selective scan as a compiled C loop, against the recurrence it
replaces (zoo.mamba.selective_scan_recurrent) in float64: outputs and final state within 2e-5
(float32 sums of 16 terms per output over a few hundred tokens of values of order 1), with a
batch, a given state, any number of threads; the given state is not changed."""

from __future__ import annotations

import pytest
import torch

from zoo import scan_cpu
from zoo.mamba import selective_scan_recurrent

pytestmark = pytest.mark.skipif(not scan_cpu.available(), reason="no C compiler for the kernel")


def inputs(batch: int, T: int, D: int, N: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, D, generator=g)
    delta = torch.rand(batch, T, D, generator=g) * 0.5
    A = -torch.rand(D, N, generator=g) * 4 - 0.01
    B, C = torch.randn(batch, T, N, generator=g), torch.randn(batch, T, N, generator=g)
    state = torch.randn(batch, D, N, generator=g)
    return x, delta, A, B, C, state


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 1, 8, 16), (2, 257, 24, 16), (3, 40, 7, 5)])
def test_the_loop_equals_the_recurrence(shape, threads, monkeypatch):
    monkeypatch.setattr(scan_cpu, "SPLIT_MIN_WORK", 0)  # split even the small ones
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        args = inputs(*shape)
        given = args[-1].clone()
        y, h = scan_cpu.scan(*args)
    finally:
        torch.set_num_threads(previous)
    want_y, want_h = selective_scan_recurrent(*(t.double() for t in args))
    torch.testing.assert_close(y.double(), want_y, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(h.double(), want_h, atol=2e-5, rtol=1e-5)
    assert torch.equal(args[-1], given)


def test_strided_inputs_are_read_right():
    """B and C come from splitting one projection: views with a row stride of 3N."""
    x, delta, A, _, _, state = inputs(2, 33, 12, 4)
    dbc = torch.randn(2, 33, 12)
    B, C = dbc[..., 4:8], dbc[..., 8:]
    torch.testing.assert_close(scan_cpu.scan(x, delta, A, B, C, state)[0],
                               selective_scan_recurrent(x, delta, A, B, C, state)[0],
                               atol=2e-5, rtol=1e-5)


def test_other_dtypes_are_refused():
    args = [t.double() for t in inputs(1, 3, 4, 2)]
    with pytest.raises(ValueError, match="float32 CPU tensors"):
        scan_cpu.scan(*args)
