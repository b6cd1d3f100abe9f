"""The spec of a quality run: its defaults, its checks, and the parsing of command-line option
values into it (each bad value refused with a message that names the option)."""

from __future__ import annotations

import pytest

from harness.quality.spec import DEFAULT_MQAR, QualityError, RunSpec
from harness.quality.tasks import MQARConfig
from harness.quality.train import Budget, parse_budget


def test_mqar_defaults_follow_zoology_at_a_cpu_size():
    """2,048 tokens a step whatever the length; Zoology's cosine to 0 and its early stop."""
    mqar = RunSpec(task="mqar", budget=Budget(tokens=1)).train_config
    assert (mqar.batch_size, mqar.seqlen) == (32, 64)
    assert (mqar.min_lr_ratio, mqar.stop_at) == (0.0, ("accuracy", 0.99, "max"))
    longer = RunSpec(task="mqar", budget=Budget(tokens=1), mqar=MQARConfig(seqlen=256))
    assert longer.train_config.batch_size == 8
    assert RunSpec(task="mqar", budget=Budget(tokens=1)).mqar.vocab_size == 512


def test_an_lm_batch_is_counted_in_tokens():
    """Training length as an axis keeps the tokens of a step: 8 x 256 = 16 x 128 = 2 x 1024."""
    budget = Budget(tokens=10_000)
    batches = {T: RunSpec(task="lm", budget=budget, seqlen=T).train_config.batch_size
               for T in (128, 256, 1024, 4096)}
    assert batches == {128: 16, 256: 8, 1024: 2, 4096: 1}
    assert RunSpec(task="lm", budget=budget).train_config.batch_size == 8
    explicit = RunSpec(task="lm", budget=budget, seqlen=1024, batch_size=8)
    assert explicit.train_config.batch_size == 8


def test_evaluation_lengths_double_up_to_the_longest():
    spec = RunSpec(task="lm", budget=Budget(tokens=1), seqlen=256, extrapolate=4096)
    assert spec.eval_lengths() == [256, 512, 1024, 2048, 4096]
    assert RunSpec(task="lm", budget=Budget(tokens=1), seqlen=256,
                   extrapolate=1000).eval_lengths() == [256, 512, 1000]
    with pytest.raises(QualityError, match="--extrapolate 128 is shorter"):
        RunSpec(task="lm", budget=Budget(tokens=1), seqlen=256, extrapolate=128)
    with pytest.raises(QualityError, match="--stride 512"):
        RunSpec(task="lm", budget=Budget(tokens=1), seqlen=256, extrapolate=512, stride=512)
    with pytest.raises(QualityError, match="--task lm"):
        RunSpec(task="mqar", budget=Budget(tokens=1), extrapolate=512)
    # the encoder-decoder's seq2seq has a length curve of its own, in pairs, not windows
    assert RunSpec(task="seq2seq", budget=Budget(tokens=1), seqlen=256,
                   extrapolate=1024).eval_lengths() == [256, 512, 1024]
    with pytest.raises(QualityError, match="leave --stride out"):
        RunSpec(task="seq2seq", budget=Budget(tokens=1), seqlen=256, extrapolate=512, stride=64)


@pytest.mark.parametrize("fields, message", [
    ({"task": "ppl"}, "--task 'ppl'"), ({"tokenizer": "chars"}, "--tokenizer 'chars'"),
    ({"seqlen": 1}, "--seqlen must be at least 2"), ({"lr": 3.0}, "--lr must be in"),
    ({"task": "seq2seq", "seqlen": 65}, "even length"),
    ({"eval_every": 0}, "--eval-every must be at least 1, not 0"),
    ({"extrapolate": 0}, "--extrapolate 0 is shorter than the training length 256"),
    ({"device": "gpu0"}, "--device 'gpu0' is not a torch device"),
    ({"dtype": "float16"}, "--dtype 'float16': training takes float32 or bfloat16"),
    ({"tokenizer": "bpe", "bpe_vocab": 259}, "--bpe-vocab 259: byte-level BPE starts from 259 "
                                             "tokens"),
])
def test_bad_specs(fields, message):
    with pytest.raises(QualityError, match=message):
        RunSpec(**{"task": "lm", "budget": parse_budget("1m"), **fields})


def test_from_options_parses_the_budget_and_the_mqar_options():
    spec = RunSpec.from_options(task="mqar", budget="500K-tokens", variant="tiny", seed=3,
                                mqar_seqlen=32, mqar_kv_pairs=2, mqar_vocab=128, device="cpu")
    assert spec.budget == Budget(tokens=500_000)
    assert spec.mqar == MQARConfig(seqlen=32, num_kv_pairs=2, vocab_size=128)
    assert (spec.task, spec.variant, spec.seed) == ("mqar", "tiny", 3)
    assert spec.train_config.seqlen == 32  # mqar trains at the MQAR length


def test_from_options_defaults_are_the_specs():
    assert RunSpec.from_options(task="lm", budget="5m") == RunSpec(task="lm",
                                                                     budget=Budget(seconds=300))
    assert RunSpec.from_options(task="lm", budget="5m").mqar == DEFAULT_MQAR


@pytest.mark.parametrize("options, message", [
    ({"budget": "5 parsecs"}, "--budget '5 parsecs'"),
    ({"mqar_kv_pairs": 0}, "--mqar-kv-pairs must be at least 1, not 0"),
    ({"mqar_seqlen": 63}, "--mqar-seqlen 63, .*: MQAR seqlen must be even"),
    ({"mqar_vocab": 64}, "--mqar-vocab 64: MQAR vocab_size 64 must exceed seqlen 64"),
    ({"mqar_kv_pairs": 20}, "--mqar-kv-pairs 20, .*need seqlen >= 80"),
    ({"batch_size": 1}, "--batch-size must be at least 2, not 1"),
    ({"eval_every": -5}, "--eval-every must be at least 1, not -5"),
    ({"device": "tpu:x"}, "--device 'tpu:x'"),
])
def test_from_options_names_the_bad_option(options, message):
    with pytest.raises(QualityError, match=message):
        RunSpec.from_options(**{"task": "lm", "budget": "5m", **options})


def test_set_reads_numbers_switches_and_text():
    from harness.models import parse_overrides

    assert parse_overrides(["d_state=128", "dt_min=1e-3", "pre_ln=false", "activation=gelu",
                            "dt_rank=None", "d_state=64"]) == (
        ("d_state", 64), ("dt_min", 0.001), ("pre_ln", False), ("activation", "gelu"),
        ("dt_rank", None))  # the last of a repeated field wins, in its first place
    assert parse_overrides(None) == ()


@pytest.mark.parametrize("text, message", [
    ("d_state", r"give FIELD=VALUE"),
    ("=3", r"give FIELD=VALUE"),
    ("d_state=", r"give FIELD=VALUE"),
    ("d_model=64", r"d_model is set by --width"),
    ("vocab_size=300", r"vocab_size is set by the task"),
])
def test_set_refuses_what_it_cannot_read_or_may_not_change(text, message):
    from harness.models import OverrideError, parse_overrides
    from harness.quality.spec import SET_BY_OPTIONS

    with pytest.raises(OverrideError, match=message):
        parse_overrides([text], SET_BY_OPTIONS)


@pytest.mark.parametrize("pairs, message", [
    ((("d_stat", 3),), r"mamba has no config field 'd_stat'; its fields: .*d_state"),
    ((("d_state", 3.5),), r"mamba's d_state is an integer \(its default: 16\)"),
    ((("d_state", True),), r"mamba's d_state is an integer"),
    ((("dt_min", "small"),), r"mamba's dt_min is a number"),
    ((("conv_bias", 1),), r"mamba's conv_bias is True or False"),
    # a field that may be None (int | None): the int is checked, as for any integer field
    ((("scan_chunk_len", "32|64"),), r"mamba's scan_chunk_len is an integer \(its default: "
                                     r"None\)"),
])
def test_check_overrides_names_the_field_and_what_would_do(pairs, message):
    from harness.models import OverrideError, check_overrides

    with pytest.raises(OverrideError, match=message):
        check_overrides("mamba", pairs, {"d_model": 64})
    check_overrides("mamba", (("d_state", 128), ("dt_min", 1)), {})  # an int is a number
    check_overrides("mamba", (("scan_chunk_len", 32),), {})
    check_overrides("mamba", (("scan_chunk_len", None),), {})
    with pytest.raises(OverrideError, match=r"--set head_dim=7: mamba2 refuses it: .*multiple"):
        check_overrides("mamba2", (("head_dim", 7),), {"d_model": 64})


def test_set_fields_name_the_variant_and_cross_to_a_cell_process():
    import json

    spec = RunSpec(task="mqar", budget=Budget(tokens=1), variant="tiny",
                   overrides=(("d_state", 128), ("dt_max", 0.5)))
    assert spec.variant_label == "tiny d_state=128,dt_max=0.5"
    assert RunSpec(task="mqar", budget=Budget(tokens=1), variant="tiny").variant_label == "tiny"
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize("options, message", [
    ({"task": "lm", "budget": "2047-tokens"},
     "--budget 2,047 tokens is less than one step of 8 x 256 = 2,048 tokens; give at least "
     "2048-tokens"),
    ({"task": "mqar", "budget": "100-tokens"}, "one step of 32 x 64 = 2,048 tokens"),
    ({"task": "lm", "budget": "1000-tokens", "seqlen": 100, "batch_size": 11},
     "one step of 11 x 100 = 1,100 tokens"),
])
def test_a_budget_of_tokens_less_than_one_step_is_refused(options, message):
    with pytest.raises(QualityError, match=message):
        RunSpec.from_options(**options)
    enough = {**options, "budget": "2048-tokens"}
    if "seqlen" not in options:
        assert RunSpec.from_options(**enough).budget == Budget(tokens=2048)
