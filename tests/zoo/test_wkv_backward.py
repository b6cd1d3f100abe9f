"""zoo.fast.kernels.wkv_cpu's WKV backward (`wkv_with_grad`) against `wkv_recurrent` run in float64
by autograd, and RWKV trained through zoo.fast's wkv route against the plain model.

Tolerances. The kernel computes in float32, as accurately as PyTorch's float32 recurrence
(measured side by side: the same errors to two digits). Outputs and gradients are compared with
the float64 recurrence's at 1e-4 of the largest exact value (or of 1, the loss's scale, where
all are smaller, say exactly 0): measured at most 6e-5, with keys of scale 20 and up to 300
tokens. At 2048 tokens with keys up to +-100: 2e-3 (measured 9e-4 for w's gradient, PyTorch's
float32 recurrence 9e-4: the rounding of the float32 state over the tokens sets it, not the
kernel's sums). Whole models: the route's parameter gradients equal the plain model's at
atol 1e-5, rtol 1e-4, as in test_fast.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
import zoo.fast
from zoo.fast.kernels import wkv_cpu
from zoo.rwkv import EMPTY_PP, wkv_recurrent

pytestmark = pytest.mark.skipif(not wkv_cpu.available(),
                                reason="no compiled WKV kernel here (no C compiler)")


@pytest.fixture(autouse=True)
def one_thread():
    """The float64 references are thousands of tiny ops: faster on one thread, and the
    machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def wkv_inputs(B, T, C, seed=0, decay=(-9.0, 6.0), k_scale=20.0):
    """w from -e^-9 (memory of ~8000 tokens) to -e^6 (forgets at once), keys of scale 20
    (e^k overflows float32 without the max shifts)."""
    g = torch.Generator().manual_seed(seed)
    w = -torch.exp(torch.empty(C).uniform_(*decay, generator=g))
    u = torch.randn(C, generator=g)
    k = k_scale * torch.randn(B, T, C, generator=g)
    v = torch.randn(B, T, C, generator=g)
    return w, u, k, v


def empty_state(B, C, dtype=torch.float32):
    """The state every training step starts from (RWKVState.empty)."""
    return (torch.zeros(B, C, dtype=dtype), torch.zeros(B, C, dtype=dtype),
            torch.full((B, C), EMPTY_PP, dtype=dtype))


def forward_and_grads(fn, inputs, state, dtype, state_loss=False):
    """fn's output, new state and the gradients of a random linear loss on the output (plus
    one on the new state: aa/bb and pp) with respect to w, u, k, v and the given state."""
    leaves = [x.to(dtype).detach().requires_grad_() for x in (*inputs, *state)]
    y, (aa, bb, pp) = fn(*leaves[:4], tuple(leaves[4:]))
    g = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=g).to(dtype)).sum()
    if state_loss:
        loss = loss + (aa / bb * torch.randn(aa.shape, generator=g).to(dtype)).sum()
        loss = loss + (pp * torch.randn(pp.shape, generator=g).to(dtype)).sum()
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    # None where the loss does not depend on an input (w, with one token and no state loss)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads, strict=True)]
    return y, (aa, bb, pp), grads


def assert_close_to_max(ours, exact, tolerance, name):
    """|ours - exact| <= tolerance * max|exact| elementwise, or tolerance * 1 where every exact
    value is smaller than 1 (the loss's scale: its weights are N(0, 1)), say exactly 0."""
    scale = exact.abs().max().item()
    error = (ours.double() - exact).abs().max().item()
    assert error <= tolerance * max(scale, 1.0), f"{name}: error {error:.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("C", [5, 64])
@pytest.mark.parametrize("T", [1, 7, 65, 300])
def test_gradients_equal_the_float64_recurrence(T, C):
    inputs = wkv_inputs(2, T, C, seed=T * C)
    y, _, grads = forward_and_grads(wkv_cpu.wkv_with_grad, inputs, empty_state(2, C),
                                    torch.float32)
    ref_y, _, ref_grads = forward_and_grads(wkv_recurrent, inputs,
                                            empty_state(2, C, torch.float64), torch.float64)
    assert y.dtype == torch.float32 and y.shape == (2, T, C)
    assert_close_to_max(y, ref_y, 1e-4, "y")
    for name, ours, exact in zip("wukv", grads[:4], ref_grads[:4], strict=True):
        assert ours.dtype == torch.float32 and ours.shape == exact.shape
        assert_close_to_max(ours, exact, 1e-4, name)


@pytest.mark.parametrize("T", [1, 7, 65])
def test_a_given_state_values_and_gradients(T):
    """A non-zero state from 20 earlier tokens, a loss on the new state too (its aa / bb and
    its pp, whose gradient goes to the key or the state that holds the maximum log-weight):
    the outputs, the new state, and the gradients of w, u, k, v and of the given state."""
    B, C = 2, 24
    w, u, k, v = wkv_inputs(B, T + 20, C, seed=T, k_scale=5.0)
    _, state = wkv_recurrent(*(x.double() for x in (w, u, k[:, :20], v[:, :20])),
                             empty_state(B, C, torch.float64))
    state[2][0, :3] += 40.0  # in these channels the given state's scale stays the maximum
    inputs = (w, u, k[:, 20:], v[:, 20:])
    y, new, grads = forward_and_grads(wkv_cpu.wkv_with_grad, inputs,
                                      tuple(s.float() for s in state), torch.float32, True)
    ref_y, ref_new, ref_grads = forward_and_grads(wkv_recurrent, inputs, state, torch.float64,
                                                  True)
    assert_close_to_max(y, ref_y, 1e-4, "y")
    aa, bb, pp = new
    torch.testing.assert_close(pp.double(), ref_new[2], atol=1e-4, rtol=1e-5)
    assert_close_to_max(aa / bb, ref_new[0] / ref_new[1], 1e-4, "aa / bb")
    for name, ours, exact in zip(["w", "u", "k", "v", "aa", "bb", "pp"], grads, ref_grads,
                                 strict=True):
        assert_close_to_max(ours, exact, 1e-4, name)


def test_long_sequences_with_large_keys_are_stable():
    """2048 tokens against the float64 recurrence, keys up to +-100, decays e^-9 to e^6; then
    16384 tokens, whose gradients stay finite."""
    B, T, C = 1, 2048, 8
    w, u, k, v = wkv_inputs(B, T, C, seed=3, k_scale=8.0)
    k[:, ::97] = 100.0 * torch.sign(k[:, ::97])
    _, _, grads = forward_and_grads(wkv_cpu.wkv_with_grad, (w, u, k, v), empty_state(B, C),
                                    torch.float32)
    _, _, ref_grads = forward_and_grads(wkv_recurrent, (w, u, k, v),
                                        empty_state(B, C, torch.float64), torch.float64)
    for name, ours, exact in zip("wukv", grads[:4], ref_grads[:4], strict=True):
        assert_close_to_max(ours, exact, 2e-3, name)
    w, u, k, v = wkv_inputs(2, 16384, 16, seed=4, k_scale=30.0)
    _, _, grads = forward_and_grads(wkv_cpu.wkv_with_grad, (w, u, k, v), empty_state(2, 16),
                                    torch.float32, state_loss=True)
    assert all(torch.isfinite(g).all() for g in grads)


def test_unused_outputs_and_no_grad():
    """A loss on the new state alone (no gradient for the output), and a call without
    gradients (the output of `wkv`)."""
    w, u, k, v = wkv_inputs(2, 9, 6, k_scale=3.0)
    leaves = [x.clone().requires_grad_() for x in (w, u, k, v)]
    _, (aa, bb, _) = wkv_cpu.wkv_with_grad(*leaves, empty_state(2, 6))
    ours = torch.autograd.grad((aa / bb).sum(), leaves)
    ref_leaves = [x.double().requires_grad_() for x in (w, u, k, v)]
    _, (aa, bb, _) = wkv_recurrent(*ref_leaves, empty_state(2, 6, torch.float64))
    exact = torch.autograd.grad((aa / bb).sum(), ref_leaves, allow_unused=True)
    assert exact[1] is None and torch.equal(ours[1], torch.zeros(6))  # u: outputs only
    for name, a, b in zip("wkv", ours[::2] + ours[3:], exact[::2] + exact[3:], strict=True):
        assert_close_to_max(a, b, 1e-4, name)
    with torch.no_grad():
        y, _ = wkv_cpu.wkv_with_grad(w, u, k, v, empty_state(2, 6))
    assert torch.equal(y, wkv_cpu.wkv(w, u, k, v, empty_state(2, 6))[0])


# ---- the wkv route on a whole model ------------------------------------------------------------

def small_rwkv(fast: bool) -> nn.Module:
    """Two layers of width 64, noise on every parameter (the official init zeroes several
    matrices) and time_decay from -6 to 4: both builds hold the same weights."""
    torch.manual_seed(0)
    model = zoo.build("rwkv", n_layer=2, d_model=64, vocab_size=97, fast=fast)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
            if name.endswith("time_decay"):
                p.copy_(torch.empty(p.shape).uniform_(-6.0, 4.0, generator=g))
    return model.train()


def parameter_grads(model, ids, targets, chained=False):
    if chained:  # two calls, the state carried with its gradient (backpropagation through both)
        first = model(ids[:, :20], targets=targets[:, :20], use_cache=True)
        second = model(ids[:, 20:], targets=targets[:, 20:], cache=first.cache)
        loss = first.loss + second.loss
    else:
        loss = model(ids, targets=targets).loss
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("chained", [False, True])
def test_training_through_the_route_gives_the_plain_gradients(monkeypatch, chained):
    fast, plain = small_rwkv(fast=True), small_rwkv(fast=False)
    assert "wkv" in zoo.fast.applied(fast) and zoo.fast.applied(plain) == ()
    calls = []
    real = wkv_cpu.wkv_with_grad
    monkeypatch.setattr(wkv_cpu, "wkv_with_grad", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (2, 45))
    targets = torch.randint(0, 97, (2, 45))
    ours = parameter_grads(fast, ids, targets, chained)
    assert len(calls) == 2 * (2 if chained else 1)  # every layer, every call: the C loop
    expected = parameter_grads(plain, ids, targets, chained)
    assert ours.keys() == expected.keys()
    for name, grad in expected.items():
        assert grad is not None and ours[name] is not None, name
        torch.testing.assert_close(ours[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_without_the_kernel_the_route_trains_with_the_pytorch_wkv(monkeypatch):
    model = small_rwkv(fast=True)
    calls = []
    monkeypatch.setattr(wkv_cpu, "wkv_with_grad", lambda *a: calls.append(1))
    monkeypatch.setattr(wkv_cpu, "available", lambda: False)
    ids = torch.randint(0, 97, (1, 10))
    model(ids, targets=ids).loss.backward()
    assert calls == [] and model.blocks[0].att.time_decay.grad is not None
