"""RWKV-5.2 (zoo.rwkv5): the shared matrix WKV with a decay that is the same for every sequence
(given with a batch of 1, equal to the same decay per sequence), the recurrent state across
calls, published sizes, the official .pth import with its version check, and fp32 parity with
the official `rwkv` pip package (v5.2, "cpu fp32", run in a subprocess), all from tiny random
weights. The WKV itself is tested in test_rwkv6.py (zoo.layers.matrix_wkv)."""

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
from zoo.convert import CheckpointError, convert_rwkv5, rwkv5_to_official, rwkv_to_official
from zoo.layers import matrix_wkv_chunked, matrix_wkv_recurrent
from zoo.rwkv5 import RWKV5State

PUBLISHED = {"0.4b": (24, 1024, 461_721_600), "1.5b": (24, 2048, 1_577_754_624),
             "3b": (32, 2560, 3_062_999_040), "7b": (32, 4096, 7_518_044_160)}


# ---------------------------------------------------------------------------------------------
# The WKV with one decay for the whole batch


@pytest.mark.parametrize("T", [1, 45])
def test_a_decay_shared_by_the_batch_equals_it_per_sequence(T):
    """log w of shape (1, T, H, N) broadcasts over the batch: the same numbers as the decay
    repeated per sequence, in both forms (fp64, to 1e-12; the chunked form against the
    recurrence to 1e-10)."""
    g = torch.Generator().manual_seed(T)
    B, H, N = 3, 2, 8
    r, k, v = (torch.randn(B, T, H, N, generator=g, dtype=torch.float64) for _ in range(3))
    log_w = -torch.exp(2 * torch.randn(H, N, generator=g, dtype=torch.float64))
    u = torch.randn(H, N, generator=g, dtype=torch.float64)
    S0 = torch.randn(B, H, N, N, generator=g, dtype=torch.float64)
    shared, repeated = log_w.expand(1, T, H, N), log_w.expand(B, T, H, N)
    for wkv in (matrix_wkv_recurrent, lambda *a: matrix_wkv_chunked(*a, chunk_size=16)):
        y1, S1 = wkv(r, shared, k, v, u, S0)
        y2, S2 = wkv(r, repeated, k, v, u, S0)
        assert y1.shape == (B, T, H, N) and S1.shape == (B, H, N, N)
        torch.testing.assert_close(y1, y2, atol=1e-12, rtol=0)
        torch.testing.assert_close(S1, S2, atol=1e-12, rtol=0)
    y_ref, S_ref = matrix_wkv_recurrent(r, shared, k, v, u, S0)
    y, S = matrix_wkv_chunked(r, shared, k, v, u, S0, 16)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(S, S_ref, atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------------------------
# Random weights in the official layout, written independently of the zoo model


def random_official(seed: int = 0, n_layer: int = 3, d: int = 32, head_size: int = 16,
                    vocab: int = 100, ffn: int = 112) -> dict[str, torch.Tensor]:
    """An RWKV-5.2 state dict in the official .pth layout (keys and shapes as the released
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
        for mixed in "kvrg":
            state[b + f"att.time_mix_{mixed}"] = rand(1, 1, d)
        state[b + "att.time_decay"] = -1 + randn(d // head_size, head_size)
        state[b + "att.time_faaaa"] = 0.5 * randn(d // head_size, head_size)
        for name in ("receptance", "key", "value", "gate", "output"):
            state[b + f"att.{name}.weight"] = randn(d, d) / math.sqrt(d)
        state[b + "att.ln_x.weight"] = 1 + 0.2 * randn(d)
        state[b + "att.ln_x.bias"] = 0.2 * randn(d)
        state[b + "ffn.time_mix_k"], state[b + "ffn.time_mix_r"] = rand(1, 1, d), rand(1, 1, d)
        state[b + "ffn.key.weight"] = randn(ffn, d) / math.sqrt(d)
        state[b + "ffn.receptance.weight"] = randn(d, d) / math.sqrt(d)
        state[b + "ffn.value.weight"] = randn(d, ffn) / math.sqrt(ffn)
    state["ln_out.weight"], state["ln_out.bias"] = 1 + 0.2 * randn(d), 0.2 * randn(d)
    state["head.weight"] = randn(vocab, d) / math.sqrt(d)
    return state


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rwkv5") / "rwkv5-tiny.pth"
    torch.save(random_official(), path)
    return path


@pytest.fixture(scope="module")
def model(official_file):
    return zoo.from_pretrained("rwkv5", official_file, fast=False)


def test_from_pretrained_reads_the_sizes_off_the_tensors(model):
    c = model.config
    assert (c.vocab_size, c.n_layer, c.d_model, c.n_head, c.head_size, c.ffn_width) == \
        (100, 3, 32, 2, 16, 112)


def test_the_official_layout_round_trips(model, official_file):
    check_official_round_trip(model, official_file, rwkv5_to_official)


# ---------------------------------------------------------------------------------------------
# The model (checks shared with the other RWKV with a matrix state, in tests/conftest.py)


def test_chunk_size_does_not_change_the_logits(official_file):
    check_chunk_size_invariance("rwkv5", official_file)


def test_cached_decoding_equals_the_full_forward(model):
    check_cached_decoding(model, RWKV5State)


def test_the_model_in_fp64_equals_the_recurrence_with_gradients(official_file, monkeypatch):
    check_fp64_chunked_equals_recurrence("rwkv5", official_file, monkeypatch)


def test_bf16_runs_with_an_fp32_state(official_file):
    """Measured on this seed, logits up to 3.9: within 0.010 on average and 0.063 at most."""
    check_bf16_with_an_fp32_state("rwkv5", official_file)


def test_generate_is_greedy_on_the_full_forward(model):
    check_generate_is_greedy(model)


def test_from_scratch_the_blocks_start_as_the_identity_and_train():
    check_blocks_start_as_the_identity("rwkv5")


# ---------------------------------------------------------------------------------------------
# Sizes, FLOPs


@pytest.mark.parametrize("variant", PUBLISHED)
def test_published_parameter_counts_are_exact(variant):
    n_layer, d, count = PUBLISHED[variant]
    model = build_variant("rwkv5", variant, device="meta")
    c = model.config
    assert (c.n_layer, c.d_model, c.vocab_size, c.head_size) == (n_layer, d, 65536, 64)
    assert model.num_params() == count
    # 2Vd + 4d + L (6 d^2 + 2 d f + 14 d) with f = 3.5 d: ln1, ln2, ln_x (6 d), six mixing
    # vectors, time_decay and time_faaaa (8 d)
    f = int(3.5 * d)
    assert count == 2 * 65536 * d + 4 * d + n_layer * (6 * d * d + 2 * d * f + 14 * d)


def test_small_variant_is_parameter_matched_and_tiny_is_tiny():
    small = build_variant("rwkv5", "small", device="meta")
    assert 26_500_000 <= small.num_params() <= 29_000_000
    assert build_variant("rwkv5", "tiny", device="meta").num_params() < 200_000


def test_flops_per_token_are_the_matrices_head_and_recurrence():
    model = build_variant("rwkv5", "0.4b", device="meta")
    matrices = sum(p.numel() for name, p in model.named_parameters()
                   if p.dim() >= 2 and not name.startswith("emb")
                   and not name.endswith(("time_faaaa", "time_decay")))
    assert model.flops_per_token(1024) == 2 * matrices + 7 * 1024 * 64 * 24
    assert model.flops_per_token(1) == model.flops_per_token(65536)


# ---------------------------------------------------------------------------------------------
# Versions


def test_a_file_of_another_version_is_a_one_line_error(official_file, tmp_path):
    rwkv4 = tmp_path / "rwkv4.pth"
    four = zoo.build("rwkv", fast=False, vocab_size=50, n_layer=1, d_model=16)
    torch.save(rwkv_to_official(four.state_dict()), rwkv4)
    with pytest.raises(CheckpointError, match=r"an RWKV-4 checkpoint; zoo model 'rwkv5' reads "
                       r"RWKV-5.2 \(keys .*\); load it as 'rwkv'") as error:
        zoo.from_pretrained("rwkv5", rwkv4)
    assert "\n" not in str(error.value)
    for other in ("rwkv", "rwkv6", "rwkv7"):
        with pytest.raises(CheckpointError, match=rf"an RWKV-5.2 checkpoint; zoo model '{other}' "
                           r"reads RWKV-\d .*; load it as 'rwkv5'"):
            zoo.from_pretrained(other, official_file)
    # RWKV-5.1: the same keys with a 1-D decay per channel (the package's test: time_decay's
    # second dimension); no zoo model reads it.
    v51 = torch.load(official_file, weights_only=True)
    v51 = {k: t.reshape(-1) if k.endswith("time_decay") else t for k, t in v51.items()}
    torch.save(v51, tmp_path / "v51.pth")
    with pytest.raises(CheckpointError, match=r"an RWKV-5.1 checkpoint; zoo model 'rwkv5' reads "
                       r"RWKV-5.2 .*; no zoo model reads this version"):
        zoo.from_pretrained("rwkv5", tmp_path / "v51.pth")
    with pytest.raises(CheckpointError, match=r"a Hugging Face folder; .* official RWKV-5.2 .pth"):
        convert_rwkv5({"model_type": "rwkv5"}, {})


# ---------------------------------------------------------------------------------------------
# The official package (rwkv 0.8.x, att_seq_v5_2 / att_one_v5_1), in a subprocess, without
# RWKV_V7_ON (which would switch it to RWKV-7).

LENGTHS = (1, 4, 70)  # 70 tokens: five chunks of 16, the last partial


@pytest.fixture(scope="module")
def official_run(official_file, tmp_path_factory):
    g = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, 100, (T,), generator=g).tolist() for T in LENGTHS]
    official = run_rwkv_pip(official_file, sequences, tmp_path_factory.mktemp("official"))
    assert official["version"] == "5.2"
    return sequences, official


@pytest.mark.parametrize("index", range(len(LENGTHS)), ids=[f"T={T}" for T in LENGTHS])
def test_logits_match_the_official_package(model, official_run, index):
    """Measured: 0 (T=1) to 2.5e-6 (T=70) for logits up to 4.6 in magnitude."""
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
