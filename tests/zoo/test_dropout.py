"""zoo.fast.kernels.dropout_cpu and zoo.fast's "dropout" route: the compiled dropout and attention
with it.

The kernel's masks come from another generator than PyTorch's, so the route cannot give the
plain model's numbers with dropout on. What is checked instead:
  - the mask: keep rate 1 - p within 5 standard deviations of a binomial, no correlation between
    neighbours, fixed by its key, a new key per call drawn from torch's generator (manual_seed
    reproduces it);
  - given its mask, dropout is exactly x * keep / (1 - p), forward and backward;
  - attention with dropout equals a float64 math attention with the same mask, for outputs and
    the gradients of q, k and v (atol 1e-5, rtol 1e-4: float32 sums of order-one values), in
    both of its forms (zoo.fast.kernels.attention_cpu where oneDNN is chosen, PyTorch's
    products else);
  - the route runs only where it should (training, float32 CPU, 0 < p < 1), and a recomputed
    (checkpointed) attention chunk draws the same mask as its forward;
  - a whole BERT and GPT training step is the same in both forms of attention, and BERT's
    boolean padding mask takes zoo.fast.kernels.attention_cpu as the additive mask it stands for.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import max_diff

import zoo
import zoo.bert
import zoo.fast
from zoo.fast.dropout import FastDropout, attention_with_dropout
from zoo.fast.kernels import attention_cpu, dropout_cpu

pytestmark = pytest.mark.skipif(not dropout_cpu.available(), reason="no C compiler built it")
GRADS = dict(atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_mask_keeps_one_minus_p_without_correlation(p):
    n = 1_000_000
    keep = dropout_cpu.mask(n, p, (12345, 678)).double()
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(keep.sum().item() - n * (1 - p)) < 5 * sigma
    centred = keep - keep.mean()
    for lag in (1, 2, 7, 1024):  # neighbours along a row, and a row of 1024 apart
        correlation = (centred[:-lag] * centred[lag:]).mean() / centred.var()
        assert abs(correlation.item()) < 5 / math.sqrt(n)


def test_the_key_fixes_the_mask_and_each_call_draws_a_new_one():
    a, b = dropout_cpu.mask(4096, 0.3, (1, 2)), dropout_cpu.mask(4096, 0.3, (1, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, dropout_cpu.mask(4096, 0.3, (1, 3)))
    assert not torch.equal(a, dropout_cpu.mask(4096, 0.3, (2, 2)))
    x = torch.ones(64, 64)
    torch.manual_seed(0)
    first, second = dropout_cpu.dropout(x, 0.5), dropout_cpu.dropout(x, 0.5)
    assert not torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(dropout_cpu.dropout(x, 0.5), first)  # manual_seed reproduces the masks


@pytest.mark.parametrize("p", [0.1, 0.6])
def test_given_its_mask_dropout_is_exact_forward_and_backward(p):
    torch.manual_seed(1)
    x = torch.randn(3, 5, 77, requires_grad=True)
    dy = torch.randn(3, 5, 77)
    key = (99, 7)
    y = dropout_cpu.dropout(x, p, key)
    keep = dropout_cpu.mask(x.numel(), p, key).view(x.shape)
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    assert torch.equal(y, torch.where(keep, x.detach() * scale, 0.0))
    (dx,) = torch.autograd.grad(y, x, dy)
    assert torch.equal(dx, torch.where(keep, dy * scale, 0.0))
    strided = x.detach().transpose(0, 2)  # a non-contiguous input is read in its own order
    assert torch.equal(dropout_cpu.dropout(strided, p, key),
                       dropout_cpu.dropout(strided.contiguous(), p, key))


@pytest.mark.parametrize("p", [0.1, 0.6])
def test_in_bfloat16_the_mask_is_float32s_and_each_value_is_rounded_once(p):
    """bfloat16 (autocast's activations): the same mask as float32's for the same key, each
    kept value scaled in float32 and rounded to nearest even as torch rounds, forward and
    backward; infinities and NaNs pass through a kept element."""
    torch.manual_seed(1)
    x = (torch.randn(3, 5, 77) * 100).bfloat16()
    x.view(-1)[:3] = torch.tensor([float("inf"), float("-inf"), float("nan")])
    x.requires_grad_()
    dy = torch.randn(3, 5, 77).bfloat16()
    key = (99, 7)
    y = dropout_cpu.dropout(x, p, key)
    assert y.dtype == torch.bfloat16
    keep = dropout_cpu.mask(x.numel(), p, key).view(x.shape)
    scale = 1 / (1 - p)
    expected = torch.where(keep, (x.detach().float() * scale).bfloat16(), 0.0)
    torch.testing.assert_close(y, expected, atol=0, rtol=0, equal_nan=True)
    (dx,) = torch.autograd.grad(y, x, dy)
    assert dx.dtype == torch.bfloat16
    torch.testing.assert_close(dx, torch.where(keep, (dy.float() * scale).bfloat16(), 0.0),
                               atol=0, rtol=0)


def test_where_the_kernel_does_not_run():
    x = torch.ones(4)
    assert dropout_cpu.runs(x, 0.1) and dropout_cpu.runs(x.bfloat16(), 0.1)
    assert not dropout_cpu.runs(x, 0.0) and not dropout_cpu.runs(x, 1.0)
    assert not dropout_cpu.runs(x.double(), 0.1) and not dropout_cpu.runs(x.half(), 0.1)
    with pytest.raises(ValueError, match="float32 or bfloat16 CPU tensors"):
        dropout_cpu.dropout(x.double(), 0.1)


def _reference_attention(q, k, v, mask, keep, p, causal):
    """float64 math attention with dropout by the given keep mask."""
    q, k, v = (t.double() for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if causal:
        future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    if mask is not None:
        scores = scores + mask.double()
    return (torch.softmax(scores, dim=-1) * keep / (1 - p)) @ v


KERNEL = pytest.mark.skipif(not attention_cpu.available(), reason="no C compiler built it")
PER_HEAD = pytest.mark.skipif(not attention_cpu.available() or not zoo.fast.onednn_available(),
                              reason="no C compiler built it, or torch has no oneDNN linear")

# The three forms attention with dropout takes, each held to the same reference:
# zoo/fast/kernels/attention_cpu.py with its products a head at a time in oneDNN or batched, and
# the PyTorch form (where the kernel does not run).
FORMS = [pytest.param("per head", marks=PER_HEAD), pytest.param("batched", marks=KERNEL),
         "pytorch"]


@pytest.fixture(params=FORMS)
def form(request, monkeypatch):
    if request.param == "pytorch":
        monkeypatch.setattr(zoo.fast.dropout, "_kernel_attention", lambda *args: False)
    per_head = request.param == "per head"
    monkeypatch.setattr(zoo.fast.dense, "many_rows_kernel",
                        lambda: "onednn" if per_head else "mkl")
    monkeypatch.setattr(zoo.fast.dropout, "PER_HEAD_MIN_KEYS", 0)  # these tests' few keys too
    return request.param


@KERNEL
def test_which_form_attention_with_dropout_takes(monkeypatch):
    """zoo/fast/kernels/attention_cpu.py for float32 and for bfloat16 under autocast, whatever
    the length, its products a head at a time from PER_HEAD_MIN_KEYS keys in float32 where
    oneDNN is the linear kernel, batched otherwise; the PyTorch form for float32 under autocast
    (whose products are bfloat16)."""
    calls = []
    real = attention_cpu.attention
    monkeypatch.setattr(attention_cpu, "attention", lambda *args, per_head, scale: calls.append(
        (args[0].dtype, args[1].size(-2), per_head)) or real(*args, per_head=per_head))
    many = zoo.fast.dropout.PER_HEAD_MIN_KEYS
    for kernel in ("onednn", "mkl"):
        monkeypatch.setattr(zoo.fast.dense, "many_rows_kernel", lambda kernel=kernel: kernel)
        for causal, keys in ((False, 5), (False, many), (True, 8)):
            q = torch.randn(1, 2, 8 if causal else 3, 4)
            k = torch.randn(1, 2, keys, 4)
            attention_with_dropout(q, k, k, None, causal, 0.1)
            attention_with_dropout(q.bfloat16(), k.bfloat16(), k.bfloat16(), None, causal, 0.1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                attention_with_dropout(q, k, k, None, causal, 0.1)
    f32, b16 = torch.float32, torch.bfloat16
    per_head = [(f32, 5, False), (b16, 5, False), (f32, many, True), (b16, many, False),
                (f32, 8, False), (b16, 8, False)]
    batched = [(dtype, keys, False) for dtype, keys, _ in per_head]
    assert calls == per_head + batched


@pytest.mark.parametrize("causal, masked", [(True, False), (False, True), (False, False)])
def test_attention_with_dropout_equals_math_attention_with_its_mask(causal, masked, monkeypatch,
                                                                     form):
    torch.manual_seed(2)
    B, nh, T, S, hs, p = 2, 3, 9, 9 if causal else 13, 8, 0.2
    q = torch.randn(B, nh, T, hs, requires_grad=True)
    k, v = (torch.randn(B, nh, S, hs, requires_grad=True) for _ in range(2))
    mask = -3 * torch.rand(B, 1, T, S) if masked else None
    key = (5, 6)
    monkeypatch.setattr(dropout_cpu, "_key", lambda: key)
    y = attention_with_dropout(q, k, v, mask, causal, p)
    keep = dropout_cpu.mask(B * nh * T * S, p, key).view(B, nh, T, S)
    expected = _reference_attention(q, k, v, mask, keep, p, causal)
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v), dy)
    expected_grads = torch.autograd.grad(expected, (q, k, v), dy.double())
    for grad, reference in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, reference, **GRADS)  # float64 math, then cast


@pytest.mark.parametrize("mask_shape", [None, (2, 1, 10, 10), (2, 1, 1, 10)])
def test_causal_attention_in_blocks_equals_the_whole(mask_shape, monkeypatch, form):
    """Causal attention in blocks of 4 query rows over the keys up to each block's end: each
    block draws its own mask; given them, the float64 math attention's outputs and gradients."""
    torch.manual_seed(3)
    B, nh, T, hs, p, block = 2, 3, 10, 8, 0.3, 4
    q, k, v = (torch.randn(B, nh, T, hs, requires_grad=True) for _ in range(3))
    mask = None if mask_shape is None else -2 * torch.rand(mask_shape)
    key = (11, 12)
    monkeypatch.setattr(dropout_cpu, "_key", lambda: key)
    y = attention_with_dropout(q, k, v, mask, True, p, block=block)
    keep = torch.zeros(B, nh, T, T)
    for start in range(0, T, block):
        end = min(start + block, T)
        n = B * nh * (end - start) * end
        keep[:, :, start:end, :end] = dropout_cpu.mask(n, p, key).view(B, nh, end - start, end)
    expected = _reference_attention(q, k, v, mask, keep, p, causal=True)
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v), dy)
    for grad, reference in zip(grads, torch.autograd.grad(expected, (q, k, v), dy.double()),
                               strict=True):
        torch.testing.assert_close(grad, reference, **GRADS)


@KERNEL
@pytest.mark.parametrize("per_head", [False, pytest.param(True, marks=pytest.mark.skipif(
    not zoo.fast.dense.onednn_bfloat16_available(),
    reason="oneDNN has no bfloat16 product here (the route never forces it, this test does)"))])
@pytest.mark.parametrize("causal, masked", [(True, True), (False, True), (False, False)])
def test_under_autocast_the_kernel_is_as_close_as_the_pytorch_form(causal, masked, per_head,
                                                                   monkeypatch):
    """bfloat16 q, k and v, as autocast's linears give them: the route takes
    kernels/attention_cpu.py (causal rows in blocks of 4), and its outputs and gradients are as
    close to the float64 math attention with the same masks as the PyTorch form's (within twice
    its error plus half a bfloat16 rounding step of the largest value), its products batched or
    a head at a time."""
    monkeypatch.setattr(zoo.fast.dropout, "_per_head", lambda q, k: per_head)
    torch.manual_seed(10)
    B, nh, T, hs, p, block = 2, 2, 10, 8, 0.2, 4
    S = T if causal else 13
    q = torch.randn(B, nh, T, hs).bfloat16().requires_grad_()
    k, v = (torch.randn(B, nh, S, hs).bfloat16().requires_grad_() for _ in range(2))
    mask = -2 * torch.rand(B, 1, T, S) if masked else None
    key = (7, 8)
    monkeypatch.setattr(dropout_cpu, "_key", lambda: key)
    dy = torch.randn(B, nh, T, hs).bfloat16()
    calls = []
    real = attention_cpu.attention
    monkeypatch.setattr(attention_cpu, "attention",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = attention_with_dropout(q, k, v, mask, causal, p, block=block)
        return (y, *torch.autograd.grad(y, (q, k, v), dy))

    ours = run()
    assert calls and all(t.dtype == torch.bfloat16 for t in ours)
    monkeypatch.setattr(zoo.fast.dropout, "_kernel_attention", lambda *args: False)
    theirs = run()
    keep = torch.zeros(B, nh, T, S)
    for start in range(0, T, block if causal else T):
        end = min(start + block, T) if causal else T
        keys = end if causal else S
        n = B * nh * (end - start) * keys
        keep[:, :, start:end, :keys] = dropout_cpu.mask(n, p, key).view(B, nh, end - start, keys)
    expected = _reference_attention(q, k, v, mask, keep, p, causal)
    references = (expected, *torch.autograd.grad(expected, (q, k, v), dy.double()))
    for got, plain, reference in zip(ours, theirs, references, strict=True):
        largest = reference.abs().max().item()
        error = (got.double() - reference).abs().max().item()
        plain_error = (plain.double() - reference).abs().max().item()
        assert error <= 2 * plain_error + 2**-9 * largest, (error, plain_error)
        assert max(error, plain_error) <= 2e-2 * largest  # both on the reference's masks


def test_the_route_runs_in_training_only():
    layer = FastDropout(0.5)
    x = torch.ones(1000)
    calls = []
    real = dropout_cpu.dropout

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dropout_cpu, "dropout", counting)
        assert torch.equal(layer.eval()(x), x)
        y = layer.train()(x)
        assert calls and set(y.unique().tolist()) <= {0.0, 2.0}
        calls.clear()
        layer(x.double())  # not float32: PyTorch's dropout
        FastDropout(0.0).train()(x)
        assert not calls


@pytest.mark.parametrize("autocast", [False, True])
def test_a_model_trains_through_the_route(autocast, monkeypatch):
    """GPT with dropout trains with the kernel's masks: every dropout (embedding, attention,
    residual) goes through it, in float32 and under bfloat16 autocast (mixed precision), where
    the attention's and the residuals' masks are drawn on bfloat16 tensors; the loss and
    gradients are finite."""
    calls, dtypes = [], set()
    real, real_attention = dropout_cpu.dropout, attention_cpu.attention

    def counting(x, p, key=None):
        calls.append(tuple(x.shape))
        dtypes.add(x.dtype)
        return real(x, p, key)

    def counting_attention(q, k, v, attn_mask, first_row, p, **kwargs):
        calls.append(("attention_cpu", *q.shape[:2], q.size(2), k.size(2)))
        return real_attention(q, k, v, attn_mask, first_row, p, **kwargs)

    monkeypatch.setattr(dropout_cpu, "dropout", counting)
    monkeypatch.setattr(attention_cpu, "attention", counting_attention)
    model = zoo.build("gpt", n_layer=2, d_model=32, n_head=2, vocab_size=64, dropout=0.1).train()
    ids = torch.randint(0, 64, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(ids, targets=ids).loss
    loss.backward()
    assert (torch.bfloat16 in dtypes) == autocast
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # one attention per layer: its probabilities' mask drawn by zoo/fast/kernels/attention_cpu.py's
    # kernel, in float32 and in bfloat16 under autocast (by dropout_cpu.dropout without it)
    in_c = calls.count(("attention_cpu", 2, 2, 16, 16))
    assert in_c + calls.count((2, 2, 16, 16)) == 2
    assert in_c == (2 if attention_cpu.available() else 0)
    assert calls.count((2, 16, 32)) == 1 + 2 * 2  # the embedding's, two residuals per layer


def test_a_recomputed_attention_chunk_draws_its_forward_mask(monkeypatch):
    """MosaicBERT checkpoints its attention chunks at length: the recomputation in the backward
    draws the same keys as the forward (torch.utils.checkpoint restores the generator)."""
    keys = []
    real = dropout_cpu._key

    def recording():
        keys.append(real())
        return keys[-1]

    monkeypatch.setattr(dropout_cpu, "_key", recording)
    model = zoo.build("mosaic-bert", n_layer=1, d_model=32, n_head=2, d_ff=64, vocab_size=64,
                      dropout=0.1, attn_dropout=0.1).train()
    model.attn_chunk_size = 4
    assert zoo.fast.applied(model) == ("linear", "dropout", "loss")
    ids = torch.randint(0, 64, (1, 12))
    forward_keys = len(keys)
    model(ids, targets=ids).loss.backward()
    drawn = keys[forward_keys:]
    # 3 chunks of 4 query rows: 3 keys in the forward, the same 3 again in the backward
    chunk_keys = [key for key in drawn if drawn.count(key) == 2]
    assert len(chunk_keys) == 6 and len(set(chunk_keys)) == 3


def test_without_a_compiler_the_route_runs_pytorchs_dropout(monkeypatch):
    import functools
    from pathlib import Path

    from zoo.fast.kernels import ckernel

    monkeypatch.setattr(ckernel.shutil, "which", lambda name: None)
    monkeypatch.setattr(ckernel, "load", functools.cache(ckernel.load.__wrapped__))
    monkeypatch.setattr(ckernel.Path, "home", lambda: Path("/nonexistent-home"))
    assert not dropout_cpu.available()
    model = zoo.build("gpt", n_layer=1, d_model=32, n_head=2, vocab_size=64).train()
    assert "dropout (training): PyTorch's" in zoo.fast.describe(model, training=True)
    ids = torch.randint(0, 64, (2, 8))
    model(ids, targets=ids).loss.backward()  # PyTorch's dropout and SDPA
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def _training_step(model, inputs):
    """Loss and gradients of one training step from seed 1 (the dropout masks' keys)."""
    model.zero_grad()
    torch.manual_seed(1)
    loss = model(**inputs, targets=inputs.get("tgt_ids", inputs.get("input_ids"))).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _assert_same_step(a, b):
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    for grad, other in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(grad, other, atol=1e-5, rtol=1e-4)


def _counting_kernel(monkeypatch) -> list:
    calls = []
    real = attention_cpu.attention
    monkeypatch.setattr(attention_cpu, "attention",
                        lambda *args, **kwargs: calls.append(args[3]) or real(*args, **kwargs))
    return calls


@pytest.mark.parametrize("per_head", [pytest.param(True, marks=PER_HEAD),
                                      pytest.param(False, marks=KERNEL)])
@pytest.mark.parametrize("name, attentions", [("bert", 2), ("gpt", 2), ("t5", 6)])
def test_a_model_trains_alike_in_both_forms(name, attentions, per_head, monkeypatch):
    """A whole training step of BERT, GPT (causal) and T5 (its position bias, unscaled logits,
    the decoder's causal mask inside the bias, padded sources) with dropout: with
    zoo/fast/kernels/attention_cpu.py (products a head at a time or batched) and with the
    PyTorch form, from the same seed, they draw the same masks and give the same loss and
    gradients, T5's position tables' included (float32 sums in another order: atol 1e-5)."""
    monkeypatch.setattr(zoo.fast.dropout, "_per_head", lambda q, k: per_head)
    sizes = dict(d_kv=16, d_ff=64) if name == "t5" else {}
    model = zoo.build(name, n_layer=2, d_model=32, n_head=2, vocab_size=64, dropout=0.1,
                      **sizes).train()
    torch.manual_seed(0)
    inputs = model.dummy_inputs(2, 24, padded=name == "t5")
    calls = _counting_kernel(monkeypatch)
    kernel = _training_step(model, inputs)
    assert len(calls) == attentions  # every attention took the kernel
    monkeypatch.setattr(attention_cpu, "runs", lambda *args: False)  # the PyTorch form
    _assert_same_step(kernel, _training_step(model, inputs))
    assert len(calls) == attentions


@KERNEL
def test_under_autocast_a_float32_bias_takes_the_kernel(monkeypatch):
    """MosaicBERT's attention under autocast: q, k and v bfloat16, its ALiBi bias float32. Its
    `attend` gives them to the kernel, which adds the bias: the float64 math attention with the
    same bias and mask, within bfloat16's rounding (2e-2 of the largest output; a bias of this
    size left out moves it by far more)."""
    model = zoo.build("mosaic-bert", n_layer=1, d_model=32, n_head=2, vocab_size=64,
                      attn_dropout=0.1).train()
    layer = next(m for m in model.modules() if isinstance(m, zoo.fast.DropoutAlibiAttention))
    torch.manual_seed(11)
    B, nh, T, hs, p = 2, 2, 20, 16, 0.1
    q, k, v = (torch.randn(B, nh, T, hs).bfloat16() for _ in range(3))
    bias = -3 * torch.rand(1, nh, T, T)
    key = (9, 10)
    monkeypatch.setattr(dropout_cpu, "_key", lambda: key)
    calls = _counting_kernel(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer.attend(q, k, v, bias, p, False, False)
    assert len(calls) == 1 and y.dtype == torch.bfloat16
    keep = dropout_cpu.mask(B * nh * T * T, p, key).view(B, nh, T, T)
    expected = _reference_attention(q, k, v, bias, keep, p, causal=False)
    without_bias = _reference_attention(q, k, v, None, keep, p, causal=False)
    largest = expected.abs().max().item()
    assert max_diff(y, expected) <= 2e-2 * largest
    assert max_diff(without_bias, expected) > 0.2 * largest


@KERNEL
def test_a_padding_mask_takes_the_kernel(monkeypatch):
    """BERT with padding passes a boolean key mask: the route gives it to
    zoo/fast/kernels/attention_cpu.py as an additive one (-inf where a key is padding), the same
    step as BERT given that additive mask itself."""
    model = zoo.build("bert", n_layer=2, d_model=32, n_head=2, vocab_size=64,
                      dropout=0.1).train()
    torch.manual_seed(0)
    inputs = model.dummy_inputs(3, 24, padded=True)
    assert not inputs["attention_mask"].all()
    calls = _counting_kernel(monkeypatch)
    boolean = _training_step(model, inputs)
    assert len(calls) == 2 and calls[0].dtype == torch.float32
    assert torch.equal(torch.isinf(calls[0]), ~zoo.bert.padding_mask(inputs["attention_mask"]))
    real = zoo.bert.padding_mask
    monkeypatch.setattr(zoo.bert, "padding_mask", lambda mask: torch.zeros(
        real(mask).shape).masked_fill_(~real(mask), float("-inf")))
    _assert_same_step(boolean, _training_step(model, inputs))
    assert len(calls) == 4
