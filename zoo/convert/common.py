"""What every checkpoint converter shares: the error it raises, the state-dict and converter
types, how a zoo model imports checkpoints (Importer), reading checkpoint files (whole, or in
shards), loading a state dict (strictly, up to the heads a checkpoint may lack or leave unused)
and the report of what was loaded (LoadingInfo)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]
# A converter takes the checkpoint's config (config.json as a dict; {} for a bare weights file)
# and its state dict, and returns (zoo config fields, zoo state dict).
Converter = Callable[[dict[str, Any], StateDict], tuple[dict[str, Any], StateDict]]

# Export: zoo models -> Hugging Face layouts (and RWKV-4's official one), the inverse of the
# converters. An exporter takes the zoo config (the dataclass) and state dict and returns
# (config.json as a dict, with model_type and architectures, state dict in the Hugging Face
# layout); reading them back with the converter gives the zoo config and weights exactly (the
# round trip is tested). A zoo config the Hugging Face class cannot express is a CheckpointError.
Exporter = Callable[[Any, StateDict], tuple[dict[str, Any], StateDict]]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model; the message names the
    file and the key."""


@dataclass(frozen=True)
class Importer:
    """How `from_pretrained` reads checkpoints into one zoo model.

    convert: the converter (checkpoint config and weights -> zoo config fields and weights).
    model_types: the config.json `model_type` values it reads; a folder of another type is
        refused before converting. Empty: the converter reads no Hugging Face folder and says so.
    bare_embeddings: the token embedding's key in each layout of a bare weights file (no
        config.json) it reads; a bare file with none of them is another model's. Empty: it
        needs a config.json.
    unused: prefixes of checkpoint keys that may be left unused, reported in
        LoadingInfo.unused: the task heads of Hugging Face's task classes (`classifier.`,
        `score.`, `qa_outputs.`, ...) and poolers the zoo model has no use for. Any other
        checkpoint key the converter does not map is an error."""

    convert: Converter
    model_types: tuple[str, ...]
    bare_embeddings: tuple[str, ...]
    unused: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadingInfo:
    """What `from_pretrained(..., output_loading_info=True)` loaded, as Hugging Face's
    `output_loading_info` reports it.

    source: the weights file, or the index of a sharded checkpoint.
    architecture: config.json's `architectures[0]` (the Hugging Face class that saved it;
        "BertModel", "GPT2LMHeadModel", ...), None for a bare weights file.
    missing: zoo weight names the checkpoint lacked, left as the model's own initialisation:
        only ever output heads (the model's `head_keys`), e.g. a headless `BertModel`'s
        masked-LM head. A head tied to the embedding is the embedding, never missing.
    unused: checkpoint weight names not loaded: task heads (`classifier.weight`, ...) and
        poolers the zoo model does not use.
    dtype: the dtype of the model's parameters; checkpoint_dtype: that of the stored weights
        (the first floating-point tensor's)."""

    source: Path
    architecture: str | None
    missing: tuple[str, ...]
    unused: tuple[str, ...]
    dtype: torch.dtype
    checkpoint_dtype: torch.dtype | None


class MissingField(KeyError):
    """A required config.json field that is absent (raised by RequiredFields)."""


class RequiredFields(dict):
    """config.json as the converters read it: `config[field]` of an absent field raises
    MissingField, so that the error names the field and config.json, not a weight."""

    def __missing__(self, key: str) -> Any:
        raise MissingField(key)


def unreadable_weights(path: Path, exc: Exception) -> CheckpointError:
    """The one-line error for a weights file that will not load, whatever the library raised.

    torch.load(weights_only=True) explains its refusal in a paragraph whose first line advises
    loading with weights_only=False, which would run the file's code; the error keeps only what
    it stopped at (the unpickler's own line), since this tool never loads a file that way."""
    text = str(exc).strip()
    refusal = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if "Weights only load failed" in text and refusal:
        reason = (f"not a file of tensors that loads without running code; the safe unpickler "
                  f"stopped at: {refusal.group(1).strip()}")
    else:
        reason = f"{type(exc).__name__}: {(text.splitlines() or [''])[0]}"
    return CheckpointError(f"{path}: cannot read weights ({reason})")


def read_state_dict(path: Path) -> StateDict:
    """Weights from a .safetensors, .bin/.pt or .pth file (loaded on the CPU, no code run)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise many different types
        raise unreadable_weights(path, exc) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


def read_checkpoint(path: Path | str) -> tuple[dict[str, Any], StateDict, Path]:
    """(config dict, state dict, weights file) from a folder or a single weights file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file():
        return {}, read_state_dict(path), path
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no config.json in the folder") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file}: invalid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: not a JSON object of config fields (a "
                              f"{type(config).__name__})")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return config, read_state_dict(path / name), path / name
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / name).exists():  # weights split into shards (save_pretrained's max_shard_size)
            return config, read_sharded(path / name), path / name
    raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin (nor a .index.json "
                          "of shards) in the folder")


def read_sharded(index_file: Path) -> StateDict:
    """Weights split into shards, read by their index ({"weight_map": {key: shard file}}, as
    Hugging Face writes it): every shard must be in the folder and hold the keys it is given."""
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8")).get("weight_map")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{index_file}: not a JSON object ({exc})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_file}: no 'weight_map' of weights to shard files")
    state: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        if not (index_file.parent / shard).is_file():
            raise CheckpointError(f"{index_file}: shard {shard!r} is not in the folder")
        state.update(read_state_dict(index_file.parent / shard))
    absent = [key for key in weight_map if key not in state]
    if absent:
        raise CheckpointError(f"{index_file}: weight {absent[0]!r} is not in its shard "
                              f"{weight_map[absent[0]]!r}")
    return state


def load_into(model: torch.nn.Module, state: StateDict, source: Path | str, *,
              head_keys: tuple[str, ...] = (), unused: tuple[str, ...] = ()
              ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Copy `state` into `model`, requiring its keys and shapes, except that the weights of the
    heads under `head_keys` (key prefixes) may be missing, and that checkpoint keys under
    `unused` may be left over. Returns (missing, unused), sorted: the zoo keys left as the
    model's own initialisation, the checkpoint keys not loaded. A weight tied to another (one
    Parameter under two keys) is loaded by either key, and missing only under its first name."""
    expected = model.state_dict()
    first_name: dict[int, str] = {}  # the first key of each parameter or buffer
    alias = {key: first_name.setdefault(id(tensor), key) for key, tensor in (
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False))}
    loaded = {alias.get(key, key) for key in state}
    missing = [k for k in expected if k not in state and alias.get(k, k) not in loaded]
    new = tuple(k for k in missing if alias.get(k, k) == k)  # each tied tensor once
    body = [k for k in missing if not k.startswith(head_keys)]
    left = [k for k in state if k not in expected]
    unexpected = [k for k in left if not k.startswith(unused)]
    for problem, keys in (("missing", body), ("unexpected", unexpected)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise CheckpointError(f"{source}: {problem} weight {keys[0]!r}{more}")
    for key, tensor in expected.items():
        if key in state and state[key].shape != tensor.shape:
            raise CheckpointError(f"{source}: weight {key!r} has shape {tuple(state[key].shape)}, "
                                  f"the model expects {tuple(tensor.shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return tuple(sorted(new)), tuple(sorted(left))


def refuse_unsupported(checks: list[tuple[str, Any, Any, str]], model: str) -> None:
    """Each check is (config.json field, its value, the value `model` computes with, that value
    in words): a CheckpointError naming the first field whose value differs."""
    for field, value, accepted, takes in checks:
        if value != accepted:
            raise CheckpointError(f"config.json: {field} = {value!r} is not supported by "
                                  f"{model} ({takes})")


# The activations a Hugging Face config names (keys of transformers' ACT2FN) that zoo models
# compute: Hugging Face's name -> zoo.layers.ACTIVATIONS' name.
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}


def read_activation(name: str, field: str, model: str) -> str:
    """zoo.layers' name for the activation config.json's `field` names; a CheckpointError names
    the field and what `model` takes."""
    if name not in HF_ACTIVATIONS:
        raise CheckpointError(f"config.json: {field} = {name!r} is not supported by {model} "
                              f"(one of {', '.join(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


def hf_activation(name: str) -> str:
    """Hugging Face's name for zoo.layers' activation `name` (the inverse of read_activation)."""
    return {zoo: hf for hf, zoo in HF_ACTIVATIONS.items()}[name]


def block_names(keys: dict[str, tuple[str, bool]], n_layer: int, prefix: str) -> dict[str, str]:
    """zoo key -> Hugging Face key of every block tensor: `keys` maps a name inside zoo block N
    to (its name inside Hugging Face's block N, whether it has a bias), and Hugging Face's
    block N is `prefix` + N ("transformer.h.N", GPT-J's and GPT-Neo's layout)."""
    return {f"blocks.{i}.{zoo}.{p}": f"{prefix}{i}.{hf}.{p}"
            for i in range(n_layer) for zoo, (hf, bias) in keys.items()
            for p in (("weight", "bias") if bias else ("weight",))}


def tie_head(out: StateDict, head: torch.Tensor | None, embedding: str, model: str) -> None:
    """Give `out` its tied head: `lm_head.weight` is `out[embedding]` (one tensor under both
    keys). A stored copy of the head (`head`, None when the checkpoint has none) must equal the
    embedding: a CheckpointError says that `model` ties them otherwise."""
    tied = out[embedding]
    if head is not None and (head.shape != tied.shape or not torch.equal(head, tied)):
        raise CheckpointError("weight 'lm_head.weight' differs from the token embedding; "
                              f"{model} ties its output head to it")
    out["lm_head.weight"] = tied


def stored_dtype(state: StateDict) -> torch.dtype | None:
    """The dtype the checkpoint's weights are stored in: its first floating-point tensor's, as
    Hugging Face's torch_dtype="auto" takes it for a config.json that does not say."""
    return next((t.dtype for t in state.values() if t.is_floating_point()), None)
