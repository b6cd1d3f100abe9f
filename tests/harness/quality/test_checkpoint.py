"""Tokenizers and checkpoints round-trip."""

from __future__ import annotations

import pytest
import torch

from harness.models import build_variant
from harness.quality.checkpoint import load_checkpoint, save_checkpoint
from harness.quality.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer
from zoo import fast


def test_byte_tokenizer_round_trip(tmp_path):
    tok = ByteTokenizer()
    text = "déjà vu — ok"
    assert tok.decode(tok.encode(text)) == text and len(tok.encode(text)) == len(text.encode())
    tok.save(tmp_path / "t.json")
    assert isinstance(load_tokenizer(tmp_path / "t.json"), ByteTokenizer)


def test_bpe_tokenizer_trains_and_round_trips(tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog"] * 50 + ["def f(x): return x"] * 50
    tok = BPETokenizer.train(texts, vocab_size=300)
    assert tok.vocab_size <= 300 and {tok.bos_id, tok.eos_id, tok.pad_id} <= set(range(300))
    ids = tok.encode("the lazy fox")
    assert tok.decode(ids) == "the lazy fox" and len(ids) < len("the lazy fox")
    tok.save(tmp_path / "t.json")
    assert load_tokenizer(tmp_path / "t.json").encode("the lazy fox") == ids


def test_unknown_tokenizer_kind(tmp_path):
    (tmp_path / "t.json").write_text('{"kind": "words"}')
    with pytest.raises(ValueError, match="unknown tokenizer kind 'words'"):
        load_tokenizer(tmp_path / "t.json")


@pytest.mark.parametrize("name", ["gpt", "rwkv"])
def test_checkpoint_round_trip(tmp_path, name):
    torch.manual_seed(0)
    model = build_variant(name, "tiny", vocab_size=ByteTokenizer.vocab_size).eval()
    save_checkpoint(tmp_path / "ckpt", name, model, ByteTokenizer(), task="lm", step=3)
    loaded, tok, meta = load_checkpoint(tmp_path / "ckpt")
    ids = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert meta["task"] == "lm" and meta["step"] == 3 and isinstance(tok, ByteTokenizer)
    assert fast.applied(loaded) == fast.applied(model) != ()  # as zoo.build: the speed routes
    assert fast.applied(load_checkpoint(tmp_path / "ckpt", fast=False)[0]) == ()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        (tmp_path / "ckpt" / "model.safetensors").unlink()
        load_checkpoint(tmp_path / "ckpt")
