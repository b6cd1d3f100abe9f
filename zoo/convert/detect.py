"""Which zoo model a checkpoint is, and its tensors' shapes without reading its weights.

`detect_model(path)` reads config.json's `model_type` (or, without one, its `architectures`);
a bare official RWKV `.pth` has no config, and its version is read off its keys
(`official_version`). `read_shapes(path)` gives a checkpoint's config and its state dict as
tensors on the `meta` device: the shapes and dtypes from the files' headers, no weight read, so
that a converter can size a model from a checkpoint of any size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from zoo.convert.common import CheckpointError, StateDict, unreadable_weights
from zoo.convert.gguf import GGUF_MODEL, is_gguf, read_gguf
from zoo.convert.hub import resolve
from zoo.convert.rwkv import official_version

# config.json's model_type -> zoo model.
MODEL_TYPES = {"gpt2": "gpt", "openai-gpt": "gpt", "bert": "bert", "distilbert": "bert",
               "roberta": "roberta", "xlm-roberta": "roberta", "llama": "llama",
               "mistral": "llama", "gpt_neox": "gpt-neox", "bloom": "bloom", "opt": "opt",
               "gptj": "gpt-j", "gpt_neo": "gpt-neo", "mamba": "mamba", "mamba2": "mamba2",
               "rwkv": "rwkv", "t5": "t5", "bart": "bart", "mbart": "bart",
               "pegasus": "bart", "albert": "albert", "ctrl": "ctrl"}
# An architecture's class-name prefix -> zoo model, for a config.json without model_type
# (Mamba2 before Mamba, GPTNeoX before GPTNeo: the longer prefix first).
ARCHITECTURES = {"GPT2": "gpt", "OpenAIGPT": "gpt", "Bert": "bert", "DistilBert": "bert",
                 "Roberta": "roberta", "XLMRoberta": "roberta", "Llama": "llama",
                 "Mistral": "llama", "GPTNeoX": "gpt-neox", "GPTNeo": "gpt-neo",
                 "Bloom": "bloom", "OPT": "opt",
                 "GPTJ": "gpt-j", "Mamba2": "mamba2", "Mamba": "mamba", "Rwkv": "rwkv",
                 "T5": "t5", "MBart": "bart", "Bart": "bart",
                 "Pegasus": "bart", "Albert": "albert", "CTRL": "ctrl"}
# The version of an official RWKV .pth (official_version) -> zoo model.
OFFICIAL_RWKV = {"4": "rwkv", "5.2": "rwkv5", "6": "rwkv6", "7": "rwkv7"}
SUPPORTED = ("Hugging Face folders of gpt2, openai-gpt (gpt), bert, distilbert (bert), "
             "roberta, xlm-roberta (roberta), llama, mistral (llama), gpt_neox (gpt-neox), "
             "bloom, opt, gptj (gpt-j), gpt_neo (gpt-neo), mamba, mamba2, rwkv, t5, bart, mbart, "
             "pegasus (bart), albert, ctrl; "
             "official "
             "RWKV-4, 5.2, 6 and 7 .pth files (rwkv, rwkv5, rwkv6, rwkv7); GGUF files of llama "
             "and mistral (llama)")
# safetensors' dtype names -> torch's.
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


def detect_model(path_or_id: Path | str, revision: str | None = None) -> str:
    """The zoo model (gpt, bert, roberta, albert, llama, gpt-neox, bloom, opt, gpt-j, gpt-neo, ctrl,
    mamba, mamba2, rwkv, rwkv5, rwkv6, rwkv7, t5, bart) of a checkpoint folder, weights file or
    hub id; a CheckpointError listing what is supported when it is none of them."""
    path = resolve(path_or_id, revision)
    if path.is_file():
        return _official_model(path)
    config = read_config(path)
    model_type = config.get("model_type")
    if model_type is not None:
        if model_type in MODEL_TYPES:
            return MODEL_TYPES[model_type]
        what = f"model_type {model_type!r}"
    else:
        architectures = config.get("architectures") or []
        for architecture in architectures:
            for prefix, name in ARCHITECTURES.items():
                if str(architecture).startswith(prefix):
                    return name
        what = (f"architectures {', '.join(map(str, architectures))}" if architectures
                else "no model_type nor architectures")
    raise CheckpointError(f"{path / 'config.json'}: {what} is not a model the zoo loads; "
                          f"supported: {SUPPORTED}")


def _official_model(path: Path) -> str:
    if is_gguf(path):
        return GGUF_MODEL  # read_gguf names an architecture it cannot read when it loads
    shapes = read_file_shapes(path)
    if not ("emb.weight" in shapes and any(k.startswith("blocks.") for k in shapes)):
        raise CheckpointError(f"{path}: a weights file without config.json is recognised only "
                              "as an official RWKV .pth; name the zoo model it is for "
                              f"(supported: {SUPPORTED})")
    version = official_version(shapes)
    if version not in OFFICIAL_RWKV:
        raise CheckpointError(f"{path}: an RWKV-{version} file; the zoo loads RWKV-4, 5.2, 6 "
                              "and 7")
    return OFFICIAL_RWKV[version]


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a checkpoint folder, which must hold a JSON object."""
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no config.json in the folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_file}: invalid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: not a JSON object (a {type(config).__name__})")
    return config


def read_shapes(path: Path | str) -> tuple[dict[str, Any], StateDict, Path]:
    """(config dict, state dict of meta tensors, weights file) of a checkpoint folder or weights
    file, as `read_checkpoint` finds them, with only the files' headers read."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file():
        if is_gguf(path):
            return (*read_gguf(path, weights=False), path)
        return {}, read_file_shapes(path), path
    config = read_config(path)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return config, read_file_shapes(path / name), path / name
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise CheckpointError(f"{index}: no 'weight_map' of weights to shard files "
                                      f"({type(exc).__name__})") from None
            state: StateDict = {}
            for shard in shards:
                if not (path / shard).is_file():
                    raise CheckpointError(f"{index}: shard {shard!r} is not in the folder")
                state.update(read_file_shapes(path / shard))
            return config, state, index
    raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin (nor a .index.json "
                          "of shards) in the folder")


def read_file_shapes(path: Path) -> StateDict:
    """The tensors of one weights file as meta tensors (shape and dtype), from its header:
    safetensors' JSON header, or the pickle of a .bin/.pt/.pth loaded onto the meta device."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as file:
                return {key: torch.empty(file.get_slice(key).get_shape(), device="meta",
                                         dtype=_SAFETENSORS_DTYPES.get(
                                             file.get_slice(key).get_dtype(), torch.float32))
                        for key in file.keys()}
        state = torch.load(path, map_location="meta", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise many different types
        raise unreadable_weights(path, exc) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state
