"""GPT-J (zoo/gptj.py): the published size on the meta device, interleaved RoPE and the block's
formula written out, Mesh Transformer JAX's initialisation, fp32 parity with Hugging Face's
GPTJForCausalLM built from tiny random configs and read back with zoo.from_pretrained (the
folders it saves and older folders' stored buffers), padded batches, cached decoding, the export
back, and the checkpoint errors."""

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
import zoo.gptj
from harness.models import build_variant
from zoo.convert import CheckpointError
from zoo.gptj import GPTJ, GPTJConfig
from zoo.layers import apply_rope, math_attention, partial_rope, rope_tables

transformers = lazy_import("transformers")  # tests that use it skip without it

NAME = "gpt-j"
# The Hugging Face side: heads of 16 channels, 4 of them rotary (a quarter, as GPT-J-6B's 64
# of 256).
SIZES = dict(vocab_size=300, n_embd=64, n_inner=256, n_layer=2, n_head=4, rotary_dim=4,
             n_positions=64)


# ---- the published size ----------------------------------------------------------------------

def gptj_count(vocab: int, d: int, n_layer: int) -> int:
    """Embedding and head 2Vd + V (the head's bias), final LayerNorm 2d; per layer attention's
    four matrices without biases (4d^2), the feed-forward at 4d (8d^2 + 5d), one LayerNorm
    (2d)."""
    return 2 * vocab * d + vocab + 2 * d + n_layer * (12 * d * d + 7 * d)


def test_gpt_j_6b_has_transformers_count():
    model = build_variant(NAME, "gpt-j-6b", device="meta")
    c = model.config
    assert (c.vocab_size, c.d_model, c.n_layer, c.n_head, c.rotary_dim, c.d_ff) == \
        (50400, 4096, 28, 16, 64, 16384)
    with torch.device("meta"):
        hf = transformers.GPTJForCausalLM(transformers.GPTJConfig())  # its defaults: GPT-J-6B
    hf_count = sum(p.numel() for p in hf.parameters())
    assert gptj_count(50400, 4096, 28) == model.num_params() == hf_count == 6_050_882_784


def test_defaults_small_and_tiny():
    c = GPTJConfig()
    assert (c.activation, c.rope_theta, c.layer_norm_eps, c.dropout, c.attn_dropout,
            c.max_seq_len) == ("gelu_tanh", 1e4, 1e-5, 0, 0, 2048)
    small = build_variant(NAME, "small", device="meta")
    assert small.num_params() == gptj_count(8192, 512, 6) == 27_293_696
    assert small.config.rotary_dim == 16
    tiny = build_variant(NAME, "tiny", device="meta").config
    assert (tiny.n_layer, tiny.d_model, tiny.n_head, tiny.vocab_size, tiny.rotary_dim) == \
        (2, 64, 4, 512, 4)
    assert GPTJConfig(d_model=64, n_head=4, rotary_dim=None).rotary_dim == 16  # the whole head


@pytest.mark.parametrize("bad, says", [
    (dict(n_head=5), "not divisible by n_head"),
    (dict(rotary_dim=3), "even number of a head's 16 channels"),
    (dict(rotary_dim=18), "not 18"),
    (dict(d_ff=-1), "d_ff"),
])
def test_config_rejects_bad_values(bad, says):
    with pytest.raises(ValueError, match=says):
        GPTJConfig(**{"d_model": 64, "n_head": 4, **bad})


def test_flops_per_token():
    model = GPTJ(GPTJConfig(vocab_size=100, d_model=64, n_layer=2, n_head=4, rotary_dim=4))
    weights = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 100 * 64
    assert model.flops_per_token(32) == 2 * weights + 4 * 2 * 64 * 33 / 2


# ---- interleaved RoPE and the block, written out ---------------------------------------------

def test_interleaved_rope_turns_neighbouring_channels_together():
    x = torch.randn(2, 3, 5, 16)
    cos, sin = rope_tables(8, 0, 5, 10_000.0, x.device, interleaved=True)
    y = partial_rope(x, cos, sin, interleaved=True)
    torch.testing.assert_close(y[..., 8:], x[..., 8:], rtol=0, atol=0)
    angle = torch.arange(5.0)[:, None] * 10_000.0 ** -(torch.arange(0, 8, 2) / 8)  # (T, 4)
    x1, x2 = x[..., 0:8:2], x[..., 1:8:2]  # channel 2i pairs with 2i + 1
    expected = torch.stack((x1 * angle.cos() - x2 * angle.sin(),
                            x2 * angle.cos() + x1 * angle.sin()), dim=-1).flatten(-2)
    torch.testing.assert_close(y[..., :8], expected, atol=1e-6, rtol=0)


def test_the_two_layouts_differ_by_a_reordering_of_the_channels():
    """Interleaved RoPE is rotate-half RoPE on the channels reordered 0, 2, 4, ..., 1, 3, 5, ...:
    the same rotation, so neither layout can read the other's checkpoints as they are."""
    x = torch.randn(1, 2, 6, 8)
    order = torch.cat((torch.arange(0, 8, 2), torch.arange(1, 8, 2)))
    interleaved = apply_rope(x, *rope_tables(8, 3, 6, 500.0, x.device, interleaved=True),
                             interleaved=True)
    half = apply_rope(x[..., order], *rope_tables(8, 3, 6, 500.0, x.device))
    torch.testing.assert_close(interleaved[..., order], half, atol=1e-6, rtol=0)
    assert (interleaved - apply_rope(x, *rope_tables(8, 3, 6, 500.0, x.device))).abs().max() > 0.1


def attention_written_out(attn, x, r):
    """Attention without biases, interleaved RoPE on the first r channels of each head."""
    B, T, C = x.shape
    nh = attn.n_head
    heads = lambda w: (x @ w.T).view(B, T, nh, C // nh).transpose(1, 2)  # noqa: E731
    q, k, v = (heads(p.weight) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    cos, sin = rope_tables(r, 0, T, 10_000.0, x.device, interleaved=True)
    q, k = partial_rope(q, cos, sin, True), partial_rope(k, cos, sin, True)
    y = math_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C) @ attn.out_proj.weight.T


def test_block_is_one_layernorm_read_by_both_branches():
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", fast=False).eval())
    block = model.blocks[0]
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        cos, sin = rope_tables(4, 0, 7, 10_000.0, x.device, interleaved=True)
        out = block(x, cos, sin, None, None)
        h = block.ln_1(x)
        ffn = block.mlp.fc_out(F.gelu(block.mlp.fc_in(h), approximate="tanh"))
        expected = x + attention_written_out(block.attn, h, 4) + ffn
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_whole_model_wiring_and_untied_head_with_a_bias():
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", fast=False).eval())
    ids = torch.randint(0, 512, (2, 7))
    with torch.no_grad():
        x = model.wte(ids)  # no position embedding: RoPE acts inside attention
        cos, sin = rope_tables(4, 0, 7, 10_000.0, x.device, interleaved=True)
        for block in model.blocks:
            x = block(x, cos, sin, None, None)
        expected = model.ln_f(x) @ model.lm_head.weight.T + model.lm_head.bias
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=0)
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr()
    attention = model.blocks[0].attn
    assert all(p.bias is None for p in (attention.q_proj, attention.k_proj, attention.v_proj,
                                        attention.out_proj))
    assert model.blocks[0].mlp.fc_in.bias is not None


def test_initialisation_is_mesh_transformer_jaxs():
    """Truncated normals at two standard deviations (whose spread is 0.8796 of the normal's):
    1/sqrt(fan_in) for every matrix and the embedding (fan-in V), (2/L)/sqrt(d) for the two
    writers into the residual stream."""
    torch.manual_seed(0)
    d, vocab, L = 256, 2048, 4
    model = GPTJ(GPTJConfig(vocab_size=vocab, d_model=d, n_head=4, n_layer=L, rotary_dim=16))
    cut = 0.87962566103423978  # scipy.stats.truncnorm(-2, 2).std()
    fan_in, writers = 1 / math.sqrt(d), 2 / L / math.sqrt(d)
    for block in model.blocks:
        for weight, std in [(block.attn.q_proj.weight, fan_in), (block.attn.v_proj.weight, fan_in),
                            (block.mlp.fc_in.weight, fan_in),
                            (block.mlp.fc_out.weight, writers),
                            (block.attn.out_proj.weight, writers)]:
            assert weight.std().item() == pytest.approx(cut * std, rel=0.03)
            assert weight.abs().max().item() <= 2 * std
        assert not block.mlp.fc_in.bias.any()
        assert torch.equal(block.ln_1.weight, torch.ones(d))
    assert model.wte.weight.std().item() == pytest.approx(cut / math.sqrt(vocab), rel=0.03)
    assert model.lm_head.weight.std().item() == pytest.approx(cut * fan_in, rel=0.03)


# ---- Hugging Face references and from_pretrained ---------------------------------------------

def hf_model(**overrides):
    """A tiny random GPTJForCausalLM, every weight random (LayerNorms and biases included)."""
    config = transformers.GPTJConfig(**{**SIZES, "attn_implementation": "eager", **overrides})
    torch.manual_seed(1)
    return randomized(transformers.GPTJForCausalLM(config).eval())


def saved(hf, folder, **options):
    hf.save_pretrained(folder, **options)
    return zoo.from_pretrained(NAME, folder)


KINDS = {  # GPT-J's own settings, every channel rotary, exact GELU
    "gpt-j": ({}, 4, "gelu_tanh"),
    "full-rotary": ({"rotary_dim": 16}, 16, "gelu_tanh"),
    "exact-gelu": ({"activation_function": "gelu", "rotary_dim": 8}, 8, "gelu"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_logits_and_loss_match_hugging_face(kind, tmp_path):
    options, rotary_dim, activation = KINDS[kind]
    hf = hf_model(**options)
    model = saved(hf, tmp_path)
    assert (model.config.rotary_dim, model.config.activation) == (rotary_dim, activation)
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    assert_logits_and_loss_match(hf, model)


def test_the_layout_and_the_rotary_share_are_what_matched(tmp_path, monkeypatch):
    """The parity above could not tell the two RoPE layouts, or the rotary shares, apart unless
    they mattered: each changed alone moves the logits far past the tolerance."""
    hf = hf_model()
    model = saved(hf, tmp_path)
    ids, _ = padded_batch()
    with torch.no_grad():
        ref = hf(ids).logits
        other = GPTJ(dataclasses.replace(model.config, rotary_dim=8)).eval()
        other.load_state_dict(model.state_dict())
        assert (other(ids).logits - ref).abs().max() > 100 * ATOL
        monkeypatch.setattr(zoo.gptj, "partial_rope", lambda x, cos, sin, interleaved: (
            partial_rope(x, cos, sin, interleaved=False)))
        monkeypatch.setattr(zoo.gptj, "rope_tables", lambda *args, interleaved: (
            rope_tables(*args, interleaved=False)))
        assert (model(ids).logits - ref).abs().max() > 100 * ATOL  # rotate-half instead


def test_padded_batch_matches_hugging_face(tmp_path):
    hf = hf_model()
    assert_padded_batch_matches(hf, saved(hf, tmp_path))


def test_older_folders_stored_buffers_are_dropped(tmp_path):
    """transformers 4 saved each layer's causal mask and masked_bias with the weights, as the
    released GPT-J folders hold them."""
    from safetensors.torch import save_file

    hf = hf_model()
    hf.save_pretrained(tmp_path)
    state = dict(hf.state_dict())
    for i in range(SIZES["n_layer"]):
        state |= {f"transformer.h.{i}.attn.bias": torch.ones(1, 1, 64, 64, dtype=torch.bool).tril(),
                  f"transformer.h.{i}.attn.masked_bias": torch.tensor(-1e9)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    model, info = zoo.from_pretrained(NAME, tmp_path, output_loading_info=True)
    assert not info.unused and not info.missing
    ids, _ = padded_batch()
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= ATOL


def test_sharded_folder_and_base_model_load(tmp_path):
    hf = hf_model()
    model = saved(hf, tmp_path / "sharded", max_shard_size="40KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) >= 3
    ids, _ = padded_batch()
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= ATOL
    hf.transformer.save_pretrained(tmp_path / "base")  # GPTJModel: no head, no prefix
    base, info = zoo.from_pretrained(NAME, tmp_path / "base", output_loading_info=True)
    assert set(info.missing) == {"lm_head.weight", "lm_head.bias"} and not info.unused
    with torch.no_grad():
        hidden = hf.transformer(ids).last_hidden_state
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


def test_inputs_longer_than_the_trained_context_still_run():
    """RoPE has no table: past max_seq_len the model runs (what it predicts there is the
    length-extrapolation question), where a learned table would stop."""
    model = build_variant(NAME, "tiny", max_seq_len=8).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 20, dtype=torch.long)).logits).all()


# ---- the export and the checkpoint errors ----------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, {"rotary_dim": 16, "activation": "gelu"}])
def test_save_pretrained_gives_transformers_the_same_model(overrides, tmp_path):
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", **overrides).eval())
    hf = assert_transformers_reads_the_export(NAME, model, tmp_path / "out",
                                              transformers.GPTJForCausalLM)
    assert hf.config.rotary_dim == model.config.rotary_dim


@pytest.mark.parametrize("overrides, says", [
    (dict(d_ff=0), "d_ff 0"),
    (dict(rope_theta=500.0), "rope_theta 500.0"),
])
def test_configs_transformers_cannot_hold_are_not_exported(overrides, says, tmp_path):
    model = build_variant(NAME, "tiny", **overrides)
    with pytest.raises(CheckpointError, match=says):
        zoo.save_pretrained(NAME, model, tmp_path / "out")


@pytest.fixture
def folder(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    return tmp_path, {k: v.clone() for k, v in hf.state_dict().items()}


def test_missing_and_misshaped_weights_are_named(folder):
    path, state = folder
    assert_missing_and_misshaped_weights_are_named(
        NAME, path, state, "transformer.h.1.mlp.fc_out.bias", "blocks.1.mlp.fc_out.bias", 64)


@pytest.mark.parametrize("field, value, says", [
    ("tie_word_embeddings", True, "tie_word_embeddings = True"),
    ("rotary_dim", None, "rotary_dim = None"),
    ("embd_pdrop", 0.1, "embd_pdrop = 0.1"),
    ("activation_function", "swish", "activation_function = 'swish'"),
])
def test_configs_zoo_gptj_cannot_run_are_refused_naming_the_field(folder, field, value, says):
    path, _ = folder
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, field: value}))
    assert says in checkpoint_error(NAME, path)


def test_the_model_is_detected_from_its_folder(folder):
    path, _ = folder
    assert zoo.convert.detect_model(path) == NAME
