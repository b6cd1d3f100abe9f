"""Tokenizers shared by every model of a quality comparison.

`ByteTokenizer` (the default) maps UTF-8 bytes to ids 0..255 and adds BOS/EOS/PAD, so that
every model sees the same tokens and bits per byte needs no conversion. `BPETokenizer` is a
byte-level BPE trained with the `tokenizers` library on the training split.
Both save to and load from one JSON file (`tokenizer.json` of a checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def save(self, path: Path | str) -> None: ...


class ByteTokenizer:
    """Ids 0..255 are the UTF-8 bytes; 256 = BOS, 257 = EOS, 258 = PAD."""

    kind = "bytes"
    bos_id, eos_id, pad_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps({"kind": self.kind}))

    def as_tokenizers(self):
        """The same ids as a `tokenizers.Tokenizer` (what Hugging Face's fast tokenizers read
        from tokenizer.json): GPT-2's byte-to-character table with id = byte value and no
        merges, and <bos>, <eos>, <pad> as special tokens 256, 257, 258."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        vocab = {char: byte for byte, char in byte_characters().items()}
        tok = HFTokenizer(models.BPE(vocab, [], continuing_subword_prefix="",
                                     end_of_word_suffix="", fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["<bos>", "<eos>", "<pad>"])  # 256, 257, 258, in this order
        return tok


def byte_characters() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (itself when it is one,
    else the next code point from 256), which byte-level BPE vocabularies spell tokens in."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars


class BPETokenizer:
    """A byte-level BPE from the `tokenizers` library, with <bos>, <eos> and <pad> tokens."""

    kind = "bpe"
    SPECIALS = ("<bos>", "<eos>", "<pad>")

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.bos_id, self.eos_id, self.pad_id = (tokenizer.token_to_id(s) for s in self.SPECIALS)

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(cls.SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps({"kind": self.kind, "tokenizer": self._tok.to_str()}))

    def as_tokenizers(self):
        """The `tokenizers.Tokenizer` it is (what tokenizer.json holds for Hugging Face)."""
        return self._tok


def load_tokenizer(path: Path | str) -> Tokenizer:
    """The tokenizer saved at `path` (a tokenizer.json written by `save`)."""
    data = json.loads(Path(path).read_text())
    if data.get("kind") == "bytes":
        return ByteTokenizer()
    if data.get("kind") == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(data["tokenizer"]))
    raise ValueError(f"{path}: unknown tokenizer kind {data.get('kind')!r}; expected bytes or bpe")
