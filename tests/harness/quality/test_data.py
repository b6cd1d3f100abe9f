"""The data of a comparison: prepared once from the corpus, refused when too small."""

from __future__ import annotations

import pytest
from conftest import write_corpus

from harness.quality.data import prepare
from harness.quality.spec import QualityError, RunSpec
from harness.quality.train import Budget


def spec(corpus, **fields) -> RunSpec:
    return RunSpec(task="lm", budget=Budget(tokens=1024), variant="tiny", batch_size=4,
                   corpus=str(corpus), **fields)


def test_corpus_too_small_for_one_batch(tmp_path):
    tiny = tmp_path / "t.txt"
    tiny.write_text("one line\n" * 30)
    with pytest.raises(QualityError, match="fewer than one batch"):
        prepare(spec(tiny, seqlen=256))


def test_text_splits_and_the_unigram_baseline(tmp_path):
    data = prepare(spec(write_corpus(tmp_path), seqlen=64))
    assert data.corpus_name and data.tokenizer.vocab_size == 259  # 256 bytes + BOS, EOS, PAD
    assert data.validation_stream.numel() > 0 and data.test_stream.numel() > 0
    assert data.train_stream.numel() > 10 * data.test_stream.numel()  # 90/5/5 by position
    assert 0 < data.baseline < 8  # bits per byte of byte frequencies: below 8 for English
    assert data.mqar is None  # no task asked for it


def test_a_missing_corpus_is_a_quality_error(tmp_path):
    with pytest.raises(QualityError, match="no such file"):
        prepare(spec(tmp_path / "absent.txt"))
