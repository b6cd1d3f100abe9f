"""Pangu-π (zoo/pangu_pi.py): parity of its LLaMA-style base with transformers' Llama, and
unit tests of each added formula (series activation, augmented shortcut) and of RoPE/RMSNorm.

No official code or weights exist (zoo_specs.md 7.5), so the full model cannot be compared with
a reference; instead, with one series term (a = 1, b = 0) and no shortcut it must reduce
exactly to LLaMA, and each addition is checked against its equation written out here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import lazy_import

from harness.models import build_variant
from zoo.layers import norms
from zoo.pangu_pi import (
    AugmentedShortcut,
    PanguPi,
    PanguPiConfig,
    RMSNorm,
    SeriesActivation,
    apply_rope,
    llama_ffn_size,
    rope_tables,
)

transformers = lazy_import("transformers")  # tests that use it skip without it

TINY = dict(vocab_size=300, d_model=64, n_head=4, n_layer=2, d_ff=176)


def expected_params(c: PanguPiConfig) -> int:
    """The count formula documented in zoo/pangu_pi.py's docstring, written out again."""
    d, f, n = c.d_model, c.ffn_size, c.siaf_terms
    ffn = (3 if c.siaf_fusion == "gate" else 2) * d * f
    series = 2 * n * (f if c.siaf_per_channel else 1)
    series += c.siaf_window * f if c.siaf_window > 1 else 0
    hidden = d // c.shortcut_ratio
    shortcut = 2 * d * hidden + ((hidden + d) if c.shortcut_bias else 0)
    layer = 4 * d * d + ffn + series + c.n_shortcuts * shortcut + 2 * d
    return c.vocab_size * d * (1 if c.tie_embeddings else 2) + d + c.n_layer * layer


# ---------------------------------------------------------------- parameter counts


def test_llama_ffn_rule():
    # LLaMA's int(8d/3) rounded up to 256: the published LLaMA-7B width is 11008.
    assert llama_ffn_size(4096) == 11008 and llama_ffn_size(2048) == 5632
    assert llama_ffn_size(512, multiple_of=128) == 1408


@pytest.mark.parametrize("variant, published, tolerance, exact", [
    # 1B: 100883*2048*2 (emb + untied head) + 2048 + 12 * (4*2048^2 + 3*2048*5632
    #     + 2*2*5632 + 5*5632 + 2*2048*64 + 2*2048) = 1,033,584,640
    ("1b", 1e9, 0.15, 1_033_584_640),
    # 7B: 100883*4096*2 + 4096 + 29 * (4*4096^2 + 3*4096*11008 + 4*11008 + 5*11008
    #     + 2*4096*128 + 2*4096) = 6,728,836,864
    ("7b", 7e9, 0.10, 6_728_836_864),
])
def test_published_sizes_follow_the_documented_formula(variant, published, tolerance, exact):
    """The paper's counts cannot be reproduced exactly (its FFN width is unpublished): the count
    follows our documented formula and lies within 15% (1B) / 10% (7B) of the published size."""
    model = build_variant("pangu-pi", variant, device="meta")
    assert model.num_params() == expected_params(model.config) == exact
    assert abs(exact - published) / published <= tolerance


def test_small_variant_count():
    model = build_variant("pangu-pi", "small", device="meta")
    assert model.num_params() == expected_params(model.config) == 27_837_184
    assert 26.5e6 <= model.num_params() <= 29.0e6


@pytest.mark.parametrize("overrides", [
    dict(siaf_per_channel=False), dict(siaf_window=1), dict(siaf_fusion="mlp"),
    dict(n_shortcuts=3, shortcut_bias=True, shortcut_ratio=8), dict(tie_embeddings=True),
])
def test_count_formula_covers_every_option(overrides):
    model = PanguPi(PanguPiConfig(**TINY, **overrides))
    assert model.num_params() == expected_params(model.config)


def test_flops_per_token_formula():
    c = PanguPiConfig(**TINY)
    d, f, L, T = 64, 176, 2, 37
    matmul = L * (4 * d * d + 3 * d * f + 5 * f + 2 * d * (d // 32)) + c.vocab_size * d
    assert PanguPi(c).flops_per_token(T) == 2 * matmul + 4 * L * d * (T + 1) / 2


@pytest.mark.parametrize("bad", [dict(n_head=5), dict(siaf_terms=0), dict(siaf_window=0),
                                 dict(siaf_fusion="sum"), dict(siaf_activation="swish"),
                                 dict(shortcut_input="raw"), dict(shortcut_ratio=128),
                                 dict(n_shortcuts=-1)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        PanguPiConfig(**{**TINY, **bad})


# ---------------------------------------------------------------- parity with LLaMA


def llama_and_pangu(tie: bool = False, **overrides):
    """A tiny random HF Llama and the Pangu-π that must equal it, with Llama's weights copied."""
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        vocab_size=TINY["vocab_size"], hidden_size=TINY["d_model"], intermediate_size=TINY["d_ff"],
        num_hidden_layers=TINY["n_layer"], num_attention_heads=TINY["n_head"],
        num_key_value_heads=TINY["n_head"], rms_norm_eps=1e-5, tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():  # RMSNorm weights start at 1: make them random to test them too
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    config = dict(TINY, siaf_terms=1, n_shortcuts=0, siaf_window=1, tie_embeddings=tie)
    model = PanguPi(PanguPiConfig(**{**config, **overrides})).eval()
    rename = {"model.embed_tokens": "tok_emb", "model.norm": "norm", "model.layers": "blocks",
              "self_attn": "attn", "input_layernorm": "attn_norm",
              "post_attention_layernorm": "ffn_norm", "mlp": "ffn"}
    state = {}
    for key, value in hf.state_dict().items():
        for old, new in rename.items():
            key = key.replace(old, new)
        state[key] = value
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    assert all(".series." in k or ".shortcuts." in k for k in missing), missing
    return hf, model


@pytest.mark.parametrize("tie", [False, True])
def test_one_term_without_shortcut_is_llama(tie):
    hf, model = llama_and_pangu(tie=tie)
    assert torch.equal(model.blocks[0].ffn.series.scale, torch.ones(1, 176))
    assert torch.equal(model.blocks[0].ffn.series.bias, torch.zeros(1, 176))
    ids = torch.randint(0, TINY["vocab_size"], (3, 13))
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf(ids).logits
    assert (ours - theirs).abs().max() <= 1e-4


def test_mixing_and_zeroed_shortcut_at_init_still_give_llama():
    """Identity taps (our init) and a shortcut whose output matrix is zero change nothing."""
    hf, model = llama_and_pangu(siaf_window=5, n_shortcuts=2)
    with torch.no_grad():
        for block in model.blocks:
            for shortcut in block.shortcuts:
                shortcut.up.weight.zero_()
    ids = torch.randint(0, TINY["vocab_size"], (2, 11))
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_cached_decoding_matches_llama():
    hf, model = llama_and_pangu()
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    with torch.no_grad():
        out = model(ids[:, :6], use_cache=True)
        step = model(ids[:, 6:], cache=out.cache).logits
        assert (step - hf(ids).logits[:, 6:]).abs().max() <= 1e-4


# ---------------------------------------------------------------- causality and the cache


def random_tiny(**overrides) -> PanguPi:
    torch.manual_seed(1)
    model = PanguPi(PanguPiConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # move the series parameters and taps away from their init
        for block in model.blocks:
            series = block.ffn.series
            series.scale.normal_(1.0, 0.5)
            series.bias.normal_(0.0, 0.5)
            series.taps.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("shortcut_input", ["normed", "residual"])
def test_future_tokens_never_change_past_logits(shortcut_input):
    model = random_tiny(shortcut_input=shortcut_input)
    ids = torch.randint(0, TINY["vocab_size"], (2, 12))
    with torch.no_grad():
        base = model(ids).logits
        for t in (0, 3, 7, 11):
            changed = ids.clone()
            changed[:, t] = (changed[:, t] + 1) % TINY["vocab_size"]
            logits = model(changed).logits
            assert torch.equal(logits[:, :t], base[:, :t])
            assert not torch.allclose(logits[:, t:], base[:, t:])


def test_cache_carries_the_mixing_window_across_short_calls():
    """Calls of 1-2 tokens, fewer than the window: the cached activations fill the gap."""
    model = random_tiny(siaf_window=5)
    ids = torch.randint(0, TINY["vocab_size"], (2, 10))
    with torch.no_grad():
        full = model(ids).logits
        out, pieces, t = None, [], 0
        for size in (2, 1, 1, 3, 1, 2):
            out = model(ids[:, t : t + size], cache=out.cache if out else None, use_cache=True)
            pieces.append(out.logits)
            t += size
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
    assert out.cache.length == 10 and out.cache.series[0].shape == (2, 4, 176)


# ---------------------------------------------------------------- series activation


def test_series_activation_values_per_channel_and_scalar():
    x = torch.randn(2, 5, 3)
    per_channel = SeriesActivation(3, terms=2, activation="silu", per_channel=True, window=1,
                                   bias_init=1.0)
    with torch.no_grad():
        per_channel.scale.copy_(torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]]))
        per_channel.bias.copy_(torch.tensor([[0.0, -1.0, 1.0], [2.0, 0.5, 0.0]]))
    y, state = per_channel(x)
    a, b = per_channel.scale.detach(), per_channel.bias.detach()
    assert state is None
    torch.testing.assert_close(y, F.silu(a[0] * x + b[0]) + F.silu(a[1] * x + b[1]))

    scalar = SeriesActivation(3, terms=2, activation="relu", per_channel=False, window=1,
                              bias_init=0.25)
    assert scalar.scale.shape == (2, 1)
    assert torch.equal(scalar.bias[:, 0], torch.tensor([-0.25, 0.25]))
    torch.testing.assert_close(scalar(x)[0], F.relu(x - 0.25) + F.relu(x + 0.25))


def test_series_activation_single_term_at_init_is_plain_silu():
    act = SeriesActivation(4, terms=1, activation="silu", per_channel=True, window=1, bias_init=1.0)
    x = torch.randn(3, 4)
    assert torch.equal(act(x)[0], F.silu(x))


def test_causal_mixing_is_a_left_padded_depthwise_sum():
    torch.manual_seed(0)
    act = SeriesActivation(3, terms=2, activation="gelu", per_channel=True, window=3,
                           bias_init=0.5)
    with torch.no_grad():
        act.taps.normal_()
    x = torch.randn(2, 6, 3)
    y, state = act(x)
    s = F.gelu(x - 0.5) + F.gelu(x + 0.5)  # the series before mixing
    expected = torch.zeros_like(s)
    for t in range(6):
        for j in range(3):  # taps[j] weighs the token j steps back; before 0 counts as zero
            if t - j >= 0:
                expected[:, t] += act.taps[j].detach() * s[:, t - j]
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(state, s[:, -2:])
    # Continuing from the state equals running the whole sequence at once.
    x2 = torch.randn(2, 2, 3)
    torch.testing.assert_close(act(x2, state)[0], act(torch.cat((x, x2), 1))[0][:, -2:])


def test_gate_fusion_and_plain_mlp_fusion():
    model = PanguPi(PanguPiConfig(**TINY, siaf_window=1))
    ffn, x = model.blocks[0].ffn, torch.randn(2, 4, 64)
    terms = zip(ffn.series.scale, ffn.series.bias, strict=True)
    s = sum(F.silu(a * ffn.gate_proj(x) + b) for a, b in terms)
    torch.testing.assert_close(ffn(x, None)[0], ffn.down_proj(s * ffn.up_proj(x)))
    mlp = PanguPi(PanguPiConfig(**TINY, siaf_window=1, siaf_fusion="mlp")).blocks[0].ffn
    assert mlp.up_proj is None
    terms = zip(mlp.series.scale, mlp.series.bias, strict=True)
    s = sum(F.silu(a * mlp.gate_proj(x) + b) for a, b in terms)
    torch.testing.assert_close(mlp(x, None)[0], mlp.down_proj(s))


# ---------------------------------------------------------------- augmented shortcut


def test_shortcut_bottleneck_shapes_and_values():
    shortcut = AugmentedShortcut(64, ratio=32, bias=False)
    assert shortcut.down.weight.shape == (2, 64) and shortcut.up.weight.shape == (64, 2)
    assert shortcut.down.bias is None
    z = torch.randn(3, 5, 64)
    expected = F.gelu(z @ shortcut.down.weight.T) @ shortcut.up.weight.T
    torch.testing.assert_close(shortcut(z), expected)
    assert AugmentedShortcut(64, ratio=8, bias=True).down.weight.shape == (8, 64)


@pytest.mark.parametrize("shortcut_input", ["normed", "residual"])
def test_block_adds_shortcuts_beside_attention(shortcut_input):
    model = random_tiny(n_shortcuts=2, shortcut_input=shortcut_input)
    block, x = model.blocks[0], torch.randn(2, 7, 64)
    cos, sin = rope_tables(16, 0, 7, 10000.0, x.device)
    with torch.no_grad():
        h = block.attn_norm(x)
        z = h if shortcut_input == "normed" else x
        mid = x + block.attn(h, cos, sin, None) + block.shortcuts[0](z) + block.shortcuts[1](z)
        expected = mid + block.ffn(block.ffn_norm(mid), None)[0]
        torch.testing.assert_close(block(x, cos, sin, None, None)[0], expected)


# ---------------------------------------------------------------- RoPE and RMSNorm


def test_rope_rotates_pairs_and_keeps_norms():
    cos, sin = rope_tables(8, 0, 6, 10000.0, torch.device("cpu"))
    x = torch.randn(2, 3, 6, 8)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))  # rotations keep lengths
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])  # position 0 is not rotated
    # Channel pair (0, 4) at position 1 turns by angle 1 * theta^0 = 1 radian.
    c, s = torch.cos(torch.tensor(1.0)), torch.sin(torch.tensor(1.0))
    torch.testing.assert_close(y[..., 1, 0], x[..., 1, 0] * c - x[..., 1, 4] * s)
    torch.testing.assert_close(y[..., 1, 4], x[..., 1, 4] * c + x[..., 1, 0] * s)


def test_rope_scores_depend_only_on_relative_position():
    q, k = torch.randn(8), torch.randn(8)
    cos, sin = rope_tables(8, 0, 40, 10000.0, torch.device("cpu"))
    score = lambda m, n: (apply_rope(q, cos[m], sin[m]) * apply_rope(k, cos[n], sin[n])).sum()  # noqa: E731
    torch.testing.assert_close(score(5, 2), score(35, 32))
    torch.testing.assert_close(score(9, 9), (q * k).sum())
    # Tables for a later start are the same rows (what the cache relies on).
    later = rope_tables(8, 30, 10, 10000.0, torch.device("cpu"))
    torch.testing.assert_close(later[0], cos[30:])


def test_rmsnorm_formula_and_scale_invariance():
    norm = RMSNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(4, 6)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(norm(10 * x), norm(x), atol=1e-5, rtol=1e-5)


def test_rmsnorm_written_out_equals_torch_rms_norm(monkeypatch):
    """fp32 takes F.rms_norm (torch >= 2.4); the written-out equation (other dtypes, older
    torch) gives the same numbers."""
    norm = RMSNorm(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64)
    fused = norm(x)
    monkeypatch.setattr(norms, "RMS_NORM", None)
    torch.testing.assert_close(norm(x), fused, atol=1e-6, rtol=1e-6)
