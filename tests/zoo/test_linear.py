"""zoo.layers.linear: every route (split matrix-vector product, oneDNN, F.linear) gives F.linear's
numbers, with and without a bias and a fused activation, and autograd still works."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.layers.linear import ACTIVATIONS, FEW_ROWS, Linear, linear, onednn_available


def reference(x, weight, bias, activation):
    y = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    return y if activation is None else ACTIVATIONS[activation](y)


@pytest.mark.parametrize("rows", [1, 2, FEW_ROWS, FEW_ROWS + 1, 64])
@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
@pytest.mark.parametrize("with_bias", [True, False])
def test_every_route_equals_f_linear(rows, activation, with_bias):
    torch.manual_seed(rows)
    weight = torch.randn(48, 40) / 40**0.5
    bias = torch.randn(48) if with_bias else None
    x = 2 * torch.randn(rows, 40)
    expected = reference(x, weight, bias, activation)
    with torch.no_grad():
        for shaped in (x, x.view(1, rows, 40)):  # 2-D and 3-D inputs
            out = linear(shaped, weight, bias, activation)
            assert out.shape == (*shaped.shape[:-1], 48) and out.dtype == torch.float32
            torch.testing.assert_close(out.double().view(rows, 48), expected,
                                       atol=1e-5, rtol=1e-5)


def test_odd_widths_transposed_weights_and_bf16_take_f_linear():
    torch.manual_seed(0)
    x = torch.randn(1, 33)
    with torch.no_grad():
        for weight in (torch.randn(31, 33), torch.randn(33, 32).t()):  # odd rows; not contiguous
            torch.testing.assert_close(linear(x, weight), F.linear(x, weight))
        w16, x16 = torch.randn(32, 33).bfloat16(), x.bfloat16()
        torch.testing.assert_close(linear(x16, w16, activation="relu"), F.relu(F.linear(x16, w16)))


def test_the_split_product_is_taken_for_few_rows(monkeypatch):
    calls = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm",
                        lambda *a: calls.append((a[0].shape, a[1].stride())) or real_bmm(*a))
    with torch.no_grad():
        linear(torch.randn(1, 16), torch.randn(8, 16))
        linear(torch.randn(FEW_ROWS + 1, 16), torch.randn(8, 16))
    # Two halves of 4 rows each, only for the one-row input; the columns a transposed view
    # (strides (0, 1, 16)): MKL's batched product is 3-5x slower on the same values laid out
    # with strides (0, 1, 1).
    assert calls == [((2, 4, 16), (0, 1, 16))]


@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN")
def test_onednn_runs_for_many_rows_without_gradients(monkeypatch):
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise",
                        lambda *a: calls.append(a[3]) or real(*a), raising=False)
    layer = Linear(16, 8)
    x = torch.randn(10, 16)
    with torch.no_grad():
        layer(x, activation="gelu_tanh")
    layer(x)  # with gradients: F.linear
    assert calls == ["gelu"]


def test_gradients_flow_through_the_plain_route():
    torch.manual_seed(0)
    layer = Linear(16, 8)
    x = torch.randn(1, 16, requires_grad=True)  # one row: the split route would apply
    y = layer(x, activation="gelu")
    y.sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    F.gelu(F.linear(ref_x, layer.weight, layer.bias)).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ValueError, match="activation 'swish' is not one of relu, gelu"):
        linear(torch.randn(2, 4), torch.randn(3, 4), activation="swish")


def test_linear_is_an_nn_linear_with_the_same_state_dict():
    layer = Linear(4, 3)
    assert isinstance(layer, torch.nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_under_torch_compile_it_is_f_linear(monkeypatch):
    """Inductor picks its own kernels and cannot lower the oneDNN call."""
    calls = []
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append("bmm"))
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append("dnn"),
                        raising=False)
    x, w = torch.randn(10, 16), torch.randn(8, 16)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, activation="relu"), F.relu(F.linear(x, w)))
        torch.testing.assert_close(linear(x[:1], w), F.linear(x[:1], w))
    assert calls == []
