"""Mamba and Mamba-2 checkpoints <-> zoo.mamba / zoo.mamba2: Hugging Face MambaForCausalLM and
Mamba2ForCausalLM folders and the original mamba_ssm layout in (convert_mamba, convert_mamba2;
both read their keys with _ssm_names and _tied_ssm_state), and Hugging Face folders out
(export_mamba, export_mamba2; both write their keys with _hf_ssm_state)."""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from zoo.convert.common import CheckpointError, StateDict, tie_head

# --------------------------------------------------------------------------------------------------
# Mamba checkpoints -> zoo.mamba.
#
# Two layouts of the same tensors (prefix `backbone.`, then `layers.N.norm.weight`,
# `layers.N.mixer.{in_proj,conv1d,x_proj,dt_proj,out_proj}.*`, `layers.N.mixer.A_log|D` and
# `norm_f.weight`):
#   - Hugging Face `MambaForCausalLM` folders (config.json with model_type "mamba"; state-spaces/
#     mamba-*-hf): the embedding is `backbone.embeddings.weight`; the tied `lm_head.weight` is
#     not stored;
#   - the original mamba_ssm layout (state-spaces/mamba-*: config.json with d_model, n_layer,
#     vocab_size, ssm_cfg, pad_vocab_size_multiple; pytorch_model.bin): `backbone.embedding.weight`
#     and a stored copy of it as `lm_head.weight`. Its vocab_size is the tokenizer's (50277);
#     the tensors have it padded up to a multiple of pad_vocab_size_multiple (50280). A bare
#     weights file in this layout is read with the sizes of its tensors.
# The zoo's names are the original ones without `backbone.`.
# --------------------------------------------------------------------------------------------------

# mamba_ssm's ssm_cfg keys the zoo reads, and those that only shape the initialisation or pick a
# CUDA kernel (the same numbers either way).
_MAMBA_SSM_CFG = {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand",
                  "dt_rank": "dt_rank", "conv_bias": "conv_bias", "bias": "bias",
                  "dt_min": "dt_min", "dt_max": "dt_max"}
_MAMBA_SSM_CFG_IGNORED = {"dt_init", "dt_scale", "dt_init_floor", "use_fast_path", "layer"}


def _mamba_fields_from_hf(config: dict[str, Any], headless: bool) -> dict[str, Any]:
    """Hugging Face's MambaConfig -> zoo fields. An untied head is refused, unless the checkpoint
    has none (`headless`, a MambaModel): the zoo's head is then the embedding, as always."""
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json field 'hidden_act' = {config['hidden_act']!r} is not "
                              "supported: Mamba uses 'silu'")
    if config.get("tie_word_embeddings") is False and not headless:
        raise CheckpointError("config.json field 'tie_word_embeddings' is false; zoo.mamba ties "
                              "its head to the embedding")
    d, expand = config["hidden_size"], config.get("expand", 2)
    if config.get("intermediate_size") not in (None, expand * d):
        raise CheckpointError(f"config.json field 'intermediate_size' = "
                              f"{config['intermediate_size']} is not expand * hidden_size = "
                              f"{expand * d}")
    rank = config.get("time_step_rank", "auto")
    return {"vocab_size": config["vocab_size"], "n_layer": config["num_hidden_layers"],
            "d_model": d, "d_state": config.get("state_size", 16),
            "d_conv": config.get("conv_kernel", 4), "expand": expand,
            "dt_rank": None if rank == "auto" else rank,
            "conv_bias": config.get("use_conv_bias", True), "bias": config.get("use_bias", False),
            "norm_eps": config.get("layer_norm_epsilon", 1e-5),
            "dt_min": config.get("time_step_min", 0.001),
            "dt_max": config.get("time_step_max", 0.1)}


def _mamba_fields_from_original(config: dict[str, Any]) -> dict[str, Any]:
    """mamba_ssm's MambaConfig (config.json of state-spaces/mamba-*) -> zoo fields."""
    for field, plain in (("d_intermediate", 0), ("attn_layer_idx", []), ("rms_norm", True),
                         ("tie_embeddings", True)):
        if config.get(field, plain) != plain:
            raise CheckpointError(f"config.json field {field!r} = {config[field]!r} is not "
                                  f"supported: zoo.mamba is the plain Mamba ({field} {plain!r})")
    ssm_cfg = dict(config.get("ssm_cfg") or {})
    if ssm_cfg.get("layer", "Mamba1") != "Mamba1":
        raise CheckpointError(f"config.json field 'ssm_cfg.layer' = {ssm_cfg['layer']!r}: "
                              "zoo.mamba is Mamba1")
    unknown = sorted(set(ssm_cfg) - set(_MAMBA_SSM_CFG) - _MAMBA_SSM_CFG_IGNORED)
    if unknown:
        raise CheckpointError(f"config.json field 'ssm_cfg.{unknown[0]}' is not supported")
    multiple = config.get("pad_vocab_size_multiple", 8)
    fields = {"vocab_size": -(-config["vocab_size"] // multiple) * multiple,  # round up
              "n_layer": config["n_layer"], "d_model": config["d_model"]}
    fields |= {ours: ssm_cfg[theirs] for theirs, ours in _MAMBA_SSM_CFG.items()
               if theirs in ssm_cfg}
    if fields.get("dt_rank") == "auto":
        fields["dt_rank"] = None
    return fields


def _mamba_fields_from_tensors(state: StateDict) -> dict[str, Any]:
    """zoo fields from a bare state dict in the original layout (the zoo's keys)."""
    vocab, d = state["embedding.weight"].shape
    layers = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    if not layers:
        raise CheckpointError("no 'layers.N.' weights: not a Mamba state dict")
    mixer = "layers.0.mixer."
    d_inner, d_state = state[mixer + "A_log"].shape
    return {"vocab_size": vocab, "n_layer": max(layers) + 1, "d_model": d,
            "d_state": d_state, "d_conv": state[mixer + "conv1d.weight"].shape[-1],
            "expand": d_inner // d, "dt_rank": state[mixer + "dt_proj.weight"].shape[1],
            "conv_bias": mixer + "conv1d.bias" in state,
            "bias": mixer + "in_proj.bias" in state}


def convert_mamba(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.mamba config fields, zoo state dict) from a Hugging Face MambaForCausalLM folder, an
    original mamba_ssm checkpoint (config.json + weights) or a bare original state dict."""
    from zoo.mamba import Mamba, MambaConfig

    model_type = config.get("model_type")
    if model_type == "mamba":
        fields = _mamba_fields_from_hf(config, headless=_headless(config, state, "MambaModel"))
    elif model_type is None and "d_model" in config:
        fields = _mamba_fields_from_original(config)
    elif not config:
        fields = None  # sizes from the tensors, once the keys are the zoo's
    else:
        raise CheckpointError(f"config.json has model_type {model_type!r}, expected 'mamba' "
                              "(Hugging Face) or mamba_ssm's config (d_model, n_layer, ssm_cfg)")
    prefix, zoo_key, renamed = _ssm_names(state)
    if fields is None:
        fields = _mamba_fields_from_tensors(renamed)
    with torch.device("meta"):  # the zoo's keys and shapes for these fields, no memory used
        expected = Mamba(MambaConfig(**fields)).state_dict()
    return fields, _tied_ssm_state(renamed, zoo_key, prefix, expected,
                                   hf=model_type == "mamba", model="zoo.mamba")


def _headless(config: dict[str, Any], state: StateDict, base_class: str) -> bool:
    """Whether a Hugging Face folder holds the base model `base_class` (config.json's
    architectures) with no output head stored: then there is no head to tie or untie."""
    architectures = config.get("architectures") or []
    return base_class in architectures and not any(k.endswith("lm_head.weight") for k in state)


def _ssm_names(state: StateDict) -> tuple[str, dict[str, str], StateDict]:
    """A Mamba or Mamba-2 checkpoint's tensors under the zoo's names: mamba_ssm's keys without
    `backbone.`, Hugging Face's `embeddings.` as `embedding.`. Returns (the prefix dropped,
    zoo name -> the checkpoint's key, zoo name -> tensor)."""
    prefix = "backbone." if any(k.startswith("backbone.") for k in state) else ""
    zoo_key = {re.sub(r"^embeddings\.", "embedding.", k.removeprefix(prefix)): k for k in state}
    return prefix, zoo_key, {name: state[key] for name, key in zoo_key.items()}


def _tied_ssm_state(renamed: StateDict, zoo_key: dict[str, str], prefix: str,
                    expected: StateDict, *, hf: bool, model: str) -> StateDict:
    """The zoo state dict of a Mamba or Mamba-2 checkpoint (`_ssm_names`' tensors) checked
    against `expected` (the zoo's keys and shapes): a missing key is a KeyError named as the
    checkpoint's layout spells it (`hf`: Hugging Face's), a misshaped one a CheckpointError; a
    stored output head must equal the embedding it is tied to; keys left over are returned
    under their own names, for the caller to report as unexpected."""
    out = {}
    for name, like in expected.items():
        if name == "lm_head.weight":
            continue
        if name not in renamed:
            raise KeyError(prefix + ("embeddings.weight" if hf and name == "embedding.weight"
                                     else name))
        tensor = renamed.pop(name)
        if tensor.shape != like.shape:
            raise CheckpointError(f"weight {zoo_key[name]!r} has shape {tuple(tensor.shape)}, "
                                  f"expected {tuple(like.shape)}")
        out[name] = tensor
    # the original layout stores the tied copy
    tie_head(out, renamed.pop("lm_head.weight", None), "embedding.weight", model)
    out.update({zoo_key[name]: tensor for name, tensor in renamed.items()})  # -> unexpected
    return out


# --------------------------------------------------------------------------------------------------
# Mamba-2 checkpoints -> zoo.mamba2.
#
# The keys are Mamba's, with the Mamba-2 mixer: `layers.N.mixer.{in_proj,conv1d,norm,out_proj}.*`
# and `layers.N.mixer.{dt_bias,A_log,D}` (one number per head). Two layouts, as for Mamba:
#   - Hugging Face `Mamba2ForCausalLM` folders (config.json with model_type "mamba2"):
#     `backbone.embeddings.weight`; `lm_head.weight` stored or not. Mamba2Config's defaults are
#     Codestral's (untied, 8 groups), so the fields are read as written;
#   - the original mamba_ssm layout (state-spaces/mamba2-*: config.json with d_model, n_layer,
#     vocab_size, pad_vocab_size_multiple and ssm_cfg with layer "Mamba2"):
#     `backbone.embedding.weight` and its tied copy `lm_head.weight`.
# A bare weights file is refused: the number of groups is not in the tensors' shapes. The
# checkpoint's chunk_size (its GPU kernel's) is not carried over: it changes the speed, not the
# numbers, and zoo.mamba2 picks its own per device.
# --------------------------------------------------------------------------------------------------

# Hugging Face Mamba2Config keys -> (zoo.mamba2 field, Mamba2Config's default: a config.json
# without the key means that default, Codestral's, not the zoo's mamba2-130m).
_MAMBA2_HF = {"vocab_size": ("vocab_size", 32768), "num_hidden_layers": ("n_layer", 64),
              "hidden_size": ("d_model", 4096), "state_size": ("d_state", 128),
              "conv_kernel": ("d_conv", 4), "expand": ("expand", 2), "head_dim": ("head_dim", 64),
              "n_groups": ("n_groups", 8), "use_conv_bias": ("conv_bias", True),
              "use_bias": ("bias", False), "layer_norm_epsilon": ("norm_eps", 1e-5),
              "time_step_min": ("dt_min", 0.001), "time_step_max": ("dt_max", 0.1)}
# mamba_ssm's ssm_cfg keys -> zoo.mamba2 fields (absent: mamba_ssm's defaults, the zoo's).
_MAMBA2_SSM_CFG = {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand",
                   "headdim": "head_dim", "ngroups": "n_groups", "conv_bias": "conv_bias",
                   "bias": "bias", "dt_min": "dt_min", "dt_max": "dt_max"}
# ssm_cfg keys the zoo cannot express unless they hold mamba_ssm's default.
_MAMBA2_SSM_CFG_PLAIN = {"d_ssm": None, "D_has_hdim": False, "rmsnorm": True,
                         "norm_before_gate": False}
# Keys read apart (layer, dt_limit), and those that only shape the initialisation, pick a CUDA
# kernel or set the chunk (the same numbers either way).
_MAMBA2_SSM_CFG_IGNORED = {"layer", "A_init_range", "dt_init_floor", "dt_limit", "chunk_size",
                           "use_mem_eff_path", "process_group", "sequence_parallel"}


def _mamba2_fields_from_hf(config: dict[str, Any], headless: bool) -> dict[str, Any]:
    """Hugging Face's Mamba2Config -> zoo fields; an untied head as for Mamba (a Mamba2Model's
    config.json says untied, Mamba2Config's default, and has no head to untie)."""
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json field 'hidden_act' = {config['hidden_act']!r} is not "
                              "supported: Mamba-2 uses 'silu'")
    if config.get("tie_word_embeddings", False) is False and not headless:
        raise CheckpointError("config.json field 'tie_word_embeddings' is false; zoo.mamba2 ties "
                              "its head to the embedding")
    fields = {ours: config.get(theirs, default) for theirs, (ours, default) in _MAMBA2_HF.items()}
    heads = config.get("num_heads", 128)
    if heads * fields["head_dim"] != fields["expand"] * fields["d_model"]:
        raise CheckpointError(f"config.json field 'num_heads' = {heads} times head_dim is not "
                              "expand * hidden_size")
    low, high = config.get("time_step_limit", (0.0, math.inf))
    return fields | {"dt_limit_min": _json_float(low), "dt_limit_max": _json_float(high)}


def _json_float(value: Any) -> float:
    """A number of config.json; transformers 5 writes infinity as {"__float__": "Infinity"}."""
    return float(value["__float__"] if isinstance(value, dict) else value)


def _mamba2_fields_from_original(config: dict[str, Any]) -> dict[str, Any]:
    """mamba_ssm's MambaConfig with ssm_cfg layer "Mamba2" (state-spaces/mamba2-*)."""
    for field, plain in (("d_intermediate", 0), ("attn_layer_idx", []), ("rms_norm", True),
                         ("tie_embeddings", True)):
        if config.get(field, plain) != plain:
            raise CheckpointError(f"config.json field {field!r} = {config[field]!r} is not "
                                  f"supported: zoo.mamba2 is the plain Mamba-2 ({field} {plain!r})")
    ssm_cfg = dict(config.get("ssm_cfg") or {})
    if ssm_cfg.get("layer", "Mamba1") != "Mamba2":
        raise CheckpointError(f"config.json field 'ssm_cfg.layer' = "
                              f"{ssm_cfg.get('layer', 'Mamba1')!r}: zoo.mamba2 is Mamba2")
    for key, plain in _MAMBA2_SSM_CFG_PLAIN.items():
        if ssm_cfg.get(key, plain) != plain:
            raise CheckpointError(f"config.json field 'ssm_cfg.{key}' = {ssm_cfg[key]!r} is not "
                                  f"supported (only {plain!r})")
    unknown = sorted(set(ssm_cfg) - set(_MAMBA2_SSM_CFG) - set(_MAMBA2_SSM_CFG_PLAIN)
                     - _MAMBA2_SSM_CFG_IGNORED)
    if unknown:
        raise CheckpointError(f"config.json field 'ssm_cfg.{unknown[0]}' is not supported")
    multiple = config.get("pad_vocab_size_multiple", 8)
    fields = {"vocab_size": -(-config["vocab_size"] // multiple) * multiple,  # round up
              "n_layer": config["n_layer"], "d_model": config["d_model"]}
    fields |= {ours: ssm_cfg[theirs] for theirs, ours in _MAMBA2_SSM_CFG.items()
               if theirs in ssm_cfg}
    low, high = ssm_cfg.get("dt_limit", (0.0, math.inf))
    return fields | {"dt_limit_min": _json_float(low), "dt_limit_max": _json_float(high)}


def convert_mamba2(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.mamba2 config fields, zoo state dict) from a Hugging Face Mamba2ForCausalLM folder
    or an original mamba_ssm Mamba-2 checkpoint (config.json + weights)."""
    from zoo.mamba2 import Mamba2, Mamba2Config

    model_type = config.get("model_type")
    if model_type == "mamba2":
        fields = _mamba2_fields_from_hf(config,
                                        headless=_headless(config, state, "Mamba2Model"))
    elif model_type is None and "d_model" in config:
        fields = _mamba2_fields_from_original(config)
    elif not config:
        raise CheckpointError("a bare weights file: Mamba-2 needs its config.json (the number "
                              "of groups is not in the tensors)")
    else:
        raise CheckpointError(f"config.json has model_type {model_type!r}, expected 'mamba2' "
                              "(Hugging Face) or mamba_ssm's config (d_model, n_layer, ssm_cfg)")
    prefix, zoo_key, renamed = _ssm_names(state)
    with torch.device("meta"):  # the zoo's keys and shapes for these fields, no memory used
        expected = Mamba2(Mamba2Config(**fields)).state_dict()
    return fields, _tied_ssm_state(renamed, zoo_key, prefix, expected,
                                   hf=model_type == "mamba2", model="zoo.mamba2")


def export_mamba(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.mamba -> MambaForCausalLM: the zoo's names under `backbone.`, the embedding as
    `backbone.embeddings.weight`, the tied head not stored. `residual_in_fp32` is false: the zoo
    keeps the residual stream in the activations' dtype (the same numbers in fp32, and the same
    computation in half precision)."""
    config = {"model_type": "mamba", "architectures": ["MambaForCausalLM"],
              "vocab_size": c.vocab_size, "hidden_size": c.d_model,
              "num_hidden_layers": c.n_layer, "state_size": c.d_state,
              "conv_kernel": c.d_conv, "expand": c.expand, "intermediate_size": c.d_inner,
              "time_step_rank": c.dt_rank, "use_conv_bias": c.conv_bias, "use_bias": c.bias,
              "hidden_act": "silu", "layer_norm_epsilon": c.norm_eps,
              "time_step_min": c.dt_min, "time_step_max": c.dt_max,
              "residual_in_fp32": False, "tie_word_embeddings": True,
              "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    return config, _hf_ssm_state(zoo)


def export_mamba2(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.mamba2 -> Mamba2ForCausalLM, with the keys of export_mamba. Every field is written
    out, since Mamba2Config's defaults are Codestral's, not the zoo's: _MAMBA2_HF read backwards,
    the head count, the step-size clamp as `time_step_limit`, the head tied. `residual_in_fp32`
    is false, as for Mamba. chunk_size is written only where the zoo config sets one: it changes
    the speed, not the numbers, and otherwise transformers keeps its own (mamba_ssm's 256)."""
    config = {"model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"]}
    config |= {theirs: getattr(c, ours) for theirs, (ours, _) in _MAMBA2_HF.items()}
    config |= {"num_heads": c.n_heads, "time_step_limit": [c.dt_limit_min, c.dt_limit_max],
               "hidden_act": "silu", "residual_in_fp32": False, "tie_word_embeddings": True,
               "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    if c.chunk_size is not None:
        config["chunk_size"] = c.chunk_size
    return config, _hf_ssm_state(zoo)


def _hf_ssm_state(zoo: StateDict) -> StateDict:
    """A zoo.mamba or zoo.mamba2 state dict in Hugging Face's layout (the inverse of
    _ssm_names): every key under `backbone.`, the embedding as `embeddings.`, the head tied to
    it and so not stored."""
    hf = {"backbone.embeddings.weight": zoo["embedding.weight"]}
    hf |= {"backbone." + key: tensor for key, tensor in zoo.items()
           if key not in ("embedding.weight", "lm_head.weight")}
    return hf
