"""One quality run end to end (tiny variants, a few steps): every task and model kind, the
record, the checkpoint, determinism and the folder rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import write_corpus

from harness.quality import run
from harness.quality.checkpoint import load_checkpoint
from harness.quality.train import Budget, parse_budget
from harness.results import FIELDS


def spec(tmp_path: Path, task: str = "lm", **fields) -> run.RunSpec:
    fields.setdefault("budget", Budget(tokens=4 * 4 * 64))
    fields.setdefault("corpus", str(write_corpus(tmp_path)))
    return run.RunSpec(task=task, variant="tiny", seqlen=fields.pop("seqlen", 64), batch_size=4,
                       eval_every=2, **fields)


@pytest.mark.parametrize("model, task, metric", [
    ("gpt", "lm", "bits_per_byte"), ("rwkv", "lm", "bits_per_byte"),
    ("pangu-pi", "lm", "bits_per_byte"), ("transformer", "lm", "bits_per_byte"),
    ("bert", "mlm", "mlm_accuracy"), ("roberta", "mlm", "mlm_accuracy"),
    ("mosaic-bert", "mlm", "mlm_accuracy"),
])
def test_every_model_trains_and_records(tmp_path, model, task, metric):
    data = run.prepare(spec(tmp_path, task))
    result = run.run_one(model, data, tmp_path / "out")
    rec = result.record
    assert set(FIELDS) <= set(rec.to_dict())
    assert rec.kind == "quality" and rec.model == model and rec.metric == metric
    assert rec.steps == 4 and rec.tokens == 4 * 4 * 64
    assert math.isfinite(rec.value) and rec.params > 0
    assert rec.value == rec.scores[metric]
    assert len(result.history.evals) == 2  # at steps 2 and 4
    if metric == "bits_per_byte":
        assert 0 < rec.value < 12 and rec.baseline == pytest.approx(data.baseline)
    else:
        assert 0 <= rec.value <= 1
    # the checkpoint loads back to the same model
    model_back, tok, meta = load_checkpoint(tmp_path / "out")
    assert meta["seqlen"] == 64 and meta["task"] == rec.task
    assert model_back.num_params() == rec.params
    assert not (tmp_path / "out" / "state.pt").exists()


def test_encoder_decoder_runs_lm_as_seq2seq(tmp_path):
    rec = run.run_one("transformer", run.prepare(spec(tmp_path)), tmp_path / "o").record
    assert rec.task == "seq2seq" and any("encoder reads 32" in n for n in rec.notes)


def test_masking_recipes(tmp_path):
    notes = {m: run.run_one(m, run.prepare(spec(tmp_path, "mlm")), tmp_path / m).record.notes
             for m in ("bert", "mosaic-bert")}
    assert "15% masking, static" in notes["bert"][0]
    assert "30% masking, dynamic" in notes["mosaic-bert"][0]


def test_mqar_run(tmp_path):
    from harness.quality.tasks import MQARConfig

    mqar = MQARConfig(vocab_size=128, seqlen=32, num_kv_pairs=4, num_train=256, num_test=64)
    data = run.prepare(spec(tmp_path, "mqar", mqar=mqar, seqlen=None))
    rec = run.run_one("gpt", data, tmp_path / "m").record
    assert rec.task == "mqar" and rec.metric == "accuracy" and rec.seqlen == 32
    assert rec.chance == 0.25 and rec.mqar["num_kv_pairs"] == 4
    assert rec.vocab_size == 128 and 0 <= rec.value <= 1
    # GPT's dropout (0.1 in the catalog's variants) is off for the recall task, and said so
    assert load_checkpoint(tmp_path / "m")[0].config.dropout == 0.0
    assert "dropout set to 0 for the recall task" in rec.notes
    lm_model = run.build_model("gpt", "lm", run.prepare(spec(tmp_path)))
    assert lm_model.config.dropout == 0.1  # the language-modelling task keeps it


def test_mqar_defaults_take_large_batches():
    mqar = run.RunSpec(task="mqar", budget=Budget(tokens=1)).train_config
    assert (mqar.batch_size, mqar.seqlen) == (256, 64)
    assert run.RunSpec(task="mqar", budget=Budget(tokens=1)).mqar.vocab_size == 512


def test_same_seed_same_numbers(tmp_path):
    values = []
    for i in range(2):
        data = run.prepare(spec(tmp_path))
        values.append(run.run_one("gpt", data, tmp_path / f"r{i}").record.scores)
    assert values[0] == values[1]
    other = run.run_one("gpt", run.prepare(spec(tmp_path, seed=1)), tmp_path / "s").record
    assert other.scores != values[0]


def test_bpe_tokenizer_gives_comparable_bits_per_byte(tmp_path):
    data = run.prepare(spec(tmp_path, tokenizer="bpe", bpe_vocab=300))
    assert data.tokenizer.vocab_size <= 300
    rec = run.run_one("gpt", data, tmp_path / "b").record
    assert rec.tokenizer == "bpe" and rec.vocab_size == data.tokenizer.vocab_size
    assert 0 < rec.value < 12


@pytest.mark.parametrize("model, task, message", [
    ("bert", "lm", "bert is an encoder: it runs --task mlm, not lm"),
    ("gpt", "mlm", "gpt is a decoder: it runs --task lm or mqar, not mlm"),
    ("transformer", "mqar", "transformer is an encoder-decoder"),
])
def test_task_for_wrong_kind(model, task, message):
    with pytest.raises(run.QualityError, match=message):
        run.task_for(model, task)


@pytest.mark.parametrize("fields, message", [
    ({"task": "ppl"}, "--task 'ppl'"), ({"tokenizer": "chars"}, "--tokenizer 'chars'"),
    ({"seqlen": 1}, "--seqlen must be at least 2"), ({"lr": 3.0}, "--lr must be in"),
    ({"task": "seq2seq", "seqlen": 65}, "even length"),
])
def test_bad_specs(fields, message):
    with pytest.raises(run.QualityError, match=message):
        run.RunSpec(**{"task": "lm", "budget": parse_budget("1m"), **fields})


def test_folder_rules(tmp_path):
    folder = tmp_path / "f"
    run.check_folder(folder, resume=False, force=False)  # a new folder is fine
    with pytest.raises(run.QualityError, match="no interrupted run"):
        run.check_folder(folder, resume=True, force=False)
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(run.QualityError, match="already holds a checkpoint; pass --force"):
        run.check_folder(folder, resume=False, force=False)
    run.check_folder(folder, resume=False, force=True)
    (folder / "state.pt").write_text("")
    run.check_folder(folder, resume=True, force=False)


def test_corpus_too_small_for_one_batch(tmp_path):
    tiny = tmp_path / "t.txt"
    tiny.write_text("one line\n" * 30)
    with pytest.raises(run.QualityError, match="fewer than one batch"):
        run.prepare(spec(tmp_path, corpus=str(tiny), seqlen=256))


def test_resume_matches_uninterrupted(tmp_path):
    """An interrupted run resumed from its save ends with the numbers of an uninterrupted one."""
    full = run.run_one("gpt", run.prepare(spec(tmp_path)), tmp_path / "full").record

    class Stop(Exception):
        pass

    def stop_after_save(history, lr):
        if history.steps == 3:  # the save at step 2 is on disk
            raise Stop

    data = run.prepare(spec(tmp_path))
    with pytest.raises(Stop):
        run.run_one("gpt", data, tmp_path / "cut", on_step=stop_after_save)
    assert (tmp_path / "cut" / "state.pt").exists()
    resumed = run.run_one("gpt", data, tmp_path / "cut", resume=True).record
    assert resumed.scores == full.scores and resumed.steps == full.steps
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["steps"] == 4
