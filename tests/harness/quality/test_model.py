"""Which task a model runs (by what the model is) and the model built for it."""

from __future__ import annotations

import pytest

from harness.models import OverrideError
from harness.quality.model import architecture, check_model, task_for
from harness.quality.spec import QualityError, RunSpec
from harness.quality.train import Budget


@pytest.mark.parametrize("model, task, message", [
    ("bert", "lm", "bert is an encoder: it runs --task mlm, not lm"),
    ("gpt", "mlm", "gpt is a decoder: it runs --task lm or mqar, not mlm"),
    ("transformer", "mqar", "transformer is an encoder-decoder"),
])
def test_task_for_wrong_kind(model, task, message):
    with pytest.raises(QualityError, match=message):
        task_for(model, task)


@pytest.mark.parametrize("model, kind", [("gpt", "decoder"), ("rwkv", "decoder"),
                                         ("bert", "encoder"), ("transformer", "encoder-decoder")])
def test_architecture_from_the_zoo_class(model, kind):
    assert architecture(model) == kind


def test_check_model_names_the_missing_variant():
    spec = RunSpec(task="lm", budget=Budget(tokens=1), variant="huge")
    with pytest.raises(QualityError, match="huge"):
        check_model("gpt", spec)
    assert check_model("transformer", RunSpec(task="lm", budget=Budget(tokens=1))) == "seq2seq"


@pytest.mark.parametrize("model", ["gpt", "rwkv", "pangu-pi", "llama", "mamba"])
def test_mqar_builds_zoology_models(model):
    """Mixer-only blocks, one head (LLaMA: one key/value head too), no dropout, and PyTorch's
    default weight scale where the model has an init_std (RWKV and Mamba keep their own
    schemes; Mamba's block is its mixer alone, with no heads); lm builds the variant as it is."""
    from harness.quality.data import Prepared
    from harness.quality.model import build_model
    from harness.quality.tokenizer import ByteTokenizer

    spec = RunSpec(task="mqar", budget=Budget(tokens=1), variant="tiny", width=96)
    config = build_model(model, "mqar", Prepared(spec)).config
    assert (config.d_model, getattr(config, "d_ff", 0)) == (96, 0)
    assert config.vocab_size == spec.mqar.vocab_size
    if model not in ("rwkv", "mamba"):
        assert config.n_head == 1 and config.init_std == pytest.approx((3 * 96) ** -0.5)
    if model == "llama":
        assert config.n_kv_head == 1
    if model == "mamba":  # mamba_ssm's initialisation, and its width sizes the rest
        assert config.emb_init_std == 0.02 and (config.d_inner, config.dt_rank) == (192, 6)
    lm = RunSpec(task="lm", budget=Budget(tokens=1), variant="tiny")
    plain = build_model(model, "lm", Prepared(lm, tokenizer=ByteTokenizer())).config
    assert getattr(plain, "d_ff", 1) != 0 and getattr(plain, "init_std", 0.02) == 0.02


def test_a_width_scales_gpt_js_rotary_channels_with_its_heads():
    """The width the budget sizing chose builds as the sizing sized it: GPT-J's small at
    d_model 64 turns 2 of each head's 8 channels (16 of 64 at 512), not 16 of 8."""
    from harness.quality.data import Prepared
    from harness.quality.model import build_model
    from harness.quality.tokenizer import ByteTokenizer

    spec = RunSpec(task="lm", budget=Budget(tokens=1), width=64, depth=True)
    config = build_model("gpt-j", "lm", Prepared(spec, tokenizer=ByteTokenizer())).config
    assert (config.d_model, config.n_head, config.rotary_dim, config.n_layer) == (64, 8, 2, 2)
    odd = RunSpec(task="lm", budget=Budget(tokens=1), width=96)  # 16 * 96 / 512: 3 of 12
    with pytest.raises(QualityError, match=r"gpt-j at d_model 96 \(its variant's fields scaled "
                                           r"to that width\): rotary_dim .* not 3"):
        build_model("gpt-j", "lm", Prepared(odd, tokenizer=ByteTokenizer()))


def test_mqar_keeps_gpt_js_share_of_rotary_channels_in_its_one_head():
    """MQAR's one head spans d_model: GPT-J's tiny (4 rotary channels of 16) keeps a quarter of
    it, 24 of 96 at width 96, not 4 (nor the width's 6); --set still wins."""
    from harness.quality.data import Prepared
    from harness.quality.model import build_model

    spec = RunSpec(task="mqar", budget=Budget(tokens=1), variant="tiny", width=96)
    config = build_model("gpt-j", "mqar", Prepared(spec)).config
    assert (config.n_head, config.d_model, config.rotary_dim, config.d_ff) == (1, 96, 24, 0)
    mine = RunSpec(task="mqar", budget=Budget(tokens=1), variant="tiny",
                   overrides=(("rotary_dim", 8),))
    assert build_model("gpt-j", "mqar", Prepared(mine)).config.rotary_dim == 8


def test_mqar_keeps_a_whole_head_rotary_when_the_variant_says_so(monkeypatch):
    """A variant with rotary_dim None (RoPE on the whole head) keeps it whole in MQAR's one
    head, rather than taking the class default's share (64 of 256)."""
    import harness.quality.model as quality_model
    from harness.quality.data import Prepared

    whole = {"vocab_size": 512, "d_model": 64, "n_head": 4, "n_layer": 2, "rotary_dim": None}
    monkeypatch.setattr(quality_model, "_variant_fields", lambda *args: dict(whole))
    spec = RunSpec(task="mqar", budget=Budget(tokens=1), variant="tiny", width=96)
    config = quality_model.build_model("gpt-j", "mqar", Prepared(spec)).config
    assert (config.n_head, config.d_model, config.rotary_dim) == (1, 96, 96)


def test_set_fields_reach_the_model_and_win_over_the_task():
    """--set changes the built config on top of the variant's and the task's fields (MQAR's
    init_std included); check_model refuses a field the model does not have."""
    from harness.quality.data import Prepared
    from harness.quality.model import build_model

    spec = RunSpec(task="mqar", budget=Budget(tokens=1), variant="tiny",
                   overrides=(("d_state", 32),))
    config = build_model("mamba", "mqar", Prepared(spec)).config
    assert (config.d_state, config.d_model) == (32, 64)
    gpt = RunSpec(task="mqar", budget=Budget(tokens=1), variant="tiny",
                  overrides=(("init_std", 0.02), ("n_layer", 3)))
    config = build_model("gpt", "mqar", Prepared(gpt)).config
    assert (config.init_std, config.n_layer, config.d_ff) == (0.02, 3, 0)
    with pytest.raises(OverrideError, match="gpt has no config field 'd_state'"):
        check_model("gpt", spec)
    assert check_model("mamba", spec) == "mqar"


@pytest.mark.parametrize("variant", ["tiny", "small"])
def test_a_valid_set_is_accepted_for_every_model(variant):
    """--set builds the model on the meta device to refuse what breaks it: that build must
    work for every zoo model, or a valid --set would be refused; an invalid one is refused
    with the field named."""
    import zoo
    from harness.models import check_overrides, variant_fields

    for name in sorted(zoo.REGISTRY):
        fields = variant_fields(name, variant)
        check_overrides(name, (("n_layer", 1),), fields)
        with pytest.raises(OverrideError, match=f"{name} refuses it: n_layer must be"):
            check_overrides(name, (("n_layer", 0),), fields)
