"""GPT-NeoX and Pythia (zoo/gpt_neox.py): the published parameter counts on the meta device, the
block's formulas written out (parallel and sequential, partial RoPE), the paper's
initialisation, fp32 parity with Hugging Face's GPTNeoXForCausalLM built from tiny random configs
and read back with zoo.from_pretrained (the folders it saves and the released folders' older
names), padded batches, cached decoding, the export back, and the checkpoint errors."""

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
    CHUNKS,
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
from zoo.convert import CheckpointError
from zoo.gpt_neox import GPTNeoX, GPTNeoXConfig
from zoo.layers import math_attention, partial_rope, rope_tables

transformers = lazy_import("transformers")  # tests that use it skip without it

NAME = "gpt-neox"
# The Hugging Face side: heads of 16 channels, 4 of them rotary at Pythia's 0.25.
SIZES = dict(vocab_size=300, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)


# ---- published sizes -------------------------------------------------------------------------

def neox_count(vocab: int, d: int, n_layer: int) -> int:
    """Embedding and untied head 2Vd, final LayerNorm 2d; per layer the query-key-value matrix
    and attention's output (4d^2 + 4d), the feed-forward at 4d (8d^2 + 5d), two LayerNorms
    (4d)."""
    return 2 * vocab * d + 2 * d + n_layer * (12 * d * d + 13 * d)


@pytest.mark.parametrize("variant, shape, published", [  # Pythia's README, the 20B paper
    ("pythia-70m", (50304, 512, 6, 8), 70_426_624),
    ("pythia-160m", (50304, 768, 12, 12), 162_322_944),
    ("pythia-410m", (50304, 1024, 24, 16), 405_334_016),
    ("pythia-1b", (50304, 2048, 16, 8), 1_011_781_632),
    ("pythia-1.4b", (50304, 2048, 24, 16), 1_414_647_808),
    ("pythia-2.8b", (50304, 2560, 32, 32), 2_775_208_960),
    ("pythia-6.9b", (50432, 4096, 32, 32), 6_857_302_016),
    ("pythia-12b", (50688, 5120, 36, 40), 11_846_072_320),
    ("gpt-neox-20b", (50432, 6144, 44, 64), 20_554_567_680),
])
def test_published_parameter_counts(variant, shape, published):
    model = build_variant(NAME, variant, device="meta")
    c = model.config
    assert (c.vocab_size, c.d_model, c.n_layer, c.n_head) == shape
    assert neox_count(*shape[:3]) == model.num_params() == published
    assert (c.rotary_pct, c.parallel_residual, c.max_seq_len, c.d_ff) == \
        (0.25, True, 2048, 4 * c.d_model)


def test_defaults_small_and_tiny():
    c = GPTNeoXConfig()
    assert (c.vocab_size, c.d_model, c.n_layer, c.n_head, c.d_ff, c.rotary_dims) == \
        (50432, 6144, 44, 64, 24576, 24)
    assert (c.rope_theta, c.layer_norm_eps, c.dropout, c.attn_dropout) == (1e4, 1e-5, 0, 0)
    small = build_variant(NAME, "small", device="meta")
    assert small.num_params() == neox_count(8192, 512, 6) == 27_303_936
    assert small.config.rotary_dims == 16
    tiny = build_variant(NAME, "tiny", device="meta").config
    assert (tiny.n_layer, tiny.d_model, tiny.n_head, tiny.vocab_size) == (2, 64, 4, 512)


@pytest.mark.parametrize("bad, says", [
    (dict(n_head=5), "not divisible by n_head"),
    (dict(rotary_pct=0.0), r"rotary_pct is a share of a head's channels in \(0, 1\]"),
    (dict(rotary_pct=1.5), "not 1.5"),
    (dict(rotary_pct=0.2), "odd 3 channels"),  # 20% of 16
    (dict(d_ff=-1), "d_ff"),
])
def test_config_rejects_bad_values(bad, says):
    with pytest.raises(ValueError, match=says):
        GPTNeoXConfig(**{"d_model": 64, "n_head": 4, **bad})


def test_flops_per_token():
    model = GPTNeoX(GPTNeoXConfig(vocab_size=100, d_model=64, n_layer=2, n_head=4))
    weights = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 100 * 64
    assert model.flops_per_token(32) == 2 * weights + 4 * 2 * 64 * 33 / 2


# ---- the block, written out ------------------------------------------------------------------

def test_partial_rope_turns_only_the_first_channels():
    x = torch.randn(2, 3, 5, 16)
    cos, sin = rope_tables(4, 0, 5, 10_000.0, x.device)  # frequencies over the 4 rotary channels
    y = partial_rope(x, cos, sin)
    torch.testing.assert_close(y[..., 4:], x[..., 4:], rtol=0, atol=0)
    x1, x2 = x[..., :2], x[..., 2:4]  # channel i pairs with i + r/2
    angle = torch.arange(5.0)[:, None] * 10_000.0 ** -(torch.arange(0, 4, 2) / 4)  # (T, 2)
    expected = torch.cat((x1 * angle.cos() - x2 * angle.sin(),
                          x2 * angle.cos() + x1 * angle.sin()), dim=-1)
    torch.testing.assert_close(y[..., :4], expected, atol=1e-6, rtol=0)


def attention_written_out(attn, x, r):
    """Attention from the fused matrix, each head's q, k, v rows together, RoPE on r channels."""
    B, T, C = x.shape
    nh = attn.n_head
    hs = C // nh
    w = attn.query_key_value.weight.view(nh, 3, hs, C)  # head by head: q, k, v
    b = attn.query_key_value.bias.view(nh, 3, hs)
    q, k, v = (torch.einsum("btc,hsc->bhts", x, w[:, i]) + b[:, i, None, :] for i in range(3))
    cos, sin = rope_tables(r, 0, T, 10_000.0, x.device)
    q, k = partial_rope(q, cos, sin), partial_rope(k, cos, sin)
    y = math_attention(q, k, v, is_causal=True)
    return attn.dense(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("parallel", [True, False])
def test_block_is_the_papers_formula(parallel):
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", fast=False,
                                     parallel_residual=parallel).eval())
    block = model.blocks[0]
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        cos, sin = rope_tables(4, 0, 7, 10_000.0, x.device)
        out = block(x, cos, sin, None, None)
        ffn = lambda h: block.mlp.fc_out(F.gelu(block.mlp.fc_in(h)))  # noqa: E731
        a = attention_written_out(block.attention, block.input_layernorm(x), 4)
        if parallel:
            expected = x + a + ffn(block.post_attention_layernorm(x))
        else:
            expected = x + a + ffn(block.post_attention_layernorm(x + a))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_whole_model_wiring_and_untied_head():
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", fast=False).eval())
    ids = torch.randint(0, 512, (2, 7))
    with torch.no_grad():
        x = model.embed_in(ids)  # no position embedding: RoPE acts inside attention
        cos, sin = rope_tables(4, 0, 7, 10_000.0, x.device)
        for block in model.blocks:
            x = block(x, cos, sin, None, None)
        torch.testing.assert_close(model(ids).logits,
                                   model.lm_head(model.final_layer_norm(x)), atol=1e-5, rtol=0)
    assert model.lm_head.weight.data_ptr() != model.embed_in.weight.data_ptr()
    assert model.lm_head.bias is None
    assert all(m.bias is not None for m in model.blocks.modules()
               if isinstance(m, torch.nn.Linear))


def test_initialisation_is_small_init_and_wangs():
    torch.manual_seed(0)
    model = GPTNeoX(GPTNeoXConfig(vocab_size=2048, d_model=256, n_head=4, n_layer=4))
    small, wang = math.sqrt(2 / (5 * 256)), 2 / 4 / math.sqrt(256)
    for block in model.blocks:
        for weight, std in [(block.attention.query_key_value.weight, small),
                            (block.mlp.fc_in.weight, small),
                            (block.attention.dense.weight, wang),
                            (block.mlp.fc_out.weight, wang)]:
            assert weight.std().item() == pytest.approx(std, rel=0.03)
        assert not block.attention.query_key_value.bias.any()
        assert torch.equal(block.input_layernorm.weight, torch.ones(256))
    for weight in (model.embed_in.weight, model.lm_head.weight):
        assert weight.std().item() == pytest.approx(small, rel=0.03)


# ---- Hugging Face references and from_pretrained ---------------------------------------------

def hf_model(**overrides):
    """A tiny random GPTNeoXForCausalLM, every weight random (LayerNorms and biases included)."""
    config = transformers.GPTNeoXConfig(**{**SIZES, "attn_implementation": "eager", **overrides})
    torch.manual_seed(1)
    return randomized(transformers.GPTNeoXForCausalLM(config).eval())


def saved(hf, folder, **options):
    hf.save_pretrained(folder, **options)
    return zoo.from_pretrained(NAME, folder)


KINDS = {  # Pythia's own settings, GPT-2's sequential block, every channel rotary, and none
    "pythia": ({}, 4),
    "sequential": ({"use_parallel_residual": False}, 4),
    "full-rotary": ({"rope_parameters": {"rope_type": "default", "rope_theta": 500.0,
                                         "partial_rotary_factor": 1.0}}, 16),
    "no-rotary": ({"rope_parameters": {"rope_type": "default", "rope_theta": 500.0,
                                       "partial_rotary_factor": 0.05}}, 0),  # int(0.8)
}


@pytest.mark.parametrize("kind", KINDS)
def test_logits_and_loss_match_hugging_face(kind, tmp_path):
    options, rotary_dims = KINDS[kind]
    hf = hf_model(**options)
    model = saved(hf, tmp_path)
    c = model.config
    assert c.parallel_residual == (kind != "sequential")
    assert c.rotary_dims == rotary_dims
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    assert_logits_and_loss_match(hf, model)


def test_the_wiring_and_the_rotary_share_are_what_matched(tmp_path):
    """The parity above could not tell the two wirings, or the rotary shares, apart unless
    they mattered: each changed alone moves the logits far past the tolerance."""
    hf = hf_model()
    model = saved(hf, tmp_path)
    ids, _ = padded_batch()
    with torch.no_grad():
        ref = hf(ids).logits
        for change in (dict(parallel_residual=False), dict(rotary_pct=0.5)):
            other = GPTNeoX(dataclasses.replace(model.config, **change)).eval()
            other.load_state_dict(model.state_dict())
            assert (other(ids).logits - ref).abs().max() > 100 * ATOL, change


def test_padded_batch_matches_hugging_face(tmp_path):
    hf = hf_model()
    assert_padded_batch_matches(hf, saved(hf, tmp_path))


def released_folder(hf, folder):
    """The folder as EleutherAI released Pythia: the head as `embed_out.weight`, the buffers of
    transformers 4 (causal mask, masked_bias, RoPE's inv_freq) stored, and RoPE's settings as
    `rotary_pct` and `rotary_emb_base` at the top of config.json."""
    from safetensors.torch import save_file

    hf.save_pretrained(folder)
    state = {k.replace("lm_head.", "embed_out."): v for k, v in hf.state_dict().items()}
    for i in range(SIZES["num_hidden_layers"]):
        layer = f"gpt_neox.layers.{i}.attention."
        state |= {layer + "bias": torch.ones(1, 1, 64, 64, dtype=torch.bool).tril(),
                  layer + "masked_bias": torch.tensor(-1e9),
                  layer + "rotary_emb.inv_freq": torch.ones(2)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config |= {"rotary_pct": rope["partial_rotary_factor"], "rotary_emb_base": rope["rope_theta"]}
    (folder / "config.json").write_text(json.dumps(config))


def test_the_released_folders_names_load(tmp_path):
    hf = hf_model(rope_parameters={"rope_type": "default", "rope_theta": 2000.0,
                                   "partial_rotary_factor": 0.5})
    released_folder(hf, tmp_path)
    assert "rotary_pct" in json.loads((tmp_path / "config.json").read_text())
    model, info = zoo.from_pretrained(NAME, tmp_path, output_loading_info=True)
    assert (model.config.rotary_pct, model.config.rope_theta) == (0.5, 2000.0)
    assert not info.unused and not info.missing
    ids, _ = padded_batch()
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= ATOL
    reread = transformers.GPTNeoXForCausalLM.from_pretrained(tmp_path).eval()  # as HF reads it
    with torch.no_grad():
        assert (reread(ids).logits - hf(ids).logits).abs().max() <= ATOL


def test_sharded_folder_and_base_model_load(tmp_path):
    hf = hf_model()
    model = saved(hf, tmp_path / "sharded", max_shard_size="40KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) >= 3
    ids, _ = padded_batch()
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= ATOL
    hf.gpt_neox.save_pretrained(tmp_path / "base")  # GPTNeoXModel: no head, no prefix
    base, info = zoo.from_pretrained(NAME, tmp_path / "base", output_loading_info=True)
    assert info.missing == ("lm_head.weight",) and not info.unused
    with torch.no_grad():
        hidden = hf.gpt_neox(ids).last_hidden_state
        assert (base.hidden_states(ids) - hidden).abs().max() <= ATOL


def test_from_pretrained_applies_the_fast_routes_and_plain_stays_the_oracle(tmp_path):
    hf_model().save_pretrained(tmp_path)
    assert_fast_routes_match_the_plain_path(NAME, tmp_path, ("linear", "ffn", "dropout", "loss"))


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


def test_mask_length_is_checked():
    model = build_variant(NAME, "tiny").eval()
    cache = model(torch.zeros(1, 6, dtype=torch.long), use_cache=True).cache
    with pytest.raises(ValueError, match="expected 8"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache,
              attention_mask=torch.ones(1, 2, dtype=torch.long))


# ---- the export and the checkpoint errors ----------------------------------------------------

@pytest.mark.parametrize("parallel", [True, False])
def test_save_pretrained_gives_transformers_the_same_model(parallel, tmp_path):
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", parallel_residual=parallel,
                                     rotary_pct=0.5, rope_theta=300.0).eval())
    hf = assert_transformers_reads_the_export(NAME, model, tmp_path / "out",
                                              transformers.GPTNeoXForCausalLM)
    assert hf.config.use_parallel_residual == parallel


def test_a_model_without_a_feed_forward_is_not_exported(tmp_path):
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


def test_missing_and_misshaped_weights_are_named(folder):
    path, state = folder
    assert_missing_and_misshaped_weights_are_named(
        NAME, path, state, "gpt_neox.layers.1.mlp.dense_4h_to_h.bias", "blocks.1.mlp.fc_out.bias",
        64)


@pytest.mark.parametrize("field, value, says", [
    ("hidden_act", "gelu_new", "hidden_act = 'gelu_new'"),
    ("attention_bias", False, "attention_bias = False"),
    ("tie_word_embeddings", True, "tie_word_embeddings = True"),
    ("rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
     "rope_type = 'linear'"),
])
def test_configs_zoo_gpt_neox_cannot_run_are_refused_naming_the_field(folder, field, value,
                                                                       says):
    path, _ = folder
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, field: value}))
    assert says in error_of(path)


def test_the_model_is_detected_from_its_folder(folder):
    path, _ = folder
    assert zoo.convert.detect_model(path) == NAME
