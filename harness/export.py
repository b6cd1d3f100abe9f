"""Checkpoints out: a model trained here (a `catalog train` folder), or any checkpoint the harness
reads, written in a form other tools load, with its tokenizer.

    exported = export_checkpoint("runs/gpt-lm", "out/gpt-hf")          # a Hugging Face folder
    transformers.GPT2LMHeadModel.from_pretrained("out/gpt-hf")          # the same logits
    transformers.AutoTokenizer.from_pretrained("out/gpt-hf")            # the same ids
    export_checkpoint("runs/rwkv7-lm", "out/rwkv7", format="official")  # out/rwkv7/model.pth

Format "hf" is a folder transformers' class for the model loads (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json): gpt, bert, roberta, rwkv, llama, gpt-neox, bloom,
opt, gpt-j, gpt-neo, ctrl, mamba, mamba2, t5, bart (or mbart, pegasus), albert.
Format "official" is an official RWKV .pth (`model.pth`, its tokenizer files beside it, as
`catalog generate` reads a .pth): rwkv, rwkv5, rwkv6, rwkv7. The weights are written by
`zoo.convert.save_pretrained`. A `catalog train` tokenizer (bytes or BPE) becomes a
tokenizer.json whose ids are the same (the byte tokenizer's text "<eos>" stays five bytes:
tokenizer_config.json says split_special_tokens, as transformers reads it); a decoder's EOS,
which began every training document, is its BOS too, as GPT-2's <|endoftext|> is. config.json
carries the special ids and what the run was (`catalog`: model, task, budget, seed, ...). An
MQAR model gets no tokenizer (its ids are not text). A published checkpoint's tokenizer files
are copied as they are; a GGUF file's (in its metadata) is written as tokenizer.json.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.convert import FORMATS, CheckpointError, check_format, formats_of, save_pretrained
from zoo.convert.detect import read_config
from zoo.convert.gguf import GGUF_MODEL, is_gguf

# The files of a published checkpoint's tokenizer (and its generation settings), copied as
# they are.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json",
                   "generation_config.json")
OFFICIAL_FILE = "model.pth"
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Exported:
    """What `export_checkpoint` wrote: the zoo model, the format, what to load (the folder for
    "hf", the .pth for "official"), the folder and its files, and the transformers class that
    loads an "hf" folder (None for "official")."""

    name: str
    format: str
    path: Path
    folder: Path
    files: tuple[str, ...]
    architecture: str | None


def default_format(name: str) -> str:
    """The format a model is exported in unless asked: "hf" where transformers has the model,
    else its official one."""
    formats = formats_of(name)
    if not formats:
        takes = "; ".join(f"{fmt} takes {', '.join(writers)}" for fmt, writers in FORMATS.items())
        raise CheckpointError(f"zoo model {name!r} has no checkpoint format others read: "
                              f"transformers has no class for it ({takes})")
    return formats[0]


def checkpoint_forms(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the checkpoints zoo model `name` reads, the forms `catalog export` writes it in), each
    in words for a model card; empty where there are none."""
    from zoo.convert import IMPORTERS, OFFICIAL

    importer = IMPORTERS.get(name)
    reads = []
    if importer is not None and importer.model_types:
        reads.append(f"Hugging Face folders (model_type {', '.join(importer.model_types)})")
    if name in OFFICIAL:
        reads.append("official RWKV .pth files")
    if name == GGUF_MODEL:
        reads.append("GGUF files (llama.cpp's)")
    words = {"hf": "a Hugging Face folder", "official": "an official RWKV .pth"}
    return tuple(reads), tuple(words[fmt] for fmt in formats_of(name))


def export_checkpoint(source: Path | str, out: Path | str, *, format: str | None = None,
                      model: str | None = None, dtype: str | None = None,
                      force: bool = False) -> Exported:
    """Write the checkpoint at `source` (a `catalog train` folder, a Hugging Face folder, an
    official .pth, a GGUF file or a hub id; as zoo model `model`, default the one it is) into
    the folder `out` in `format` (default: default_format). `out` must be new or empty unless
    `force` (then the files written replace theirs; nothing else in it is touched), and never
    the source's own folder. `dtype` casts the stored weights (float32, bfloat16, float16)."""
    from harness.pretrained import is_trained_checkpoint, load_pretrained, model_of

    name, path = model_of(source, model)
    format = format or default_format(name)
    check_format(name, format)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    folder = Path(out)
    _check_out(folder, path, force)
    loaded = load_pretrained(path, model=name, fast=False)
    trained = is_trained_checkpoint(path)
    tokenizer = loaded.tokenizer
    if trained and loaded.meta.get("task") == "mqar":
        tokenizer = None  # MQAR's ids are not text: its run's byte tokenizer only fills a slot
    extra = _config_fields(loaded, tokenizer, path, source, trained)
    target = folder / OFFICIAL_FILE if format == "official" else folder
    written = save_pretrained(name, loaded.model, target, format=format,
                              dtype=getattr(torch, dtype) if dtype else None,
                              extra_config=extra if format == "hf" else None)
    files = [OFFICIAL_FILE] if format == "official" else ["config.json", "model.safetensors"]
    if trained and tokenizer is not None:
        files += _write_tokenizer(tokenizer, folder, loaded.model,
                                  _special_ids(tokenizer, loaded.model))
    elif tokenizer is not None and is_gguf(Path(tokenizer.source)):  # its metadata held it
        ids = {kind: getattr(tokenizer, f"{kind}_id") for kind in ("bos", "eos")}
        files += _write_tokenizer(tokenizer, folder, loaded.model, ids)
    elif tokenizer is not None:
        files += _copy_tokenizer_files(Path(tokenizer.source).parent, folder)
    architecture = None
    if format == "hf":
        architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    return Exported(name, format, written, folder, tuple(files), architecture)


def _config_fields(loaded: Any, tokenizer: Any, path: Path, source: Path | str,
                   trained: bool) -> dict[str, Any]:
    """What config.json gets beside the model's fields: the tokenizer's special ids, and for a
    run what it was (`catalog`); a published folder's own special ids and `catalog` carry over."""
    fields: dict[str, Any] = {}
    if not trained and path.is_dir():
        config = read_config(path)
        fields = {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id",
                                                "catalog") if config.get(key) is not None}
    if trained and tokenizer is not None:
        ids = _special_ids(tokenizer, loaded.model)
    else:
        ids = {kind: getattr(tokenizer, f"{kind}_id", None) for kind in ("bos", "eos")}
    for kind, token_id in ids.items():
        if token_id is not None:
            fields.setdefault(f"{kind}_token_id", token_id)
    if trained and tokenizer is not None and hasattr(loaded.model, "encode"):
        # the encoder-decoder's seq2seq task starts every target from the tokenizer's BOS
        fields["decoder_start_token_id"] = tokenizer.bos_id
    if trained:
        meta = {key: value for key, value in loaded.meta.items() if key != "config"}
        fields["catalog"] = {**meta, "source": str(source)}
    return fields


def _check_out(folder: Path, source: Path, force: bool) -> None:
    """`out` must be a folder that is new or empty (or `force`), and not the source's."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: a file, not a folder; give a folder to write the "
                         "checkpoint into")
    source_folder = source if source.is_dir() else source.parent
    if folder.exists() and folder.resolve() == source_folder.resolve():
        raise ValueError(f"{folder}: the checkpoint's own folder; give another folder, so that "
                         "the checkpoint read is not overwritten")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise ValueError(f"{folder}: not empty; give a new folder, or --force to write over the "
                         "files of the same names in it")


def _special_ids(tokenizer: Any, model: Any) -> dict[str, int]:
    """A run's special tokens as Hugging Face names them. A decoder's documents each began
    after EOS (`catalog train`'s stream), so EOS is also its start-of-text token, as GPT-2's
    <|endoftext|> is both: transformers' generate starts there and lm-eval's `hf` model puts it
    before every text, as the harness's own scoring does."""
    ids = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}
    if getattr(model, "causal_lm", False):
        ids["bos"] = tokenizer.eos_id
    return ids


def _write_tokenizer(tokenizer: Any, folder: Path, model: Any,
                     special_ids: dict[str, int | None]) -> list[str]:
    """A tokenizer as Hugging Face reads one: tokenizer.json (its `tokenizers.Tokenizer`) and
    tokenizer_config.json (the special tokens, the length the model was built for)."""
    tok = tokenizer.as_tokenizers()
    settings: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                                "clean_up_tokenization_spaces": False}
    for kind, token_id in special_ids.items():
        if token_id is not None:
            settings[f"{kind}_token"] = tok.id_to_token(token_id)
    if getattr(tokenizer, "kind", None) == "bytes":
        settings["split_special_tokens"] = True  # "<eos>" in text is its bytes, as it was
    max_len = getattr(model.config, "max_seq_len", None)
    if isinstance(max_len, int):
        settings["model_max_length"] = max_len
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return ["tokenizer.json", "tokenizer_config.json"]


def _copy_tokenizer_files(source: Path, folder: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
            copied.append(name)
    return copied
