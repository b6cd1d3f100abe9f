"""zoo.fast.kernels.loss_cpu, the training cross-entropy as a compiled C loop with its backward
(zoo.fast's "loss" route), against F.cross_entropy in float64: the loss within 1e-6 of it
(relative; float32 sums of a vocabulary's exponentials) and the logits' gradient within 1e-5 of
its largest entry, for any shape, rows whose target is the ignored index, an upstream gradient
other than 1, strided logits and any number of threads; where the plain function gives NaN or
raises, the route gives and raises the same. The route on whole models: the same loss and
gradients as the plain model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import max_diff

import zoo
import zoo.fast
from zoo.fast.kernels import loss_cpu
from zoo.fast.loss import FusedLMLoss
from zoo.model import LMLoss

pytestmark = pytest.mark.skipif(not loss_cpu.available(), reason="no C compiler built it")


def check(z: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
          upstream: float = 1.7) -> None:
    z = z.detach().requires_grad_()
    loss = loss_cpu.cross_entropy(z, targets, ignore_index)
    (grad,) = torch.autograd.grad(loss * upstream, z)
    z64 = z.detach().double().requires_grad_()
    want = F.cross_entropy(z64, targets, ignore_index=ignore_index)
    (want_grad,) = torch.autograd.grad(want * upstream, z64)
    assert loss.dtype == torch.float32 and grad.shape == z.shape
    assert abs(loss.item() - want.item()) <= 1e-6 * abs(want.item())
    assert max_diff(grad, want_grad) <= 1e-5 * want_grad.abs().max().item()


@pytest.mark.parametrize("rows, vocab", [(1, 2), (7, 13), (64, 1000), (300, 5003)])
def test_loss_and_gradient_equal_float64_cross_entropy(rows, vocab, kernel_threads):
    g = torch.Generator().manual_seed(rows)
    z = 3 * torch.randn(rows, vocab, generator=g)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    check(z, targets)
    targets[::3] = -100  # ignored rows: no loss, zero gradient
    if rows > 1:
        check(z, targets)
    check(z + 50, torch.where(targets == -100, 0, targets))  # large logits: lse is shifted


def test_another_ignored_index_and_both_ways_of_splitting(kernel_split):
    g = torch.Generator().manual_seed(0)
    z, targets = torch.randn(256, 777, generator=g), torch.randint(0, 777, (256,), generator=g)
    targets[5:40] = 3
    check(z, targets, ignore_index=3)


def test_the_gradient_overwrites_the_logits_only_when_told():
    g = torch.Generator().manual_seed(1)
    z, targets = torch.randn(50, 300, generator=g), torch.randint(0, 300, (50,), generator=g)
    targets[:7] = -100
    kept = z.clone().requires_grad_()
    (want,) = torch.autograd.grad(loss_cpu.cross_entropy(kept, targets), kept)
    assert torch.equal(kept, z)  # not told: the logits are left as they were
    mine = z.clone().requires_grad_()
    (got,) = torch.autograd.grad(loss_cpu.cross_entropy(mine, targets, overwrite=True), mine)
    assert torch.equal(got, want) and got.data_ptr() == mine.data_ptr()
    check(z, targets)


def test_the_route_never_overwrites_float32_logits_the_caller_holds():
    logits = torch.randn(2, 9, 50, requires_grad=True)
    before = logits.detach().clone()
    FusedLMLoss()(logits, torch.randint(0, 50, (2, 9))).backward()
    assert torch.equal(logits.detach(), before)


def test_strided_logits():
    z = torch.randn(40, 96).t()  # (96, 40), not contiguous
    check(z, torch.randint(0, 40, (96,)))


def test_no_row_to_score_is_nan_as_the_plain_function_gives():
    z, targets = torch.randn(4, 10), torch.full((4,), -100)
    assert torch.isnan(loss_cpu.cross_entropy(z, targets))
    assert torch.isnan(F.cross_entropy(z, targets))


@pytest.mark.parametrize("bad", [10, -3])
def test_a_target_out_of_range_raises_what_the_plain_function_raises(bad):
    z, targets = torch.randn(4, 10), torch.tensor([1, bad, 2, 3])
    with pytest.raises(Exception) as plain:
        F.cross_entropy(z, targets)
    with pytest.raises(type(plain.value)):
        loss_cpu.cross_entropy(z, targets)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_logit_that_is_not_finite_gives_the_plain_answer(value):
    z, targets = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    z[2, 5] = value
    torch.testing.assert_close(loss_cpu.cross_entropy(z, targets), F.cross_entropy(z, targets),
                               equal_nan=True)


def test_wrong_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="float32 CPU logits and int64 targets"):
        loss_cpu.cross_entropy(torch.randn(3, 4).double(), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shapes: logits \(3, 4\), targets \(2,\)"):
        loss_cpu.cross_entropy(torch.randn(3, 4), torch.zeros(2, dtype=torch.long))


def test_under_autocast_bfloat16_logits_are_taken_to_float32_as_the_plain_loss_takes_them():
    logits = torch.randn(2, 9, 50).bfloat16().requires_grad_()
    targets = torch.randint(0, 50, (2, 9))
    targets[0, :3] = -100
    fused, plain = FusedLMLoss(), LMLoss()
    got, want = fused(logits, targets), plain(logits, targets)
    (got_grad,) = torch.autograd.grad(got, logits)
    (want_grad,) = torch.autograd.grad(want, logits)
    assert got_grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-4, rtol=1e-2)  # bfloat16 rounding


@pytest.mark.parametrize("name", ["gpt", "bert", "rwkv7", "mamba2"])
def test_a_routed_model_trains_with_the_plain_models_loss_and_gradients(name):
    """The whole model, only the loss routed, same weights: the loss and every parameter's
    gradient as the plain model's (BERT's masked positions carry the ignored index)."""
    torch.manual_seed(0)
    plain = zoo.build(name, fast=False, **{"n_layer": 1} | dict(vocab_size=97))
    routed = zoo.build(name, fast=False, **{"n_layer": 1} | dict(vocab_size=97))
    routed.load_state_dict(plain.state_dict())
    assert zoo.fast.apply(routed, ["loss"]) == ("loss",)
    assert type(routed.lm_loss) is FusedLMLoss and type(plain.lm_loss) is LMLoss
    inputs = plain.dummy_inputs(batch=2, seqlen=12)
    targets = torch.randint(0, 97, (2, 12))
    targets[:, ::4] = -100
    losses = []
    for model in (plain, routed):
        model.eval()
        loss = model(**inputs, targets=targets).loss
        loss.backward()
        losses.append(loss)
    assert abs(losses[0].item() - losses[1].item()) <= 1e-6 * losses[0].item()
    for (n, p), q in zip(plain.named_parameters(), routed.parameters(), strict=True):
        # 1e-8 for a gradient that is zero but for rounding (the sum of a row's softmax)
        assert max_diff(p.grad, q.grad) <= 1e-5 * p.grad.abs().max().item() + 1e-8, n
    zoo.fast.remove(routed)
    assert type(routed.lm_loss) is LMLoss
