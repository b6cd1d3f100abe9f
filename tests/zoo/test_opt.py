"""OPT (zoo/opt.py): the released sizes' parameter counts against transformers' own class, the
block, positions and initialisation written out, fp32 parity with Hugging Face's OPTForCausalLM
built from tiny random configs (OPT-125m's wiring and OPT-350m's) and read back with
zoo.from_pretrained, padded batches, cached decoding, the export back, and the checkpoint
errors."""

from __future__ import annotations

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
from zoo.layers import math_attention
from zoo.opt import OPT, POSITION_OFFSET, OPTConfig

transformers = lazy_import("transformers")  # tests that use it skip without it

NAME = "opt"
SIZES = dict(vocab_size=300, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
             ffn_dim=80, max_position_embeddings=40)
# The two wirings of the released models: OPT-125m ... 175B, and OPT-350m alone.
SETTINGS = {
    "pre-LN (OPT-125m)": {},
    "post-LN, projected embedding (OPT-350m)": dict(do_layer_norm_before=False,
                                                    word_embed_proj_dim=32),
}
RELEASED = {  # facebook/opt-*: hidden_size, num_hidden_layers, num_attention_heads (Table 1)
    "opt-125m": (768, 12, 12), "opt-350m": (1024, 24, 16), "opt-1.3b": (2048, 24, 32),
    "opt-2.7b": (2560, 32, 32), "opt-6.7b": (4096, 32, 32), "opt-13b": (5120, 40, 40),
    "opt-30b": (7168, 48, 56), "opt-66b": (9216, 64, 72), "opt-175b": (12288, 96, 96),
}


# ---- released sizes --------------------------------------------------------------------------

def hf_released(variant: str):
    """transformers' OPTForCausalLM with the released configuration, on the meta device."""
    d, n_layer, n_head = RELEASED[variant]
    small = variant == "opt-350m"
    config = transformers.OPTConfig(hidden_size=d, num_hidden_layers=n_layer,
                                    num_attention_heads=n_head, ffn_dim=4 * d,
                                    word_embed_proj_dim=512 if small else d,
                                    do_layer_norm_before=not small)
    with torch.device("meta"):
        return transformers.OPTForCausalLM(config)


@pytest.mark.parametrize("variant, paper", [
    ("opt-125m", 125e6), ("opt-350m", 350e6), ("opt-1.3b", 1.3e9), ("opt-2.7b", 2.7e9),
    ("opt-6.7b", 6.7e9), ("opt-13b", 13e9), ("opt-30b", 30e9), ("opt-66b", 66e9),
    ("opt-175b", 175e9),
])
def test_released_parameter_counts_equal_transformers_own(variant, paper):
    model = build_variant(NAME, variant, device="meta")
    c = model.config
    assert (c.d_model, c.n_layer, c.n_head) == RELEASED[variant]
    assert (c.vocab_size, c.max_seq_len, c.d_ff) == (50272, 2048, 4 * c.d_model)
    ours = model.num_params()
    assert ours == sum(p.numel() for p in hf_released(variant).parameters())
    # Table 1's names round the count; OPT-350m's 331M is the furthest from its name
    assert abs(ours - paper) / paper < 0.06


def test_the_count_formula_and_the_small_and_tiny_variants():
    def count(V: int, d: int, L: int, E: int, P: int, pre_ln: bool) -> int:
        projections = 2 * E * d if E != d else 0
        return (V * E + (P + 2) * d + projections + L * (12 * d * d + 13 * d)
                + (2 * d if pre_ln else 0))

    assert build_variant(NAME, "opt-175b", device="meta").num_params() == \
        count(50272, 12288, 96, 12288, 2048, True) == 174_604_468_224
    assert build_variant(NAME, "opt-350m", device="meta").num_params() == \
        count(50272, 1024, 24, 512, 2048, False) == 331_196_416
    small = build_variant(NAME, "small", device="meta")
    assert small.num_params() == count(8192, 512, 7, 512, 1024, True) == 26_787_328
    tiny = build_variant(NAME, "tiny", device="meta").config
    assert (tiny.n_layer, tiny.d_model, tiny.n_head, tiny.vocab_size) == (2, 64, 4, 512)
    c = OPTConfig()
    assert (c.activation, c.dropout, c.attn_dropout, c.init_std, c.pre_ln) == \
        ("relu", 0.1, 0.1, 0.006, True)
    with pytest.raises(ValueError, match="not divisible by n_head"):
        OPTConfig(d_model=64, n_head=5)


def test_flops_per_token():
    model = OPT(OPTConfig(vocab_size=100, d_model=64, n_layer=2, n_head=4, d_embed=32))
    weights = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 2 * 32 * 64 + 100 * 32
    assert model.flops_per_token(32) == 2 * weights + 4 * 2 * 64 * 33 / 2


def test_initialisation_is_megatrons_as_section_2_2_gives_it():
    """N(0, 0.006), the two writers into the residual stream at 0.006 / sqrt(2L), zero biases."""
    torch.manual_seed(0)
    model = OPT(OPTConfig(vocab_size=2000, d_model=256, n_layer=8, n_head=4, max_seq_len=512))
    scaled = 0.006 / math.sqrt(16)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert not p.any(), name
        elif "layer_norm" not in name:
            want = scaled if name.endswith(("out_proj.weight", "fc_out.weight")) else 0.006
            assert p.std().item() == pytest.approx(want, rel=0.05), name
    assert model.lm_head.weight is model.embed_tokens.weight


# ---- the block and the positions, written out ------------------------------------------------

def attention(block, h: torch.Tensor) -> torch.Tensor:
    """Causal multi-head attention of `h` (B, T, C) from the block's four projections."""
    attn, (B, T, C) = block.self_attn, h.shape

    def heads(x):
        return x.view(B, T, attn.n_head, -1).transpose(1, 2)

    q, k, v = (heads(proj(h)) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    y = math_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
    return attn.out_proj(y)


@pytest.mark.parametrize("pre_ln", [True, False])
def test_the_block_is_pre_ln_or_post_ln_with_relu(pre_ln):
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", pre_ln=pre_ln, fast=False).eval())
    block, x = model.blocks[0], torch.randn(2, 7, 64)
    with torch.no_grad():
        ffn = lambda h: block.mlp.fc_out(F.relu(block.mlp.fc_in(h)))  # noqa: E731
        if pre_ln:
            a = x + attention(block, block.self_attn_layer_norm(x))
            want = a + ffn(block.final_layer_norm(a))
        else:
            a = block.self_attn_layer_norm(x + attention(block, x))
            want = block.final_layer_norm(a + ffn(a))
        torch.testing.assert_close(block(x, None, None), want, atol=1e-5, rtol=0)
    assert (model.final_layer_norm is not None) == pre_ln


def test_positions_read_the_table_two_rows_down_and_count_real_tokens_only():
    model = build_variant(NAME, "tiny", fast=False).eval()
    ids = torch.randint(0, 512, (2, 5))
    assert model.positions(ids, None, 3).tolist() == [[3, 4, 5, 6, 7]]
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert model.positions(ids, mask, 0).tolist() == [[-1, -1, 0, 1, 2], [0, 1, 2, -1, -1]]
    assert model.positions(ids[:, 3:], mask, 3).tolist() == [[1, 2], [-1, -1]]
    with torch.no_grad():  # the embedding of position p is row p + 2
        h = model.embed_tokens(ids) + model.embed_positions.weight[POSITION_OFFSET:][:5]
        for block in model.blocks:
            h = block(h, None, None)
        torch.testing.assert_close(model.hidden_states(ids), model.final_layer_norm(h))


def test_inputs_longer_than_the_table_are_refused_naming_the_limit():
    model = build_variant(NAME, "tiny", max_seq_len=16).eval()
    with pytest.raises(ValueError, match="17 positions exceed the model's maximum of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


# ---- Hugging Face references and from_pretrained ---------------------------------------------

def hf_model(**overrides):
    """A tiny random OPTForCausalLM, every weight random (LayerNorms and biases included)."""
    config = transformers.OPTConfig(**{**SIZES, "attn_implementation": "eager", **overrides})
    torch.manual_seed(1)
    return randomized(transformers.OPTForCausalLM(config).eval())


def saved(hf, folder, **options):
    hf.save_pretrained(folder, **options)
    return zoo.from_pretrained(NAME, folder)


@pytest.mark.parametrize("setting", SETTINGS)
def test_logits_and_loss_match_hugging_face(setting, tmp_path):
    hf = hf_model(**SETTINGS[setting])
    model = saved(hf, tmp_path)
    c = model.config
    assert (c.n_head, c.d_model, c.d_ff, c.max_seq_len, c.activation) == (6, 48, 80, 40, "relu")
    assert c.pre_ln == ("pre-LN" in setting) and c.d_embed == (48 if c.pre_ln else 32)
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    ref = assert_logits_and_loss_match(hf, model)
    ids, _ = padded_batch()
    # The wiring and the table's offset are what matched: with either changed, far off
    with torch.no_grad():
        for change in ("wiring", "offset"):
            other = OPT(model.config).eval()
            other.load_state_dict(model.state_dict())
            if change == "wiring":
                for block in other.blocks:
                    block.pre_ln = not block.pre_ln
            else:
                other.embed_positions.weight.copy_(other.embed_positions.weight.roll(2, 0))
            assert (other(ids).logits - ref).abs().max() > 100 * ATOL, change


@pytest.mark.parametrize("setting", SETTINGS)
def test_padded_batch_matches_hugging_face(setting, tmp_path):
    """Both count positions over real tokens: a left-padded row reads the rows an unpadded one
    would."""
    hf = hf_model(**SETTINGS[setting])
    assert_padded_batch_matches(hf, saved(hf, tmp_path))


def test_other_activations_are_read_by_name(tmp_path):
    hf = hf_model(activation_function="gelu_new")
    model = saved(hf, tmp_path)
    assert model.config.activation == "gelu_tanh"
    assert_logits_and_loss_match(hf, model)


def test_sharded_folder_base_model_and_a_stored_head_load(tmp_path):
    hf = hf_model()
    model = saved(hf, tmp_path / "sharded", max_shard_size="40KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) >= 3
    ids, _ = padded_batch()
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= ATOL
    hf.model.save_pretrained(tmp_path / "base")  # OPTModel: keys under decoder., as released
    assert any(k.startswith("decoder.layers.") for k in _keys(tmp_path / "base"))
    base, info = zoo.from_pretrained(NAME, tmp_path / "base", output_loading_info=True)
    assert not info.missing and not info.unused  # the tied head is the embedding
    with torch.no_grad():
        hidden = hf.model(ids).last_hidden_state
        assert (base.hidden_states(ids) - hidden).abs().max() <= ATOL


def _keys(folder) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return list(f.keys())


def test_from_pretrained_applies_the_fast_routes_and_plain_stays_the_oracle(tmp_path):
    hf_model().save_pretrained(tmp_path)
    assert_fast_routes_match_the_plain_path(NAME, tmp_path, ("linear", "ffn", "dropout", "loss"))


# ---- cached decoding -------------------------------------------------------------------------

@pytest.mark.parametrize("sizes", CHUNKS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_cached_decoding_equals_the_full_forward(setting, sizes, tmp_path):
    hf = hf_model(**SETTINGS[setting])
    assert_cached_decoding_equals_the_full_forward(hf, saved(hf, tmp_path), sizes)


def test_cached_steps_match_hugging_faces_own_cache(tmp_path):
    hf = hf_model()
    assert_cached_steps_match_hugging_faces_own_cache(hf, saved(hf, tmp_path))


@pytest.mark.parametrize("setting", SETTINGS)
def test_generate_matches_hugging_faces_greedy_tokens(setting, tmp_path):
    hf = hf_model(**SETTINGS[setting])
    assert_greedy_tokens_match(hf, saved(hf, tmp_path))


# ---- the export and the checkpoint errors ----------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, dict(pre_ln=False, d_embed=32)])
def test_save_pretrained_gives_transformers_the_same_model(overrides, tmp_path):
    torch.manual_seed(0)
    model = randomized(build_variant(NAME, "tiny", d_model=48, n_head=6, **overrides).eval())
    hf = assert_transformers_reads_the_export(NAME, model, tmp_path / "out",
                                              transformers.OPTForCausalLM)
    assert hf.config.do_layer_norm_before == model.config.pre_ln


@pytest.mark.parametrize("field, value", [("d_ff", 0), ("layer_norm_eps", 1e-6)])
def test_configs_transformers_cannot_hold_are_not_exported(field, value, tmp_path):
    model = build_variant(NAME, "tiny", **{field: value})
    with pytest.raises(CheckpointError, match=f"{field} {value}"):
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
        NAME, path, state, "model.decoder.layers.1.fc2.bias", "blocks.1.mlp.fc_out.bias", 48,
        tied_to="model.decoder.embed_tokens.weight")


@pytest.mark.parametrize("field, value", [
    ("enable_bias", False), ("layer_norm_elementwise_affine", False),
    ("_remove_final_layer_norm", True), ("layerdrop", 0.1), ("tie_word_embeddings", False),
    ("activation_function", "silu"), ("model_type", "gpt2"),
])
def test_configs_zoo_opt_cannot_run_are_refused_naming_the_field(folder, field, value):
    path, _ = folder
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, field: value}))
    assert field in error_of(path)


def test_the_model_is_detected_from_its_folder(folder):
    path, _ = folder
    assert zoo.convert.detect_model(path) == NAME
