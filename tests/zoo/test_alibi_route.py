"""zoo.fast's alibi route: BLOOM's causal ALiBi bias in extra query and key channels, so that
SDPA runs its causal kernel without the (heads x T x T) mask.

Tolerances. float32: at 2048 tokens and the largest slope (1/2) the bias reaches 1024, so a
float32 sum that took it whole would be off by up to a step there, 1.2e-4. The route and the
plain float mask are both held to a float64 reference at 1e-5 for the output and the three
gradients; the same channels placed after q . k (the order the route avoids) miss it.
bfloat16: the reference is float64 on the same bfloat16 inputs, and the kernel's own rounding
(probabilities in bfloat16) puts both the route and the mask 5e-3 to 2e-2 from it; both are held
to 2e-2 for the output and 3e-2 for the gradients, and a slope rounded to bfloat16 times a
position in bfloat16 (what the route's exact parts avoid) misses by over 1. On a BLOOM, the
route's logits and gradients equal the plain path's (in bfloat16 under autocast, within 2e-2),
and where the route does not apply (padding, later cached steps, attention dropout) the plain
mask runs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomized

import zoo.fast
from harness.models import build_variant
from zoo import bloom
from zoo.fast import alibi
from zoo.fast.alibi import FoldedAlibiAttention, alibi_causal_attention, split_slopes
from zoo.layers import alibi_slopes

ATOL = 1e-5
BFLOAT16 = dict(out=2e-2, grad=3e-2)


def mask_attention(q, k, v, slopes):
    """The plain path: SDPA with ALiBi's causal bias as a float mask (zoo.bloom.alibi_mask);
    bfloat16 under autocast, as a BLOOM trains in it."""
    if q.dtype == torch.bfloat16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return mask_attention(q.float(), k.float(), v.float(), slopes)
    mask = bloom.alibi_mask(slopes, 0, q.size(2), None, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def bias_last(q, k, v, slopes):
    """The route's sum in the other order: q . k first, then m j - m i on top of it."""
    B, H, T, D = q.shape
    i = torch.arange(T, dtype=q.dtype).expand(H, T)
    m = slopes[:, None].expand(H, T)
    q = torch.cat([q / math.sqrt(D), torch.stack([m, -m * i], -1).expand(B, H, T, 2)], -1)
    k = torch.cat([k, torch.stack([i, torch.ones_like(i)], -1).expand(B, H, T, 2)], -1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)


def rounded_slope(q, k, v, slopes):
    """bfloat16 without the route's exact parts: m sqrt(hs) rounded to bfloat16, times the
    position in bfloat16 (exact only to 256)."""
    B, H, T, D = q.shape
    m = (slopes * math.sqrt(D)).bfloat16()[:, None, None].expand(B, H, T, 1)
    j = torch.arange(T).bfloat16()[:, None].expand(B, H, T, 1)
    zeros = q.new_zeros(B, H, T, 7)
    q, k = torch.cat([m, q, zeros], -1), torch.cat([j, k, zeros], -1)
    v = torch.cat([v, v.new_zeros(B, H, T, 8)], -1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / math.sqrt(D))[..., :D]


def errors(attention, q, k, v, slopes, grad):
    """Largest differences of the output and of dq, dk, dv from float64's mask path on the same
    inputs."""
    want = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = mask_attention(*want, slopes.double())
    expected.backward(grad.double())
    got = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attention(*got, slopes)
    out.backward(grad)
    return [(out.double() - expected).abs().max().item()] + [
        (g.grad.double() - w.grad).abs().max().item() for g, w in zip(got, want, strict=True)]


def test_split_slopes_are_exact_and_their_high_part_times_any_position_too():
    slopes = torch.tensor(alibi_slopes(12) + alibi_slopes(112))  # powers of two and the rest
    for length in (7, 300, 2048, 4096, 40_000, 1 << 23, 1 << 24):
        hi, lo = split_slopes(slopes, length)
        assert torch.equal((hi.double() + lo.double()).float(), slopes)
        assert (hi.double() + lo.double() == slopes.double()).all()
        # the first and the last 4096 positions (all of them up to 8192)
        positions = torch.cat([torch.arange(min(length, 4096)),
                               torch.arange(max(length - 4096, 0), length)]).double()
        assert torch.equal((hi[:, None] * positions.float()).double(), hi.double()[:, None] *
                           positions)
    powers = torch.tensor(alibi_slopes(16)[1::2])  # 2^-1, 2^-2, ...: lo is 0
    assert (split_slopes(powers, 4096)[1] == 0).all()


@pytest.mark.parametrize("slopes", [alibi_slopes(8)[:2], alibi_slopes(12)[8:10]],
                         ids=["powers-of-two", "others"])
def test_the_route_is_as_exact_as_the_mask_where_the_bias_is_large(slopes):
    torch.manual_seed(0)
    q, k, v, grad = (torch.randn(1, 2, 2048, 8) for _ in range(4))
    slopes = torch.tensor(slopes)
    assert max(errors(mask_attention, q, k, v, slopes, grad)) < ATOL
    assert max(errors(alibi_causal_attention, q, k, v, slopes, grad)) < ATOL
    if slopes[0] == 0.5:  # the other order loses the bias's last bits
        assert max(errors(bias_last, q, k, v, slopes, grad)) > 2 * ATOL


def within_bfloat16(errs: list[float]) -> bool:
    return errs[0] < BFLOAT16["out"] and max(errs[1:]) < BFLOAT16["grad"]


@pytest.mark.parametrize("slopes", [alibi_slopes(8)[:2], alibi_slopes(12)[8:10],
                                    alibi_slopes(8)[6:]], ids=["large", "others", "small"])
def test_in_bfloat16_the_route_is_as_exact_as_the_mask(slopes):
    torch.manual_seed(0)
    q, k, v, grad = (torch.randn(1, 2, 2048, 8).bfloat16() for _ in range(4))
    slopes = torch.tensor(slopes)
    assert within_bfloat16(errors(mask_attention, q, k, v, slopes, grad))
    assert within_bfloat16(errors(alibi_causal_attention, q, k, v, slopes, grad))
    if slopes[0] >= 0.5:  # a rounded slope times a rounded position: the bias itself is off
        assert min(errors(rounded_slope, q, k, v, slopes, grad)) > 1.0


@pytest.mark.parametrize("shape", [(2, 3, 5, 16), (1, 4, 33, 64), (2, 2, 70, 66)])
def test_the_route_equals_the_mask_at_any_head_size(shape):
    torch.manual_seed(1)
    q, k, v, grad = (torch.randn(shape) for _ in range(4))
    slopes = torch.tensor(alibi_slopes(shape[1]))
    assert max(errors(alibi_causal_attention, q, k, v, slopes, grad)) < ATOL
    q, k, v, grad = (t.bfloat16() for t in (q, k, v, grad))
    assert within_bfloat16(errors(alibi_causal_attention, q, k, v, slopes, grad))


def test_bfloat16_parts_sum_to_the_float32_value():
    x = torch.tensor(alibi_slopes(112)) * math.sqrt(66)
    parts = alibi.bfloat16_parts(x)
    assert all(p.dtype == torch.bfloat16 for p in parts)
    assert torch.equal(sum(p.double() for p in parts), x.double())
    assert not torch.equal(parts[0].double(), x.double())  # one part would not do


def tiny_bloom(fast: bool) -> bloom.Bloom:
    torch.manual_seed(0)
    return randomized(build_variant("bloom", "tiny", fast=fast))


@pytest.fixture
def folded(monkeypatch):
    """The number of the route's calls so far, in a list."""
    calls = []
    original = alibi.alibi_causal_attention
    monkeypatch.setattr(alibi, "alibi_causal_attention",
                        lambda *args: calls.append(1) or original(*args))
    return calls


def test_a_bloom_trains_through_the_route_with_the_plain_gradients(folded):
    fast, plain = tiny_bloom(fast=True).train(), tiny_bloom(fast=False).train()
    assert zoo.fast.applied(fast) == ("linear", "ffn", "alibi", "dropout", "loss")
    assert all(type(b.self_attention) is FoldedAlibiAttention for b in fast.blocks)
    ids = torch.randint(0, fast.config.vocab_size, (2, 40))
    targets = torch.randint(0, fast.config.vocab_size, (2, 40))
    losses = []
    for model in (fast, plain):
        loss = model(ids, targets=targets).loss
        loss.backward()
        losses.append(loss)
    assert len(folded) == fast.config.n_layer  # every layer, once
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=0)
    for (key, p), q in zip(fast.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=key)


def test_the_mask_is_not_built_where_the_route_runs(monkeypatch):
    fast, plain = tiny_bloom(fast=True).eval(), tiny_bloom(fast=False).eval()
    ids = torch.randint(0, fast.config.vocab_size, (1, 24))
    with torch.no_grad():
        expected = plain(ids).logits
        monkeypatch.setattr(bloom, "alibi_mask", None)  # calling it would fail
        torch.testing.assert_close(fast(ids).logits, expected, atol=2e-5, rtol=1e-5)
        with pytest.raises(TypeError):
            plain(ids)


def test_bfloat16_autocast_trains_through_the_route_as_through_the_mask(folded):
    fast, plain = tiny_bloom(fast=True).train(), tiny_bloom(fast=False).train()
    ids = torch.randint(0, fast.config.vocab_size, (2, 300))  # positions past 256
    targets = torch.randint(0, fast.config.vocab_size, (2, 300))
    losses = []
    for model in (fast, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, targets=targets).loss
        loss.backward()
        losses.append(loss)
    assert len(folded) == fast.config.n_layer
    torch.testing.assert_close(losses[0], losses[1], atol=2e-2, rtol=0)
    for (key, p), q in zip(fast.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=2e-2, rtol=5e-2, msg=key)


def test_prefill_takes_the_route_and_later_steps_padding_and_dropout_do_not(folded):
    fast, plain = tiny_bloom(fast=True).eval(), tiny_bloom(fast=False).eval()
    layers = fast.config.n_layer
    ids = torch.randint(0, fast.config.vocab_size, (2, 12))
    with torch.no_grad():
        expected = plain(ids).logits
        out = fast(ids[:, :8], use_cache=True)  # prefill from position 0: the route
        assert len(folded) == layers
        steps = [out.logits]
        for t in range(8, 12):  # later positions: the mask
            out = fast(ids[:, t:t + 1], cache=out.cache)
            steps.append(out.logits)
        assert len(folded) == layers
        torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=2e-5, rtol=1e-5)

        mask = torch.ones_like(ids)
        mask[0, :3] = 0  # padding: the mask
        torch.testing.assert_close(fast(ids, attention_mask=mask).logits,
                                   plain(ids, attention_mask=mask).logits, atol=2e-5, rtol=1e-5)
        assert len(folded) == layers
    for block in fast.blocks:
        block.self_attention.attn_dropout = 0.1
    fast.train()(ids)  # attention dropout in training: the mask
    assert len(folded) == layers
    fast.eval()(ids)  # no dropout outside training: the route
    assert len(folded) == 2 * layers


def test_describe_names_the_route():
    fast, plain = tiny_bloom(fast=True), tiny_bloom(fast=False)
    folded_note = "ALiBi: in extra query and key channels, SDPA's causal kernel (zoo.fast)"
    mask_note = "ALiBi: a (heads x T x T) float mask"
    assert folded_note in zoo.fast.describe(fast, training=True)
    assert mask_note in zoo.fast.describe(plain, training=True)
    assert folded_note in zoo.fast.describe(fast, training=True, dtype=torch.bfloat16)
    assert mask_note in zoo.fast.describe(fast, training=True, dtype=torch.float64)
    for block in fast.blocks:
        block.self_attention.attn_dropout = 0.1  # SDPA's flash kernel takes no dropout
    assert mask_note in zoo.fast.describe(fast, training=True)
    assert folded_note in zoo.fast.describe(fast)  # no dropout outside training
    assert not any(n.startswith("ALiBi") for n in zoo.fast.describe(build_variant("gpt", "tiny")))


def test_torch_compile_traces_a_bloom_whole():
    """Under torch.compile the route gives way to the plain mask, which AlibiBias builds inside
    the graph (functools.cached_property's lock broke it at every layer)."""
    import torch._dynamo

    model = tiny_bloom(fast=True).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    assert torch._dynamo.explain(model)(ids).graph_break_count == 0
