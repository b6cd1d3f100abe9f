"""zoo.fast.kernels.attention_cpu: attention with dropout for CPU training, float32 or bfloat16
under autocast, its products batched or a head at a time (every test takes both).

Held to a float64 math attention given the same dropout mask (zoo/fast/kernels/dropout_cpu.py's,
drawn for the same key), outputs and the gradients of q, k and v (atol 1e-5, rtol 1e-4: float32 sums
of order-one values), for: no mask, an additive mask per query row or broadcast over rows (finite,
or -inf on padded keys), causal rows starting at 0 or past it (a block of a causal attention over a
key prefix), no dropout, and heads that are strided views of a (B, T, C) tensor; and a query with no
key to attend gets zeros, as SDPA gives it. In bfloat16, for the same cases, outputs and gradients
as close to the float64 attention as autocast's PyTorch form's (within twice its error plus half
a bfloat16 rounding step of the largest value; 0.8-1.2x its error in five seeds). The C passes
split a head's rows between threads with the same bits as one thread.
"""

from __future__ import annotations

import math

import pytest
import torch

import zoo.fast
from zoo.fast import dense
from zoo.fast.kernels import attention_cpu, dropout_cpu

pytestmark = pytest.mark.skipif(not attention_cpu.available(), reason="no C compiler built it")
GRADS = dict(atol=1e-5, rtol=1e-4)


def _reference(q, k, v, mask, first_row, keep, p, scale=None):
    """float64 softmax(scale q k^T + mask) with causal rows, dropped by `keep`, times v (scale
    1/sqrt(hs) when None)."""
    q, k, v = (t.double() for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.size(-1)) if scale is None else scale)
    if first_row is not None:  # query r sees keys 0..first_row + r
        T, S = scores.shape[-2:]
        future = torch.ones(T, S, dtype=torch.bool).triu(1 + first_row)
        scores = scores.masked_fill(future, float("-inf"))
    if mask is not None:
        scores = scores + mask.double()
    probs = torch.softmax(scores, dim=-1)
    if keep is not None:
        probs = probs * keep / (1 - p)
    return probs @ v


CASES = {  # B, nh, T, S, first_row, mask shape, p
    "no mask": (2, 3, 9, 13, None, None, 0.2),
    "mask per row": (2, 3, 9, 13, None, (2, 1, 9, 13), 0.2),
    "padding mask": (2, 3, 9, 13, None, (2, 1, 1, 13), 0.1),
    "2-d mask": (2, 2, 6, 7, None, (6, 7), 0.2),
    "causal": (2, 2, 11, 11, 0, None, 0.3),
    "causal block": (1, 2, 5, 12, 7, (1, 1, 5, 12), 0.3),
    "no dropout": (2, 2, 7, 7, 0, None, 0.0),
    "keys masked out": (2, 2, 6, 8, None, "-inf", 0.2),
}


PER_HEAD = [False, pytest.param(True, marks=pytest.mark.skipif(
    not zoo.fast.onednn_available(), reason="torch has no oneDNN linear"))]
# A head at a time in bfloat16 needs oneDNN's bfloat16 product, which AVX2-only CPUs lack (the
# route never takes it in bfloat16: these tests force it).
BF16_PER_HEAD = [False, pytest.param(True, marks=pytest.mark.skipif(
    not dense.onednn_bfloat16_available(), reason="oneDNN has no bfloat16 product here"))]


@pytest.mark.parametrize("per_head", PER_HEAD)
@pytest.mark.parametrize("case", CASES)
def test_attention_equals_float64_math_attention_with_its_mask(case, per_head):
    B, nh, T, S, first_row, mask_shape, p = CASES[case]
    hs = 8
    torch.manual_seed(4)
    q = torch.randn(B, nh, T, hs, requires_grad=True)
    k, v = (torch.randn(B, nh, S, hs, requires_grad=True) for _ in range(2))
    if mask_shape == "-inf":  # padding as -inf: each sequence's last keys, some of them
        mask = torch.zeros(B, 1, 1, S)
        mask[0, ..., -2:] = mask[1, ..., -5:] = float("-inf")
    else:
        mask = None if mask_shape is None else -3 * torch.rand(mask_shape)
    key = (21, 22)
    y = attention_cpu.attention(q, k, v, mask, first_row, p, key=key, per_head=per_head)
    keep = dropout_cpu.mask(B * nh * T * S, p, key).view(B, nh, T, S) if p > 0 else None
    expected = _reference(q, k, v, mask, first_row, keep, p)
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v), dy)
    for grad, reference in zip(grads, torch.autograd.grad(expected, (q, k, v), dy.double()),
                               strict=True):
        torch.testing.assert_close(grad, reference.float(), **GRADS)


BIASES = {  # B, nh, T, S, first_row, bias shape, p: a bias that learns, as T5's position bias
    "shared by the batch": (2, 3, 9, 13, None, (1, 3, 9, 13), 0.2),
    "one per sequence": (2, 3, 9, 13, None, (2, 3, 9, 13), 0.2),
    "per key": (2, 3, 9, 13, None, (2, 1, 1, 13), 0.1),
    "2-d": (2, 2, 6, 7, None, (6, 7), 0.0),
    "causal": (2, 2, 11, 11, 0, (1, 2, 11, 11), 0.3),
    "causal in it": (2, 2, 11, 11, None, "causal", 0.3),  # T5's decoder: -inf above the diagonal
}


@pytest.mark.parametrize("per_head", PER_HEAD)
@pytest.mark.parametrize("case", BIASES)
@pytest.mark.parametrize("scale", [None, 1.0])
def test_a_bias_that_learns_gets_its_gradient(case, scale, per_head):
    """The mask's gradient, summed over the dimensions it broadcasts over, and the other
    gradients, equal the float64 math attention's at the logits' scale 1/sqrt(hs) and at T5's
    1; a bias with -inf where a query may not look (T5's decoder) gets 0 there."""
    B, nh, T, S, first_row, shape, p = BIASES[case]
    hs = 8
    torch.manual_seed(6)
    q = torch.randn(B, nh, T, hs, requires_grad=True)
    k, v = (torch.randn(B, nh, S, hs, requires_grad=True) for _ in range(2))
    if shape == "causal":
        bias = (-2 * torch.rand(1, nh, T, S)).masked_fill(
            torch.ones(T, S, dtype=torch.bool).triu(1), float("-inf")).requires_grad_()
    else:
        bias = (-2 * torch.rand(shape)).requires_grad_()
    key = (31, 32)
    y = attention_cpu.attention(q, k, v, bias, first_row, p, key=key, per_head=per_head,
                                scale=scale)
    keep = dropout_cpu.mask(B * nh * T * S, p, key).view(B, nh, T, S) if p > 0 else None
    expected = _reference(q, k, v, bias, first_row, keep, p, scale)
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v, bias), dy)
    references = torch.autograd.grad(expected, (q, k, v, bias), dy.double())
    assert grads[3].shape == bias.shape and grads[3].dtype == bias.dtype
    for grad, reference in zip(grads, references, strict=True):
        torch.testing.assert_close(grad, reference.float(), **GRADS)
    if shape == "causal":
        assert not grads[3][..., torch.ones(T, S, dtype=torch.bool).triu(1)].any()


@pytest.mark.parametrize("per_head", BF16_PER_HEAD)
def test_a_bias_that_learns_gets_its_gradient_in_bfloat16(per_head):
    """bfloat16 q, k, v and bias (T5's under autocast): the bias's gradient is as close to the
    float64 attention's as autocast's PyTorch form's (within twice its error plus half a
    bfloat16 rounding step of the largest value; 0.5-1.0x its error in five seeds), and in the
    bias's dtype."""
    B, nh, T, S, hs, p = 2, 2, 10, 12, 8, 0.2
    torch.manual_seed(8)
    q = torch.randn(B, nh, T, hs).bfloat16().requires_grad_()
    k, v = (torch.randn(B, nh, S, hs).bfloat16().requires_grad_() for _ in range(2))
    bias = (-2 * torch.rand(1, nh, T, S)).bfloat16().requires_grad_()
    key = (33, 34)
    y = attention_cpu.attention(q, k, v, bias, None, p, key=key, per_head=per_head, scale=1.0)
    keep = dropout_cpu.mask(B * nh * T * S, p, key).view(B, nh, T, S)
    dy = torch.randn_like(y)
    (ours,) = torch.autograd.grad(y, bias, dy)
    assert ours.dtype == torch.bfloat16
    expected = _reference(q, k, v, bias, None, keep, p, scale=1.0)
    (reference,) = torch.autograd.grad(expected, bias, dy.double())
    plain = _autocast_form(q, k, v, bias, None, keep, p, scale=1.0)
    (theirs,) = torch.autograd.grad(plain, bias, dy)
    largest = reference.abs().max().item()
    error = (ours.double() - reference).abs().max().item()
    plain_error = (theirs.double() - reference).abs().max().item()
    assert error <= 2 * plain_error + 2**-9 * largest, (error, plain_error)


@pytest.mark.parametrize("per_head", PER_HEAD)
def test_heads_split_from_a_sequence_tensor(per_head):
    """q, k, v as the attention modules pass them: (B, T, nh, hs) views transposed to
    (B, nh, T, hs), rows strided by C (oneDNN is laid out contiguous heads first)."""
    B, T, nh, hs, p, key = 2, 10, 4, 8, 0.25, (3, 4)
    torch.manual_seed(5)
    qkv = torch.randn(B, T, 3 * nh * hs, requires_grad=True)
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(nh * hs, dim=-1))
    y = attention_cpu.attention(q, k, v, None, None, p, key=key, per_head=per_head)
    keep = dropout_cpu.mask(B * nh * T * T, p, key).view(B, nh, T, T)
    expected = _reference(q, k, v, None, None, keep, p)
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, qkv, dy)
    (reference,) = torch.autograd.grad(expected, qkv, dy.double())
    torch.testing.assert_close(grad, reference.float(), **GRADS)


def test_a_new_key_is_drawn_from_torchs_generator():
    q = torch.randn(1, 2, 8, 4)
    torch.manual_seed(7)
    a = attention_cpu.attention(q, q, q, None, None, 0.5)
    b = attention_cpu.attention(q, q, q, None, None, 0.5)
    torch.manual_seed(7)
    assert torch.equal(attention_cpu.attention(q, q, q, None, None, 0.5), a)
    assert not torch.equal(a, b)


def test_what_it_takes():
    q = torch.randn(1, 2, 4, 8)
    b = q.bfloat16()
    assert attention_cpu.runs(q, q, q, None) and attention_cpu.runs(q, q, q, torch.zeros(4, 4))
    assert attention_cpu.runs(b, b, b, None) and attention_cpu.runs(b, b, b, torch.zeros(4, 4))
    assert attention_cpu.runs(b, b, b, torch.zeros(4, 4, dtype=torch.bfloat16))
    assert not attention_cpu.runs(q.double(), q.double(), q.double(), None)
    assert not attention_cpu.runs(q.half(), q.half(), q.half(), None)
    assert not attention_cpu.runs(b, q, q, None)  # one dtype for all three
    assert not attention_cpu.runs(q, q, q, torch.zeros(4, 4, dtype=torch.bfloat16))
    assert attention_cpu.runs(q, q, q, torch.zeros(4, 4, requires_grad=True))  # T5's bias
    assert not attention_cpu.runs(q, q, q, torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="float32 or bfloat16 CPU tensors"):
        attention_cpu.attention(q.double(), q.double(), q.double(), None, None, 0.1)


def _autocast_form(q, k, v, mask, first_row, keep, p, scale=None):
    """The PyTorch form under bfloat16 autocast, as zoo.fast.dropout writes it out: bfloat16
    products, the softmax in float32, dropped by `keep`."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scale = 1 / math.sqrt(q.size(-1)) if scale is None else scale
        scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)
        if first_row is not None:
            future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1 + first_row)
            scores.masked_fill_(future, float("-inf"))
        if mask is not None:
            scores.add_(mask)
        probs = torch.softmax(scores, dim=-1)
        if keep is not None:
            probs = probs * keep / (1 - p)
        return torch.matmul(probs, v)


BF16_CASES = {**CASES, "rows split between threads": (1, 2, 256, 300, None, (1, 1, 256, 300), 0.1)}


@pytest.mark.parametrize("per_head", BF16_PER_HEAD)
@pytest.mark.parametrize("case", BF16_CASES)
def test_in_bfloat16_as_close_as_autocasts_own_form(case, per_head):
    B, nh, T, S, first_row, mask_shape, p = BF16_CASES[case]
    torch.manual_seed(8)
    q = torch.randn(B, nh, T, 16).bfloat16().requires_grad_()
    k, v = (torch.randn(B, nh, S, 16).bfloat16().requires_grad_() for _ in range(2))
    if mask_shape == "-inf":
        mask = torch.zeros(B, 1, 1, S)
        mask[0, ..., -2:] = mask[1, ..., -5:] = float("-inf")
    else:
        mask = None if mask_shape is None else -3 * torch.rand(mask_shape)
    key = (21, 22)
    keep = dropout_cpu.mask(B * nh * T * S, p, key).view(B, nh, T, S) if p > 0 else None
    y = attention_cpu.attention(q, k, v, mask, first_row, p, key=key, per_head=per_head)
    assert y.dtype == torch.bfloat16
    plain = _autocast_form(q, k, v, mask, first_row, keep, p)
    expected = _reference(q, k, v, mask, first_row, keep, p)
    dy = torch.randn_like(y)
    ours = (y, *torch.autograd.grad(y, (q, k, v), dy))
    theirs = (plain, *torch.autograd.grad(plain, (q, k, v), dy))
    references = (expected, *torch.autograd.grad(expected, (q, k, v), dy.double()))
    for name, got, autocast, reference in zip(("y", "dq", "dk", "dv"), ours, theirs,
                                              references, strict=True):
        assert got.dtype == torch.bfloat16, name
        largest = reference.abs().max().item()
        error = (got.double() - reference).abs().max().item()
        autocast_error = (autocast.double() - reference).abs().max().item()
        assert error <= 2 * autocast_error + 2**-9 * largest, (name, error, autocast_error)
        assert error <= 2e-2 * largest, name


@pytest.mark.parametrize("per_head", PER_HEAD)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_threads_split_the_rows_with_the_same_bits(dtype, per_head, monkeypatch):
    """Each row's softmax, dropout and backward are the same arithmetic whichever thread takes
    it: split between two threads (65536 scores or more) as by one."""
    if torch.get_num_threads() < 2:
        pytest.skip("one thread: nothing to split")
    if per_head and dtype == torch.bfloat16 and not dense.onednn_bfloat16_available():
        pytest.skip("oneDNN has no bfloat16 product here")
    torch.manual_seed(9)
    q, k, v = (torch.randn(1, 2, 256, 16).to(dtype).requires_grad_() for _ in range(3))
    dy = torch.randn(1, 2, 256, 16).to(dtype)

    def run():
        y = attention_cpu.attention(q, k, v, None, 0, 0.2, key=(1, 2), per_head=per_head)
        return (y, *torch.autograd.grad(y, (q, k, v), dy))

    split = run()
    monkeypatch.setattr(attention_cpu, "channel_ranges", lambda work, rows: [(0, rows)])
    for a, b in zip(split, run(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("per_head", PER_HEAD)
def test_a_row_with_nothing_to_attend_is_zeros_as_in_sdpa(per_head):
    """A query whose every key is masked with -inf gets zeros (SDPA's answer to a boolean mask
    with no True in a row), not a softmax over nothing; its gradients are zeros too, and the
    other rows are untouched."""
    torch.manual_seed(6)
    q, k, v = (torch.randn(1, 2, 5, 8, requires_grad=True) for _ in range(3))
    allowed = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    allowed[..., 2, :] = False  # query 2 may see no key
    allowed[..., 4, 3:] = False
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))
    y = attention_cpu.attention(q, k, v, mask, None, 0.0, per_head=per_head)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    assert torch.equal(y[..., 2, :], torch.zeros_like(y[..., 2, :]))
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-5)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v), dy)
    assert torch.equal(grads[0][..., 2, :], torch.zeros(1, 2, 8))
    for grad, reference in zip(grads, torch.autograd.grad(expected, (q, k, v), dy),
                               strict=True):
        torch.testing.assert_close(grad, reference, atol=1e-5, rtol=1e-4)
