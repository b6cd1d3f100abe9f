"""Published checkpoints as the harness uses them: a folder, a weights file or a Hugging Face hub
id -> the zoo model, the checkpoint's own tokenizer, and what records call it.

    loaded = load_pretrained("gpt2")                 # hub id (cache; HF_HUB_OFFLINE=1 honoured)
    loaded = load_pretrained("path/to/folder", model="llama", device="cuda")
    for piece in stream_text(loaded, "Once upon a time", max_new_tokens=20):
        ...                                          # text as it is decoded (the CLI prints it)
    name, fields = checkpoint_fields("gpt2")         # zoo config fields, no weight read

A folder written by `catalog train` (config.json with a `zoo` key) loads too, with the
tokenizer it was trained with. A published checkpoint's tokenizer is read as transformers' fast
tokenizers build it (harness.checkpoint_tokenizer), so that the ids are theirs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from harness.checkpoint_tokenizer import (
    CheckpointTokenizer,
    checkpoint_tokenizer,
    first_line,
    transformers_tokenizer,
)
from zoo.convert import CONVERTERS, CheckpointError, detect_model, resolve
from zoo.convert.detect import read_config, read_shapes

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
DECODERS = ("gpt2, openai-gpt, llama, mistral, gpt_neox, bloom, opt, gptj, gpt_neo, ctrl, "
            "mamba, mamba2, rwkv (or an official RWKV .pth)")
GENERATORS = (f"{DECODERS}; or an encoder-decoder: t5, bart, or a transformer, t5 or bart run of "
              "this project")


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

    @property
    def is_encoder_decoder(self) -> bool:
        from zoo.model import EncoderDecoderLM

        return isinstance(self.model, EncoderDecoderLM)


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


def require_generator(path_or_id: Path | str, name: str, what: str) -> None:
    """A CheckpointError unless zoo model `name` writes text: a causal LM, or an
    encoder-decoder, whose decoder writes it from the encoded prompt (`what` needs one)."""
    from zoo.model import EncoderDecoderLM
    from zoo.registry import load_class

    model_class = load_class(name)
    if not (getattr(model_class, "causal_lm", False)
            or issubclass(model_class, EncoderDecoderLM)):
        raise CheckpointError(f"{path_or_id} holds an encoder alone (zoo model {name}): {what} "
                              f"needs a model that writes text ({GENERATORS})")


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
    tokenizer's EOS, or another its checkpoint lists: not yielded). An encoder-decoder's
    encoder reads `prompt_ids` and the ids are its decoder's, from its start token on
    (`decoder_start`)."""
    from zoo.model import decode

    model = loaded.model
    if not (loaded.is_decoder or loaded.is_encoder_decoder):
        raise CheckpointError(f"{loaded.path} holds an encoder alone (zoo model {loaded.name}): "
                              f"generation needs a model that writes text ({GENERATORS})")
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
    if loaded.is_encoder_decoder:  # the prompt is the source; the decoder starts on its own
        step = model.decoding_step(ids)
        ids = torch.tensor([[decoder_start(loaded)]], device=device)
    else:
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


def decoder_start(loaded: Pretrained) -> int:
    """The token an encoder-decoder's decoder starts from (`decoder_start_id`)."""
    return decoder_start_id(loaded.model, loaded.tokenizer, loaded.after_eos, loaded.path)


def decoder_start_id(model: Any, tokenizer: Any, trained_here: bool, source: Path | str) -> int:
    """The token an encoder-decoder's decoder starts from: for a model trained here (or its
    export) the tokenizer's BOS, which the seq2seq task puts before every target; for a
    published one its config's (T5's: the padding token, 0)."""
    start = getattr(model.config, "decoder_start_id", None)
    if trained_here or start is None:
        start = getattr(tokenizer, "bos_id", None)
    if start is None:
        raise CheckpointError(f"{source}: neither the config's decoder_start_token_id nor a "
                              "BOS token in the tokenizer: nothing to start the decoder from")
    return int(start)


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
    to `prompt` as the user's turn of a chat (chat_ids); for an encoder-decoder, the text its
    decoder writes for `prompt` as the source. Each step decodes the whole sequence and gives
    what is new, so that a character split over several byte-level tokens comes out whole (a
    trailing incomplete one waits for its next bytes)."""
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

    # An encoder-decoder's text is its decoder's alone, not a continuation of the source
    shown_prompt = "" if loaded.is_encoder_decoder else text_of(prompt_ids)
    shown_ids = [] if loaded.is_encoder_decoder else prompt_ids
    new: list[int] = []
    shown = ""

    def continuation() -> str:
        text = text_of(shown_ids + new)
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
                              f"{architectures[0]} from it ({first_line(exc)})") from None
