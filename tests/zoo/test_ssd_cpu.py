"""zoo.fast.kernels.ssd_cpu, Mamba-2's chunked SSD with its work inside chunks as a compiled C loop,
its products with the state in oneDNN and its backward written out (part of zoo.fast's "scan"
route), against zoo.mamba2.ssd_chunked differentiated by autograd in float64.

The kernel: y, the final state and the gradients of all six inputs (the loss reading the final
state too), within 2e-6 of the largest entry of each, 5e-6 for A's (a sum over every token;
float32 against float64; measured <= 4e-7, and <= 1e-6 for A's: PyTorch's float32 chunked form
gets 6e-7 there; a first C backward that took a's gradient as a difference of row and column
totals of the log-decays' gradients got 2.3e-5 in chunks of 128), for lengths that are and are
not a multiple of the chunk, more than one sequence, groups of heads sharing B and C, x a view
of a wider projection (as the model passes it), chunks of 16 to 128 tokens (24: not a multiple
of the C loop's 16-lane blocks), head sizes the C loop specialises (64) and not, chunks split
between 1 to 3 threads, in one OpenMP region or the kernels' own threads; under bfloat16
autocast it still computes in float32. The model: routed Mamba-2 gives the plain model's loss,
every parameter's gradient, prefill logits and cached decoding.
"""

from __future__ import annotations

import pytest
import torch
from conftest import max_diff, tiny_state_space, train_and_decode

import zoo
import zoo.fast
from zoo.fast.kernels import ssd_cpu
from zoo.mamba2 import ssd_chunked

pytestmark = pytest.mark.skipif(not ssd_cpu.available(),
                                reason="no C compiler: Mamba-2 keeps the PyTorch SSD")


def inputs(b, T, H, P, G, N, seed=0):
    """Float64 inputs in the model's ranges: dt softplus-like in (0.01, 0.5), A in [-4.5, -0.5];
    x as the first H P channels of a wider projection."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(b, T, 2 * H * P, generator=g, dtype=torch.float64)
    dt = torch.rand(b, T, H, generator=g, dtype=torch.float64) * 0.49 + 0.01
    A = -(torch.rand(H, generator=g, dtype=torch.float64) * 4 + 0.5)
    B = torch.randn(b, T, G, N, generator=g, dtype=torch.float64)
    C = torch.randn(b, T, G, N, generator=g, dtype=torch.float64)
    state = torch.randn(b, H, P, N, generator=g, dtype=torch.float64)
    return wide, dt, A, B, C, state


def run(function, tensors, dtype, H, P, chunk, gy, gh):
    leaves = [t.detach().to(dtype).requires_grad_() for t in tensors]
    wide, rest = leaves[0], leaves[1:]
    x = wide[..., :H * P].unflatten(-1, (H, P))
    y, h = function(x, *rest, chunk_size=chunk)
    ((y * gy.to(dtype)).sum() + (h * gh.to(dtype)).sum()).backward()
    return [y, h] + [t.grad for t in leaves]


@pytest.mark.parametrize("b, T, H, P, G, N, chunk", [
    (1, 128, 4, 64, 1, 16, 32),   # whole chunks, the specialised head size
    (2, 100, 4, 8, 2, 16, 32),    # a partial last chunk, two sequences, two groups
    (1, 70, 6, 16, 3, 8, 16),     # three groups of two heads
    (1, 64, 2, 64, 1, 128, 64),   # one chunk, Mamba-2's d_state
    (2, 5, 2, 8, 1, 4, 16),       # fewer tokens than a chunk
    (1, 200, 2, 64, 1, 32, 128),  # the route's default chunk, a partial last one
    (1, 50, 2, 8, 1, 8, 24),      # a chunk that is not a multiple of the 16-lane blocks
])
def test_the_kernel_and_its_gradients_equal_the_chunked_ssd(b, T, H, P, G, N, chunk,
                                                            kernel_threads, kernel_split):
    tensors = inputs(b, T, H, P, G, N, seed=T + H)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(b, T, H, P, generator=g, dtype=torch.float64)
    gh = torch.randn(b, H, P, N, generator=g, dtype=torch.float64)
    ours = run(ssd_cpu.ssd, tensors, torch.float32, H, P, chunk, gy, gh)
    reference = run(ssd_chunked, tensors, torch.float64, H, P, chunk, gy, gh)
    names = ["y", "final state", "x (as part of the projection)", "dt", "A", "B", "C", "state"]
    for name, got, want in zip(names, ours, reference, strict=True):
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        tolerance = 5e-6 if name == "A" else 2e-6
        assert max_diff(got, want) <= tolerance * want.abs().max().item(), name


def test_the_kernel_computes_in_float32_under_autocast():
    wide, dt, A, B, C, state = (t.float() for t in inputs(1, 40, 2, 8, 1, 8))
    x = wide[..., :16].unflatten(-1, (2, 8)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h = ssd_cpu.ssd(x, dt, A, B, C, state, chunk_size=16)
    want, _ = ssd_chunked(x.double(), dt.double(), A.double(), B.double(), C.double(),
                          state.double(), chunk_size=16)
    assert y.dtype == torch.float32
    assert max_diff(y, want) <= 2e-6 * want.abs().max().item()
    y.sum().backward()
    assert x.grad.dtype == torch.float32


def test_the_kernel_refuses_other_dtypes_and_shapes():
    x, dt, A = torch.randn(1, 5, 2, 4), torch.rand(1, 5, 2), -torch.rand(2)
    B, C, state = torch.randn(1, 5, 1, 3), torch.randn(1, 5, 1, 3), torch.zeros(1, 2, 4, 3)
    with pytest.raises(ValueError, match="float32 CPU"):
        ssd_cpu.ssd(x.double(), dt, A, B, C, state)
    with pytest.raises(ValueError, match=r"shapes: .* expected \(b, T, H, P\)"):
        ssd_cpu.ssd(x, dt, A, B, C[:, :4], state)


def test_no_tokens_leave_the_state_as_it_came():
    x, dt, A = torch.randn(2, 0, 2, 4), torch.rand(2, 0, 2), -torch.rand(2)
    B, C, state = torch.randn(2, 0, 1, 3), torch.randn(2, 0, 1, 3), torch.randn(2, 2, 4, 3)
    y, h = ssd_cpu.ssd(x, dt, A, B, C, state)
    assert y.shape == (2, 0, 2, 4) and torch.equal(h, state)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, not 0"):
        ssd_cpu.ssd(x, dt, A, B, C, state, chunk_size=0)


def test_the_route_runs_the_kernel_and_keeps_the_plain_numbers(monkeypatch):
    """A training step (loss and every parameter's gradient within 1e-5 of the largest entry),
    prefill over several chunks and then decoding (the recurrence, not the kernel), as the
    plain model."""
    calls = []
    real = ssd_cpu.ssd
    monkeypatch.setattr(ssd_cpu, "ssd", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    model = tiny_state_space("mamba2")
    ids = torch.randint(0, 100, (2, 30))
    plain_loss, plain_grads, plain, plain_step = train_and_decode(model, ids)
    zoo.fast.apply(model, ["scan"])
    notes = zoo.fast.describe(model, training=True)
    assert ("SSD: chunks of 8, inside them a compiled C loop and its backward, oneDNN's products "
            "with the state (zoo.fast.kernels.ssd_cpu); the recurrence for decoding") in notes
    loss, grads, routed, step = train_and_decode(model, ids)
    assert [shape[1] for shape in calls] == [30] * 2 * model.config.n_layer  # not decoding's
    assert abs(loss.item() - plain_loss.item()) <= 1e-5
    for n, grad in plain_grads.items():
        assert max_diff(grads[n], grad) <= 1e-5 * grad.abs().max().item() + 1e-8, n
    assert max_diff(routed.logits, plain.logits) <= 1e-5
    assert max_diff(routed.cache.ssm, plain.cache.ssm) <= 1e-5
    assert max_diff(step, plain_step) <= 1e-5


def test_without_the_route_the_model_keeps_the_pytorch_ssd(monkeypatch):
    monkeypatch.setattr(ssd_cpu, "ssd", lambda *a, **k: pytest.fail("the kernel ran"))
    model = tiny_state_space("mamba2")
    ids = torch.randint(0, 100, (1, 12))
    model(ids, targets=ids).loss.backward()
    assert "SSD: PyTorch, chunks of 8 for prefill, the recurrence for decoding" in \
        zoo.fast.describe(model, training=True)
