"""RWKV-7 (zoo.rwkv7): the WKV of the generalised delta rule (chunked == recurrence == the
explicit matrix product, with a carried state, same gradients, stable on long inputs),
published sizes and FLOPs, the official initialisation."""

from __future__ import annotations

import pytest
import torch

import zoo
from harness.models import build_variant
from zoo.rwkv7 import (
    LOG_DECAY_FLOOR,
    RWKV7,
    RWKV7Config,
    wkv7_chunked,
    wkv7_recurrent,
)

# Three layers, two heads of 16 channels, small adapters: every code path, in milliseconds.
TINY = dict(vocab_size=100, n_layer=3, d_model=32, head_size=16, decay_lora=8, iclr_lora=8,
            value_lora=8, gate_lora=16)
PUBLISHED = {  # variant: (n_layer, d_model, (decay, iclr, value, gate) widths, exact count)
    "0.1b": (12, 768, (64, 64, 32, 128), 191_034_624),
    "0.4b": (24, 1024, (64, 64, 64, 160), 453_848_064),
    "1.5b": (24, 2048, (128, 128, 64, 224), 1_530_550_272),
    "2.9b": (32, 2560, (128, 128, 96, 256), 2_952_814_080),
}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def wkv_inputs(B, T, H, N, seed=0, dtype=torch.float64, floor=False):
    """r, log_w, k, v, kk, a as the model makes them: log_w in (-e^-0.5, 0) (with `floor`, at
    the strongest decay for every token), unit kk, a in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, H, N)
    r, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    log_w = LOG_DECAY_FLOOR * torch.sigmoid(3 * torch.randn(shape, generator=g))
    if floor:
        log_w = torch.full(shape, LOG_DECAY_FLOOR * 0.9999)
    kk = torch.nn.functional.normalize(torch.randn(shape, generator=g), dim=-1)
    a = torch.sigmoid(2 * torch.randn(shape, generator=g))
    return [x.to(dtype) for x in (r, log_w, k, v, kk, a)]


# ---------------------------------------------------------------------------------------------
# The WKV


def test_recurrence_is_the_matrix_product():
    """S_t = S_{t-1} (diag(w_t) - kk_t^T (a_t kk_t)) + v_t^T k_t, y_t = S_t r_t, with the
    transition written out as an (N, N) matrix per head."""
    B, T, H, N = 2, 9, 3, 4
    r, log_w, k, v, kk, a = wkv_inputs(B, T, H, N)
    S0 = torch.randn(B, H, N, N, dtype=torch.float64)
    y, S_T = wkv7_recurrent(r, log_w, k, v, kk, a, S0)
    S = S0
    for t in range(T):
        transition = (torch.diag_embed(torch.exp(log_w[:, t]))
                      - kk[:, t, :, :, None] * (a[:, t] * kk[:, t])[:, :, None, :])
        S = S @ transition + v[:, t, :, :, None] * k[:, t, :, None, :]
        torch.testing.assert_close(y[:, t], (S @ r[:, t, :, :, None])[..., 0], atol=1e-12,
                                   rtol=0)
    torch.testing.assert_close(S_T, S, atol=1e-12, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_chunked_equals_recurrence_with_a_carried_state(chunk_size):
    """83 tokens after a 29-token prefix: several chunks, the last one partial."""
    B, H, N = 2, 3, 8
    x = wkv_inputs(B, 112, H, N, seed=chunk_size)
    S0 = torch.zeros(B, H, N, N, dtype=torch.float64)
    _, state = wkv7_recurrent(*(t[:, :29] for t in x), S0)
    rest = [t[:, 29:] for t in x]
    ref, ref_state = wkv7_recurrent(*rest, state)
    out, out_state = wkv7_chunked(*rest, state, chunk_size)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(out_state, ref_state, atol=1e-10, rtol=0)
    # And in fp32, against the fp64 recurrence.
    out32, state32 = wkv7_chunked(*(t.float() for t in rest), state.float(), chunk_size)
    assert out32.dtype == torch.float32
    assert max_diff(out32, ref) <= 1e-4 * ref.abs().max().item()
    assert max_diff(state32, ref_state) <= 1e-4 * ref_state.abs().max().item()


def test_chunked_gradients_equal_the_recurrence():
    x = wkv_inputs(2, 37, 2, 6, seed=3)
    S0 = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    grads = []
    for wkv in (wkv7_recurrent, lambda *args: wkv7_chunked(*args, chunk_size=8)):
        inputs = [t.clone().requires_grad_() for t in (*x, S0)]
        y, S = wkv(*inputs)
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        loss = (y * weights).sum() + S.square().sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("floor", [False, True], ids=["random-decays", "strongest-decay"])
def test_long_inputs_are_stable_in_fp32(floor):
    """1024 tokens in chunks of 64, the largest allowed: at the strongest decay every token,
    the factors 1 / g inside a chunk reach e^(0.61 * 64) ~ 1e17; still finite, and equal to the
    fp64 recurrence."""
    x = wkv_inputs(1, 1024, 2, 16, seed=7, dtype=torch.float32, floor=floor)
    S0 = torch.zeros(1, 2, 16, 16)
    out, S = wkv7_chunked(*x, S0, chunk_size=64)
    assert torch.isfinite(out).all() and torch.isfinite(S).all()
    ref, ref_S = wkv7_recurrent(*(t.double() for t in x), S0.double())
    assert max_diff(out, ref) <= 1e-4 * ref.abs().max().item()
    assert max_diff(S, ref_S) <= 1e-4 * ref_S.abs().max().item()


# ---------------------------------------------------------------------------------------------
# The model: state across calls, chunk size


def test_from_scratch_the_blocks_start_as_the_identity_and_train():
    """The official init zeroes att.output and ffn.value: every block adds nothing at first, so
    the logits are head(ln_out(ln0(emb))); the gradients reach those two matrices."""
    torch.manual_seed(0)
    model = zoo.build("rwkv7", fast=False, **TINY)
    ids = torch.randint(0, 100, (2, 20))
    out = model(ids[:, :-1], targets=ids[:, 1:])
    x = model.emb(ids[:, :-1])
    expected = model.head(model.ln_out(model.blocks[0].ln0(x)))
    assert max_diff(out.logits, expected) <= 1e-5
    out.loss.backward()
    for block in model.blocks:
        for grad in (block.att.output.weight.grad, block.ffn.value.weight.grad):
            assert torch.isfinite(grad).all() and grad.abs().max() > 0


# ---------------------------------------------------------------------------------------------
# Sizes, FLOPs, initialisation


@pytest.mark.parametrize("variant", PUBLISHED)
def test_published_parameter_counts_are_exact(variant):
    n_layer, d, widths, count = PUBLISHED[variant]
    model = build_variant("rwkv7", variant, device="meta")
    c = model.config
    assert (c.n_layer, c.d_model, c.vocab_size, c.head_size) == (n_layer, d, 65536, 64)
    assert tuple(c.lora(name) for name in ("decay", "iclr", "value", "gate")) == widths
    assert model.num_params() == count
    # 2Vd + 4d (ln0, ln_out) + L (12 d^2 + 19 d + 2d (decay + iclr + value + gate)), less
    # layer 0's value residual (d + 2 d value).
    decay, iclr, value, gate = widths
    per_layer = 12 * d * d + 19 * d + 2 * d * (decay + iclr + value + gate)
    assert count == 2 * 65536 * d + 4 * d + n_layer * per_layer - (d + 2 * d * value)


def test_small_variant_is_parameter_matched_and_tiny_is_tiny():
    small = build_variant("rwkv7", "small", device="meta")
    assert (small.config.vocab_size, small.config.d_model) == (8192, 512)
    assert small.num_params() == 28_862_976  # RWKV-4's small: 28,871,680
    tiny = build_variant("rwkv7", "tiny", device="meta")
    assert tiny.num_params() < 200_000


def test_flops_per_token_are_the_matrices_head_and_recurrence():
    model = build_variant("rwkv7", "0.1b", device="meta")
    matrices = sum(p.numel() for name, p in model.named_parameters()
                   if p.dim() == 2 and not name.startswith(("emb", "blocks.0.att.r_k"))
                   and not name.endswith("r_k"))
    expected = 2 * matrices + 9 * 768 * 64 * 12
    assert model.flops_per_token(1024) == expected
    assert model.flops_per_token(1) == model.flops_per_token(65536)


def test_initialisation_formulas():
    L, d = 4, 64
    torch.manual_seed(0)
    model = RWKV7(RWKV7Config(vocab_size=300, n_layer=L, d_model=d, head_size=16))
    for layer, block in enumerate(model.blocks):
        att, ffn = block.att, block.ffn
        r10 = 1 - layer / L
        for i in (0, 5, 63):
            assert att.x_r[i].item() == pytest.approx(1 - (i / d) ** (0.2 * r10), abs=1e-6)
            assert ffn.x_k[i].item() == pytest.approx(1 - (i / d) ** (r10**4), abs=1e-6)
        assert torch.count_nonzero(att.output.weight) == 0
        assert torch.count_nonzero(ffn.value.weight) == 0
        assert torch.count_nonzero(att.w1) == 0 and torch.count_nonzero(att.g1) == 0
        torch.testing.assert_close(att.w2 @ att.w2.T, 0.01 * torch.eye(att.w2.shape[0]),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(att.ln_x.weight, torch.full((d,), ((layer + 1) / L) ** 0.7))
        assert torch.all(att.r_k == -0.04) and torch.all(att.k_a == 1.02)
    assert model.emb.weight.abs().max() <= 1e-4
