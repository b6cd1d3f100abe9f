"""The data of a comparison, prepared once: every model of `catalog quality` trains on the same
`Prepared` object, so all of them see the same tokenizer, the same examples in the same order
and the same test split."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.quality import tasks
from harness.quality.spec import QualityError, RunSpec
from harness.quality.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer


@dataclass
class Prepared:
    """The data of one task, built once and shared by every model of a comparison."""

    spec: RunSpec
    tokenizer: Tokenizer | None = None
    corpus_name: str | None = None
    train_stream: torch.Tensor | None = None
    validation_stream: torch.Tensor | None = None
    test_stream: torch.Tensor | None = None
    test_documents: list[str] = field(default_factory=list)
    baseline: float | None = None  # unigram bits per byte of the test split
    mqar: tasks.MQARData | None = None


def prepare(spec: RunSpec, tasks_needed: set[str] | None = None) -> Prepared:
    """Load, split and tokenize the corpus (text tasks) and/or generate MQAR (`mqar`)."""
    needed = tasks_needed or {spec.task}
    out = Prepared(spec)
    if needed & {"lm", "seq2seq", "mlm"}:
        try:
            corpus = tasks.load_corpus(spec.corpus)
        except (OSError, ValueError, RuntimeError) as error:
            raise QualityError(str(error)) from None
        out.corpus_name = corpus.name
        texts = [d.text for d in corpus.train]
        out.tokenizer = (ByteTokenizer() if spec.tokenizer == "bytes"
                         else BPETokenizer.train(texts, spec.bpe_vocab))
        out.train_stream = tasks.token_stream(corpus.train, out.tokenizer)
        out.validation_stream = tasks.token_stream(corpus.validation, out.tokenizer)
        out.test_stream = tasks.token_stream(corpus.test, out.tokenizer)
        out.test_documents = [d.text for d in corpus.test]
        out.baseline = tasks.unigram_bits_per_byte(corpus.train, corpus.test)
        seqlen = spec.train_config.seqlen
        if out.train_stream.numel() < spec.train_config.batch_size * seqlen + 1:
            raise QualityError(f"corpus {corpus.name}: its training split has "
                               f"{out.train_stream.numel():,} tokens, fewer than one batch of "
                               f"{spec.train_config.batch_size} x {seqlen}")
    if "mqar" in needed:
        out.mqar = tasks.make_mqar(spec.mqar, seed=spec.seed)
    return out
