"""The scoring functions on models whose predictions are known: a uniform model scores
log2(V) bits per token, a model that always guesses one token is right exactly where that token
is the target, and evaluation sets larger than one batch are summed whole."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from harness.quality import tasks
from harness.quality.scoring import (
    EVAL_BATCH,
    lm_scores,
    mlm_scores,
    mqar_scores,
    scored_positions,
    seq2seq_scores,
)
from harness.quality.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
V = TOK.vocab_size


class Guessing(torch.nn.Module):
    """Uniform logits over V tokens, or (with `guess`) a confident bet on one token."""

    def __init__(self, guess: int | None = None):
        super().__init__()
        self.guess = guess

    def forward(self, input_ids=None, tgt_ids=None, src_ids=None):
        ids = tgt_ids if tgt_ids is not None else input_ids
        logits = torch.zeros(*ids.shape, V)
        if self.guess is not None:
            logits[..., self.guess] = 10.0
        return SimpleNamespace(logits=logits)


def byte_stream(n: int) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(0))


def test_a_uniform_model_scores_log2_v_bits_per_byte():
    # 3 blocks of 16 tokens more than a batch of EVAL_BATCH: the last batch counts too
    stream = byte_stream((EVAL_BATCH + 3) * 16 + 1)
    scores = lm_scores(Guessing(), stream, 16, TOK, tasks.token_bytes(TOK), "cpu")
    assert scores["bits_per_byte"] == pytest.approx(math.log2(V))
    assert scores["loss"] == pytest.approx(math.log(V))


def test_seq2seq_scores_only_the_written_text():
    scores = seq2seq_scores(Guessing(), byte_stream(8 + 8 * 20), 8, TOK,
                            tasks.token_bytes(TOK), "cpu")
    assert scores == {"bits_per_byte": pytest.approx(math.log2(V))}


def test_accuracy_and_loss_at_the_scored_positions_only():
    n, T = EVAL_BATCH + 4, 6
    inputs = torch.zeros(n, T, dtype=torch.long)
    targets = torch.full((n, T), tasks.IGNORE)
    targets[:, 2] = 5  # one scored position per row, half of them 5, half 7
    targets[n // 2:, 2] = 7
    correct, total, _ = scored_positions(Guessing(guess=5), inputs, targets, "cpu")
    assert (correct, total) == (n // 2, n)
    assert mqar_scores(Guessing(guess=5), inputs, targets, "cpu") == {"accuracy": 0.5}
    uniform = mlm_scores(Guessing(), inputs, targets, "cpu")
    assert uniform["mlm_accuracy"] == 0  # argmax of equal logits is token 0, never a target
    assert uniform["mlm_loss"] == pytest.approx(math.log(V))
