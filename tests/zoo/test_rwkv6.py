"""RWKV-6 (zoo.rwkv6): the WKV with a data-dependent decay (chunked == recurrence in fp64 with
a carried state, same gradients, finite and accurate in fp32 at decays that underflow), the
recurrent state across calls, published sizes, the official .pth import with its version
check, and fp32 parity with the official `rwkv` pip package (v6.0, "cpu fp32", run in a
subprocess), all from tiny random weights."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    assert_rwkv_state_matches,
    check_bf16_with_an_fp32_state,
    check_blocks_start_as_the_identity,
    check_cached_decoding,
    check_chunk_size_invariance,
    check_fp64_chunked_equals_recurrence,
    check_generate_is_greedy,
    check_official_round_trip,
    max_diff,
    run_rwkv_pip,
)

import zoo
from harness.models import build_variant
from zoo.convert import CheckpointError, convert_rwkv6, rwkv6_to_official, rwkv_to_official
from zoo.layers import matrix_wkv_chunked, matrix_wkv_recurrent
from zoo.rwkv6 import RWKV6State

# variant: (layers, width, adapter widths (mixes, decay), parameters)
PUBLISHED = {"1.6b": (24, 2048, (32, 64), 1_599_873_024), "3b": (32, 2560, (32, 64), 3_099_863_040),
             "7b": (32, 4096, (64, 128), 7_635_746_816),
             "14b": (61, 4096, (64, 128), 14_069_088_256)}


def wkv_inputs(B, T, H, N, seed=0, dtype=torch.float64, spread=2.0):
    """r, log_w, k, v, u as the model makes them: log w = -exp(z) with z ~ N(0, spread^2), so
    some decays are ~1 and some underflow to 0 (e^-e^6)."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, H, N)
    r, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    log_w = -torch.exp(spread * torch.randn(shape, generator=g))
    u = torch.randn(H, N, generator=g)
    return [x.to(dtype) for x in (r, log_w, k, v, u)]


# ---------------------------------------------------------------------------------------------
# The WKV


def test_recurrence_is_the_formula():
    """y_t = r_t (S_{t-1} + diag(u) k_t^T v_t), S_t = diag(w_t) S_{t-1} + k_t^T v_t, with the
    state written as a sum over the past tokens."""
    B, T, H, N = 2, 7, 3, 4
    r, log_w, k, v, u = wkv_inputs(B, T, H, N)
    y, S_T = matrix_wkv_recurrent(r, log_w, k, v, u, torch.zeros(B, H, N, N, dtype=torch.float64))
    for t in range(T):
        S = sum(torch.exp(log_w[:, s + 1:t].sum(1))[..., None] * k[:, s, :, :, None]
                * v[:, s, :, None, :] for s in range(t)) if t else 0
        expected = (r[:, t, :, None, :] @ (S + u[:, :, None] * k[:, t, :, :, None]
                                           * v[:, t, :, None, :]))[..., 0, :]
        torch.testing.assert_close(y[:, t], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_chunked_equals_recurrence_with_a_carried_state(chunk_size):
    """83 tokens after a 29-token prefix: several chunks, the last one partial; fp64 to 1e-10
    (measured ~1e-13), fp32 within 1e-5 of the largest output (measured ~1e-7)."""
    B, H, N = 2, 3, 8
    x = wkv_inputs(B, 112, H, N, seed=chunk_size)
    u = x.pop()
    S0 = torch.zeros(B, H, N, N, dtype=torch.float64)
    _, state = matrix_wkv_recurrent(*(t[:, :29] for t in x), u, S0)
    rest = [t[:, 29:] for t in x]
    ref, ref_state = matrix_wkv_recurrent(*rest, u, state)
    out, out_state = matrix_wkv_chunked(*rest, u, state, chunk_size)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(out_state, ref_state, atol=1e-10, rtol=0)
    out32, state32 = matrix_wkv_chunked(*(t.float() for t in rest), u.float(), state.float(),
                                  chunk_size)
    assert out32.dtype == torch.float32
    assert max_diff(out32, ref) <= 1e-5 * ref.abs().max().item()
    assert max_diff(state32, ref_state) <= 1e-5 * ref_state.abs().max().item()


def test_chunked_gradients_equal_the_recurrence():
    """fp64 gradients of every input and of the start state, to 1e-10 (measured ~1e-13)."""
    x = wkv_inputs(2, 37, 2, 6, seed=3)
    S0 = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    grads = []
    for wkv in (matrix_wkv_recurrent, lambda *args: matrix_wkv_chunked(*args, chunk_size=8)):
        inputs = [t.clone().requires_grad_() for t in (*x, S0)]
        y, S = wkv(*inputs)
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        loss = (y * weights).sum() + S.square().sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("spread", [1.0, 4.0], ids=["moderate-decays", "extreme-decays"])
def test_long_inputs_are_stable_in_fp32(spread):
    """1024 tokens in chunks of 64; with spread 4 the log-decays reach -e^16 (w underflows to
    0) and near 0 (w ~ 1): finite, and equal to the fp64 recurrence within 1e-6 of the largest
    value (measured 1.2e-7 for y, 3e-8 for S; the fp32 recurrence itself: 1.5e-7, 7e-8). A
    difference of cumulative log-decays would cancel here: measured 3.6e-4 before the segment
    sums."""
    x = wkv_inputs(1, 1024, 2, 16, seed=7, dtype=torch.float32, spread=spread)
    S0 = torch.zeros(1, 2, 16, 16)
    out, S = matrix_wkv_chunked(*x, S0, chunk_size=64)
    assert torch.isfinite(out).all() and torch.isfinite(S).all()
    ref, ref_S = matrix_wkv_recurrent(*(t.double() for t in x), S0.double())
    assert max_diff(out, ref) <= 1e-6 * ref.abs().max().item()
    assert max_diff(S, ref_S) <= 1e-6 * ref_S.abs().max().item()


# ---------------------------------------------------------------------------------------------
# Random weights in the official layout, written independently of the zoo model


def random_official(seed: int = 0, n_layer: int = 3, d: int = 32, head_size: int = 16,
                    vocab: int = 100, mix: int = 4, decay: int = 8, ffn: int = 112
                    ) -> dict[str, torch.Tensor]:
    """An RWKV-6 state dict in the official .pth layout (keys and shapes as the released
    checkpoints), with random weights in the ranges trained models reach."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(shape, generator=g)  # noqa: E731
    rand = lambda *shape: torch.rand(shape, generator=g)  # noqa: E731
    state = {"emb.weight": randn(vocab, d), "blocks.0.ln0.weight": 1 + 0.2 * randn(d),
             "blocks.0.ln0.bias": 0.2 * randn(d)}
    for i in range(n_layer):
        b = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            state[b + ln + ".weight"], state[b + ln + ".bias"] = 1 + 0.2 * randn(d), 0.2 * randn(d)
        for mixed in "xwkvrg":
            state[b + f"att.time_maa_{mixed}"] = rand(1, 1, d)
        state[b + "att.time_maa_w1"] = 0.3 * randn(d, 5 * mix)
        state[b + "att.time_maa_w2"] = 0.3 * randn(5, mix, d)
        state[b + "att.time_decay"] = -1 + randn(1, 1, d)
        state[b + "att.time_decay_w1"] = 0.3 * randn(d, decay)
        state[b + "att.time_decay_w2"] = 0.3 * randn(decay, d)
        state[b + "att.time_faaaa"] = 0.5 * randn(d // head_size, head_size)
        for name in ("receptance", "key", "value", "gate", "output"):
            state[b + f"att.{name}.weight"] = randn(d, d) / math.sqrt(d)
        state[b + "att.ln_x.weight"] = 1 + 0.2 * randn(d)
        state[b + "att.ln_x.bias"] = 0.2 * randn(d)
        state[b + "ffn.time_maa_k"], state[b + "ffn.time_maa_r"] = rand(1, 1, d), rand(1, 1, d)
        state[b + "ffn.key.weight"] = randn(ffn, d) / math.sqrt(d)
        state[b + "ffn.receptance.weight"] = randn(d, d) / math.sqrt(d)
        state[b + "ffn.value.weight"] = randn(d, ffn) / math.sqrt(ffn)
    state["ln_out.weight"], state["ln_out.bias"] = 1 + 0.2 * randn(d), 0.2 * randn(d)
    state["head.weight"] = randn(vocab, d) / math.sqrt(d)
    return state


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rwkv6") / "rwkv6-tiny.pth"
    torch.save(random_official(), path)
    return path


@pytest.fixture(scope="module")
def model(official_file):
    return zoo.from_pretrained("rwkv6", official_file, fast=False)


def test_from_pretrained_reads_the_sizes_off_the_tensors(model):
    c = model.config
    assert (c.vocab_size, c.n_layer, c.d_model, c.n_head, c.head_size, c.ffn_width) == \
        (100, 3, 32, 2, 16, 112)
    assert (c.mix_width, c.decay_width) == (4, 8)


def test_the_official_layout_round_trips(model, official_file):
    check_official_round_trip(model, official_file, rwkv6_to_official)


# ---------------------------------------------------------------------------------------------
# The model (checks shared with the other RWKV with a matrix state, in tests/conftest.py)


def test_chunk_size_does_not_change_the_logits(official_file):
    check_chunk_size_invariance("rwkv6", official_file)


def test_cached_decoding_equals_the_full_forward(model):
    check_cached_decoding(model, RWKV6State)


def test_the_model_in_fp64_equals_the_recurrence_with_gradients(official_file, monkeypatch):
    check_fp64_chunked_equals_recurrence("rwkv6", official_file, monkeypatch)


def test_bf16_runs_with_an_fp32_state(official_file):
    """Measured on this seed, logits up to 3.9: within 0.016 on average and 0.17 at most."""
    check_bf16_with_an_fp32_state("rwkv6", official_file)


def test_generate_is_greedy_on_the_full_forward(model):
    check_generate_is_greedy(model)


def test_from_scratch_the_blocks_start_as_the_identity_and_train():
    check_blocks_start_as_the_identity("rwkv6")


# ---------------------------------------------------------------------------------------------
# Sizes, FLOPs


@pytest.mark.parametrize("variant", PUBLISHED)
def test_published_parameter_counts_are_exact(variant):
    n_layer, d, (mix, decay), count = PUBLISHED[variant]
    model = build_variant("rwkv6", variant, device="meta")
    c = model.config
    assert (c.n_layer, c.d_model, c.vocab_size, c.head_size) == (n_layer, d, 65536, 64)
    assert (c.mix_width, c.decay_width) == (mix, decay)
    assert model.num_params() == count
    # 2Vd + 4d + L (6 d^2 + 2 d f + d (16 + 2 * 5 * mix + 2 * decay)) with f = 3.5 d
    f = int(3.5 * d)
    per_layer = 6 * d * d + 2 * d * f + d * (16 + 2 * 5 * mix + 2 * decay)
    assert count == 2 * 65536 * d + 4 * d + n_layer * per_layer


def test_small_variant_is_parameter_matched_and_tiny_is_tiny():
    small = build_variant("rwkv6", "small", device="meta")
    assert 26_500_000 <= small.num_params() <= 29_000_000
    assert build_variant("rwkv6", "tiny", device="meta").num_params() < 200_000


def test_flops_per_token_are_the_matrices_head_and_recurrence():
    model = build_variant("rwkv6", "1.6b", device="meta")
    matrices = sum(p.numel() for name, p in model.named_parameters()
                   if p.dim() >= 2 and not name.startswith("emb")
                   and not name.endswith("time_faaaa"))
    assert model.flops_per_token(1024) == 2 * matrices + 7 * 2048 * 64 * 24
    assert model.flops_per_token(1) == model.flops_per_token(65536)


# ---------------------------------------------------------------------------------------------
# Versions


def test_a_file_of_another_version_is_a_one_line_error(official_file, tmp_path):
    rwkv4 = tmp_path / "rwkv4.pth"
    four = zoo.build("rwkv", fast=False, vocab_size=50, n_layer=1, d_model=16)
    torch.save(rwkv_to_official(four.state_dict()), rwkv4)
    with pytest.raises(CheckpointError, match=r"an RWKV-4 checkpoint; zoo model 'rwkv6' reads "
                       r"RWKV-6 \(keys .*\); load it as 'rwkv'") as error:
        zoo.from_pretrained("rwkv6", rwkv4)
    assert "\n" not in str(error.value)
    for other in ("rwkv", "rwkv5", "rwkv7"):
        with pytest.raises(CheckpointError, match=rf"an RWKV-6 checkpoint; zoo model '{other}' "
                           r"reads RWKV-[\d.]+ .*; load it as 'rwkv6'"):
            zoo.from_pretrained(other, official_file)
    with pytest.raises(CheckpointError, match=r"a Hugging Face folder; .* official RWKV-6 .pth"):
        convert_rwkv6({"model_type": "rwkv6"}, {})


# ---------------------------------------------------------------------------------------------
# The official package (rwkv 0.8.x, att_seq_v6_0 / att_one_v6_0), in a subprocess, without
# RWKV_V7_ON (which would switch it to RWKV-7).

LENGTHS = (1, 4, 70)  # 70 tokens: five chunks of 16, the last partial


@pytest.fixture(scope="module")
def official_run(official_file, tmp_path_factory):
    g = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, 100, (T,), generator=g).tolist() for T in LENGTHS]
    official = run_rwkv_pip(official_file, sequences, tmp_path_factory.mktemp("official"))
    assert official["version"] == "6.0"
    return sequences, official


@pytest.mark.parametrize("index", range(len(LENGTHS)), ids=[f"T={T}" for T in LENGTHS])
def test_logits_match_the_official_package(model, official_run, index):
    """Measured: 6e-7 (T=1) to 5e-6 (T=70) for logits up to 3.6 in magnitude."""
    sequences, official = official_run
    ids = torch.tensor([sequences[index]])
    with torch.no_grad():
        ours = model(ids).logits[0]
    assert ours.shape == official[f"logits{index}"].shape
    assert max_diff(ours, official[f"logits{index}"]) <= 1e-4


def test_the_state_matches_the_official_package(model, official_run):
    """After 70 tokens: per layer the official state list holds att_x, the (H, N, N) WKV state
    (key channel by value channel, as the zoo's) and ffn_x."""
    sequences, official = official_run
    with torch.no_grad():
        cache = model(torch.tensor([sequences[-1]]), use_cache=True).cache
    assert_rwkv_state_matches(cache, official[f"state{len(LENGTHS) - 1}"], model.config.n_layer)
