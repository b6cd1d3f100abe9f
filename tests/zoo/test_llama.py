"""LLaMA (zoo/llama.py) with grouped-query attention and Mistral's sliding window: published
parameter counts on the meta device, the block's formulas written out, fp32 parity with Hugging
Face's LlamaForCausalLM and MistralForCausalLM built from tiny random configs and read back with
zoo.from_pretrained from the folders they saved (one file and shards), cached decoding past the
window, and the checkpoint errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import lazy_import, randomized
from decoder_parity import (
    ATOL,
    LENGTH,
    assert_bands_equal_the_whole_masked_attention,
    assert_cached_steps_match_hugging_faces_own_cache,
    padded_batch,
    step_by_step,
)

import zoo
import zoo.fast
from harness.models import build_variant
from zoo.convert import CheckpointError
from zoo.layers import KVCache, Visibility, WindowKVCache, rope_tables
from zoo.llama import Block, Llama, LlamaConfig

transformers = lazy_import("transformers")  # tests that use it skip without it

NAME = "llama"
# The Hugging Face side: 4 query heads over 2 key/value heads; Mistral with an 8-token window,
# and sequences of 21 tokens, so that most queries see a cut window.
SIZES = dict(vocab_size=300, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5)
WINDOW = 8  # sequences are decoder_parity.LENGTH = 21 tokens


# ---- published sizes -------------------------------------------------------------------------

def llama_count(vocab: int, d: int, n_layer: int, n_head: int, n_kv: int, d_ff: int) -> int:
    """Embedding + untied head 2Vd, final norm d; per layer q and o (2d^2), k and v (2d * kv
    width), SwiGLU (3 d d_ff) and two norms (2d)."""
    kv = n_kv * (d // n_head)
    return 2 * vocab * d + d + n_layer * (2 * d * d + 2 * d * kv + 3 * d * d_ff + 2 * d)


@pytest.mark.parametrize("variant, shape, published", [
    ("7b", (32000, 4096, 32, 32, 32, 11008), 6_738_415_616),
    ("13b", (32000, 5120, 40, 40, 40, 13824), 13_015_864_320),
    ("33b", (32000, 6656, 60, 52, 52, 17920), 32_528_943_616),
    ("65b", (32000, 8192, 80, 64, 64, 22016), 65_285_660_672),
    ("llama2-7b", (32000, 4096, 32, 32, 32, 11008), 6_738_415_616),
    ("llama2-13b", (32000, 5120, 40, 40, 40, 13824), 13_015_864_320),
    ("llama2-70b", (32000, 8192, 80, 64, 8, 28672), 68_976_648_192),
    ("mistral-7b", (32000, 4096, 32, 32, 8, 14336), 7_241_732_096),
    ("llama3-8b", (128256, 4096, 32, 32, 8, 14336), 8_030_261_248),
    ("llama3-70b", (128256, 8192, 80, 64, 8, 28672), 70_553_706_496),
    ("llama3.1-405b", (128256, 16384, 126, 128, 8, 53248), 405_853_388_800),
    ("llama3.2-1b", (128256, 2048, 16, 32, 8, 8192), 1_235_814_400),  # tied: V d less
    ("llama3.2-3b", (128256, 3072, 28, 24, 8, 8192), 3_212_749_824),
])
def test_published_parameter_counts(variant, shape, published):
    model = build_variant(NAME, variant, device="meta")
    c = model.config
    assert llama_count(*shape) - (c.vocab_size * c.d_model if c.tie_embeddings else 0) == \
        published
    assert (c.vocab_size, c.d_model, c.n_layer, c.n_head, c.n_kv_head, c.d_ff) == shape
    assert model.num_params() == published


def test_variants_carry_each_models_norm_window_and_context():
    c1, c2, mistral, c3, c31, c32 = (
        build_variant(NAME, v, device="meta").config
        for v in ("7b", "llama2-7b", "mistral-7b", "llama3-8b", "llama3.1-405b", "llama3.2-1b"))
    assert (c1.norm_eps, c1.max_seq_len, c1.window) == (1e-6, 2048, None)
    assert (c2.norm_eps, c2.max_seq_len, c2.window) == (1e-5, 4096, None)
    assert (mistral.norm_eps, mistral.window, mistral.rope_theta) == (1e-5, 4096, 10_000.0)
    assert (c3.rope_theta, c3.max_seq_len, c3.rope_factor, c3.tie_embeddings) == \
        (500_000.0, 8192, None, False)
    assert (c31.max_seq_len, c31.rope_factor, c31.rope_original_len) == (131072, 8.0, 8192)
    assert (c32.rope_factor, c32.tie_embeddings) == (32.0, True)


def test_small_and_tiny_variants():
    small = build_variant(NAME, "small", device="meta")
    assert small.num_params() == llama_count(8192, 512, 6, 8, 8, 1408) == 27_662_848
    tiny = build_variant(NAME, "tiny", device="meta").config
    assert (tiny.n_layer, tiny.d_model, tiny.n_head, tiny.n_kv_head, tiny.vocab_size) == \
        (2, 64, 4, 2, 512)


def test_defaults_are_llama_7b():
    c = LlamaConfig()
    assert (c.vocab_size, c.d_model, c.n_layer, c.n_head, c.n_kv_head, c.d_ff) == \
        (32000, 4096, 32, 32, 32, 11008)
    assert (c.norm_eps, c.rope_theta, c.max_seq_len, c.window) == (1e-6, 10_000.0, 2048, None)
    assert LlamaConfig(n_head=8, d_model=64).n_kv_head == 8


@pytest.mark.parametrize("bad", [dict(n_head=5), dict(n_kv_head=3), dict(window=0),
                                 dict(d_model=36, n_head=12), dict(d_ff=-1)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        LlamaConfig(**{"d_model": 64, "n_head": 4, **bad})


def test_flops_count_gqa_and_cap_attention_at_the_window():
    c = dict(vocab_size=100, d_model=64, n_layer=2, n_head=4, d_ff=176)
    d, L = 64, 2
    mha = Llama(LlamaConfig(**c))
    gqa = Llama(LlamaConfig(**c, n_kv_head=1))
    windowed = Llama(LlamaConfig(**c, n_kv_head=1, window=8))
    weights = lambda kv: L * (2 * d * d + 2 * d * kv + 3 * d * 176) + 100 * d  # noqa: E731
    assert mha.flops_per_token(32) == 2 * weights(64) + 4 * L * d * 33 / 2
    assert gqa.flops_per_token(32) == 2 * weights(16) + 4 * L * d * 33 / 2
    # Within the window nothing is cut; past it, query t sees min(t, 8) keys.
    assert windowed.flops_per_token(8) == gqa.flops_per_token(8)
    keys = sum(min(t, 8) for t in range(1, 33)) / 32
    assert windowed.flops_per_token(32) == pytest.approx(2 * weights(16) + 4 * L * d * keys)
    long = windowed.flops_per_token(100_000) - 2 * weights(16)
    assert long == pytest.approx(4 * L * d * 8, rel=1e-3)  # tends to W keys a query


# ---- the block, written out ------------------------------------------------------------------

def reference_attention(attn, x: torch.Tensor, window: int | None) -> torch.Tensor:
    """Per query head h and query position q: softmax over keys k of kv head h // group with
    q - W < k <= q, in loops, from the projections and RoPE as the paper states them."""
    B, T, C = x.shape
    nh, nkv = attn.n_head, attn.n_kv_head
    hs = C // nh
    pos = torch.arange(T, dtype=torch.float32)
    inv_freq = 10_000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    angle = torch.outer(pos, inv_freq)  # (T, hs/2)

    def rope(t):  # (B, T, heads, hs): pair channel i with i + hs/2
        a, b = t[..., : hs // 2], t[..., hs // 2:]
        cos, sin = angle.cos()[None, :, None], angle.sin()[None, :, None]
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

    q = rope(attn.q_proj(x).view(B, T, nh, hs))
    k = rope(attn.k_proj(x).view(B, T, nkv, hs))
    v = attn.v_proj(x).view(B, T, nkv, hs)
    y = torch.zeros(B, T, nh, hs)
    for h in range(nh):
        g = h // (nh // nkv)
        for t in range(T):
            first = 0 if window is None else max(0, t - window + 1)
            scores = (k[:, first : t + 1, g] @ q[:, t, h, :, None]).squeeze(-1) / math.sqrt(hs)
            y[:, t, h] = (scores.softmax(-1)[..., None] * v[:, first : t + 1, g]).sum(1)
    return attn.o_proj(y.reshape(B, T, C))


@pytest.mark.parametrize("n_kv_head, window, band", [(4, None, 256), (2, None, 256), (1, 3, None),
                                                     (1, 3, 2), (1, 3, 4), (2, 1, 256), (2, 1, 3)])
def test_block_is_pre_norm_with_grouped_windowed_attention_and_swiglu(n_kv_head, window, band):
    """Against attention written out per query; a window over 9 tokens goes in bands of
    `band` queries (None: one masked attention)."""
    torch.manual_seed(0)
    config = LlamaConfig(d_model=32, n_head=4, n_kv_head=n_kv_head, n_layer=1, d_ff=48,
                         window=window)
    block = randomized(Block(config).eval())
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        a = x + reference_attention(block.attn, block.attn_norm(x), window)
        h = block.ffn_norm(a)
        ffn = block.ffn
        expected = a + ffn.down_proj(F.silu(ffn.gate_proj(h)) * ffn.up_proj(h))
        model = Llama(config)  # its mask logic: no padding, no cache
        model.band = band
        seen = model._visibility(None, 9, 0, 0, x.dtype, x.device)
        assert len(seen.bands) == (0 if window is None or band is None else -(-9 // band))
        cos, sin = rope_tables(8, 0, 9, 10_000.0, x.device)
        got = block(x, cos, sin, seen, None)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_whole_model_wiring_and_untied_head():
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", fast=False).eval())
    ids = torch.randint(0, 512, (2, 7))
    with torch.no_grad():
        x = model.tok_emb(ids)  # no position embedding: RoPE acts inside attention
        cos, sin = rope_tables(16, 0, 7, 10_000.0, x.device)
        for block in model.blocks:
            x = block(x, cos, sin, Visibility(is_causal=True), None)
        torch.testing.assert_close(model(ids).logits, model.lm_head(model.norm(x)), atol=1e-5,
                                   rtol=0)
    assert model.lm_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert sorted(k for k in model.state_dict() if not k.startswith("blocks.")) == \
        ["lm_head.weight", "norm.weight", "tok_emb.weight"]


# ---- Hugging Face references and from_pretrained ---------------------------------------------

def hf_model(kind: str, **overrides):
    """A tiny random LlamaForCausalLM (kind "llama") or MistralForCausalLM ("mistral", an
    8-token window), every weight random (norm gains included)."""
    options = dict(SIZES, attn_implementation="eager", **overrides)
    if kind == "mistral":
        options.setdefault("sliding_window", WINDOW)
        config = transformers.MistralConfig(**options)
        cls = transformers.MistralForCausalLM
    else:
        config = transformers.LlamaConfig(**options)
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(1)
    return randomized(cls(config).eval())


def saved(hf, folder, **options):
    hf.save_pretrained(folder, **options)
    return zoo.from_pretrained(NAME, folder)


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_logits_and_loss_match_hugging_face(kind, tmp_path):
    hf = hf_model(kind)
    model = saved(hf, tmp_path)
    assert model.config.window == (WINDOW if kind == "mistral" else None)
    assert (model.config.n_head, model.config.n_kv_head) == (4, 2)
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    ids, _ = padded_batch()
    targets = torch.cat([ids[:, 1:], torch.full((3, 1), -100)], dim=1)  # HF shifts; we don't
    with torch.no_grad():
        ref = hf(ids, labels=ids)
        out = model(ids, targets=targets)
    diff = (out.logits - ref.logits).abs().max().item()
    assert diff <= ATOL, diff
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10_000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}  # a short original context, so that
# the 8 frequencies of a 16-wide head fall on all three sides: kept, blended, divided


def test_llama3_rope_scaling_and_a_tied_head_match_hugging_face(tmp_path):
    """Llama 3.1's scaled RoPE and Llama 3.2's tied head, as transformers computes them, at 40
    tokens (past the original 16), read from its folder and written back to one."""
    hf = hf_model("llama", rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True,
                  max_position_embeddings=64)
    model = saved(hf, tmp_path / "in")
    c = model.config
    assert (c.rope_factor, c.rope_original_len, c.tie_embeddings) == (8.0, 16, True)
    assert model.lm_head.weight is model.tok_emb.weight  # after the fast routes too
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, ref = model(ids).logits, hf(ids).logits
        plain = Llama(dataclasses.replace(c, rope_factor=None))
        plain.load_state_dict(model.state_dict())
        unscaled = plain.eval()(ids).logits
    assert (ours - ref).abs().max().item() <= ATOL
    assert (unscaled - ref).abs().max().item() > 100 * ATOL  # the scaling is what matched
    back = transformers.LlamaForCausalLM.from_pretrained(zoo.save_pretrained(
        NAME, model, tmp_path / "out")).eval()
    assert back.config.tie_word_embeddings
    with torch.no_grad():
        assert (back(ids).logits - ours).abs().max().item() <= ATOL


def test_the_window_changes_the_logits_past_it_and_only_there(tmp_path):
    """The parity above could not tell a window from none unless it mattered: it does, from
    the first query whose window is cut (position W) on."""
    model = saved(hf_model("mistral"), tmp_path)
    full = Llama(dataclasses.replace(model.config, window=None)).eval()
    full.load_state_dict(model.state_dict())
    ids, _ = padded_batch()
    with torch.no_grad():
        windowed, unwindowed = model(ids).logits, full(ids).logits
    torch.testing.assert_close(windowed[:, :WINDOW], unwindowed[:, :WINDOW], atol=1e-5, rtol=0)
    assert (windowed[:, WINDOW:] - unwindowed[:, WINDOW:]).abs().amax(-1).min() > 1e-3


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_padded_batch_matches_hugging_face(kind, tmp_path):
    hf = hf_model(kind)
    model = saved(hf, tmp_path)
    ids, mask = padded_batch()
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        ours = model(ids, attention_mask=mask).logits
    assert torch.isfinite(ours).all()
    diff = (ours - ref)[mask.bool()].abs().max().item()
    assert diff <= ATOL, diff


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_sharded_folder_loads(kind, tmp_path):
    hf = hf_model(kind)
    model = saved(hf, tmp_path, max_shard_size="40KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) >= 3 and not (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "model.safetensors.index.json").exists()
    ids, _ = padded_batch()
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= ATOL


def test_rope_base_and_a_window_of_none_are_read(tmp_path):
    """Mistral v0.2 and later: no window, RoPE base 1e6 (in rope_parameters in transformers 5);
    older config files keep the base at the top level as rope_theta."""
    hf = hf_model("mistral", sliding_window=None,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    model = saved(hf, tmp_path)
    assert model.config.window is None and model.config.rope_theta == 1e6
    ids, _ = padded_batch()
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= ATOL
    config = json.loads((tmp_path / "config.json").read_text())
    del config["rope_parameters"]
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_theta": 5e5}))
    assert zoo.from_pretrained(NAME, tmp_path).config.rope_theta == 5e5


def test_from_pretrained_applies_the_fast_routes_and_plain_stays_the_oracle(tmp_path):
    hf = hf_model("mistral")
    hf.save_pretrained(tmp_path)
    fast, plain = zoo.from_pretrained(NAME, tmp_path), zoo.from_pretrained(NAME, tmp_path,
                                                                          fast=False)
    linears = [m for m in fast.modules() if isinstance(m, torch.nn.Linear)]
    assert zoo.fast.applied(fast) == ("linear", "ffn", "loss") and zoo.fast.applied(plain) == ()
    assert len(linears) == 2 * 7 + 1 and all(type(m) is zoo.fast.FastLinear for m in linears)
    ids, _ = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(fast(ids).logits, plain(ids).logits, atol=2e-5, rtol=1e-5)
        one = ids[:, :1]  # a decoding step takes the split matrix-vector route
        torch.testing.assert_close(fast(one).logits, plain(one).logits, atol=2e-5, rtol=1e-5)


# ---- the window in bands ----------------------------------------------------------------------

@pytest.mark.parametrize("band", [1, 3, 5, 8, 30])
def test_bands_equal_the_whole_masked_attention(band, tmp_path):
    """The banded window (each band of queries over the keys its window reaches) against one
    masked attention over every key, band = None, the oracle: unpadded and padded, in cached
    chunks (keys from the cache in the first bands), and in gradients."""
    model = saved(hf_model("mistral"), tmp_path)  # window 8 over 21 tokens
    assert_bands_equal_the_whole_masked_attention(model, band, layer=0)


def test_a_band_holds_only_the_keys_its_window_reaches():
    model = Llama(LlamaConfig(vocab_size=8, d_model=8, n_head=1, n_layer=1, d_ff=0, window=4))
    model.band = 3
    seen = model._visibility(None, 8, 0, 0, torch.float32, torch.device("cpu"))
    assert [(rows.start, rows.stop, keys.start, keys.stop) for rows, keys, _ in seen.bands] == [
        (0, 3, 0, 3), (3, 6, 0, 6), (6, 8, 3, 8)]
    assert seen.bands[2][2].tolist() == [[True, True, True, True, False],  # position 6 sees 3-6
                                         [False, True, True, True, True]]  # position 7 sees 4-7
    # Continuing 5 cached positions (the window cache keeps 3): keys are positions 2..9.
    seen = model._visibility(None, 3, 5, 3, torch.float32, torch.device("cpu"))
    assert [(keys.start, keys.stop) for _, keys, _ in seen.bands] == [(0, 6)]
    assert seen.bands[0][2].tolist() == [[True, True, True, True, False, False],
                                         [False, True, True, True, True, False],
                                         [False, False, True, True, True, True]]


# ---- cached decoding ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["llama", "mistral"])
@pytest.mark.parametrize("sizes", [[5] + [1] * 16, [3, 1, 10, 1, 2, 4], [12, 9]])
def test_cached_decoding_equals_the_full_forward_past_the_window(kind, sizes, tmp_path):
    """Chunks of one token and of more than the window, on top of the cache, with a left- and
    a right-padded row: the Hugging Face full forward at every real position."""
    hf = hf_model(kind)
    model = saved(hf, tmp_path)
    ids, mask = padded_batch()
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        plain = step_by_step(model, ids, sizes)[0]
        padded, cache = step_by_step(model, ids, sizes, mask)
        unpadded_ref = hf(ids).logits
    assert (plain - unpadded_ref).abs().max() <= ATOL
    assert (padded - ref)[mask.bool()].abs().max() <= ATOL
    # The cache holds the 2 key/value heads (not the 4 query heads), and with the window only
    # the last W - 1 = 7 positions.
    kept = WINDOW - 1 if kind == "mistral" else LENGTH
    for layer in cache:
        keys = layer.keys if kind == "mistral" else layer.get()[0]
        assert keys.shape == (3, 2, kept, 16) and layer.length == LENGTH


def test_cached_steps_match_hugging_faces_own_cache(tmp_path):
    hf = hf_model("mistral")
    assert_cached_steps_match_hugging_faces_own_cache(hf, saved(hf, tmp_path))


def test_window_cache_stops_growing_at_the_window():
    torch.manual_seed(0)
    model = build_variant(NAME, "tiny", window=6).eval()
    prompt = torch.randint(0, 512, (2, 3))
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        kept = []
        for _ in range(12):
            out = model(out.logits[:, -1:].argmax(-1), cache=out.cache)
            kept.append(out.cache[0].keys.size(2))
    assert kept == [4, 5] + [5] * 10  # 3 + 1 = 4 positions, then W - 1 = 5 from then on
    assert out.cache[0].length == 15 and out.cache[0].keys.shape == (2, 2, 5, 16)
    # A long prompt is cut at once: the cache never holds more than W - 1 positions.
    with torch.no_grad():
        assert model(torch.randint(0, 512, (1, 40)), use_cache=True).cache[1].keys.size(2) == 5


def test_window_cache_append_keeps_the_last_w_minus_one():
    cache = WindowKVCache(window=4)
    k = torch.arange(10.0).view(1, 1, 10, 1)
    seen, _ = cache.append(k[:, :, :6], k[:, :, :6])
    assert seen.flatten().tolist() == list(range(6)) and cache.keys.flatten().tolist() == [3, 4, 5]
    seen, _ = cache.append(k[:, :, 6:7], k[:, :, 6:7])
    assert seen.flatten().tolist() == [3, 4, 5, 6] and cache.keys.flatten().tolist() == [4, 5, 6]
    assert cache.length == 7
    alone = WindowKVCache(window=1)  # a query sees only itself: nothing is kept
    alone.append(k[:, :, :3], k[:, :, :3])
    assert alone.keys.size(2) == 0 and alone.length == 3


@pytest.mark.parametrize("window", [None, 1, 4])
def test_generate_matches_the_full_forward(window):
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", window=window).eval())
    assert isinstance(model.new_cache()[0], KVCache if window is None else WindowKVCache)
    prompt = torch.randint(0, 512, (2, 5))
    greedy = model.generate(prompt, max_new_tokens=12)  # 17 tokens: well past the window
    assert greedy.shape == (2, 17)
    with torch.no_grad():
        assert torch.equal(model(greedy[:, :-1]).logits[:, 4:].argmax(-1), greedy[:, 5:])


def test_mask_length_is_checked():
    model = build_variant(NAME, "tiny").eval()
    cache = model(torch.zeros(1, 6, dtype=torch.long), use_cache=True).cache
    with pytest.raises(ValueError, match="expected 8"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache,
              attention_mask=torch.ones(1, 2, dtype=torch.long))


# ---- checkpoint errors ------------------------------------------------------------------------

@pytest.fixture
def mistral_folder(tmp_path):
    hf = hf_model("mistral")
    hf.save_pretrained(tmp_path)
    return tmp_path, {k: v.clone() for k, v in hf.state_dict().items()}


def write_state(folder, state):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))


def error_of(folder) -> str:
    with pytest.raises(CheckpointError) as info:
        zoo.from_pretrained(NAME, folder)
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


def test_missing_weight_is_named(mistral_folder):
    folder, state = mistral_folder
    del state["model.layers.1.mlp.up_proj.weight"]
    write_state(folder, state)
    assert "'model.layers.1.mlp.up_proj.weight'" in error_of(folder)


def test_misshaped_and_unexpected_weights_are_named(mistral_folder):
    folder, state = mistral_folder
    write_state(folder, {**state, "model.layers.0.self_attn.k_proj.weight": torch.zeros(64, 64)})
    assert "blocks.0.attn.k_proj.weight" in (message := error_of(folder))
    assert "(64, 64)" in message and "(32, 64)" in message
    write_state(folder, {**state, "model.layers.0.self_attn.q_proj.bias": torch.zeros(64)})
    assert "unexpected weight 'model.layers.0.self_attn.q_proj.bias'" in error_of(folder)


@pytest.mark.parametrize("field, value", [
    ("model_type", "gpt2"), ("rope_parameters", {"rope_type": "linear", "factor": 2.0}),
    ("attention_bias", True), ("hidden_act", "gelu"), ("head_dim", 32),
])
def test_configs_zoo_llama_cannot_run_are_refused_naming_the_field(mistral_folder, field, value):
    folder, _ = mistral_folder
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, field: value}))
    message = error_of(folder)
    assert (field if field != "rope_parameters" else "rope_type 'linear'") in message


def test_a_folder_of_another_model_is_one_line(tmp_path):
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2))
    gpt2.save_pretrained(tmp_path)
    assert ("config.json: model_type 'gpt2' is not a llama checkpoint (expected one of "
            "'llama', 'mistral')") in error_of(tmp_path)


def test_sharded_folder_errors_name_the_shard_and_the_weight(tmp_path):
    hf_model("llama").save_pretrained(tmp_path, max_shard_size="40KB")
    index = tmp_path / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    shard = weight_map["model.norm.weight"]
    moved = tmp_path / "elsewhere.safetensors"
    (tmp_path / shard).rename(moved)
    assert f"shard '{shard}' is not in the folder" in error_of(tmp_path)
    moved.rename(tmp_path / shard)
    index.write_text(json.dumps({"weight_map": {**weight_map, "model.extra.weight": shard}}))
    assert f"weight 'model.extra.weight' is not in its shard '{shard}'" in error_of(tmp_path)
    index.write_text("[1, 2]")
    assert "not a JSON object" in error_of(tmp_path)
