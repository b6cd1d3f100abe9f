"""lm-eval evaluation of a checkpoint, as a library call: its spec's checks, the records it
builds, and the offline environment and silenced progress bar that last only while lm-eval
runs. (The same through lm-eval itself:
tests/cli/test_quality_cli.py::test_eval_agrees_with_the_harness.)"""

from __future__ import annotations

import json
import os

import lm_eval.api.task as lm_eval_task
import pytest
from conftest import write_corpus
from tqdm import tqdm

from harness.environment import environment_defaults
from harness.quality import lm_eval_adapter
from harness.quality.evaluate import (
    LM_EVAL_ENVIRONMENT,
    EvalSpec,
    run_lm_eval,
)
from harness.quality.spec import QualityError


def test_the_process_environment_by_default(monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    with environment_defaults(LM_EVAL_ENVIRONMENT):
        assert os.environ["HF_DATASETS_OFFLINE"] == "1" and os.environ["TQDM_DISABLE"] == "0"
    assert "HF_DATASETS_OFFLINE" not in os.environ and os.environ["TQDM_DISABLE"] == "0"


# ----------------------------------------------------------------------------- EvalSpec


@pytest.mark.parametrize("fields, message", [
    ({"tasks": ()}, "--tasks names no task"),
    ({"batch_size": 0}, "--batch-size must be at least 1, not 0"),
    ({"max_length": 0}, "--max-length must be at least 1, not 0"),
    ({"limit": -1}, "--limit must be at least 1, not -1"),
])
def test_bad_eval_specs(tmp_path, fields, message):
    with pytest.raises(QualityError, match=message):
        EvalSpec(checkpoint=tmp_path, **fields)


# --------------------------------------------------------------------------- run_lm_eval


def trained_checkpoint(folder, **meta):
    """A checkpoint folder as far as `run_lm_eval` reads it: its config.json."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(meta))
    return folder


def test_what_is_not_a_text_checkpoint_is_refused(tmp_path):
    with pytest.raises(QualityError, match="not a checkpoint"):
        run_lm_eval(EvalSpec(checkpoint=tmp_path))
    mqar = trained_checkpoint(tmp_path / "mqar", zoo="gpt", task="mqar")
    with pytest.raises(QualityError, match="trained on mqar"):
        run_lm_eval(EvalSpec(checkpoint=mqar))
    assert not (mqar / "lm_eval_tasks").exists()


def test_records_of_the_numeric_scores_with_the_command(tmp_path, monkeypatch):
    """lm-eval itself replaced by a stand-in that reports what it was given and the
    environment it ran in."""
    corpus = write_corpus(tmp_path)
    folder = trained_checkpoint(tmp_path / "ckpt", zoo="gpt", variant="tiny", seqlen=64,
                                params=1234, task="lm", corpus=str(corpus),
                                scores={"bits_per_byte": 2.5})
    seen = {}

    def stand_in(checkpoint, documents, task_folder, **kwargs):
        seen.update(checkpoint=checkpoint, documents=documents, task_folder=task_folder,
                    environ={name: os.environ.get(name) for name in LM_EVAL_ENVIRONMENT},
                    bar=lm_eval_task.tqdm, **kwargs)
        return {"zoo_heldout": {"bits_per_byte": 2.4, "word_perplexity": 30.0, "note": "N/A"}}

    monkeypatch.setattr(lm_eval_adapter, "evaluate_checkpoint", stand_in)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    spec = EvalSpec(checkpoint=folder, tasks=("zoo_heldout",), batch_size=2, limit=3)
    evaluation = run_lm_eval(spec, command="catalog eval ckpt --limit 3")

    assert seen["environ"] == {"HF_DATASETS_OFFLINE": "1",
                               "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "0"}
    assert "HF_DATASETS_OFFLINE" not in os.environ and os.environ["TQDM_DISABLE"] == "0"
    # lm-eval's request bar was silenced for the call only
    assert seen["bar"].keywords == {"disable": True} and lm_eval_task.tqdm is tqdm
    assert seen["task_folder"] == folder / "lm_eval_tasks" and seen["documents"]
    assert (seen["tasks"], seen["limit"], seen["batch_size"], seen["max_length"],
            seen["device"]) == (["zoo_heldout"], 3, 2, None, "cpu")

    assert evaluation.scores["zoo_heldout"]["note"] == "N/A"  # shown, not recorded
    assert evaluation.trained_scores == {"bits_per_byte": 2.5}
    records = {r.metric: r for r in evaluation.records}
    assert set(records) == {"bits_per_byte", "word_perplexity"}
    rec = records["bits_per_byte"]
    assert (rec.kind, rec.impl, rec.mode, rec.model, rec.variant) == (
        "quality", "lm-eval", "eval", "gpt", "tiny")
    assert (rec.task, rec.value, rec.seqlen, rec.params, rec.limit) == (
        "zoo_heldout", 2.4, 64, 1234, 3)
    assert rec.checkpoint == str(folder) and rec.corpus == str(corpus)
    assert rec.command == "catalog eval ckpt --limit 3" and rec.device == "cpu" and rec.time
