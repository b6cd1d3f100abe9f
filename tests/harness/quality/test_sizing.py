"""A model size for the budget: the widest width at which every model of the comparison gets
about 20 tokens per parameter."""

from __future__ import annotations

from types import SimpleNamespace

from harness.models import build, variant_fields
from harness.quality.model import build_model
from harness.quality.sizing import TOKENS_PER_PARAM, WIDTHS, size_for_budget, width_fields
from harness.quality.spec import RunSpec
from harness.quality.tokenizer import ByteTokenizer
from harness.quality.train import Budget

MODELS = ["gpt", "rwkv"]


def params(width: int) -> dict[str, int]:
    out = {}
    for model in MODELS:
        fields = width_fields(model, variant_fields(model, "small"), width, depth=True)
        out[model] = build(model, overrides={**fields, "vocab_size": 259}, seqlen=256,
                           device="meta").model.num_params()
    return out


def test_a_token_budget_picks_the_widest_width_that_gets_20_tokens_a_parameter():
    at_96, at_128 = params(96), params(128)
    tokens = TOKENS_PER_PARAM * max(at_96.values()) + 1
    assert tokens < TOKENS_PER_PARAM * max(at_128.values())
    choice = size_for_budget(MODELS, RunSpec(task="lm", budget=Budget(tokens=tokens)), 259)
    assert choice.width == 96 and choice.params == at_96
    assert "d_model 96" in choice.reason and "token budget" in choice.reason


def test_too_small_a_budget_gets_the_narrowest_and_a_flops_budget_counts_flops():
    assert size_for_budget(MODELS, RunSpec(task="lm", budget=Budget(tokens=10)), 259).width == 64
    choice = size_for_budget(MODELS, RunSpec(task="lm", budget=Budget(flops=1e20)), 259)
    assert choice.width == 512 and "FLOPs" in choice.reason


def test_width_fields_scale_a_fixed_feed_forward_and_the_depth():
    small = variant_fields("pangu-pi", "small")  # d 512, d_ff 1408, 6 layers
    sized = width_fields("pangu-pi", small, 128, depth=True)
    assert (sized["d_model"], sized["d_ff"], sized["n_layer"]) == (128, 352, 2)
    assert width_fields("pangu-pi", small, 128)["n_layer"] == 6


def test_width_fields_size_llama_and_mamba():
    """LLaMA's fixed SwiGLU width scales with d_model (its heads stay, at an even head size for
    RoPE); Mamba has no d_ff: its d_inner and dt_rank follow d_model."""
    llama = width_fields("llama", variant_fields("llama", "small"), 128, depth=True)
    assert (llama["d_model"], llama["d_ff"], llama["n_layer"]) == (128, 352, 2)
    mamba = width_fields("mamba", variant_fields("mamba", "small"), 128, depth=True)
    assert (mamba["d_model"], mamba["n_layer"]) == (128, 4) and "d_ff" not in mamba
    for name, fields in (("llama", llama), ("mamba", mamba)):
        config = build(name, overrides={**fields, "vocab_size": 259}, seqlen=256,
                       device="meta").model.config
        assert config.d_model == 128
    choice = size_for_budget(["llama", "mamba"],
                             RunSpec(task="lm", budget=Budget(tokens=20_000_000)), 259)
    assert choice.width == 128  # at 192 LLaMA's small has 1.0M parameters, over 20M / 20
    assert all(choice.tokens[m] >= TOKENS_PER_PARAM * choice.params[m] for m in choice.params)


def test_gpt_j_keeps_a_quarter_of_each_head_rotary_at_every_width():
    """GPT-J's rotary_dim counts channels of a head; the heads keep their number, so it scales
    with the width (16 of 64 at 512, 2 of 8 at 64) instead of outgrowing a narrow head."""
    small = variant_fields("gpt-j", "small")  # d 512, 8 heads, rotary_dim 16
    for width, rotary in ((64, 2), (128, 4), (256, 8), (512, 16)):
        fields = width_fields("gpt-j", small, width, depth=True)
        config = build("gpt-j", overrides={**fields, "vocab_size": 259}, seqlen=256,
                       device="meta").model.config
        assert (config.d_model, config.rotary_dim) == (width, rotary)
        assert config.rotary_dim * 4 == config.d_model // config.n_head
    choice = size_for_budget(["gpt-j", "gpt-neox"],
                             RunSpec(task="lm", budget=Budget(tokens=3_000_000)), 259)
    assert choice.width == 64  # as GPT-NeoX alone gets: GPT-J no longer forces 128


def test_t5_heads_narrow_with_the_width():
    """T5's heads have a width of their own, d_kv: it scales with d_model, so attention stays
    n_head x d_kv = d_model wide instead of 512 wide in a model of 64 (which would make the
    attention most of its parameters and set the width the budget allows)."""
    small = variant_fields("t5", "small")  # d 512, 8 heads of 64
    for width in (64, 128, 512):
        fields = width_fields("t5", small, width, depth=True)
        config = build("t5", overrides={**fields, "vocab_size": 259}, seqlen=256,
                       device="meta").model.config
        assert config.n_head * config.d_kv == config.d_model == width
    choice = size_for_budget(["t5", "transformer"],
                             RunSpec(task="seq2seq", budget=Budget(tokens=3_000_000)), 259)
    assert choice.width == 64 and choice.params["t5"] < 1.2 * choice.params["transformer"]
    # and the cells train what the sizing counted (they once kept d_kv 64: 3.6 times the
    # parameters the choice was made for)
    spec = RunSpec(task="seq2seq", budget=Budget(tokens=3_000_000), width=64, depth=True)
    data = SimpleNamespace(spec=spec, tokenizer=ByteTokenizer(), mqar=None)
    for model in ("t5", "transformer"):
        net = build_model(model, "seq2seq", data)
        assert net.num_params() == choice.params[model]


def test_a_variant_that_keeps_the_default_width_scales_from_it():
    """The Transformer's `small` names no d_model (it keeps the paper's 512): its feed-forward
    and layers scale from 512 all the same, not stay at 2304 wide and 3 deep in a model of 64
    (8 times T5's parameters at the same width)."""
    fields = width_fields("transformer", variant_fields("transformer", "small"), 64, depth=True)
    assert (fields["d_model"], fields["d_ff"], fields["n_layer"]) == (64, 288, 2)


def test_a_time_budget_measures_encoder_decoders_on_the_seq2seq_split():
    """Speed is measured on the seq2seq task's split of the training length (half read, half
    written), so a time budget sizes the encoder-decoders as it sizes the decoders."""
    spec = RunSpec(task="seq2seq", budget=Budget(seconds=2), seqlen=32, batch_size=2,
                   variant="tiny")
    choice = size_for_budget(["t5", "transformer"], spec, 259)
    assert choice.width in WIDTHS and set(choice.tokens) == {"t5", "transformer"}
    assert all(tokens > 0 for tokens in choice.tokens.values())


def test_a_width_a_models_config_refuses_is_passed_over():
    """GPT-NeoX's small keeps 8 heads: at d_model 96 a head of 12 has an odd 3 rotary channels,
    which its config refuses. The sizing passes 96 over instead of failing on it."""
    import pytest

    with pytest.raises(ValueError, match="odd 3 channels"):
        build("gpt-neox", overrides={**width_fields("gpt-neox", variant_fields(
            "gpt-neox", "small"), 96, depth=True), "vocab_size": 259}, seqlen=256,
              device="meta")
    models = ["gpt-neox", "bloom"]
    at = {w: max(build(m, overrides={**width_fields(m, variant_fields(m, "small"), w,
                                                    depth=True), "vocab_size": 259},
                       seqlen=256, device="meta").model.num_params() for m in models)
          for w in (64, 128)}
    tokens = 2 * TOKENS_PER_PARAM * at[64]  # fits 64, not 128
    assert tokens < TOKENS_PER_PARAM * at[128]
    choice = size_for_budget(models, RunSpec(task="lm", budget=Budget(tokens=tokens)), 259)
    assert choice.width == 64
    wide = size_for_budget(models, RunSpec(task="lm", budget=Budget(flops=1e20)), 259)
    assert wide.width == 512  # past 96 to the widest
