"""Import published checkpoints into zoo models, and export zoo models to them.

`from_pretrained(name, path)` reads a Hugging Face-format folder (config.json with
model.safetensors or pytorch_model.bin, whole or in shards listed by a .index.json), a single
weights file (an official RWKV-4 to RWKV-7 `.pth`, or llama.cpp's GGUF, read into the Hugging
Face layout by gguf.py) or a Hugging Face hub id ("gpt2", "owner/name": its folder in the local
hub cache, downloaded when online; hub.py), turns its config and weights into the zoo's with the
model's converter below, and loads them. Every common layout of a family loads:

    pretraining / LM-head classes   BertForPreTraining, BertForMaskedLM, GPT2LMHeadModel,
                                    LlamaForCausalLM, MambaForCausalLM, RwkvForCausalLM, ...:
                                    every weight loads
    base models (no head)           BertModel, DistilBertModel, RobertaModel, GPT2Model,
                                    OpenAIGPTModel, LlamaModel, MistralModel, MambaModel,
                                    Mamba2Model, RwkvModel:
                                    the body loads; the head is new (the model's own init), or
                                    the embedding where the zoo ties it (then it is not missing)
    task-head classes               BertForSequenceClassification, ...ForTokenClassification,
                                    ...ForQuestionAnswering, GPT2ForSequenceClassification,
                                    LlamaForSequenceClassification, ...: the body loads; the
                                    task head (and a pooler nothing uses) is left unused

    model = zoo.from_pretrained("bert", folder)                 # fp32, eval mode
    model, info = zoo.from_pretrained("bert", folder, output_loading_info=True)
    info.missing, info.unused     # ('lm_head.dense.weight', ...), ('pooler.dense.weight', ...)
    zoo.from_pretrained("llama", folder, dtype="auto")          # keep the file's bf16 / fp16

`save_pretrained(name, model, path)` goes the other way: a Hugging Face folder that
transformers' class for the model loads (config.json, model.safetensors), or with
format="official" an official RWKV .pth that the `rwkv` package runs; `from_pretrained` reads
either back to the same config and weights.

    zoo.convert.save_pretrained("gpt", model, "out/gpt")        # GPT2LMHeadModel's folder
    zoo.convert.save_pretrained("rwkv7", model, "rwkv7.pth", format="official")

Weights are loaded as float32 whatever the file holds; `dtype="auto"` keeps the checkpoint's
dtype (Hugging Face's torch_dtype="auto"), a torch dtype casts to it. Anything else is a
one-line CheckpointError naming the file and the key or field: a missing body weight, a
mis-shaped one, an unexpected key (an extra layer, a head the family does not have), a folder
of another model_type, a bare weights file of another layout, a truncated file, a config.json
that is not an object or lacks a field.

Where things live; each family module holds its converter (checkpoint -> zoo) and its exporter
(zoo -> Hugging Face layout) side by side:

    common.py   CheckpointError, StateDict, the Converter and Exporter types, Importer (how a
                zoo model reads checkpoints), LoadingInfo, reading files (read_state_dict,
                read_checkpoint, read_sharded) and load_into
    gpt.py      GPT-1 / GPT-2            convert_gpt, export_gpt
    bert.py     BERT, DistilBERT,        convert_bert, convert_roberta, export_bert, export_roberta
                RoBERTa, XLM-RoBERTa
    albert.py   ALBERT                   convert_albert, export_albert
    rwkv.py     RWKV-4                   convert_rwkv, export_rwkv, rwkv_to_official,
                                         official_version (the version of an official .pth)
    rwkv5.py    RWKV-5.2 (Eagle)         convert_rwkv5, rwkv5_to_official
    rwkv6.py    RWKV-6 (Finch)           convert_rwkv6, rwkv6_to_official
    rwkv7.py    RWKV-7                   convert_rwkv7, rwkv7_to_official
    llama.py    LLaMA and Mistral        convert_llama, export_llama
    gpt_neox.py GPT-NeoX and Pythia      convert_gpt_neox, export_gpt_neox
    bloom.py    BLOOM                    convert_bloom, export_bloom
    opt.py      OPT                      convert_opt, export_opt
    gptj.py     GPT-J                    convert_gptj, export_gptj
    gpt_neo.py  GPT-Neo                  convert_gpt_neo, export_gpt_neo
    ctrl.py     CTRL                     convert_ctrl, export_ctrl
    t5.py       T5, T5 v1.1, Flan-T5     convert_t5, export_t5
    bart.py     BART, mBART, Pegasus     convert_bart, export_bart
    mamba.py    Mamba and Mamba-2        convert_mamba, convert_mamba2, export_mamba,
                                         export_mamba2
    hub.py      hub ids -> folders       resolve (huggingface_hub's cache; downloads when online)
    gguf.py     GGUF files (llama.cpp)   read_gguf (metadata and dequantized tensors -> config.json
                                         fields and Hugging Face names), is_gguf
    detect.py   which zoo model          detect_model (config.json's model_type, or an official
                                         .pth's version), read_shapes (weight headers only)

This module holds the registries (IMPORTERS, and CONVERTERS, EXPORTERS and OFFICIAL),
`from_pretrained` and `save_pretrained`, and re-exports the public names above, so
`from zoo.convert import ...` reads any of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from zoo.convert.albert import convert_albert, export_albert
from zoo.convert.bart import convert_bart, export_bart
from zoo.convert.bert import (
    BERT_BLOCK_KEYS,
    BERT_EMBEDDING_KEYS,
    convert_bert,
    convert_roberta,
    export_bert,
    export_roberta,
)
from zoo.convert.bloom import BLOOM_BLOCK_KEYS, convert_bloom, export_bloom
from zoo.convert.common import (
    CheckpointError,
    Converter,
    Exporter,
    Importer,
    LoadingInfo,
    MissingField,
    RequiredFields,
    StateDict,
    load_into,
    read_checkpoint,
    read_sharded,
    read_state_dict,
    stored_dtype,
)
from zoo.convert.ctrl import CTRL_BLOCK_KEYS, convert_ctrl, export_ctrl
from zoo.convert.detect import detect_model
from zoo.convert.gguf import is_gguf, read_gguf
from zoo.convert.gpt import GPT_CONV1D, GPT_CONV1D_WEIGHTS, convert_gpt, export_gpt
from zoo.convert.gpt_neo import GPT_NEO_BLOCK_KEYS, convert_gpt_neo, export_gpt_neo
from zoo.convert.gpt_neox import GPT_NEOX_BLOCK_KEYS, convert_gpt_neox, export_gpt_neox
from zoo.convert.gptj import GPTJ_BLOCK_KEYS, convert_gptj, export_gptj
from zoo.convert.hub import resolve
from zoo.convert.llama import LLAMA_BLOCK_KEYS, convert_llama, export_llama
from zoo.convert.mamba import convert_mamba, convert_mamba2, export_mamba, export_mamba2
from zoo.convert.opt import OPT_BLOCK_KEYS, convert_opt, export_opt
from zoo.convert.rwkv import (
    convert_rwkv,
    export_rwkv,
    official_version,
    rwkv_official_to_hf,
    rwkv_to_official,
)
from zoo.convert.rwkv5 import convert_rwkv5, rwkv5_to_official
from zoo.convert.rwkv6 import convert_rwkv6, rwkv6_to_official
from zoo.convert.rwkv7 import convert_rwkv7, rwkv7_to_official
from zoo.convert.t5 import convert_t5, export_t5

__all__ = [
    "BERT_BLOCK_KEYS", "BERT_EMBEDDING_KEYS", "BLOOM_BLOCK_KEYS", "CONVERTERS", "CheckpointError",
    "Converter", "EXPORTERS", "Exporter", "GPTJ_BLOCK_KEYS", "GPT_CONV1D", "GPT_CONV1D_WEIGHTS",
    "GPT_NEOX_BLOCK_KEYS", "GPT_NEO_BLOCK_KEYS", "IMPORTERS", "Importer", "LLAMA_BLOCK_KEYS",
    "LoadingInfo", "OPT_BLOCK_KEYS", "StateDict", "convert_bert", "convert_bloom", "convert_gpt",
    "convert_gpt_neo", "convert_gpt_neox", "convert_gptj", "convert_llama", "convert_mamba",
    "convert_mamba2", "convert_opt", "convert_roberta", "convert_rwkv", "convert_rwkv5",
    "convert_rwkv6", "convert_rwkv7", "export_bert", "export_bloom", "export_gpt",
    "export_gpt_neo", "export_gpt_neox", "export_gptj", "export_llama", "export_mamba",
    "export_mamba2", "export_opt", "export_roberta", "export_rwkv", "from_pretrained",
    "load_into", "official_version", "read_checkpoint", "read_sharded", "read_state_dict",
    "rwkv5_to_official", "rwkv6_to_official", "rwkv7_to_official", "rwkv_official_to_hf",
    "rwkv_to_official", "convert_t5", "export_t5", "convert_bart", "export_bart",
    "convert_albert", "export_albert", "CTRL_BLOCK_KEYS", "convert_ctrl", "export_ctrl"
]
__all__ += ["FORMATS", "OFFICIAL", "check_format", "formats_of", "save_pretrained"]  # export
__all__ += ["detect_model", "resolve"]  # hub ids and model detection (hub.py, detect.py)

# zoo model name -> how it reads checkpoints: its converter, the model types of the folders it
# reads, the embedding key of each bare-file layout, the checkpoint keys it may leave unused (the
# task heads of Hugging Face's ...ForSequenceClassification, ...ForTokenClassification,
# ...ForQuestionAnswering, ...ForMultipleChoice, GPT2DoubleHeadsModel; unused poolers).
_BERT_TASK_HEADS = ("classifier.", "qa_outputs.")
IMPORTERS: dict[str, Importer] = {
    "gpt": Importer(convert_gpt, ("gpt2", "openai-gpt"),
                    ("transformer.wte.weight", "wte.weight", "transformer.tokens_embed.weight",
                     "tokens_embed.weight"),
                    unused=("score.", "classifier.", "qa_outputs.", "multiple_choice_head.")),
    "bert": Importer(convert_bert, ("bert", "distilbert"),
                     ("bert.embeddings.word_embeddings.weight",
                      "distilbert.embeddings.word_embeddings.weight",
                      "embeddings.word_embeddings.weight"),
                     unused=(*_BERT_TASK_HEADS, "bert.pooler.", "pooler.", "pre_classifier.")),
    "roberta": Importer(convert_roberta, ("roberta", "xlm-roberta"),
                        ("roberta.embeddings.word_embeddings.weight",
                         "embeddings.word_embeddings.weight"),
                        unused=(*_BERT_TASK_HEADS, "roberta.pooler.", "pooler.")),
    "albert": Importer(convert_albert, ("albert",), (),  # the depth needs config.json
                       unused=(*_BERT_TASK_HEADS, "albert.pooler.", "pooler.")),
    "mamba": Importer(convert_mamba, ("mamba",), ("backbone.embedding.weight", "embedding.weight")),
    "mamba2": Importer(convert_mamba2, ("mamba2",), ()),  # the group count needs config.json
    "rwkv": Importer(convert_rwkv, ("rwkv",), ("emb.weight",)),
    "rwkv5": Importer(convert_rwkv5, (), ("emb.weight",)),  # official .pth files only
    "rwkv6": Importer(convert_rwkv6, (), ("emb.weight",)),
    "rwkv7": Importer(convert_rwkv7, (), ("emb.weight",)),
    "llama": Importer(convert_llama, ("llama", "mistral"), (), unused=("score.", "qa_outputs.")),
    "gpt-neox": Importer(convert_gpt_neox, ("gpt_neox",), (),
                         unused=("score.", "classifier.", "qa_outputs.")),
    "bloom": Importer(convert_bloom, ("bloom",), (),
                      unused=("score.", "classifier.", "qa_outputs.")),
    "opt": Importer(convert_opt, ("opt",), (), unused=("score.", "qa_outputs.")),
    "gpt-j": Importer(convert_gptj, ("gptj",), (), unused=("score.", "qa_outputs.")),
    "gpt-neo": Importer(convert_gpt_neo, ("gpt_neo",), (), unused=("score.", "qa_outputs.")),
    "ctrl": Importer(convert_ctrl, ("ctrl",), (), unused=("classifier.",)),
    "t5": Importer(convert_t5, ("t5",), (), unused=("classifier.", "qa_outputs.")),
    "bart": Importer(convert_bart, ("bart", "mbart", "pegasus"), (),
                     unused=("classification_head.", "qa_outputs.")),
}

# zoo model name -> its converter.
CONVERTERS: dict[str, Converter] = {name: imp.convert for name, imp in IMPORTERS.items()}

# zoo model name -> its exporter (the inverse of CONVERTERS).
EXPORTERS: dict[str, Exporter] = {
    "gpt": export_gpt,
    "bert": export_bert,
    "roberta": export_roberta,
    "albert": export_albert,
    "rwkv": export_rwkv,
    "llama": export_llama,
    "gpt-neox": export_gpt_neox,
    "bloom": export_bloom,
    "opt": export_opt,
    "gpt-j": export_gptj,
    "gpt-neo": export_gpt_neo,
    "ctrl": export_ctrl,
    "t5": export_t5,
    "bart": export_bart,
    "mamba": export_mamba,
    "mamba2": export_mamba2,
}

# zoo model name -> its official .pth layout (the RWKV line's own format, which the `rwkv`
# package runs): the zoo's key names with the per-channel vectors shaped (1, 1, d).
OFFICIAL: dict[str, Callable[[StateDict], StateDict]] = {
    "rwkv": rwkv_to_official,
    "rwkv5": rwkv5_to_official,
    "rwkv6": rwkv6_to_official,
    "rwkv7": rwkv7_to_official,
}
FORMATS = {"hf": EXPORTERS, "official": OFFICIAL}  # what save_pretrained writes, and for whom


def from_pretrained(name: str, path: Path | str, *, dtype: torch.dtype | str | None = None,
                    output_loading_info: bool = False, **overrides: Any):
    """A zoo model `name` (eval mode) with the weights of the checkpoint at `path`: a Hugging
    Face folder in any of the layouts above, or a bare weights file. Loaded as float32 unless
    `dtype` says otherwise: "auto" keeps the checkpoint's dtype, a torch dtype casts to it.
    `overrides` are config fields set over the checkpoint's (e.g. a chunk size). With
    `output_loading_info`, returns (model, LoadingInfo): the heads left new, the weights left
    unused, the dtypes."""
    from zoo.registry import load_class

    if name not in IMPORTERS:
        raise CheckpointError(f"no checkpoint converter for zoo model {name!r}; "
                              f"available: {', '.join(sorted(IMPORTERS)) or 'none'}")
    importer = IMPORTERS[name]
    path = resolve(path)  # a hub id: its cached folder
    gguf = path.is_file() and is_gguf(path)  # llama.cpp's file: its settings and tensors in one
    if gguf:
        config, state = read_gguf(path)
        weights_file = path
    else:
        config, state, weights_file = read_checkpoint(path)
    # for errors: where the settings came from
    config_file = weights_file.parent / "config.json" if config and not gguf else weights_file
    _check_kind(name, importer, config, state, config_file)
    stored = stored_dtype(state)
    target = _dtype(dtype, stored)
    try:
        fields, state = importer.convert(RequiredFields(config), state)
    except MissingField as exc:
        raise CheckpointError(f"{config_file}: no field {exc.args[0]!r}") from None
    except KeyError as exc:
        raise CheckpointError(f"{weights_file}: missing weight {exc}") from None
    except CheckpointError as exc:
        message = str(exc)
        if config_file == weights_file:  # a GGUF file: its settings are in it, not config.json
            message = message.removeprefix("config.json: ")
        raise CheckpointError(f"{weights_file}: {message}") from None
    cls = load_class(name)
    try:
        model = cls(dataclasses.replace(cls.config_class(**fields), **overrides))
    except (AssertionError, TypeError, ValueError) as exc:  # a wrong type, an impossible shape
        given = f" with {overrides}" if overrides else ""
        raise CheckpointError(f"{config_file}{given}: {exc}") from None
    missing, unused = load_into(model, state, weights_file, head_keys=cls.head_keys,
                                unused=importer.unused)
    model = model.to(target).eval()
    if not output_loading_info:
        return model
    architectures = config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    return model, LoadingInfo(source=weights_file, architecture=architecture, missing=missing,
                              unused=unused, dtype=target, checkpoint_dtype=stored)


def formats_of(name: str) -> tuple[str, ...]:
    """The formats `save_pretrained` writes zoo model `name` in (empty: none)."""
    return tuple(fmt for fmt, writers in FORMATS.items() if name in writers)


def check_format(name: str, format: str) -> None:
    """A CheckpointError unless `save_pretrained` writes zoo model `name` in `format`; it names
    the models each format takes."""
    if format not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {format!r}; expected one of "
                              f"{', '.join(FORMATS)}")
    if name not in FORMATS[format]:
        takes = "; ".join(f"{fmt!r} takes {', '.join(writers)}" for fmt, writers in FORMATS.items())
        raise CheckpointError(f"zoo model {name!r} has no {format!r} checkpoint format ({takes})")


def save_pretrained(name: str, model: torch.nn.Module, path: Path | str, *, format: str = "hf",
                    dtype: torch.dtype | None = None,
                    extra_config: dict[str, Any] | None = None) -> Path:
    """Write zoo model `name` as a checkpoint others read, and return the file or folder.

    format "hf": a Hugging Face folder at `path` (config.json and model.safetensors) that
    transformers' class for the model loads as its own (gpt -> GPT2LMHeadModel or
    OpenAIGPTLMHeadModel, bert, roberta, rwkv, llama -> LlamaForCausalLM or MistralForCausalLM,
    gpt-neox -> GPTNeoXForCausalLM, bloom, opt, gpt-j -> GPTJForCausalLM, mamba, mamba2,
    t5 -> T5ForConditionalGeneration). format
    "official": an official RWKV .pth file at `path` (rwkv, rwkv5, rwkv6, rwkv7), which the
    `rwkv` package runs. `from_pretrained` reads either back to the same config and weights. The
    weights are stored in the model's dtype, or cast to `dtype`; `extra_config` adds fields to
    config.json ("hf" only: the tokenizer's special ids, where the weights came from). Files are
    replaced whole (written beside, then renamed). A model or config the format cannot hold is
    a CheckpointError."""
    check_format(name, format)
    if extra_config and format != "hf":
        raise CheckpointError(f"format {format!r} has no config.json to hold extra_config")
    state = {key: tensor.detach().to("cpu") for key, tensor in model.state_dict().items()}
    if dtype is not None:
        state = {key: t.to(dtype) if t.is_floating_point() else t for key, t in state.items()}
    path = Path(path)
    if format == "official":
        if model.config.d_ff == 0:  # the rwkv package (and the importer) read the channel mix
            raise CheckpointError("an official RWKV .pth always has a channel mix "
                                  "(feed-forward); this config has d_ff 0")
        path.parent.mkdir(parents=True, exist_ok=True)
        _replace(path, lambda tmp: torch.save(_unshared(OFFICIAL[name](state)), tmp))
        return path
    from safetensors.torch import save_file

    config, hf_state = EXPORTERS[name](model.config, state)
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    stored = str(floats[0] if floats else torch.float32).removeprefix("torch.")
    config |= {**(extra_config or {}), "dtype": stored,
               "torch_dtype": stored}  # transformers 5 reads dtype, 4 torch_dtype
    path.mkdir(parents=True, exist_ok=True)
    _replace(path / "model.safetensors",
             lambda tmp: save_file(_unshared(hf_state), str(tmp), metadata={"format": "pt"}))
    _replace(path / "config.json",
             lambda tmp: tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))
    return path


def _unshared(state: StateDict) -> StateDict:
    """Contiguous tensors, none sharing memory with another (safetensors stores each whole)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        tensor = tensor.contiguous()
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def _replace(path: Path, write: Callable[[Path], Any]) -> None:
    """Write `path` through a temporary file beside it, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_kind(name: str, importer: Importer, config: dict[str, Any], state: StateDict,
                source: Path) -> None:
    """A folder whose config.json names another model_type, or a bare weights file laid out as
    another model's, is refused before converting, naming what it is."""
    model_type = config.get("model_type")
    if model_type is not None and importer.model_types and model_type not in importer.model_types:
        expected = ", ".join(repr(t) for t in importer.model_types)
        raise CheckpointError(f"{source}: model_type {model_type!r} is not a {name} checkpoint "
                              f"(expected one of {expected})")
    if config:
        return
    if not importer.bare_embeddings:
        raise CheckpointError(f"{source}: a bare weights file; zoo model {name!r} reads a "
                              "folder with its config.json")
    if not any(key in state for key in importer.bare_embeddings):
        others = [other for other, imp in IMPORTERS.items() if other != name
                  and any(key in state for key in imp.bare_embeddings)]
        what = (f"its keys are those of {' or '.join(repr(o) for o in others)}" if others else
                f"its keys begin {', '.join(repr(k) for k in list(state)[:3])}")
        raise CheckpointError(f"{source}: not a {name} checkpoint: no weight "
                              f"{importer.bare_embeddings[0]!r} ({what})")


def _dtype(dtype: torch.dtype | str | None, stored: torch.dtype | None) -> torch.dtype:
    """The parameters' dtype: float32 by default, the checkpoint's for "auto", else `dtype`."""
    if dtype is None or (dtype == "auto" and stored is None):
        return torch.float32
    if dtype == "auto":
        return stored
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype  # "bfloat16"
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype must be None, 'auto' or a floating-point torch dtype; got "
                         f"{dtype!r}")
    return resolved
