"""How a model trains and is scored on its task: the training batches, the periodic validation
and the final test, built from the prepared data. The batches depend on the data and the seed
only, so every model of a comparison gets the same examples in the same order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from harness.quality import tasks
from harness.quality.data import Prepared
from harness.quality.scoring import lm_scores, mlm_scores, mqar_scores, seq2seq_scores
from harness.quality.spec import DEFAULT_MLM_RECIPE, MLM_RECIPES, QualityError
from harness.quality.train import block_batches


@dataclass
class TaskSetup:
    batches: Callable
    evaluate: Callable  # on (part of) the validation split, during training
    test: Callable  # the final score
    metric: str  # the headline metric of `test`'s result
    notes: list[str] = field(default_factory=list)
    validate: Callable | None = None  # the whole validation split, once trained: what a grid
    # chooses learning rates on (never the test)


def setup_task(model: str, task: str, data: Prepared, device: str) -> TaskSetup:
    """The set-up of `task` for `model` (whose masking recipe, for mlm, depends on which
    encoder it is), evaluated on `device`."""
    config = data.spec.train_config
    T, B, seed = config.seqlen, config.batch_size, config.seed
    if task == "mqar":
        mq = data.mqar
        batches = tasks.example_batches({"input_ids": mq.train_inputs}, mq.train_targets, B, seed)
        val = max(1, data.spec.eval_tokens // mq.valid_inputs.shape[1])
        return TaskSetup(
            batches,
            lambda m: mqar_scores(m, mq.valid_inputs[:val], mq.valid_targets[:val], device),
            lambda m: mqar_scores(m, mq.test_inputs, mq.test_targets, device), "accuracy",
            validate=lambda m: mqar_scores(m, mq.valid_inputs, mq.valid_targets, device))
    tok = data.tokenizer
    if task == "lm":
        batches, _ = block_batches(data.train_stream, B, T, seed)
        byte_lengths = tasks.token_bytes(tok)
        val = data.validation_stream[:data.spec.eval_tokens + 1]
        return TaskSetup(batches, lambda m: lm_scores(m, val, T, tok, byte_lengths, device),
                         lambda m: lm_scores(m, data.test_stream, T, tok, byte_lengths, device),
                         "bits_per_byte", validate=lambda m: lm_scores(
                             m, data.validation_stream, T, tok, byte_lengths, device))
    if task == "seq2seq":
        half = T // 2
        inputs, targets = tasks.seq2seq_pairs(data.train_stream, half, half, tok.bos_id,
                                              tok.eos_id)
        batches = tasks.example_batches(inputs, targets, B, seed)
        byte_lengths = tasks.token_bytes(tok)
        val = data.validation_stream[:data.spec.eval_tokens + half]
        note = (f"seq2seq: the encoder reads {half} tokens, the decoder writes the next {half}; "
                f"the test's first {half} tokens are context only")
        return TaskSetup(
            batches, lambda m: seq2seq_scores(m, val, half, tok, byte_lengths, device),
            lambda m: seq2seq_scores(m, data.test_stream, half, tok, byte_lengths, device),
            "bits_per_byte", [note], validate=lambda m: seq2seq_scores(
                m, data.validation_stream, half, tok, byte_lengths, device))
    # mlm: blocks of T tokens; a [MASK] id one past the tokenizer's vocabulary
    rate, dynamic = MLM_RECIPES.get(model, DEFAULT_MLM_RECIPE)
    masking = {"mask_id": tok.vocab_size, "vocab_size": tok.vocab_size,
               "special_ids": (tok.bos_id, tok.eos_id, tok.pad_id)}
    blocks = _blocks(data.train_stream, T)
    if dynamic:
        batches = tasks.mlm_batches(blocks, B, seed, rate=rate, **masking)
    else:  # BERT: one masking of the data, drawn once with the seed
        inputs, targets = tasks.mask_tokens(blocks, generator=torch.Generator().manual_seed(seed),
                                            rate=rate, **masking)
        batches = tasks.example_batches({"input_ids": inputs}, targets, B, seed)
    val = tasks.mlm_eval_set(_blocks(data.validation_stream, T)[:max(1, data.spec.eval_tokens
                                                                       // T)], **masking)
    validation = tasks.mlm_eval_set(_blocks(data.validation_stream, T), **masking)
    test = tasks.mlm_eval_set(_blocks(data.test_stream, T), **masking)
    note = (f"trained at {rate:.0%} masking, {'dynamic' if dynamic else 'static'}; evaluated "
            f"at {tasks.MLM_EVAL_RATE:.0%} (fixed seed)")
    return TaskSetup(batches, lambda m: mlm_scores(m, *val, device),
                     lambda m: mlm_scores(m, *test, device), "mlm_accuracy", [note],
                     validate=lambda m: mlm_scores(m, *validation, device))


def _blocks(stream: torch.Tensor, T: int) -> torch.Tensor:
    n = stream.numel() // T
    if n == 0:
        raise QualityError(f"a split of {stream.numel()} tokens gives no block of {T}")
    return stream[:n * T].view(n, T)
