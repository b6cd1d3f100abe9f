"""GPT-Neo (zoo/gpt_neo.py): the published sizes on the meta device, the local window and the
unscaled scores written out, fp32 parity with Hugging Face's GPTNeoForCausalLM built from tiny
random configs and read back with zoo.from_pretrained (with a window shorter than the inputs, so
that the local layers differ from the global ones), padded batches, cached decoding, the export
back, and the checkpoint errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import lazy_import, randomized
from decoder_parity import (
    ATOL,
    CHUNKS,
    assert_bands_equal_the_whole_masked_attention,
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
from harness.models import build_variant
from zoo.convert import CheckpointError
from zoo.gpt_neo import GPTNeo, GPTNeoConfig, shortest_pattern
from zoo.layers import KVCache, WindowKVCache, window_mask

transformers = lazy_import("transformers")  # tests that use it skip without it

NAME = "gpt-neo"
# The Hugging Face side: 4 layers, global and local in turns, a window of 6 (the test rows are
# 21 tokens long, so the local layers see less than the global ones).
SIZES = dict(vocab_size=300, hidden_size=64, intermediate_size=256, num_layers=4, num_heads=4,
             max_position_embeddings=64, window_size=6,
             attention_types=[[["global", "local"], 2]])


# ---- the published sizes ---------------------------------------------------------------------

def gpt_neo_count(vocab: int, positions: int, d: int, n_layer: int) -> int:
    """Token and position tables (V + P) d, final LayerNorm 2d; per layer attention's four
    matrices with one bias (4d^2 + d), the feed-forward at 4d (8d^2 + 5d), two LayerNorms (4d).
    The head is the token table."""
    return (vocab + positions) * d + 2 * d + n_layer * (12 * d * d + 10 * d)


@pytest.mark.parametrize("variant, d, n_layer, n_head, count", [
    ("gpt-neo-125m", 768, 12, 12, 125_198_592),
    ("gpt-neo-1.3b", 2048, 24, 16, 1_315_575_808),
    ("gpt-neo-2.7b", 2560, 32, 20, 2_651_307_520),
])
def test_published_sizes_have_transformers_counts(variant, d, n_layer, n_head, count):
    model = build_variant(NAME, variant, device="meta")
    c = model.config
    assert (c.d_model, c.n_layer, c.n_head, c.window, c.attention_layers) == \
        (d, n_layer, n_head, 256, "global,local")
    config = transformers.GPTNeoConfig(hidden_size=d, num_layers=n_layer, num_heads=n_head,
                                       attention_types=[[["global", "local"], n_layer // 2]])
    with torch.device("meta"):
        hf = transformers.GPTNeoForCausalLM(config)
    hf_count = sum(p.numel() for p in hf.parameters())
    assert gpt_neo_count(50257, 2048, d, n_layer) == model.num_params() == hf_count == count


def test_defaults_small_and_tiny():
    c = GPTNeoConfig()
    assert (c.activation, c.layer_norm_eps, c.dropout, c.attn_dropout, c.max_seq_len,
            c.vocab_size) == ("gelu_tanh", 1e-5, 0, 0, 2048, 50257)
    assert [c.layer_kind(i) for i in range(4)] == ["global", "local", "global", "local"]
    small = build_variant(NAME, "small", device="meta")
    assert small.num_params() == gpt_neo_count(8192, 1024, 512, 7) == 26_775_552
    tiny = build_variant(NAME, "tiny", device="meta").config
    assert (tiny.n_layer, tiny.d_model, tiny.n_head, tiny.vocab_size) == (2, 64, 4, 512)


@pytest.mark.parametrize("bad, says", [
    (dict(n_head=5), "not divisible by n_head"),
    (dict(attention_layers="global,sparse"), "comma-separated pattern of global and local"),
    (dict(window=0), "window"),
    (dict(d_ff=-1), "d_ff"),
])
def test_config_rejects_bad_values(bad, says):
    with pytest.raises(ValueError, match=says):
        GPTNeoConfig(**{"d_model": 64, "n_head": 4, **bad})


def test_flops_per_token_counts_each_local_layer_at_its_window():
    model = GPTNeo(GPTNeoConfig(vocab_size=100, d_model=64, n_layer=2, n_head=4, window=8))
    weights = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 100 * 64
    # at 32 tokens: the global layer's queries see 33/2 keys on average, the local one's at
    # most 8: (1 + ... + 8 + 24 * 8) / 32
    local = (8 * 9 / 2 + 24 * 8) / 32
    assert model.flops_per_token(32) == 2 * weights + 4 * 64 * (33 / 2 + local)
    assert model.flops_per_token(8) == 2 * weights + 4 * 64 * (9 / 2 + 9 / 2)


# ---- the window and the unscaled scores, written out -----------------------------------------

def test_a_local_query_sees_the_last_window_positions_itself_included():
    cpu = torch.device("cpu")
    visible = window_mask(None, 3, 6, 4, 0, 10, torch.float32, cpu)  # queries 6..9, keys 0..9
    assert visible.shape == (4, 10)
    assert [row.nonzero().flatten().tolist() for row in visible] == \
        [[4, 5, 6], [5, 6, 7], [6, 7, 8], [7, 8, 9]]
    assert window_mask(None, None, 0, 3, 0, 3, torch.float32, cpu).tolist() == \
        torch.ones(3, 3, dtype=torch.bool).tril().tolist()


def test_layers_attend_as_written_out_without_the_square_root_scale():
    """Each layer's output is softmax(q k^T + mask) v with no 1/sqrt(hs): the global layer over
    every earlier position, the local one over the last `window`."""
    torch.manual_seed(0)
    model = GPTNeo(GPTNeoConfig(vocab_size=50, max_seq_len=32, d_model=32, n_head=2, n_layer=2,
                                window=4)).eval()
    x = torch.randn(1, 12, 32)
    for block, window in zip(model.blocks, (None, 4), strict=True):
        attn = block.attn
        q, k, v = (p(x).view(1, 12, 2, 16).transpose(1, 2)
                   for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        visible = window_mask(None, window, 0, 12, 0, 12, x.dtype, x.device)
        scores = (q @ k.transpose(-2, -1)).masked_fill(~visible, float("-inf"))
        y = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(1, 12, 32)
        model.band = 5  # the local layer's 12 queries in bands of 5, 5 and 2
        seen = model._visibility(None, 12, 0, x.dtype, x.device)
        kind = "global" if window is None else "local"
        assert len(seen[kind].bands) == (0 if window is None else 3)
        with torch.no_grad():
            torch.testing.assert_close(attn(x, seen[kind], None), attn.out_proj(y),
                                       atol=1e-5, rtol=0)


def test_the_pattern_is_kept_in_its_shortest_form_over_the_layers():
    assert shortest_pattern(["global", "local"] * 3) == "global,local"
    assert shortest_pattern(["global"] * 4) == "global"
    assert shortest_pattern(["local", "local", "global"]) == "local,local,global"
    assert shortest_pattern(["global", "local", "global"]) == "global,local"
    assert GPTNeoConfig(n_layer=2, attention_layers="local,global,global").attention_layers == \
        "local,global"
    assert GPTNeoConfig(attention_layers="global,local,global,local") == GPTNeoConfig()


# ---- Hugging Face references and from_pretrained ---------------------------------------------

def hf_model(**overrides):
    """A tiny random GPTNeoForCausalLM, every weight random (LayerNorms and biases included)."""
    config = transformers.GPTNeoConfig(**{**SIZES, "attn_implementation": "eager", **overrides})
    torch.manual_seed(1)
    return randomized(transformers.GPTNeoForCausalLM(config).eval())


def saved(hf, folder, **options):
    hf.save_pretrained(folder, **options)
    return zoo.from_pretrained(NAME, folder)


KINDS = {  # the released models' pattern, all global, local first, exact GELU
    "gpt-neo": ({}, "global,local", "gelu_tanh"),
    "all-global": ({"attention_types": [[["global"], 4]]}, "global", "gelu_tanh"),
    "local-first": ({"attention_types": [[["local", "local", "global", "local"], 1]]},
                    "local,local,global", "gelu_tanh"),  # repeated, cut at 4 layers
    "exact-gelu": ({"activation_function": "gelu"}, "global,local", "gelu"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_logits_and_loss_match_hugging_face(kind, tmp_path):
    options, pattern, activation = KINDS[kind]
    hf = hf_model(**options)
    model = saved(hf, tmp_path)
    assert (model.config.attention_layers, model.config.activation) == (pattern, activation)
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    assert_logits_and_loss_match(hf, model)


def test_the_window_and_the_scale_are_what_matched(tmp_path, monkeypatch):
    """The parity above could not tell a wider window, or scaled scores, apart unless they
    mattered: each changed alone moves the logits far past the tolerance."""
    hf = hf_model()
    model = saved(hf, tmp_path)
    ids, _ = padded_batch()
    with torch.no_grad():
        ref = hf(ids).logits
        assert (model(ids).logits - ref).abs().max() <= ATOL
        for change in (dict(window=12), dict(attention_layers="global")):
            other = GPTNeo(dataclasses.replace(model.config, **change)).eval()
            other.load_state_dict(model.state_dict())
            assert (other(ids).logits - ref).abs().max() > 100 * ATOL, change
        attend = zoo.gpt_neo.attend
        monkeypatch.setattr(zoo.gpt_neo, "attend", lambda *args, scale, **kwargs: attend(
            *args, scale=None, **kwargs))  # 1/sqrt(hs), as GPT-2 scales
        assert (model(ids).logits - ref).abs().max() > 100 * ATOL


def test_inputs_longer_than_the_window_many_times_over_match(tmp_path):
    hf = hf_model()
    model = saved(hf, tmp_path)
    torch.manual_seed(3)
    ids = torch.randint(0, 300, (2, 64))
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= ATOL


@pytest.mark.parametrize("band", [1, 4, 7, 30])
def test_bands_equal_the_whole_masked_attention(band, tmp_path):
    """The local layers' bands (each band of queries over the keys its window reaches) against
    one masked attention over every key, band = None, the oracle: unpadded and padded, in
    cached chunks (keys from the window cache in the first bands), and in gradients."""
    model = saved(hf_model(), tmp_path)  # window 6 over 21 tokens
    assert_bands_equal_the_whole_masked_attention(model, band, layer=1)  # a local layer


def test_a_local_layers_cache_keeps_the_window_less_one_position():
    model = GPTNeo(GPTNeoConfig(vocab_size=50, max_seq_len=64, d_model=32, n_head=2, n_layer=2,
                                window=5)).eval()
    with torch.no_grad():
        cache = model(torch.randint(0, 50, (1, 9)), use_cache=True).cache
        model(torch.randint(0, 50, (1, 1)), cache=cache, use_cache=True)
    assert [type(c) for c in cache] == [KVCache, WindowKVCache]
    assert cache[0].get()[0].size(2) == 10 and cache[1].keys.size(2) == 4
    assert cache[0].length == cache[1].length == 10


def test_padded_batch_matches_hugging_face(tmp_path):
    hf = hf_model()
    assert_padded_batch_matches(hf, saved(hf, tmp_path))


def test_older_folders_stored_masks_are_dropped(tmp_path):
    """transformers 4 saved each layer's causal mask and masked_bias with the weights, as the
    released GPT-Neo folders hold them."""
    from safetensors.torch import save_file

    hf = hf_model()
    hf.save_pretrained(tmp_path)
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(SIZES["num_layers"]):
        prefix = f"transformer.h.{i}.attn.attention."
        state |= {prefix + "bias": torch.ones(1, 1, 64, 64, dtype=torch.bool).tril(),
                  prefix + "masked_bias": torch.tensor(-1e9)}
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
    hf.transformer.save_pretrained(tmp_path / "base")  # GPTNeoModel: no head, no prefix
    base, info = zoo.from_pretrained(NAME, tmp_path / "base", output_loading_info=True)
    assert not info.unused
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


def test_inputs_past_the_position_table_are_refused_naming_it():
    model = build_variant(NAME, "tiny", max_seq_len=8).eval()
    with pytest.raises(ValueError, match="9 positions exceed the model's maximum of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_a_training_step_with_dropout_runs_and_reaches_every_weight():
    torch.manual_seed(0)
    model = build_variant(NAME, "tiny", dropout=0.1, attn_dropout=0.1).train()
    ids = torch.randint(0, 512, (2, 300 // 2))
    loss = model(ids, targets=ids.roll(-1, 1)).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and p.grad.abs().sum() > 0
                                        for p in model.parameters())


# ---- the export and the checkpoint errors ----------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, {"attention_layers": "local,global,global",
                                            "window": 5, "activation": "gelu"}])
def test_save_pretrained_gives_transformers_the_same_model(overrides, tmp_path):
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", **overrides).eval())
    hf = assert_transformers_reads_the_export(NAME, model, tmp_path / "out",
                                              transformers.GPTNeoForCausalLM)
    kinds = [model.config.layer_kind(i) for i in range(model.config.n_layer)]
    assert hf.config.attention_layers == kinds
    assert hf.config.window_size == model.config.window


def test_configs_transformers_cannot_hold_are_not_exported(tmp_path):
    model = build_variant(NAME, "tiny", d_ff=0)
    with pytest.raises(CheckpointError, match="d_ff 0"):
        zoo.save_pretrained(NAME, model, tmp_path / "out")


@pytest.fixture
def folder(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    return tmp_path, {k: v.clone() for k, v in hf.state_dict().items()}


def test_missing_and_misshaped_weights_are_named(folder):
    path, state = folder
    assert_missing_and_misshaped_weights_are_named(
        NAME, path, state, "transformer.h.1.mlp.c_proj.bias", "blocks.1.mlp.fc_out.bias", 64)


@pytest.mark.parametrize("field, value, says", [
    ("tie_word_embeddings", False, "tie_word_embeddings = False"),
    ("embed_dropout", 0.1, "embed_dropout = 0.1"),
    ("activation_function", "swish", "activation_function = 'swish'"),
    ("attention_types", [[["global", "local"], 3]], "giving num_layers (4) layers"),
    ("attention_types", [[["global", "sparse"], 2]], "attention_types = "),
])
def test_configs_zoo_gpt_neo_cannot_run_are_refused_naming_the_field(folder, field, value, says):
    path, _ = folder
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, field: value}))
    assert says in checkpoint_error(NAME, path)


def test_the_model_is_detected_from_its_folder_not_as_gpt_neox(folder):
    path, _ = folder
    assert zoo.convert.detect_model(path) == NAME
    config = json.loads((path / "config.json").read_text())
    del config["model_type"]  # read off the architecture's name: GPTNeo, not GPTNeoX
    (path / "config.json").write_text(json.dumps(config))
    assert zoo.convert.detect_model(path) == NAME
