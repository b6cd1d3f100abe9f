"""BLOOM (zoo/bloom.py): the published parameter counts on the meta device, ALiBi and the block
written out, fp32 parity with Hugging Face's BloomForCausalLM built from tiny random configs and
read back with zoo.from_pretrained, padded batches (where the two count ALiBi's positions
differently), cached decoding, the export back, and the checkpoint errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import lazy_import, randomized
from decoder_parity import (
    ATOL,
    CHUNKS,
    LENGTH,
    assert_cached_decoding_equals_the_full_forward,
    assert_cached_steps_match_hugging_faces_own_cache,
    assert_fast_routes_match_the_plain_path,
    assert_greedy_tokens_match,
    assert_logits_and_loss_match,
    assert_missing_and_misshaped_weights_are_named,
    assert_padded_batch_matches,
    assert_transformers_reads_the_export,
    checkpoint_error,
    padded_batch,
)

import zoo
import zoo.fast
from harness.models import build_variant
from zoo.bloom import AlibiBias, Bloom, BloomConfig, alibi_mask
from zoo.convert import CheckpointError
from zoo.layers import alibi_slopes, math_attention

transformers = lazy_import("transformers")  # tests that use it skip without it

NAME = "bloom"
# The Hugging Face side: 6 heads, so that ALiBi's slopes take the rule for a head count that is
# not a power of two (4 of 2^(-2k), then 2 of 2^(-(2k-1))).
SIZES = dict(vocab_size=300, hidden_size=48, n_layer=2, n_head=6)


# ---- published sizes -------------------------------------------------------------------------

def bloom_count(vocab: int, d: int, n_layer: int) -> int:
    """The tied embedding Vd, the embedding's and the final LayerNorm 4d; per layer the
    query-key-value matrix and attention's output (4d^2 + 4d), the feed-forward at 4d
    (8d^2 + 5d), two LayerNorms (4d)."""
    return vocab * d + 4 * d + n_layer * (12 * d * d + 13 * d)


@pytest.mark.parametrize("variant, shape, published", [  # the model cards' counts
    ("bloom-560m", (250880, 1024, 24, 16), 559_214_592),
    ("bloom-1b1", (250880, 1536, 24, 16), 1_065_314_304),
    ("bloom-1b7", (250880, 2048, 24, 16), 1_722_408_960),
    ("bloom-3b", (250880, 2560, 30, 32), 3_002_557_440),
    ("bloom-7b1", (250880, 4096, 30, 32), 7_069_016_064),
    ("bloom-176b", (250880, 14336, 70, 112), 176_247_271_424),
])
def test_published_parameter_counts(variant, shape, published):
    model = build_variant(NAME, variant, device="meta")
    c = model.config
    assert (c.vocab_size, c.d_model, c.n_layer, c.n_head) == shape
    assert bloom_count(*shape[:3]) == model.num_params() == published
    assert c.d_ff == 4 * c.d_model


def test_defaults_small_and_tiny():
    c = BloomConfig()
    assert (c.vocab_size, c.d_model, c.n_layer, c.n_head, c.d_ff) == \
        (250880, 14336, 70, 112, 57344)
    assert (c.layer_norm_eps, c.dropout, c.attn_dropout, c.max_seq_len) == (1e-5, 0, 0, 2048)
    small = build_variant(NAME, "small", device="meta")
    assert small.num_params() == bloom_count(8192, 528, 7) == 27_793_392
    tiny = build_variant(NAME, "tiny", device="meta").config
    assert (tiny.n_layer, tiny.d_model, tiny.n_head, tiny.vocab_size) == (2, 64, 4, 512)
    with pytest.raises(ValueError, match="not divisible by n_head"):
        BloomConfig(d_model=64, n_head=5)


def test_flops_per_token():
    model = Bloom(BloomConfig(vocab_size=100, d_model=64, n_layer=2, n_head=4))
    weights = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 100 * 64
    assert model.flops_per_token(32) == 2 * weights + 4 * 2 * 64 * 33 / 2


# ---- ALiBi and the block, written out --------------------------------------------------------

def test_alibi_mask_is_minus_slope_times_distance_and_causal():
    slopes = torch.tensor(alibi_slopes(6))
    assert slopes.tolist() == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    mask = alibi_mask(slopes, 3, 4, None, torch.float32)  # queries 3..6 over keys 0..6
    assert mask.shape == (1, 6, 4, 7)
    for h in range(6):
        for r, i in enumerate(range(3, 7)):
            for j in range(7):
                want = -slopes[h] * (i - j) if j <= i else float("-inf")
                assert mask[0, h, r, j].item() == pytest.approx(want)
    padded = alibi_mask(slopes, 0, 4, torch.tensor([[0, 1, 1, 1]]), torch.float32)
    assert padded.shape == (1, 6, 4, 4) and (padded[0, :, 1:, 0] < -1e30).all()
    assert padded[0, 2, 3, 2].item() == pytest.approx(-slopes[2].item())


def test_block_is_gpt2s_pre_ln_block_with_alibi_attention():
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", fast=False).eval())
    block = model.blocks[0]
    x = torch.randn(2, 7, 64)
    bias = AlibiBias(torch.tensor(alibi_slopes(4)), 0, 7, None, torch.float32)
    mask = bias.mask
    assert mask is bias.mask  # built once, for every layer
    torch.testing.assert_close(mask, alibi_mask(bias.slopes, 0, 7, None, torch.float32))
    with torch.no_grad():
        attn = block.self_attention
        h = block.input_layernorm(x)
        w = attn.query_key_value.weight.view(4, 3, 16, 64)  # head by head: q, k, v
        b = attn.query_key_value.bias.view(4, 3, 16)
        q, k, v = (torch.einsum("btc,hsc->bhts", h, w[:, i]) + b[:, i, None, :]
                   for i in range(3))
        a = x + attn.dense(math_attention(q, k, v, mask).transpose(1, 2).reshape(2, 7, 64))
        ffn = block.mlp.fc_out(F.gelu(block.mlp.fc_in(block.post_attention_layernorm(a)),
                                      approximate="tanh"))
        torch.testing.assert_close(block(x, bias, None), a + ffn, atol=1e-5, rtol=0)
        ids = torch.randint(0, 512, (2, 7))
        y = model.embed_norm(model.word_embeddings(ids))  # the embedding's own LayerNorm
        for blk in model.blocks:
            y = blk(y, bias, None)
        head = model.ln_f(y) @ model.word_embeddings.weight.T  # the tied head
        torch.testing.assert_close(model(ids).logits, head, atol=1e-5, rtol=0)
    assert model.lm_head.weight is model.word_embeddings.weight


# ---- Hugging Face references and from_pretrained ---------------------------------------------

def hf_model(**overrides):
    """A tiny random BloomForCausalLM, every weight random (LayerNorms and biases included)."""
    config = transformers.BloomConfig(**{**SIZES, "attn_implementation": "eager", **overrides})
    torch.manual_seed(1)
    return randomized(transformers.BloomForCausalLM(config).eval())


def saved(hf, folder, **options):
    hf.save_pretrained(folder, **options)
    return zoo.from_pretrained(NAME, folder)


def test_logits_and_loss_match_hugging_face(tmp_path):
    hf = hf_model()
    model = saved(hf, tmp_path)
    assert (model.config.n_head, model.config.d_model, model.config.d_ff) == (6, 48, 192)
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    ref = assert_logits_and_loss_match(hf, model)
    ids, _ = padded_batch()
    # ALiBi and the embedding's LayerNorm are what matched: without either, far off
    with torch.no_grad():
        for change in ("no alibi", "no embedding norm"):
            other = Bloom(model.config).eval()
            other.load_state_dict(model.state_dict())
            if change == "no embedding norm":
                other.embed_norm = torch.nn.Identity()
                assert (other(ids).logits - ref).abs().max() > 100 * ATOL, change
            else:
                flat = AlibiBias(torch.zeros(6), 0, LENGTH, None, torch.float32)
                h = other.embed_norm(other.word_embeddings(ids))
                for block in other.blocks:
                    h = block(h, flat, None)
                assert (other.logits(other.ln_f(h)) - ref).abs().max() > 100 * ATOL


def test_padded_batch_matches_hugging_face(tmp_path):
    """transformers counts ALiBi's positions over real tokens only, the zoo from the start of
    the row: the real tokens' logits agree all the same (a row-constant bias)."""
    hf = hf_model()
    assert_padded_batch_matches(hf, saved(hf, tmp_path))


def test_sharded_folder_base_model_and_a_stored_head_load(tmp_path):
    hf = hf_model()
    model = saved(hf, tmp_path / "sharded", max_shard_size="40KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) >= 3
    ids, _ = padded_batch()
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= ATOL
    hf.transformer.save_pretrained(tmp_path / "base")  # BloomModel: no prefix
    base, info = zoo.from_pretrained(NAME, tmp_path / "base", output_loading_info=True)
    assert not info.missing and not info.unused  # the tied head is the embedding
    with torch.no_grad():
        hidden = hf.transformer(ids).last_hidden_state
        assert (base.hidden_states(ids) - hidden).abs().max() <= ATOL


def test_from_pretrained_applies_the_fast_routes_and_plain_stays_the_oracle(tmp_path):
    hf_model().save_pretrained(tmp_path)
    assert_fast_routes_match_the_plain_path(NAME, tmp_path,
                                           ("linear", "ffn", "alibi", "dropout", "loss"))


# ---- cached decoding -------------------------------------------------------------------------

@pytest.mark.parametrize("sizes", CHUNKS)
def test_cached_decoding_equals_the_full_forward(sizes, tmp_path):
    hf = hf_model()
    assert_cached_decoding_equals_the_full_forward(hf, saved(hf, tmp_path), sizes)


def test_cached_steps_match_hugging_faces_own_cache(tmp_path):
    hf = hf_model()
    assert_cached_steps_match_hugging_faces_own_cache(hf, saved(hf, tmp_path))


def test_generate_matches_hugging_faces_greedy_tokens(tmp_path):
    hf = hf_model()
    assert_greedy_tokens_match(hf, saved(hf, tmp_path))


def test_long_inputs_run_past_the_trained_context():
    """ALiBi has no table: 40 tokens through a model whose trained context is 16."""
    model = build_variant(NAME, "tiny", max_seq_len=16).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 512, (1, 40))).logits).all()


# ---- the export and the checkpoint errors ----------------------------------------------------

def test_save_pretrained_gives_transformers_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", n_head=8, d_model=48).eval())  # 8 heads
    assert_transformers_reads_the_export(NAME, model, tmp_path / "out",
                                         transformers.BloomForCausalLM)


def test_a_feed_forward_not_4d_wide_is_not_exported(tmp_path):
    model = build_variant(NAME, "tiny", d_ff=0)
    with pytest.raises(CheckpointError, match="d_ff 0"):
        zoo.save_pretrained(NAME, model, tmp_path / "out")


@pytest.fixture
def folder(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    return tmp_path, {k: v.clone() for k, v in hf.state_dict().items()}


def error_of(folder) -> str:
    return checkpoint_error(NAME, folder)


def test_missing_misshaped_and_untied_weights_are_named(folder):
    path, state = folder
    assert_missing_and_misshaped_weights_are_named(
        NAME, path, state, "transformer.h.1.mlp.dense_4h_to_h.bias", "blocks.1.mlp.fc_out.bias",
        48, tied_to="transformer.word_embeddings.weight")


@pytest.mark.parametrize("field, value", [
    ("apply_residual_connection_post_layernorm", True), ("tie_word_embeddings", False),
    ("slow_but_exact", True), ("model_type", "gpt2"),
])
def test_configs_zoo_bloom_cannot_run_are_refused_naming_the_field(folder, field, value):
    path, _ = folder
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, field: value}))
    assert field in error_of(path)


def test_the_model_is_detected_from_its_folder(folder):
    path, _ = folder
    assert zoo.convert.detect_model(path) == NAME
