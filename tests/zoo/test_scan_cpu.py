"""zoo/fast/kernels/scan_cpu.py, Mamba's selective scan as a compiled C loop, against the recurrence
it replaces (zoo.mamba.selective_scan_recurrent) in float64: outputs and final state within 2e-5
(float32 sums of 16 terms per output over a few hundred tokens of values of order 1), with a batch,
a given state, any number of threads, in both of its forms (fewer than 8 tokens: lanes over a
channel's state; more: lanes over 16 channels, with a last block of fewer); the given state is not
changed. The backward: every input's
gradient within 1e-6 of the largest (float32 sums over up to a few hundred tokens), from the
output's and the final state's gradients or the output's alone, across recompute chunks of several
sizes."""

from __future__ import annotations

import pytest
import torch

from zoo.fast.kernels import ckernel, scan_cpu
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
@pytest.mark.parametrize("shape", [(1, 1, 8, 16), (2, 7, 40, 16), (1, 8, 33, 16),
                                   (2, 257, 24, 16), (3, 40, 7, 5)])
def test_the_loop_equals_the_recurrence(shape, threads, monkeypatch):
    monkeypatch.setattr(ckernel, "SPLIT_MIN_WORK", 0)  # split even the small ones
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


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, chunk", [((2, 37, 20, 5), 8), ((1, 130, 9, 16), 64),
                                          ((3, 5, 3, 4), 2), ((1, 64, 16, 8), 64)])
@pytest.mark.parametrize("final_state_used", [True, False])
def test_the_backward_equals_autograd_through_the_recurrence(shape, chunk, threads,
                                                             final_state_used, monkeypatch,
                                                             kernel_split):
    monkeypatch.setattr(ckernel, "SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(scan_cpu, "BACKWARD_CHUNK", chunk)
    args = inputs(*shape, seed=1)
    g = torch.Generator().manual_seed(2)
    gy, gh = torch.randn(args[0].shape, generator=g), torch.randn(args[-1].shape, generator=g)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = [t.clone().requires_grad_() for t in args]
        y, h = scan_cpu.scan_with_grad(*ours)
        ((y * gy).sum() + ((h * gh).sum() if final_state_used else 0)).backward()
    finally:
        torch.set_num_threads(previous)
    ref = [t.double().requires_grad_() for t in args]
    y, h = selective_scan_recurrent(*ref)
    ((y * gy.double()).sum() + ((h * gh.double()).sum() if final_state_used else 0)).backward()
    for name, got, want in zip("x delta A B C state".split(), ours, ref, strict=True):
        scale = want.grad.abs().max().item()
        error = (got.grad.double() - want.grad).abs().max().item()
        assert error <= 1e-6 * scale + 1e-6, (name, error, scale)


def gated_reference(x, dt, A, B, C, D, z, state):
    """Mamba's selective SSM around the recurrence, as zoo.mamba.MambaMixer writes it: step
    sizes softplus(dt), then the skip and the gate."""
    F = torch.nn.functional
    y, h = selective_scan_recurrent(x, F.softplus(dt), A, B, C, state)
    return (y + x * D) * F.silu(z), h


def gate_inputs(batch: int, T: int, D: int, seed: int):
    """D, z, and dt (delta before its softplus): mostly in [-8, 3], where Mamba's lie, a few
    past softplus's threshold of 20 and below -30."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.randn(batch, T, D, generator=g) * 2.5 - 2.5
    dt.view(-1)[::97] = 25.0
    dt.view(-1)[5::89] = -40.0
    return torch.randn(D, generator=g), torch.randn(batch, T, D, generator=g) * 3, dt


@pytest.mark.parametrize("shape", [(1, 1, 8, 16), (2, 7, 40, 16), (2, 257, 24, 16),
                                   (3, 40, 7, 5)])
def test_the_gated_scan_equals_skip_and_gate_after_the_recurrence(shape, kernel_threads,
                                                                  kernel_split):
    """gated_scan: softplus of the step sizes, and (y + D x) SiLU(z), in the scan's pass, both
    forms (fewer than 8 tokens, and blocks of channels with a last one of fewer), z of either
    sign and large enough to saturate SiLU."""
    x, _, A, B, C, state = inputs(*shape)
    skip, z, dt = gate_inputs(shape[0], shape[1], shape[2], seed=3)
    args = (x, dt, A, B, C, skip, z, state)
    y, h = scan_cpu.gated_scan(*args)
    want_y, want_h = gated_reference(*(t.double() for t in args))
    torch.testing.assert_close(y.double(), want_y, atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(h.double(), want_h, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("shape, chunk", [((2, 37, 20, 5), 8), ((1, 130, 9, 16), 64),
                                          ((3, 5, 3, 4), 2), ((1, 64, 40, 16), 16)])
def test_the_gated_backward_equals_autograd_through_skip_gate_and_recurrence(
        shape, chunk, kernel_threads, monkeypatch, kernel_split):
    """Every input's gradient, dt's (through the softplus), D's and z's included, within 1e-6
    of the largest, from the output's and the final state's."""
    monkeypatch.setattr(scan_cpu, "BACKWARD_CHUNK", chunk)
    x, _, A, B, C, state = inputs(*shape, seed=1)
    skip, z, dt = gate_inputs(shape[0], shape[1], shape[2], seed=4)
    args = (x, dt, A, B, C, skip, z, state)
    g = torch.Generator().manual_seed(2)
    gy, gh = torch.randn(x.shape, generator=g), torch.randn(state.shape, generator=g)
    ours = [t.clone().requires_grad_() for t in args]
    y, h = scan_cpu.gated_scan_with_grad(*ours)
    ((y * gy).sum() + (h * gh).sum()).backward()
    ref = [t.double().requires_grad_() for t in args]
    y, h = gated_reference(*ref)
    ((y * gy.double()).sum() + (h * gh.double()).sum()).backward()
    for name, got, want in zip("x dt A B C D z state".split(), ours, ref, strict=True):
        scale = want.grad.abs().max().item()
        error = (got.grad.double() - want.grad).abs().max().item()
        assert error <= 1e-6 * scale + 1e-6, (name, error, scale)


@pytest.mark.parametrize("shape", [(2, 7, 40, 16), (2, 70, 24, 16)])
def test_the_gate_reads_z_in_place_as_half_of_a_wider_tensor(shape):
    """Mamba's z is the second half of in_proj's output, rows 2 d_inner apart: read where it
    lies (no copy), in both forms, forward and backward."""
    batch, T, D, _ = shape
    x, _, A, B, C, state = inputs(*shape, seed=5)
    skip, _, delta = gate_inputs(batch, T, D, seed=6)
    wide = (torch.randn(batch, T, 2 * D, generator=torch.Generator().manual_seed(7)) * 3
            ).requires_grad_()
    z = wide[..., D:]
    assert scan_cpu._rows(z)[0].data_ptr() == z.data_ptr()  # no copy
    y, h = scan_cpu.gated_scan_with_grad(x, delta, A, B, C, skip, z, state)
    y.sum().backward()
    ref_z = z.detach().double().requires_grad_()
    want, _ = gated_reference(*(t.double() for t in (x, delta, A, B, C, skip)), ref_z,
                              state.double())
    want.sum().backward()
    torch.testing.assert_close(y.double(), want.detach(), atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(wide.grad[..., D:].double(), ref_z.grad, atol=1e-5, rtol=1e-5)
    assert torch.all(wide.grad[..., :D] == 0)
    with torch.no_grad():
        torch.testing.assert_close(scan_cpu.gated_scan(x, delta, A, B, C, skip, z, state)[0],
                                   y.detach())


def test_the_kernels_softplus_and_its_slope_are_within_float_rounding():
    """The gated form's softplus of delta (a series for log1p) and its derivative, compiled
    from the kernel's own source, against float64's over [-90, 90] in steps of 2^-8. The
    softplus within 3 of float32's epsilon relative to the value where it is above 1e-30 (2.31
    when written, at about -2.6: exp, a division and the series each round; PyTorch's float32
    softplus: 0.96), x itself above PyTorch's threshold of 20; the slope, sigmoid, within 2 (an
    exp and a division, each rounding: 1.09 where the kernel compiled for AVX-512, as PyTorch's
    float32 sigmoid, 1.51 for AVX2, at x = -61), 1 above 20."""
    import ctypes

    from zoo.fast.kernels import ckernel

    library = ckernel.load("softplus_check", scan_cpu.SOURCE + r"""
void softplus_all(int64_t n, const float *x, float *y, float *slope) {
    for (int64_t i = 0; i < n; i++) {
        y[i] = softplus(x[i]);
        slope[i] = softplus_slope(x[i]);
    }
}
""", openmp=True)
    assert library is not None
    x = (torch.arange(-90 * 256, 90 * 256 + 1) / 256.0).float()
    y, slope = torch.empty_like(x), torch.empty_like(x)
    library.softplus_all(ctypes.c_int64(x.numel()), *(ctypes.c_void_p(t.data_ptr())
                                                        for t in (x, y, slope)))
    want = torch.nn.functional.softplus(x.double())
    big = want > 1e-30
    ulp = torch.finfo(torch.float32).eps * want[big].float().abs().double()  # at the value
    assert ((y.double()[big] - want[big]).abs() / ulp).max() <= 3.0
    assert (y[~big] <= 1e-30).all()
    assert torch.equal(y[x > 20], x[x > 20])
    want_slope = torch.where(x.double() > 20, 1.0, torch.sigmoid(x.double()))
    eps = torch.finfo(torch.float32).eps
    assert ((slope.double() - want_slope).abs() <= 2 * eps * want_slope + 1e-37).all()
