"""Quality tasks: MQAR, the corpora and their splits, bits per byte, MLM masking, seq2seq pairs."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.models import build_variant
from harness.quality.tasks import (
    IGNORE,
    Document,
    MQARConfig,
    bits_per_byte,
    example_batches,
    lm_blocks,
    load_corpus,
    make_mqar,
    mask_tokens,
    masked_accuracy,
    mlm_batches,
    mlm_eval_set,
    nll_and_bytes,
    path_corpus,
    seq2seq_nll_and_bytes,
    seq2seq_pairs,
    split_corpus,
    split_of,
    stdlib_documents,
    text_bytes,
    token_bytes,
    token_stream,
    unigram_bits_per_byte,
)
from harness.quality.tokenizer import BPETokenizer, ByteTokenizer

# ------------------------------------------------------------------------------ MQAR

SMALL = MQARConfig(vocab_size=256, seqlen=64, num_kv_pairs=8, num_train=400, num_test=100)
# 8 keys out of 19: the top-k path of the distinct sampler, and 0-filler
CRAMPED = MQARConfig(vocab_size=40, seqlen=32, num_kv_pairs=8, random_non_queries=False,
                     num_train=300, num_test=50)


@pytest.mark.parametrize("config", [SMALL, CRAMPED], ids=["small", "cramped"])
def test_mqar_layout(config):
    data = make_mqar(config, seed=0)
    V, K = config.vocab_size, config.num_kv_pairs
    for inputs, targets, n in ((data.train_inputs, data.train_targets, config.num_train),
                               (data.test_inputs, data.test_targets, config.num_test)):
        assert inputs.shape == targets.shape == (n, config.seqlen)
        assert inputs.min() >= 0 and inputs.max() < V
        keys, values = inputs[:, 0:2 * K:2], inputs[:, 1:2 * K:2]
        assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V)).all()
        for row in range(n):
            pairs = dict(zip(keys[row].tolist(), values[row].tolist(), strict=True))
            assert len(pairs) == K  # keys unique within the sequence
            queries = (targets[row] != IGNORE).nonzero().flatten().tolist()
            assert len(queries) == K and all(t >= 2 * K and t % 2 == 0 for t in queries)
            asked = [int(inputs[row, t]) for t in queries]
            assert sorted(asked) == sorted(pairs)  # each key queried once, after the pairs
            answers = [int(targets[row, t]) for t in queries]
            assert answers == [pairs[k] for k in asked]
        if not config.random_non_queries:
            filler = (targets == IGNORE) & (torch.arange(config.seqlen) >= 2 * K)
            assert (inputs[filler] == 0).all()


def test_mqar_is_a_function_of_the_seed():
    a, b, c = make_mqar(SMALL, seed=0), make_mqar(SMALL, seed=0), make_mqar(SMALL, seed=1)
    assert torch.equal(a.train_inputs, b.train_inputs)
    assert torch.equal(a.test_targets, b.test_targets)
    assert not torch.equal(a.train_inputs, c.train_inputs)
    assert not torch.equal(a.train_inputs[:100], a.test_inputs)  # train and test differ


def test_mqar_queries_follow_a_power_law():
    config = MQARConfig(vocab_size=512, seqlen=64, num_kv_pairs=4, num_train=2000, num_test=1)
    targets = make_mqar(config).train_targets
    per_slot = (targets[:, 8::2] != IGNORE).sum(dim=0)  # 28 slots after the 4 pairs
    assert per_slot[0] > per_slot[7] > per_slot[-1] and per_slot[0] > 2 * per_slot.float().mean()


def test_mqar_rejects_impossible_configs():
    with pytest.raises(ValueError, match="even"):
        MQARConfig(seqlen=63)
    with pytest.raises(ValueError, match="seqlen >= 64"):
        MQARConfig(seqlen=32, num_kv_pairs=16)
    with pytest.raises(ValueError, match="exceed seqlen"):
        MQARConfig(vocab_size=64, seqlen=64)


def test_masked_accuracy():
    targets = torch.tensor([[IGNORE, 5, IGNORE, 7], [IGNORE, IGNORE, 6, IGNORE]])
    perfect = targets.clamp(min=0)
    assert masked_accuracy(perfect, targets) == 1.0
    assert masked_accuracy(perfect + 1, targets) == 0.0
    assert masked_accuracy(torch.nn.functional.one_hot(perfect, 10).float(), targets) == 1.0
    half = perfect.clone()
    half[0, 1] = 0
    assert masked_accuracy(half, targets) == pytest.approx(2 / 3)


# -------------------------------------------------------------------------- corpora


@pytest.fixture(scope="module")
def stdlib():
    return stdlib_documents()


def digest(docs) -> str:
    return hashlib.sha256("\0".join(f"{d.title}\0{d.text}" for d in docs).encode()).hexdigest()


def test_stdlib_corpus_is_large_clean_and_deterministic(stdlib, tmp_path):
    assert text_bytes(stdlib) > 1_000_000 and len(stdlib) > 300
    titles = [d.title for d in stdlib]
    assert len(set(titles)) == len(titles) and len({d.text for d in stdlib}) == len(stdlib)
    assert "topic:for" in titles and "module:json" in titles
    skipped = ("module:tkinter", "module:idlelib", "module:test", "module:this")
    assert not any(t.startswith(skipped) for t in titles)
    assert digest(stdlib_documents()) == digest(stdlib)
    # a fresh process with another string-hash seed (and no pytest hooks) gives the same text
    code = ("import json, sys; from harness.quality.tasks import stdlib_documents; "
            "json.dump([[d.title, d.text] for d in stdlib_documents()], open(sys.argv[1], 'w'))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "docs.json")], check=True,
                   env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=Path(__file__).parents[3])
    other = json.loads((tmp_path / "docs.json").read_text())
    assert digest(Document(*d) for d in other) == digest(stdlib)


def test_splits_are_disjoint_and_stable(stdlib):
    corpus = split_corpus("stdlib", stdlib)
    parts = [{d.title for d in split} for split in (corpus.train, corpus.validation, corpus.test)]
    assert sum(map(len, parts)) == len(stdlib) and set.union(*parts) == {d.title for d in stdlib}
    assert all(len(p) > 10 for p in parts) and len(parts[0]) > 0.8 * len(stdlib)
    # the split is a hash of the title alone: fixed across runs, machines and Python versions
    assert [split_of(t) for t in ("module:json", "module:bisect", "doc27.txt")] == \
        ["train", "test", "validation"]
    assert digest(load_corpus().test) == digest(corpus.test)


def test_unigram_baseline_on_the_stdlib(stdlib):
    corpus = split_corpus("stdlib", stdlib)
    # measured 4.92 bits per byte on CPython 3.11 (English prose and code)
    assert 4.5 < unigram_bits_per_byte(corpus.train, corpus.test) < 5.3


def test_user_folder_corpus(tmp_path):
    for i in range(40):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"Document {i} says hello.\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.md").write_text("# Notes\n", encoding="utf-8")
    (tmp_path / "sub" / "copy.rst").write_text("Document 3 says hello.\n", encoding="utf-8")
    (tmp_path / "code.py").write_text("print('not a text file')\n", encoding="utf-8")
    corpus = load_corpus(tmp_path)
    docs = corpus.train + corpus.validation + corpus.test
    assert {d.title for d in corpus.test} == {"doc01.txt", "doc08.txt"}
    assert [d.title for d in corpus.validation] == ["doc27.txt"]
    assert len(docs) == 41 and "sub/notes.md" in {d.title for d in corpus.train}  # copy dropped


def test_user_file_corpus_and_errors(tmp_path):
    text = "".join(f"line {i}\n" for i in range(200))
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    corpus = path_corpus(tmp_path / "book.txt")
    parts = [split[0].text for split in (corpus.train, corpus.validation, corpus.test)]
    assert "".join(parts) == text and all(p.endswith("\n") for p in parts)
    assert 0.88 < len(parts[0]) / len(text) < 0.92
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_corpus(tmp_path / "missing")
    (tmp_path / "few").mkdir()
    (tmp_path / "few" / "a.txt").write_text("alone", encoding="utf-8")
    with pytest.raises(ValueError, match="split empty"):
        load_corpus(tmp_path / "few")


def test_hf_corpus_without_datasets_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails; nothing is fetched
    with pytest.raises(RuntimeError, match="needs the `datasets` library"):
        load_corpus("hf:wikitext:wikitext-2-raw-v1")


def test_an_unreachable_hf_corpus_is_one_line_without_the_hubs_retry_warnings(
        monkeypatch, caplog):
    """huggingface_hub warns at every failed request: the error says it once, in one line, and
    the loggers get their levels back."""
    import logging
    import types

    def load_dataset(name, config):
        logging.getLogger("huggingface_hub").warning("'[Errno -2]' thrown while requesting HEAD")
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub\nsecond line")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    level = logging.getLogger("huggingface_hub").level
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError) as caught:
        load_corpus("hf:wikitext")
    assert str(caught.value) == ("--corpus hf:wikitext: could not load it from the Hugging Face "
                                 "Hub (offline? unknown name?): Couldn't reach 'wikitext' on "
                                 "the Hub")
    assert not caplog.records and logging.getLogger("huggingface_hub").level == level


# -------------------------------------------------------------------- bits per byte


def test_bits_per_byte_by_hand():
    assert bits_per_byte(4 * math.log(256), 4) == pytest.approx(8.0)
    tok = ByteTokenizer()
    stream = token_stream([Document("d", "ab")], tok)
    inputs, targets = lm_blocks(stream, seqlen=4, pad_id=tok.pad_id)
    assert targets.tolist() == [[ord("a"), ord("b"), tok.eos_id, IGNORE]]
    # the model gives the right token probability 1/2, 1/4, 1/8: 1 + 2 + 3 bits over 3 bytes
    logits = torch.full((1, 4, tok.vocab_size), -1e9)
    for t, p in enumerate([1 / 2, 1 / 4, 1 / 8]):
        logits[0, t, targets[0, t]] = math.log(p)
        logits[0, t, 0] = math.log(1 - p)
    nats, n_bytes = nll_and_bytes(logits, targets, token_bytes(tok))
    assert n_bytes == 3 == text_bytes([Document("d", "ab")])
    assert bits_per_byte(nats, n_bytes) == pytest.approx(2.0)


def test_unigram_baseline_by_hand():
    # train "ab": a, b and one end mark; add-one over 257 symbols gives each 2/260
    train, test = [Document("t", "ab")], [Document("u", "a")]
    assert unigram_bits_per_byte(train, test) == pytest.approx(math.log2(130))


@pytest.fixture(scope="module")
def bpe():
    texts = ["the quick brown fox jumps over the lazy dog", "déjà vu, naïve café"] * 30
    return BPETokenizer.train(texts, vocab_size=300)


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_blocks_cover_the_text_once(kind, bpe):
    tok = ByteTokenizer() if kind == "bytes" else bpe
    docs = [Document("a", "the lazy dog — déjà vu"), Document("b", "naïve fox\n"),
            Document("c", "x")]
    stream = token_stream(docs, tok)
    assert stream[0] == tok.eos_id and (stream == tok.eos_id).sum() == 4
    inputs, targets = lm_blocks(stream, seqlen=5, pad_id=tok.pad_id)
    scored = targets[targets != IGNORE]
    assert torch.equal(scored, stream[1:])
    assert torch.equal(inputs.flatten()[:stream.numel()], stream)
    assert int(token_bytes(tok)[scored].sum()) == text_bytes(docs)


def test_example_batches_are_seeded_and_cover_an_epoch():
    inputs, targets = {"x": torch.arange(12)[:, None]}, torch.arange(12)
    batches = example_batches(inputs, targets, batch_size=4, seed=0)
    epoch = torch.cat([batches(s)[1] for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(12)) and torch.equal(batches(1)[1], batches(1)[1])
    assert torch.equal(batches(3)[1], batches(0)[1])  # the next epoch, in the same order
    assert torch.equal(batches(2)[0]["x"][:, 0], batches(2)[1])
    other = example_batches(inputs, targets, batch_size=4, seed=1)
    assert not torch.equal(torch.cat([other(s)[1] for s in range(3)]), epoch)


# ------------------------------------------------------------------------------ MLM

MASK = ByteTokenizer.vocab_size  # one id past the tokenizer's
MASKING = {"mask_id": MASK, "vocab_size": MASK + 1, "special_ids": (256, 257, 258)}


def test_mlm_masking_rate_and_80_10_10():
    ids = torch.randint(0, 256, (200, 500), generator=torch.Generator().manual_seed(0))
    ids[:, ::50] = ByteTokenizer.eos_id
    inputs, targets = mask_tokens(ids, generator=torch.Generator().manual_seed(1), **MASKING)
    chosen = targets != IGNORE
    assert not chosen[:, ::50].any()  # special tokens are never chosen
    assert torch.equal(targets[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    n = int(chosen.sum())
    assert n / (ids.numel() - 2000) == pytest.approx(0.15, abs=0.005)
    masked = (inputs[chosen] == MASK).sum() / n
    replaced = ((inputs[chosen] != MASK) & (inputs[chosen] != ids[chosen])).sum() / n
    assert masked == pytest.approx(0.8, abs=0.015) and replaced == pytest.approx(0.1, abs=0.01)
    assert inputs[chosen].max() < 256 or (inputs[chosen] == MASK).any()
    assert not torch.isin(inputs, torch.tensor([256, 258])).any()  # random ids are ordinary


def test_mlm_masks_are_dynamic_but_seeded():
    blocks = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    first, second = (mask_tokens(blocks, generator=generator, **MASKING)[1] for _ in range(2))
    assert not torch.equal(first, second)  # a new mask each call
    batches = mlm_batches(blocks, batch_size=8, seed=0, **MASKING)
    assert torch.equal(batches(3)[1], batches(3)[1])
    assert not torch.equal(batches(0)[1], batches(1)[1])
    a, b = mlm_eval_set(blocks, **MASKING), mlm_eval_set(blocks, **MASKING)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# -------------------------------------------------------------------------- seq2seq


def test_seq2seq_pairs():
    stream = torch.arange(100)
    inputs, targets = seq2seq_pairs(stream, src_len=10, tgt_len=8, bos_id=1000, eos_id=1001)
    src, tgt = inputs["src_ids"], inputs["tgt_ids"]
    assert src.shape == (11, 10) and tgt.shape == targets.shape == (11, 9)
    assert (tgt[:, 0] == 1000).all() and (targets[:, -1] == 1001).all()
    assert torch.equal(tgt[:, 1:], targets[:, :-1])
    assert torch.equal(targets[:, :-1].flatten(), torch.arange(10, 98))  # chunks tile the stream
    assert torch.equal(src[:, -1] + 1, targets[:, 0])  # the source ends where the target starts


def test_seq2seq_bits_per_byte_leaves_out_the_closing_eos():
    tok = ByteTokenizer()
    stream = token_stream([Document("d", "hello world, hello seq2seq")], tok)
    inputs, targets = seq2seq_pairs(stream, 6, 5, tok.bos_id, tok.eos_id)
    logits = torch.zeros(*targets.shape, tok.vocab_size)  # uniform
    nats, n_bytes = seq2seq_nll_and_bytes(logits, targets, token_bytes(tok))
    assert n_bytes == targets.shape[0] * 5
    assert bits_per_byte(nats, n_bytes) == pytest.approx(math.log2(tok.vocab_size))


def test_tasks_fit_the_zoo_models():
    tok = ByteTokenizer()
    torch.manual_seed(0)
    stream = token_stream([Document("d", "a small text to feed the models " * 4)], tok)
    gpt = build_variant("gpt", "tiny", vocab_size=tok.vocab_size, max_seq_len=32)
    inputs, targets = lm_blocks(stream, 32, tok.pad_id)
    assert gpt(input_ids=inputs, targets=targets).loss.isfinite()
    transformer = build_variant("transformer", "tiny", vocab_size=tok.vocab_size)
    pairs, targets = seq2seq_pairs(stream, 16, 16, tok.bos_id, tok.eos_id)
    out = transformer(**pairs, targets=targets)
    assert out.logits.shape == (*targets.shape, tok.vocab_size) and out.loss.isfinite()
