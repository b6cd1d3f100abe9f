"""zoo.fast.kernels.conv_cpu, Mamba's and Mamba-2's causal depthwise convolution and its SiLU as a
compiled C loop with its backward (part of zoo.fast's "scan" route), against the plain
`causal_depthwise_conv` followed by F.silu in float64.

The kernel: the output, the new conv state and the gradients of x, the conv state, the weights
and the bias (the loss reading the new state too), within 1e-6 of the largest entry of each
(float32 against float64; measured <= 3e-7), for x a view of a wider projection (as the models
pass it), fewer tokens than the window (decoding), no bias, taps of 4 and 2, channels split
between 1 to 3 threads. The models: routed Mamba and Mamba-2 give the plain model's logits,
loss, every parameter's gradient and cached decoding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import max_diff, tiny_state_space, train_and_decode

import zoo
import zoo.fast
from zoo.fast.kernels import conv_cpu
from zoo.layers import causal_depthwise_conv

pytestmark = pytest.mark.skipif(not conv_cpu.available(),
                                reason="no C compiler: the models use F.conv1d")


def plain_conv_silu(x, state, weight, bias):
    conv, new_state = causal_depthwise_conv(x, state, weight, bias)
    return F.silu(conv), new_state


@pytest.mark.parametrize("B, T, C, K, bias", [(2, 37, 40, 4, True), (1, 2, 16, 4, False),
                                               (3, 1, 8, 4, True), (1, 9, 5, 2, True)])
def test_the_kernel_and_its_gradients_equal_the_plain_conv(B, T, C, K, bias, kernel_threads,
                                                           kernel_split):
    g = torch.Generator().manual_seed(T * C + K)
    wide = torch.randn(B, T, 2 * C, generator=g, dtype=torch.float64)  # x = wide[..., :C]
    state = torch.randn(B, C, K - 1, generator=g, dtype=torch.float64)
    weight = torch.randn(C, 1, K, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64) if bias else None
    gout = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    gstate = torch.randn(B, C, K - 1, generator=g, dtype=torch.float64)

    def run(function, dtype):
        leaves = [t.detach().to(dtype).requires_grad_()
                  for t in (wide, state, weight) + ((b,) if bias else ())]
        out, new_state = function(leaves[0][..., :C], leaves[1], leaves[2],
                                  leaves[3] if bias else None)
        ((out * gout.to(dtype)).sum() + (new_state * gstate.to(dtype)).sum()).backward()
        return [out, new_state] + [t.grad for t in leaves]

    ours, reference = run(conv_cpu.conv_silu, torch.float32), run(plain_conv_silu, torch.float64)
    names = ["out", "new state", "x (as part of the projection)", "state", "weight", "bias"]
    for name, got, want in zip(names, ours, reference, strict=False):
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        assert max_diff(got, want) <= 1e-6 * want.abs().max().item(), name


def test_the_kernel_refuses_other_dtypes_and_shapes():
    x, state, weight = torch.randn(1, 5, 8), torch.zeros(1, 8, 3), torch.randn(8, 1, 4)
    with pytest.raises(ValueError, match="float32 CPU"):
        conv_cpu.conv_silu(x.double(), state.double(), weight.double(), None)
    with pytest.raises(ValueError, match=r"shapes: .* expected \(b, T, C\)"):
        conv_cpu.conv_silu(x, state[:, :, :2], weight, None)


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_the_route_runs_the_kernel_and_keeps_the_plain_numbers(name, monkeypatch):
    """A training step (loss and every parameter's gradient within 1e-5 of the largest entry),
    prefill over several chunks and one decoding step through the kernel, as the plain model."""
    calls = []
    real = conv_cpu.conv_silu
    monkeypatch.setattr(conv_cpu, "conv_silu", lambda *a: calls.append(a[0].shape) or real(*a))
    model = tiny_state_space(name)
    ids = torch.randint(0, 100, (2, 30))
    plain_loss, plain_grads, plain, plain_step = train_and_decode(model, ids)
    zoo.fast.apply(model, ["scan"])
    assert "causal conv and SiLU: compiled C loop (zoo.fast.kernels.conv_cpu)" in zoo.fast.describe(
        model, training=True)
    loss, grads, routed, step = train_and_decode(model, ids)
    n_layer = model.config.n_layer
    assert [shape[1] for shape in calls] == [30] * 2 * n_layer + [1] * n_layer
    assert abs(loss.item() - plain_loss.item()) <= 1e-5
    for n, grad in plain_grads.items():
        assert max_diff(grads[n], grad) <= 1e-5 * grad.abs().max().item() + 1e-8, n
    assert max_diff(routed.logits, plain.logits) <= 1e-5
    assert max_diff(routed.cache.conv, plain.cache.conv) <= 1e-6
    assert max_diff(step, plain_step) <= 1e-5


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_autocast_takes_the_kernel_in_float32_and_float64_the_plain_conv(name, monkeypatch):
    """Under bfloat16 autocast the route upcasts the convolution's bfloat16 input and runs the
    kernel (the loss within 2% of the plain model's under autocast, the gradients finite); a
    float64 model takes the plain convolution."""
    calls = []
    real = conv_cpu.conv_silu
    monkeypatch.setattr(conv_cpu, "conv_silu", lambda *a: calls.append(a[0].dtype) or real(*a))
    model = tiny_state_space(name)
    ids = torch.randint(0, 100, (1, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_loss = model(ids, targets=ids).loss
    zoo.fast.apply(model, ["scan"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, targets=ids).loss
    loss.backward()
    assert calls == [torch.float32] * model.config.n_layer
    assert abs(loss.item() - plain_loss.item()) <= 0.02 * plain_loss.item()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert ("causal conv and SiLU: compiled C loop in float32 (zoo.fast.kernels.conv_cpu)"
            in zoo.fast.describe(model, training=True, dtype=torch.bfloat16))
    calls.clear()
    with torch.no_grad():
        model.double()(ids)
    assert calls == []
    assert zoo.fast.describe(model)[-1] == "causal conv and SiLU: F.conv1d, then F.silu"
