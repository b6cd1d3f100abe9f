"""The spec of a quality run: its defaults and its checks."""

from __future__ import annotations

import pytest

from harness.quality.spec import QualityError, RunSpec
from harness.quality.train import Budget, parse_budget


def test_mqar_defaults_take_large_batches():
    mqar = RunSpec(task="mqar", budget=Budget(tokens=1)).train_config
    assert (mqar.batch_size, mqar.seqlen) == (256, 64)
    assert RunSpec(task="mqar", budget=Budget(tokens=1)).mqar.vocab_size == 512


@pytest.mark.parametrize("fields, message", [
    ({"task": "ppl"}, "--task 'ppl'"), ({"tokenizer": "chars"}, "--tokenizer 'chars'"),
    ({"seqlen": 1}, "--seqlen must be at least 2"), ({"lr": 3.0}, "--lr must be in"),
    ({"task": "seq2seq", "seqlen": 65}, "even length"),
])
def test_bad_specs(fields, message):
    with pytest.raises(QualityError, match=message):
        RunSpec(**{"task": "lm", "budget": parse_budget("1m"), **fields})
