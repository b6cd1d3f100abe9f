"""CTRL (zoo/ctrl.py): the released size counted against transformers' own class, the layers
written out, fp32 parity with Hugging Face's CTRLLMHeadModel built from tiny random configs and
read with zoo.from_pretrained (logits, loss, padded batches, cached decoding, transformers' own
cache, greedy tokens), the export back, and the checkpoint errors."""

from __future__ import annotations

import dataclasses
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
    step_by_step,
)

import zoo
from harness.models import build_variant
from zoo.convert import CheckpointError
from zoo.ctrl import CTRL, CTRLConfig
from zoo.layers import split_sinusoids
from zoo.transformer import sinusoidal_positions

transformers = lazy_import("transformers")  # tests that use it skip without it

NAME = "ctrl"
SMALL_COUNT = 28_107_008  # the count written in catalog/ctrl.yaml
SIZES = dict(vocab_size=300, n_positions=32, n_embd=32, dff=72, n_layer=3, n_head=4,
             resid_pdrop=0.0, embd_pdrop=0.0)


# ---- sizes and the layers written out ----------------------------------------------------------

def test_the_released_size_is_transformers_count():
    """48 layers at 1280, 16 heads, d_ff 8192, 246,534 words: the paper's 1.63B."""
    with torch.device("meta"):
        hf = transformers.CTRLLMHeadModel(transformers.CTRLConfig())
    V, d, f, L = 246_534, 1280, 8192, 48
    count = V * d + V + L * (4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d) + 2 * d
    model = build_variant(NAME, "ctrl", device="meta")
    assert model.num_params() == sum(p.numel() for p in hf.parameters()) == count \
        == 1_637_964_550
    assert CTRL(CTRLConfig(n_layer=1, vocab_size=100, d_model=64, n_head=4, d_ff=96,
                           max_seq_len=16)).config.attn_dropout == 0.0


def test_small_and_tiny():
    assert build_variant(NAME, "small", device="meta").num_params() == SMALL_COUNT
    assert build_variant(NAME, "tiny").config.max_seq_len == 256


def test_whole_model_written_out():
    """sqrt(d) E[x] + the split sinusoids, then pre-LN blocks with ReLU, a final LayerNorm, and
    the tied head with its own bias."""
    torch.manual_seed(0)
    model = randomized(CTRL(CTRLConfig(vocab_size=50, max_seq_len=16, n_layer=1, n_head=2,
                                       d_model=16, d_ff=24, dropout=0.0))).eval()
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        x = model.wte(ids) * 4.0 + split_sinusoids(16, 16)[:9]
        block = model.blocks[0]
        h = block.ln_1(x)
        q, k, v = block.attn.q_proj(h), block.attn.k_proj(h), block.attn.v_proj(h)
        heads = []
        for s in (slice(0, 8), slice(8, 16)):
            scores = q[0, :, s] @ k[0, :, s].T / math.sqrt(8)
            scores = scores.masked_fill(torch.ones(9, 9).triu(1).bool(), float("-inf"))
            heads.append(torch.softmax(scores, -1) @ v[0, :, s])
        x = x + block.attn.out_proj(torch.cat(heads, -1)[None])
        x = x + block.mlp.fc_out(F.relu(block.mlp.fc_in(block.ln_2(x))))
        logits = model.ln_f(x) @ model.wte.weight.T + model.lm_head.bias
        torch.testing.assert_close(model(ids).logits, logits, atol=1e-5, rtol=0)


def test_flops_per_token():
    c = CTRLConfig(vocab_size=100, max_seq_len=16, n_layer=2, n_head=4, d_model=32, d_ff=48)
    weights = 2 * (4 * 32 * 32 + 2 * 32 * 48) + 100 * 32
    assert CTRL(c).flops_per_token(10) == 2 * weights + 4 * 2 * 32 * 11 / 2


def test_inputs_longer_than_the_trained_context_run_on_the_same_formula():
    """The sinusoids have no last row: past max_seq_len the model runs, with the rows a longer
    table would hold (what it predicts there is the length-extrapolation question)."""
    torch.manual_seed(0)
    short = build_variant(NAME, "tiny", max_seq_len=8).eval()
    long = CTRL(dataclasses.replace(short.config, max_seq_len=32)).eval()
    long.load_state_dict(short.state_dict())
    ids = torch.randint(0, 512, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(short(ids).logits, long(ids).logits, atol=1e-5, rtol=0)
        # decoding on the cache across the table's end: each step computes its own row
        stepped = step_by_step(short, ids, [6, 1, 1, 1, 1, 10])[0]
        torch.testing.assert_close(stepped, long(ids).logits, atol=1e-5, rtol=0)
    assert CTRL.config_for_length(short.config, 20) == (short.config, None)


# ---- parity with transformers ------------------------------------------------------------------

def hf_model(**overrides):
    """A tiny random CTRLLMHeadModel, every weight random (LayerNorms and biases included)."""
    config = transformers.CTRLConfig(**{**SIZES, "attn_implementation": "eager", **overrides})
    torch.manual_seed(1)
    return randomized(transformers.CTRLLMHeadModel(config).eval())


def saved(hf, folder):
    hf.save_pretrained(folder)
    return zoo.from_pretrained(NAME, folder)


def test_logits_and_loss_match_hugging_face(tmp_path):
    hf = hf_model()
    model = saved(hf, tmp_path)
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    assert_logits_and_loss_match(hf, model)


def test_the_split_layout_and_the_scale_are_what_matched(tmp_path, monkeypatch):
    """The Transformer's interleaved sinusoids, or the embeddings unscaled, move the logits far
    past the tolerance."""
    hf = hf_model()
    model = saved(hf, tmp_path)
    ids, _ = padded_batch()
    with torch.no_grad():
        ref = hf(ids).logits
        interleaved = CTRL(model.config).eval()
        interleaved.load_state_dict(model.state_dict())
        interleaved.sinusoids.copy_(sinusoidal_positions(torch.arange(32), 32))
        assert (interleaved(ids).logits - ref).abs().max() > 100 * ATOL
        monkeypatch.setattr(zoo.ctrl.math, "sqrt", lambda x: 1.0)
        assert (model(ids).logits - ref).abs().max() > 100 * ATOL


def test_padded_batch_matches_hugging_face(tmp_path):
    hf = hf_model()
    assert_padded_batch_matches(hf, saved(hf, tmp_path))


def test_base_model_loads_without_its_head(tmp_path):
    hf = hf_model()
    hf.transformer.save_pretrained(tmp_path)  # CTRLModel: no head, no prefix
    base, info = zoo.from_pretrained(NAME, tmp_path, output_loading_info=True)
    assert set(info.missing) == {"lm_head.bias"} and not info.unused  # the weight is tied
    ids, _ = padded_batch()
    with torch.no_grad():
        hidden = hf.transformer(ids).last_hidden_state
        assert (base.hidden_states(ids) - hidden).abs().max() <= ATOL


def test_from_pretrained_applies_the_fast_routes_and_plain_stays_the_oracle(tmp_path):
    hf_model().save_pretrained(tmp_path)
    assert_fast_routes_match_the_plain_path(NAME, tmp_path, ("linear", "ffn", "dropout", "loss"))


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


# ---- the export and the checkpoint errors ------------------------------------------------------

def test_save_pretrained_gives_transformers_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny").eval())
    assert_transformers_reads_the_export(NAME, model, tmp_path / "out",
                                         transformers.CTRLLMHeadModel)


@pytest.mark.parametrize("overrides, says", [
    (dict(d_ff=0), "d_ff 0"),
    (dict(attn_dropout=0.1), "attn_dropout 0.1"),
    (dict(layer_norm_eps=1e-5), "layer_norm_eps 1e-05"),
])
def test_configs_transformers_cannot_hold_are_not_exported(overrides, says, tmp_path):
    model = build_variant(NAME, "tiny", **overrides)
    with pytest.raises(CheckpointError, match=says):
        zoo.save_pretrained(NAME, model, tmp_path / "out")


def test_missing_and_misshaped_weights_are_named(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert_missing_and_misshaped_weights_are_named(
        NAME, tmp_path, state, "transformer.h.1.ffn.0.bias", "blocks.1.mlp.fc_in.bias", 72,
        tied_to="transformer.w.weight")


@pytest.mark.parametrize("field, value", [("tie_word_embeddings", False), ("embd_pdrop", 0.3)])
def test_configs_zoo_ctrl_cannot_run_are_refused_naming_the_field(field, value, tmp_path):
    hf_model().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    import json

    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    assert f"{field} = {value!r}" in checkpoint_error(NAME, tmp_path)


def test_the_model_is_detected(tmp_path):
    hf_model().save_pretrained(tmp_path)
    assert zoo.convert.detect_model(tmp_path) == NAME
    assert dataclasses.asdict(zoo.from_pretrained(NAME, tmp_path).config)["d_ff"] == 72
