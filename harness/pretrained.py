"""Published checkpoints as the harness uses them: a folder, a weights file or a Hugging Face hub
id -> the zoo model, the checkpoint's own tokenizer, and what records call it.

    loaded = load_pretrained("gpt2")                 # hub id (cache; HF_HUB_OFFLINE=1 honoured)
    loaded = load_pretrained("path/to/folder", model="llama", device="cuda")
    for piece in stream_text(loaded, "Once upon a time", max_new_tokens=20):
        ...                                          # text as it is decoded (the CLI prints it)
    name, fields = checkpoint_fields("gpt2")         # zoo config fields, no weight read

A folder written by `catalog train` (config.json with a `zoo` key) loads too, with the
tokenizer it was trained with. The tokenizer of a published checkpoint is read with the
`tokenizers` library from tokenizer.json, or built from GPT-2's vocab.json + merges.txt
(byte-level BPE; RoBERTa's too) or BERT's vocab.txt (WordPiece) as transformers' fast tokenizers
build them, so that the ids are theirs.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from zoo.convert import CONVERTERS, CheckpointError, detect_model, resolve
from zoo.convert.detect import read_config, read_shapes

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
DECODERS = ("gpt2, openai-gpt, llama, mistral, gpt_neox, bloom, opt, mamba, mamba2, rwkv (or "
            "an official RWKV .pth)")


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
            tok = _byte_level_bpe(folder, settings, config.get("model_type"))
        elif (folder / "vocab.txt").is_file():
            source = folder / "vocab.txt"
            tok = _wordpiece(folder / "vocab.txt", settings)
        else:
            return None
    except TokenizerError:
        raise
    except Exception as exc:  # the tokenizers library raises plain Exceptions on bad files
        raise TokenizerError(f"{folder}: cannot read its tokenizer ({_first_line(exc)})") from None
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
    if model_type == "roberta":
        cls, sep = _token_text(settings.get("cls_token")) or "<s>", \
            _token_text(settings.get("sep_token")) or "</s>"
        tok.post_processor = processors.RobertaProcessing(
            (sep, vocab[sep]), (cls, vocab[cls]), add_prefix_space=prefix_space,
            trim_offsets=True)
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    _add_special_tokens(tok, settings)
    if model_type != "roberta":
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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------------------------- the model


@dataclass
class Pretrained:
    """A loaded checkpoint: the zoo model (eval mode), its tokenizer (None when the checkpoint
    has none), the zoo model's name, where it was read from and what records call it."""

    model: Any
    tokenizer: Any
    name: str
    path: Path
    label: str  # `checkpoint:<as given>`: the records' variant, so two checkpoints never mix
    # a `catalog train` folder's config.json; else the zoo model (and the training length of a
    # folder `catalog export` wrote)
    meta: dict[str, Any] = field(default_factory=dict)
    # Trained here (a `catalog train` folder, or one `catalog export` wrote from it): every
    # training document followed an EOS, so a prompt is read after one.
    after_eos: bool = False

    @property
    def is_decoder(self) -> bool:
        return bool(getattr(self.model, "causal_lm", False))


def checkpoint_label(path_or_id: Path | str) -> str:
    return f"checkpoint:{path_or_id}"


def is_trained_checkpoint(path: Path) -> bool:
    """Whether `path` is a folder written by `catalog train` (its config.json names the zoo
    model under `zoo`, beside the model's config fields)."""
    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    return isinstance(read_config(path).get("zoo"), str)  # no Hugging Face config has `zoo`


def model_of(path_or_id: Path | str, model: str | None = None,
             revision: str | None = None) -> tuple[str, Path]:
    """(zoo model, local path) of a checkpoint: `model` when given, else the one it is."""
    path = resolve(path_or_id, revision)
    if is_trained_checkpoint(path):
        name = read_config(path)["zoo"]
        if model is not None and model != name:
            raise CheckpointError(f"{path}: a `catalog train` checkpoint of {name}, not {model}")
        return name, path
    if model is not None and model not in CONVERTERS:
        raise CheckpointError(f"no checkpoint converter for zoo model {model!r}; available: "
                              f"{', '.join(sorted(CONVERTERS))}")
    return model or detect_model(path), path


def load_pretrained(path_or_id: Path | str, model: str | None = None, device: str = "cpu",
                    revision: str | None = None, fast: bool = True) -> Pretrained:
    """The checkpoint at `path_or_id` (folder, weights file, hub id or `catalog train` folder)
    as zoo model `model` (default: the one its config.json or keys say), on `device`, with its
    tokenizer; fp32, eval mode, the zoo's CPU speed routes unless `fast` is False."""
    import zoo

    name, path = model_of(path_or_id, model, revision)
    label = checkpoint_label(path_or_id)
    if is_trained_checkpoint(path):
        from harness.quality.checkpoint import load_checkpoint

        net, tokenizer, meta = load_checkpoint(path, device=device, fast=fast)
        return Pretrained(net, tokenizer, name, path, label, meta, after_eos=True)
    config = read_config(path) if path.is_dir() else {}
    net = zoo.from_pretrained(name, path, fast=fast).to(device)
    tokenizer = checkpoint_tokenizer(path, config)
    meta: dict[str, Any] = {"zoo": name}
    run = config.get("catalog")  # a folder `catalog export` wrote: the run it came from
    exported = isinstance(run, dict)
    if exported and isinstance(run.get("seqlen"), int):
        meta["seqlen"] = run["seqlen"]  # scored at the length it trained at, as its run folder
    return Pretrained(net, tokenizer, name, path, label, meta, after_eos=exported)


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
        raise TokenizerError(f"{path}: cannot read its tokenizer ({_first_line(exc)})") from None


def tokenizer_folder(path: Path) -> Path:
    """Where a checkpoint's tokenizer files are: its folder, or the folder of a single weights
    file (an official RWKV .pth beside the tokenizer.json it was trained with)."""
    return path if path.is_dir() else path.parent


def load_for_scoring(path_or_id: Path | str, device: str = "cpu"):
    """(model, tokenizer, meta) as lm-eval's `zoo` adapter scores text: a published
    checkpoint's tokenizer without its special tokens (the adapter puts its own start token
    before every text), a `catalog train` checkpoint's as it was trained; meta is the
    checkpoint's (Pretrained.meta) with `after_eos` (Pretrained.after_eos)."""
    loaded = load_pretrained(path_or_id, device=device)
    tokenizer = loaded.tokenizer
    if tokenizer is None:
        raise CheckpointError(f"{path_or_id}: no tokenizer files (tokenizer.json, vocab.json + "
                              "merges.txt, or vocab.txt) beside the weights")
    if isinstance(tokenizer, CheckpointTokenizer):
        tokenizer = tokenizer.without_special_tokens()
    return loaded.model, tokenizer, {**loaded.meta, "after_eos": loaded.after_eos}


def require_decoder(path_or_id: Path | str, name: str, what: str) -> None:
    """A CheckpointError unless zoo model `name` is a causal LM (`what` needs one)."""
    from zoo.registry import load_class

    if not getattr(load_class(name), "causal_lm", False):
        raise CheckpointError(f"{path_or_id} is a {name} checkpoint, an encoder: {what} needs a "
                              f"decoder checkpoint ({DECODERS})")


# --------------------------------------------------------------------------------- generation


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    """A ValueError naming the option when a generation setting is out of range."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, not {max_new_tokens}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top-k must be at least 1, not {top_k}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"--temperature must be 0 (greedy) or above, not {temperature}")


def decode_ids(loaded: Pretrained, prompt_ids: list[int], max_new_tokens: int = 50,
               temperature: float = 0.0, top_k: int | None = None,
               seed: int | None = None) -> Iterator[int]:
    """The new token ids after `prompt_ids`, one at a time as the model produces them (greedy
    when temperature is 0), until `max_new_tokens` or a token that ends generation (the
    tokenizer's EOS, or another its checkpoint lists: not yielded)."""
    from zoo.model import decode

    model = loaded.model
    if not loaded.is_decoder:
        raise CheckpointError(f"{loaded.path} is a {loaded.name} checkpoint, an encoder: "
                              f"generation needs a decoder checkpoint ({DECODERS})")
    check_sampling(max_new_tokens, temperature, top_k)
    table = type(model).position_table
    limit = getattr(model.config, table) if table else None
    if limit is not None and len(prompt_ids) + max_new_tokens - 1 > limit:
        raise ValueError(f"the prompt's {len(prompt_ids)} tokens and {max_new_tokens} new ones "
                         f"pass the {limit} positions of {loaded.name}'s position table; give "
                         "a shorter prompt or fewer --max-new-tokens")
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    eos = getattr(loaded.tokenizer, "eos_id", None)
    stops = set(getattr(loaded.tokenizer, "stop_ids", None) or ([] if eos is None else [eos]))
    ids = torch.tensor([prompt_ids], device=device)

    def step(tokens: torch.Tensor, cache: Any):
        return model(tokens, cache=cache, use_cache=True)

    steps = decode(step, ids, max_new_tokens, temperature, top_k, generator, eos)
    try:
        for next_ids in steps:
            token = int(next_ids[0])
            if token in stops:
                return
            yield token
    finally:
        steps.close()


def chat_ids(loaded: Pretrained, message: str) -> list[int]:
    """The ids of `message` as the user's turn of a chat with the assistant's turn opened, laid
    out by the checkpoint's chat template (tokenizer_config.json's `chat_template`, or a GGUF
    file's) as transformers' apply_chat_template renders it."""
    path = loaded.path
    if not isinstance(loaded.tokenizer, CheckpointTokenizer) or loaded.after_eos:
        raise ValueError(f"{path}: a model trained here has no chat template; --chat needs a "
                         "published instruction-tuned checkpoint")
    tokenizer = transformers_tokenizer(path, "--chat (rendering the chat template)")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{path}: its tokenizer has no chat template (tokenizer_config.json's "
                         "chat_template); leave out --chat")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": message}],
                                        add_generation_prompt=True, tokenize=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]  # transformers 5: a BatchEncoding
    return [int(i) for i in ids]


def stream_text(loaded: Pretrained, prompt: str, max_new_tokens: int = 50,
                temperature: float = 0.0, top_k: int | None = None,
                seed: int | None = None, chat: bool = False) -> Iterator[str]:
    """The continuation of `prompt`, piece by piece as it is decoded; with `chat`, the reply
    to `prompt` as the user's turn of a chat (chat_ids). Each step decodes the whole sequence
    and gives what is new, so that a character split over several byte-level tokens comes out
    whole (a trailing incomplete one waits for its next bytes)."""
    tok = loaded.tokenizer
    if tok is None:
        raise CheckpointError(f"{loaded.path}: no tokenizer files (tokenizer.json, vocab.json + "
                              "merges.txt, or vocab.txt) beside the weights; generation needs "
                              "the checkpoint's own tokenizer")
    published = isinstance(tok, CheckpointTokenizer)
    prompt_ids = chat_ids(loaded, prompt) if chat else tok.encode(prompt)
    if loaded.after_eos:  # `catalog train` put EOS before every document: the model starts there
        prompt_ids = [tok.eos_id, *prompt_ids]
    if not prompt_ids:  # an empty prompt starts from the start-of-text token, as GPT-2 does
        start = tok.bos_id if tok.bos_id is not None else tok.eos_id
        if start is None:
            raise ValueError("an empty prompt needs a BOS or EOS token to start from; this "
                             "tokenizer has neither: give --prompt")
        prompt_ids = [start]

    def text_of(ids: list[int]) -> str:
        # The harness's own tokenizers leave their special tokens out of the text already.
        return tok.decode(ids, skip_special_tokens=True) if published else tok.decode(ids)

    shown_prompt = text_of(prompt_ids)
    new: list[int] = []
    shown = ""

    def continuation() -> str:
        text = text_of(prompt_ids + new)
        if text.startswith(shown_prompt):
            return text[len(shown_prompt):]
        return text_of(new)

    for token in decode_ids(loaded, prompt_ids, max_new_tokens, temperature, top_k, seed):
        new.append(token)
        text = continuation().rstrip("\ufffd")  # bytes of a character still to come
        if text.startswith(shown) and len(text) > len(shown):
            yield text[len(shown):]
            shown = text
    text = continuation()
    if text.startswith(shown) and len(text) > len(shown):
        yield text[len(shown):]


# ------------------------------------------------------------------------- sizes, not weights


class _ShapesOnly(TorchFunctionMode):
    """Converters run on meta tensors: `torch.equal` (their check that a tied head is the
    embedding) compares shapes, as there are no values to compare."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.equal and all(isinstance(a, torch.Tensor) and a.is_meta for a in args):
            return args[0].shape == args[1].shape
        return func(*args, **(kwargs or {}))


def checkpoint_fields(path_or_id: Path | str, model: str | None = None,
                      revision: str | None = None) -> tuple[str, dict[str, Any]]:
    """(zoo model, zoo config fields) of a checkpoint, without reading its weights: the model's
    converter runs on the tensors' shapes, read from the weight files' headers. A folder with
    config.json and no weights is sized by Hugging Face's class for it, built on the meta
    device (needs transformers). A `catalog train` folder gives its config fields."""
    name, path = model_of(path_or_id, model, revision)
    if is_trained_checkpoint(path):
        return name, dict(read_config(path)["config"])
    if path.is_dir() and not any((path / f).is_file() for f in WEIGHT_FILES):
        config, shapes, source = read_config(path), _hf_shapes(path), path / "config.json"
    else:
        config, shapes, source = read_shapes(path)
    try:
        with _ShapesOnly():
            fields, _ = CONVERTERS[name](config, shapes)
    except KeyError as exc:
        raise CheckpointError(f"{source}: missing weight or config field {exc}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return name, fields


def _hf_shapes(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict (meta tensors) of Hugging Face's class for config.json's architecture."""
    config = read_config(folder)
    try:
        import transformers
    except ImportError:
        raise CheckpointError(f"{folder}: no weights in the folder; sizing a model from "
                              "config.json alone needs the 'transformers' package (pip install "
                              "it), or the weights in the folder (only their headers are read)"
                              ) from None
    architectures = config.get("architectures") or []
    cls = getattr(transformers, str(architectures[0]), None) if architectures else None
    if cls is None:
        raise CheckpointError(f"{folder / 'config.json'}: no weights in the folder and no "
                              "architecture transformers knows to size the model from")
    try:
        hf_config = transformers.AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            return cls(hf_config).state_dict()
    except Exception as exc:  # transformers raises many types for configs it cannot build
        raise CheckpointError(f"{folder / 'config.json'}: transformers cannot build "
                              f"{architectures[0]} from it ({_first_line(exc)})") from None
