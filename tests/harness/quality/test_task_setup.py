"""A task's set-up: every model of a comparison gets the same batches, and each encoder its own
masking recipe."""

from __future__ import annotations

import pytest
import torch
from conftest import write_corpus

from harness.quality.data import prepare
from harness.quality.spec import QualityError, RunSpec
from harness.quality.task_setup import _blocks, setup_task
from harness.quality.train import Budget


@pytest.fixture
def data(tmp_path):
    return prepare(RunSpec(task="lm", budget=Budget(tokens=1024), variant="tiny", seqlen=64,
                           batch_size=4, corpus=str(write_corpus(tmp_path))), {"lm", "mlm"})


def test_every_model_gets_the_same_batches(data):
    gpt, rwkv = (setup_task(m, "lm", data, "cpu") for m in ("gpt", "rwkv"))
    for step in (0, 1, 7):
        (x1, y1), (x2, y2) = gpt.batches(step), rwkv.batches(step)
        assert x1["input_ids"].shape == (4, 64)
        assert torch.equal(x1["input_ids"], x2["input_ids"]) and torch.equal(y1, y2)
    assert gpt.metric == "bits_per_byte" and not gpt.notes


def test_bert_masks_once_roberta_at_every_step(data):
    bert, roberta = (setup_task(m, "mlm", data, "cpu") for m in ("bert", "roberta"))
    assert "15% masking, static" in bert.notes[0]
    assert "15% masking, dynamic" in roberta.notes[0]
    # Batches cycle through the n training blocks in one order, so step n sees the rows of
    # step 0 again: BERT with the same masks, RoBERTa with new ones.
    n = data.train_stream.numel() // 64
    (first, targets), (again, targets_again) = bert.batches(0), bert.batches(n)
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert torch.equal(targets, targets_again)
    (first, targets), (again, targets_again) = roberta.batches(0), roberta.batches(n)
    assert not torch.equal(targets != -100, targets_again != -100)


def test_a_split_shorter_than_a_block_is_refused():
    with pytest.raises(QualityError, match="gives no block of 64"):
        _blocks(torch.arange(10), 64)
