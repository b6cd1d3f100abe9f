"""What every checkpoint converter shares: the error it raises, the state-dict and converter
types, reading checkpoint files (whole, or in shards) and loading a state dict strictly."""

from __future__ import annotations

import json
from collections.abc import Callable
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


def read_state_dict(path: Path) -> StateDict:
    """Weights from a .safetensors, .bin/.pt or .pth file (loaded on the CPU, no code run)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise many different types
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
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


def load_into(model: torch.nn.Module, state: StateDict, source: Path | str) -> None:
    """Copy `state` into `model`, requiring exactly its keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    for problem, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise CheckpointError(f"{source}: {problem} weight {keys[0]!r}{more}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(f"{source}: weight {key!r} has shape {tuple(state[key].shape)}, "
                                  f"the model expects {tuple(tensor.shape)}")
    model.load_state_dict(state, strict=True)
