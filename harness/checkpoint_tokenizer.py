"""A published checkpoint's tokenizer with the harness's tokenizer interface (encode, decode,
the special ids), read with the `tokenizers` library as transformers' fast tokenizers build it,
so that the ids are transformers':

    tok = load_tokenizer("path/to/folder")     # tokenizer.json, vocab.json + merges.txt, vocab.txt
    tok = checkpoint_tokenizer(Path("model.gguf"))   # a GGUF file's own, or its folder's files
    tok.encode("Hello"), tok.eos_id, tok.without_special_tokens()

GPT-2's byte-level BPE (RoBERTa's too, and OPT's with the BOS its tokenizer_config.json asks for)
is built from vocab.json + merges.txt, BERT's WordPiece from vocab.txt, each with the special
tokens and settings of tokenizer_config.json and special_tokens_map.json.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

# tokenizer_config.json's tokenizer_class values of a byte-level BPE in vocab.json + merges.txt
BYTE_LEVEL_CLASSES = ("GPT2Tokenizer", "GPT2TokenizerFast")


class TokenizerError(ValueError):
    """Tokenizer files that cannot be read; the message names the file."""


# --------------------------------------------------------------------------------- the tokenizer


class CheckpointTokenizer:
    """A published checkpoint's tokenizer (a `tokenizers.Tokenizer`) with the interface of the
    harness's tokenizers: encode, decode and the special ids. `encode` adds the special tokens
    the checkpoint's post-processor adds (BERT's [CLS] ... [SEP], LLaMA's <s>), as Hugging
    Face's tokenizers do by default; `without_special_tokens()` gives the plain text ids, for
    scoring text after a start token of one's own."""

    def __init__(self, tokenizer: Any, *, eos_id: int | None, bos_id: int | None,
                 pad_id: int | None, source: Path, add_special_tokens: bool = True,
                 stop_ids: tuple[int, ...] = ()) -> None:
        self._tok = tokenizer
        self.source = source
        self.add_special_tokens = add_special_tokens
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_id, self.bos_id = eos_id, bos_id
        # Every token that ends a generation: the EOS and the others a checkpoint lists
        # (Llama 3 Instruct's <|eot_id|> and <|eom_id|> beside <|end_of_text|>).
        self.stop_ids = tuple(dict.fromkeys(
            [*(() if eos_id is None else (eos_id,)), *stop_ids]))
        # Padding only fills batches that no real token attends to: any id does.
        self.pad_id = next((i for i in (pad_id, eos_id, bos_id) if i is not None), 0)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=self.add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def without_special_tokens(self) -> CheckpointTokenizer:
        plain = copy.copy(self)
        plain.add_special_tokens = False
        return plain

    def with_special_tokens(self) -> CheckpointTokenizer:
        special = copy.copy(self)
        special.add_special_tokens = True
        return special

    def save(self, path: Path | str) -> None:
        self._tok.save(str(path))

    def as_tokenizers(self):
        return self._tok


def load_tokenizer(folder: Path | str, config: dict[str, Any] | None = None
                   ) -> CheckpointTokenizer | None:
    """The tokenizer of a checkpoint folder (None when it has no tokenizer files):
    tokenizer.json, else vocab.json + merges.txt, else vocab.txt, with the special tokens and
    lower-casing of tokenizer_config.json and special_tokens_map.json, and the EOS/BOS ids of
    config.json (or generation_config.json, or the tokenizer's special tokens)."""
    folder = Path(folder)
    config = config if config is not None else _json(folder / "config.json")
    settings = {**_json(folder / "special_tokens_map.json"),
                **_json(folder / "tokenizer_config.json")}
    try:
        from tokenizers import Tokenizer

        if (folder / "tokenizer.json").is_file():
            source = folder / "tokenizer.json"
            tok = Tokenizer.from_file(str(source))
            # A saved truncation or padding (sentence-transformers' files keep theirs) is
            # not part of the text's ids: transformers turns both off unless asked.
            tok.no_truncation()
            tok.no_padding()
            # Special tokens' text in the input is ordinary text (transformers' option).
            tok.encode_special_tokens = bool(settings.get("split_special_tokens", False))
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            source = folder / "vocab.json"
            if config.get("model_type") == "ctrl" and \
                    settings.get("tokenizer_class") not in BYTE_LEVEL_CLASSES:
                raise TokenizerError(
                    f"{source}: CTRL's vocab.json + merges.txt are its own BPE over words "
                    "(CTRLTokenizer, pieces joined by '@@'), not GPT-2's byte-level one, and "
                    "are not rebuilt here; give the folder a tokenizer.json")
            tok = _byte_level_bpe(folder, settings, config.get("model_type"))
        elif (folder / "vocab.txt").is_file():
            source = folder / "vocab.txt"
            tok = _wordpiece(folder / "vocab.txt", settings)
        else:
            return None
    except TokenizerError:
        raise
    except Exception as exc:  # the tokenizers library raises plain Exceptions on bad files
        raise TokenizerError(f"{folder}: cannot read its tokenizer ({first_line(exc)})") from None
    generation = _json(folder / "generation_config.json")

    def special_id(kind: str) -> int | None:
        for source_config in (config, generation):
            ids = _ids(source_config.get(f"{kind}_token_id"))
            if ids:
                return ids[0]
        token = _token_text(settings.get(f"{kind}_token"))
        return tok.token_to_id(token) if token else None

    stops = [value for source_config in (config, generation)
             for value in _ids(source_config.get("eos_token_id"))]
    return CheckpointTokenizer(tok, eos_id=special_id("eos"), bos_id=special_id("bos"),
                               pad_id=special_id("pad"), source=source, stop_ids=tuple(stops))


def _ids(value: Any) -> list[int]:
    """A special token id as config files give it: an int, a list of them, or nothing."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _byte_level_bpe(folder: Path, settings: dict[str, Any], model_type: str | None):
    """GPT-2's byte-level BPE from vocab.json + merges.txt, as transformers' GPT2TokenizerFast
    (and RobertaTokenizerFast, with its <s> ... </s>) builds it; with tokenizer_config.json's
    add_bos_token or add_eos_token (OPT's folders start every text with </s>), those tokens
    around the text, as transformers adds them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = []
    for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#version"):
            pair = line.split(" ")
            if len(pair) != 2:
                raise TokenizerError(f"{folder / 'merges.txt'}: a merge is two tokens "
                                     f"separated by a space, not {line!r}")
            merges.append((pair[0], pair[1]))
    tok = Tokenizer(models.BPE(vocab, merges, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False))
    prefix_space = bool(settings.get("add_prefix_space", False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tok.decoder = decoders.ByteLevel()
    if model_type in ("roberta", "bart"):  # BartTokenizer is RoBERTa's: <s> ... </s>
        cls, sep = _token_text(settings.get("cls_token")) or "<s>", \
            _token_text(settings.get("sep_token")) or "</s>"
        tok.post_processor = processors.RobertaProcessing(
            (sep, vocab[sep]), (cls, vocab[cls]), add_prefix_space=prefix_space,
            trim_offsets=True)
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    _add_special_tokens(tok, settings)
    if model_type not in ("roberta", "bart"):
        _bos_and_eos(tok, settings)
    return tok


def _bos_and_eos(tok: Any, settings: dict[str, Any]) -> None:
    """Put the BOS token before each text and the EOS token after it where tokenizer_config.json
    asks (add_bos_token, add_eos_token) and names a token the vocabulary has: transformers'
    template, `BOS $A EOS`, and `BOS $A EOS BOS $B EOS` for a pair."""
    from tokenizers import processors

    ends = {}  # "bos"/"eos" -> (token, id), for the ends asked for
    for kind in ("bos", "eos"):
        token = _token_text(settings.get(f"{kind}_token"))
        if settings.get(f"add_{kind}_token") and token and tok.token_to_id(token) is not None:
            ends[kind] = (token, tok.token_to_id(token))

    def one(text: str, segment: int) -> list[str]:
        """A segment's template: its BOS, its text, its EOS (where asked for)."""
        before = [f"{ends['bos'][0]}:{segment}"] if "bos" in ends else []
        after = [f"{ends['eos'][0]}:{segment}"] if "eos" in ends else []
        return [*before, text, *after]

    if ends:
        template = processors.TemplateProcessing(
            single=" ".join(one("$A:0", 0)), pair=" ".join(one("$A:0", 0) + one("$B:1", 1)),
            special_tokens=list(dict.fromkeys(ends.values())))
        tok.post_processor = processors.Sequence([tok.post_processor, template])


def _wordpiece(vocab_file: Path, settings: dict[str, Any]):
    """BERT's WordPiece from vocab.txt, as transformers' BertTokenizerFast builds it; lower-cased
    unless tokenizer_config.json says do_lower_case false (BERT's default is to lower-case)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    lines = vocab_file.read_text(encoding="utf-8").split("\n")  # one token a line
    if lines and not lines[-1]:
        lines.pop()  # the file's last newline
    vocab = {token: index for index, token in enumerate(lines)}
    unk = _token_text(settings.get("unk_token")) or "[UNK]"
    cls = _token_text(settings.get("cls_token")) or "[CLS]"
    sep = _token_text(settings.get("sep_token")) or "[SEP]"
    for token in (unk, cls, sep):
        if token not in vocab:
            raise TokenizerError(f"{vocab_file}: no {token} token in the vocabulary")
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        strip_accents=settings.get("strip_accents"),
        lowercase=settings.get("do_lower_case", True))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    tok.decoder = decoders.WordPiece(prefix="##")
    _add_special_tokens(tok, {"unk_token": unk, "cls_token": cls, "sep_token": sep,
                              "pad_token": "[PAD]", "mask_token": "[MASK]", **settings},
                        known=vocab)
    return tok


def _add_special_tokens(tok, settings: dict[str, Any], known: dict[str, int] | None = None):
    """The special tokens named in the tokenizer's settings (and its added_tokens_decoder), so
    that text holding them encodes them whole, as transformers does."""
    from tokenizers import AddedToken

    vocab = known if known is not None else tok.get_vocab()
    names = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
             "mask_token")
    special = [_token_text(settings.get(name)) for name in names]
    added = settings.get("added_tokens_decoder") or {}
    entries = [entry for entry in added.values() if isinstance(entry, dict)]
    special += [entry.get("content") for entry in entries if entry.get("special")]
    tok.add_special_tokens([t for t in dict.fromkeys(special) if t and t in vocab])
    tok.add_tokens([AddedToken(entry["content"], single_word=entry.get("single_word", False),
                               lstrip=entry.get("lstrip", False),
                               rstrip=entry.get("rstrip", False),
                               normalized=entry.get("normalized", True))
                    for entry in entries if not entry.get("special") and entry.get("content")])


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _json(path: Path) -> dict[str, Any]:
    """A JSON object from an optional settings file ({} when absent)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: not a JSON object")
    return data


def first_line(exc: BaseException) -> str:
    """An error's message as one line (its first), or its type's name when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def checkpoint_tokenizer(path: Path, config: dict[str, Any] | None = None
                         ) -> CheckpointTokenizer | None:
    """The tokenizer of the checkpoint at `path` (None when it has none): a GGUF file's own
    (its metadata holds it), else the files in its folder (load_tokenizer)."""
    from zoo.convert.gguf import is_gguf

    if path.is_file() and is_gguf(path):
        return gguf_tokenizer(path)
    return load_tokenizer(tokenizer_folder(path), config)


def gguf_tokenizer(path: Path) -> CheckpointTokenizer:
    """A GGUF file's tokenizer (SentencePiece-style `llama` or byte-level `gpt2`, from its
    tokens, scores and merges), built by transformers' own GGUF converter so that the ids are
    transformers'."""
    fast = transformers_tokenizer(path, "reading a GGUF file's tokenizer")
    return CheckpointTokenizer(fast.backend_tokenizer, eos_id=fast.eos_token_id,
                               bos_id=fast.bos_token_id, pad_id=fast.pad_token_id, source=path)


def transformers_tokenizer(path: Path, needed_for: str):
    """transformers' AutoTokenizer of the checkpoint at `path` (a folder, or a GGUF file);
    a TokenizerError naming `needed_for` when transformers is not installed."""
    from zoo.convert.gguf import is_gguf

    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TokenizerError(f"{path}: {needed_for} needs transformers (pip install "
                             "transformers)") from None
    gguf = path.is_file() and is_gguf(path)
    try:
        return AutoTokenizer.from_pretrained(str(path.parent if path.is_file() else path),
                                             **({"gguf_file": path.name} if gguf else {}))
    except Exception as exc:  # transformers raises many kinds on files it cannot read
        raise TokenizerError(f"{path}: cannot read its tokenizer ({first_line(exc)})") from None


def tokenizer_folder(path: Path) -> Path:
    """Where a checkpoint's tokenizer files are: its folder, or the folder of a single weights
    file (an official RWKV .pth beside the tokenizer.json it was trained with)."""
    return path if path.is_dir() else path.parent
