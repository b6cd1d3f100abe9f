"""Import published checkpoints into zoo models.

`from_pretrained(name, path)` reads a Hugging Face-format folder (config.json with
model.safetensors or pytorch_model.bin, whole or in shards) or a single weights file (an
official RWKV-4 `.pth`), turns its config and weights into the zoo's with the model's converter
below, and loads them strictly: a missing, unexpected or mis-shaped key is an error that names
the key.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]
# A converter takes the checkpoint's config (config.json as a dict; {} for a bare weights file)
# and its state dict, and returns (zoo config fields, zoo state dict).
Converter = Callable[[dict[str, Any], StateDict], tuple[dict[str, Any], StateDict]]


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


def from_pretrained(name: str, path: Path | str, **overrides: Any):
    """A zoo model `name` with the weights of the checkpoint at `path` (fp32, eval mode)."""
    from zoo.registry import load_class

    if name not in CONVERTERS:
        raise CheckpointError(f"no checkpoint converter for zoo model {name!r}; "
                              f"available: {', '.join(sorted(CONVERTERS)) or 'none'}")
    config, state, weights_file = read_checkpoint(path)
    try:
        fields, state = CONVERTERS[name](config, state)
    except KeyError as exc:
        raise CheckpointError(f"{weights_file}: missing weight or config field {exc}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{weights_file}: {exc}") from None
    cls = load_class(name)
    model = cls(cls.config_class(**{**fields, **overrides}))
    load_into(model, {k: v.float() for k, v in state.items()}, weights_file)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Hugging Face GPT-2 (`model_type: gpt2`) and OpenAI GPT (`openai-gpt`) checkpoints -> zoo.gpt.
#
# Both store their matrices as `Conv1D` weights of shape (in, out), the transpose of an
# `nn.Linear` weight, and fuse the query, key and value projections into one `c_attn` of width
# 3 * d_model (in that order), which is split here. The output head is tied to the token
# embedding: the zoo's `lm_head.weight` is that matrix, and a stored `lm_head.weight` must be it.
# Keys may carry a `transformer.` prefix (`*LMHeadModel`) or not (`*Model`, old hub files).
# A bare weights file (config {}) is read as GPT-2 unless it has GPT-1's `tokens_embed`; its
# sizes come from the tensors, and its head count is d_model / 64, as in every published size.
# --------------------------------------------------------------------------------------------------

# Hugging Face activation names -> zoo.layers.ACTIVATIONS. OpenAI GPT's afn="gelu" is the tanh
# form (its modeling code maps it to gelu_new); GPT-2's activation_function="gelu" is exact.
_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                     "relu": "relu"}
_OPENAI_ACTIVATIONS = {"gelu": "gelu_tanh", "relu": "relu"}
# Per-block Conv1D layers other than the fused c_attn -> zoo module names.
GPT_CONV1D = {"attn.c_proj": "attn.out_proj", "mlp.c_fc": "mlp.fc_in", "mlp.c_proj": "mlp.fc_out"}
GPT_CONV1D_WEIGHTS = tuple(f"{conv}.weight" for conv in GPT_CONV1D)
# Buffers of old checkpoints (the causal mask) that hold no weights.
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def convert_gpt(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    default_type = "openai-gpt" if "tokens_embed.weight" in state else "gpt2"
    model_type = config.get("model_type") or default_type
    if model_type not in ("gpt2", "openai-gpt"):
        raise CheckpointError(f"config.json: model_type {model_type!r} is not gpt2 or openai-gpt")
    gpt1 = model_type == "openai-gpt"
    # zoo key -> source key of every tensor copied as it is (or transposed, for Conv1D weights).
    names = {"wte.weight": "tokens_embed.weight" if gpt1 else "wte.weight",
             "wpe.weight": "positions_embed.weight" if gpt1 else "wpe.weight"}
    fields = _gpt_config_fields(config, gpt1, state[names["wte.weight"]],
                                state[names["wpe.weight"]], state)

    d = fields["d_model"]
    out: StateDict = {}
    for i in range(fields["n_layer"]):
        src, dst = f"h.{i}.", f"blocks.{i}."
        out.update(_split_qkv(state, src + "attn.c_attn", dst + "attn", d))
        for p in ("weight", "bias"):
            for ln in ("ln_1", "ln_2"):
                names[f"{dst}{ln}.{p}"] = f"{src}{ln}.{p}"
            for conv, linear in GPT_CONV1D.items():
                names[f"{dst}{linear}.{p}"] = f"{src}{conv}.{p}"
    if not gpt1:  # GPT-2's final LayerNorm
        names |= {"ln_f.weight": "ln_f.weight", "ln_f.bias": "ln_f.bias"}
    for key, source in names.items():
        tensor = state[source]
        # Conv1D (in, out) -> nn.Linear (out, in)
        out[key] = tensor.t().contiguous() if source.endswith(GPT_CONV1D_WEIGHTS) else tensor

    used = set(names.values()) | {f"h.{i}.attn.c_attn.{p}" for i in range(fields["n_layer"])
                                  for p in ("weight", "bias")}
    head = state.get("lm_head.weight")
    if head is not None:
        used.add("lm_head.weight")
        if head.shape != out["wte.weight"].shape or not torch.equal(head, out["wte.weight"]):
            raise CheckpointError("weight 'lm_head.weight' differs from the token embedding; "
                                  "zoo.gpt ties its output head to it")
    out["lm_head.weight"] = out["wte.weight"]  # the tied head: one tensor under both keys
    extra = [k for k in state if k not in used and not k.endswith(_BUFFERS)]
    if extra:
        raise CheckpointError(f"unexpected weight {extra[0]!r}"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    return fields, out


def _split_qkv(state: StateDict, src: str, dst: str, d: int) -> StateDict:
    """The fused (d, 3d) Conv1D `c_attn` -> three (d, d) nn.Linear projections."""
    weight, bias = state[src + ".weight"], state[src + ".bias"]
    for key, tensor, shape in ((".weight", weight, (d, 3 * d)), (".bias", bias, (3 * d,))):
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"weight {src + key!r} has shape {tuple(tensor.shape)}; "
                                  f"expected {shape} (fused query, key, value)")
    out = {}
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.split(d, dim=1), bias.split(d),
                          strict=True):
        out[f"{dst}.{name}.weight"] = w.t().contiguous()
        out[f"{dst}.{name}.bias"] = b.contiguous()
    return out


def _gpt_config_fields(config: dict[str, Any], gpt1: bool, wte: torch.Tensor, wpe: torch.Tensor,
                   state: StateDict) -> dict[str, Any]:
    """zoo.gpt.GPTConfig fields from config.json, or from the tensors' shapes where it is silent."""
    if config.get("tie_word_embeddings") is False:
        raise CheckpointError("config.json: tie_word_embeddings is false; zoo.gpt ties its head")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                 "add_cross_attention"):
        if config.get(flag):
            raise CheckpointError(f"config.json: {flag}=true is not supported by zoo.gpt")
    if config.get("scale_attn_weights") is False:
        raise CheckpointError("config.json: scale_attn_weights=false is not supported by zoo.gpt")
    activations = _OPENAI_ACTIVATIONS if gpt1 else _GPT2_ACTIVATIONS
    if gpt1:
        act_name = config.get("afn", "gelu")
    else:
        act_name = config.get("activation_function", "gelu_new")
    if act_name not in activations:
        raise CheckpointError(f"config.json: activation {act_name!r} is not one of "
                              f"{', '.join(activations)}")
    d_model = config.get("n_embd", wte.size(1))
    n_layer = config.get("n_layer")
    if n_layer is None:  # count the blocks h.0, h.1, ...
        n_layer = len({k.split(".")[1] for k in state if k.startswith("h.")})
    return {
        "vocab_size": config.get("vocab_size", wte.size(0)),
        "max_seq_len": config.get("n_positions", wpe.size(0)),
        "n_layer": n_layer,
        "n_head": config.get("n_head", d_model // 64),
        "d_model": d_model,
        "d_ff": config.get("n_inner") or state["h.0.mlp.c_fc.weight"].size(1),
        "pre_ln": not gpt1,
        "activation": activations[act_name],
        "dropout": config.get("resid_pdrop", 0.1),
        "layer_norm_eps": config.get("layer_norm_epsilon", 1e-5),
        "init_std": config.get("initializer_range", 0.02),
    }


# --------------------------------------------------------------------------------------------------
# Hugging Face BERT / RoBERTa checkpoints -> zoo.bert / zoo.roberta.
#
# Reads folders written by `BertForPreTraining`, `BertForMaskedLM` and `RobertaForMaskedLM`
# (or a bare state dict of one of them). Key layout of the Hugging Face side:
#
#     {bert|roberta}.embeddings.{word,position,token_type}_embeddings.weight, .LayerNorm
#     {bert|roberta}.encoder.layer.N.attention.self.{query,key,value}
#     {bert|roberta}.encoder.layer.N.attention.output.{dense,LayerNorm}
#     {bert|roberta}.encoder.layer.N.intermediate.dense, .output.{dense,LayerNorm}
#     bert.pooler.dense, cls.seq_relationship                       (BertForPreTraining only)
#     cls.predictions.{transform.dense, transform.LayerNorm, bias}  (BERT MLM head)
#     lm_head.{dense, layer_norm, bias}                             (RoBERTa MLM head)
#
# The decoder weight is tied to the word embeddings and its bias to the head's bias: the zoo's
# `lm_head.decoder.*` keys are given those tensors, and the checkpoint's copies of them
# (`*.decoder.weight`, `*.decoder.bias`) are dropped, as are the non-persistent
# `position_ids` / `token_type_ids` buffers that old checkpoints carry. Old TF-converted files
# name LayerNorm parameters gamma/beta; they are read as weight/bias. RoBERTa's pooler (present
# in the published roberta-base files, unused by its MLM head) is dropped.
# --------------------------------------------------------------------------------------------------


# zoo name (inside block N) -> Hugging Face name (inside encoder.layer.N)
BERT_BLOCK_KEYS = {
    "attn.q_proj": "attention.self.query",
    "attn.k_proj": "attention.self.key",
    "attn.v_proj": "attention.self.value",
    "attn.out_proj": "attention.output.dense",
    "ln_attn": "attention.output.LayerNorm",
    "ffn.fc_in": "intermediate.dense",
    "ffn.fc_out": "output.dense",
    "ln_ffn": "output.LayerNorm",
}
BERT_EMBEDDING_KEYS = {
    "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.ln": "embeddings.LayerNorm",
}
_REDUNDANT_SUFFIXES = ("decoder.weight", "decoder.bias", "embeddings.position_ids",
                       "embeddings.token_type_ids")


def convert_bert(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """A BertForPreTraining / BertForMaskedLM checkpoint -> (BertConfig fields, Bert state).
    The pooler and NSP head are kept when the checkpoint has the NSP classifier."""
    state = _normalised(state)
    prefix = "bert." if any(k.startswith("bert.") for k in state) else ""
    has_nsp = "cls.seq_relationship.weight" in state
    fields = _bert_config_fields(config, state, prefix)
    fields["next_sentence_head"] = has_nsp
    head = {"lm_head.dense": "cls.predictions.transform.dense",
            "lm_head.ln": "cls.predictions.transform.LayerNorm",
            "lm_head.bias": "cls.predictions.bias"}
    if has_nsp:
        head.update({"pooler": prefix + "pooler.dense", "nsp_head": "cls.seq_relationship"})
    else:
        _drop(state, prefix + "pooler.")  # a pooler with nothing on top of it is not used
    return fields, _renamed(state, prefix, fields["n_layer"], head)


def convert_roberta(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """A RobertaForMaskedLM checkpoint -> (RobertaConfig fields, Roberta state)."""
    state = _normalised(state)
    prefix = "roberta." if any(k.startswith("roberta.") for k in state) else ""
    fields = _bert_config_fields(config, state, prefix, default_pad=1)
    _drop(state, prefix + "pooler.")  # RoBERTa has no NSP; its MLM head does not use the pooler
    head = {"lm_head.dense": "lm_head.dense", "lm_head.ln": "lm_head.layer_norm",
            "lm_head.bias": "lm_head.bias"}
    return fields, _renamed(state, prefix, fields["n_layer"], head)


def _normalised(state: StateDict) -> StateDict:
    """Drop tied copies and buffers; gamma/beta -> weight/bias."""
    out = {}
    for key, tensor in state.items():
        if key.endswith(_REDUNDANT_SUFFIXES):
            continue
        if "LayerNorm" in key or "layer_norm" in key:
            key = key.replace(".gamma", ".weight").replace(".beta", ".bias")
        out[key] = tensor
    return out


def _drop(state: StateDict, prefix: str) -> None:
    for key in [k for k in state if k.startswith(prefix)]:
        del state[key]


def _bert_config_fields(config: dict[str, Any], state: StateDict, prefix: str,
                   default_pad: int = 0) -> dict[str, Any]:
    """Zoo config fields from config.json; from the tensor shapes for a bare weights file
    (with 64-wide heads, as in every published BERT and RoBERTa size)."""
    if not config:
        words = state[prefix + "embeddings.word_embeddings.weight"]
        positions = state[prefix + "embeddings.position_embeddings.weight"]
        n_layer = 1 + max(int(k[len(prefix + "encoder.layer."):].split(".")[0])
                          for k in state if k.startswith(prefix + "encoder.layer."))
        return {
            "vocab_size": words.size(0), "d_model": words.size(1), "n_head": words.size(1) // 64,
            "n_layer": n_layer,
            "d_ff": state[prefix + "encoder.layer.0.intermediate.dense.weight"].size(0),
            "max_position_embeddings": positions.size(0),
            "type_vocab_size": state[prefix + "embeddings.token_type_embeddings.weight"].size(0),
            "pad_token_id": default_pad,
        }
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act {config['hidden_act']!r} is not supported "
                              "(the zoo's BERT uses the exact GELU, 'gelu')")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"position_embedding_type {config['position_embedding_type']!r} "
                              "is not supported (only 'absolute')")
    if not config.get("tie_word_embeddings", True):
        raise CheckpointError("tie_word_embeddings is false; the zoo's MLM decoder is always "
                              "tied to the word embeddings")
    return {
        "vocab_size": config["vocab_size"],
        "max_position_embeddings": config["max_position_embeddings"],
        "type_vocab_size": config["type_vocab_size"],
        "n_layer": config["num_hidden_layers"],
        "d_model": config["hidden_size"],
        "n_head": config["num_attention_heads"],
        "d_ff": config["intermediate_size"],
        "dropout": config["hidden_dropout_prob"],
        "attn_dropout": config["attention_probs_dropout_prob"],
        "layer_norm_eps": config["layer_norm_eps"],
        "pad_token_id": config.get("pad_token_id", default_pad),
    }


def _renamed(state: StateDict, prefix: str, n_layer: int, head: dict[str, str]) -> StateDict:
    """Zoo state dict; a missing Hugging Face key raises KeyError naming it. Keys left over in
    the checkpoint are passed on unchanged, so loading reports them as unexpected."""
    modules = {zoo: prefix + hf for zoo, hf in BERT_EMBEDDING_KEYS.items()}
    for i in range(n_layer):
        modules.update({f"blocks.{i}.{zoo}": f"{prefix}encoder.layer.{i}.{hf}"
                        for zoo, hf in BERT_BLOCK_KEYS.items()})
    modules.update(head)
    out = {}
    for zoo, hf in modules.items():
        if zoo.endswith((".weight", "lm_head.bias")):  # a single tensor
            out[zoo] = state.pop(hf)
        else:  # a Linear or LayerNorm: weight and bias
            out[zoo + ".weight"] = state.pop(hf + ".weight")
            out[zoo + ".bias"] = state.pop(hf + ".bias")
    # The tied MLM decoder: the same tensors under its own keys.
    out["lm_head.decoder.weight"] = out["embeddings.word_embeddings.weight"]
    out["lm_head.decoder.bias"] = out["lm_head.bias"]
    return {**out, **state}


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


def _mamba_fields_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json field 'hidden_act' = {config['hidden_act']!r} is not "
                              "supported: Mamba uses 'silu'")
    if config.get("tie_word_embeddings") is False:
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
        fields = _mamba_fields_from_hf(config)
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
    head = renamed.pop("lm_head.weight", None)  # the original layout stores the tied copy
    if head is not None and (head.shape != out["embedding.weight"].shape
                             or not torch.equal(head, out["embedding.weight"])):
        raise CheckpointError("weight 'lm_head.weight' differs from the token embedding; "
                              f"{model} ties its output head to it")
    out["lm_head.weight"] = out["embedding.weight"]  # the tied head: one tensor, two keys
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


def _mamba2_fields_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json field 'hidden_act' = {config['hidden_act']!r} is not "
                              "supported: Mamba-2 uses 'silu'")
    if config.get("tie_word_embeddings", False) is False:
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
        fields = _mamba2_fields_from_hf(config)
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


# --------------------------------------------------------------------------------------------------
# RWKV-4 checkpoints -> zoo.rwkv.
#
# Two sources:
#   - a Hugging Face folder (config.json with model_type "rwkv"): keys `rwkv.embeddings.weight`,
#     `rwkv.blocks.N.pre_ln|ln1|ln2.*`, `rwkv.blocks.N.attention.time_mix_key|value|receptance`,
#     `...feed_forward.*`, `rwkv.ln_out.*`, `head.weight`;
#   - an official `.pth` state dict (BlinkDL, e.g. RWKV-4-Pile-169M-20220807-8023.pth; config {}):
#     keys `emb.weight`, `blocks.N.ln0|ln1|ln2.*`, `blocks.N.att.time_mix_k|v|r`, `blocks.N.ffn.*`,
#     `ln_out.*`, `head.weight`; the sizes are read off the tensors.
# The zoo uses the official names; the time_* vectors, stored (1, 1, d) in both formats, become
# (d,). Both formats hold raw time_decay (w = -exp(time_decay) is applied in the model) and raw
# time_first. HF's `rescale_every` is an inference-time rescaling applied by HF in eval mode, not a
# property of the stored weights, so it is not carried over.
# --------------------------------------------------------------------------------------------------


_HF_RENAMES = [  # (HF pattern, official replacement), applied in order after dropping "rwkv."
    (r"^embeddings\.", "emb."),
    (r"^blocks\.0\.pre_ln\.", "blocks.0.ln0."),
    (r"\.attention\.", ".att."),
    (r"\.feed_forward\.", ".ffn."),
    (r"\.time_mix_key$", ".time_mix_k"),
    (r"\.time_mix_value$", ".time_mix_v"),
    (r"\.time_mix_receptance$", ".time_mix_r"),
]


def _hf_to_official(name: str) -> str:
    name = name.removeprefix("rwkv.")
    for pattern, repl in _HF_RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def rwkv_official_to_hf(name: str) -> str:
    """The HF spelling of an official key (to name a missing weight of an HF checkpoint)."""
    if name == "head.weight":
        return name
    name = re.sub(r"^emb\.", "embeddings.", name)
    name = re.sub(r"^blocks\.0\.ln0\.", "blocks.0.pre_ln.", name)
    name = name.replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.")
    for short, long in (("k", "key"), ("v", "value"), ("r", "receptance")):
        name = re.sub(rf"\.time_mix_{short}$", f".time_mix_{long}", name)
    return "rwkv." + name


def _expected_shapes(n_layer: int, d: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """Official key -> the zoo's shape (time_* vectors as (d,))."""
    shapes = {"emb.weight": (vocab, d), "blocks.0.ln0.weight": (d,), "blocks.0.ln0.bias": (d,)}
    for i in range(n_layer):
        b = f"blocks.{i}."
        for name in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.time_decay",
                     "att.time_first", "att.time_mix_k", "att.time_mix_v", "att.time_mix_r",
                     "ffn.time_mix_k", "ffn.time_mix_r"):
            shapes[b + name] = (d,)
        for name in ("att.key", "att.value", "att.receptance", "att.output", "ffn.receptance"):
            shapes[b + name + ".weight"] = (d, d)
        shapes[b + "ffn.key.weight"] = (4 * d, d)
        shapes[b + "ffn.value.weight"] = (d, 4 * d)
    shapes.update({"ln_out.weight": (d,), "ln_out.bias": (d,), "head.weight": (vocab, d)})
    return shapes


def _fields_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("model_type") != "rwkv":
        raise CheckpointError(f"config.json has model_type {config.get('model_type')!r}, "
                              "expected 'rwkv' (RWKV-4)")
    d = config["hidden_size"]
    for field, value in (("attention_hidden_size", d), ("intermediate_size", 4 * d)):
        if config.get(field) not in (None, value):
            raise CheckpointError(f"config.json field {field!r} = {config[field]} is not "
                                  f"supported: RWKV-4 uses {value} (d_model {d})")
    if config.get("tie_word_embeddings"):
        raise CheckpointError("config.json field 'tie_word_embeddings' is true; "
                              "RWKV-4's head is untied")
    return {"vocab_size": config["vocab_size"], "n_layer": config["num_hidden_layers"],
            "d_model": d, "context_length": config.get("context_length", 1024),
            "layer_norm_eps": config.get("layer_norm_epsilon", 1e-5)}


def _fields_from_tensors(state: StateDict) -> dict[str, Any]:
    vocab, d = state["emb.weight"].shape
    layers = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layers:
        raise CheckpointError("no 'blocks.N.' weights: not an RWKV-4 state dict")
    return {"vocab_size": vocab, "n_layer": max(layers) + 1, "d_model": d}


def convert_rwkv(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.rwkv config fields, zoo state dict) from an HF RWKV-4 folder's config and weights,
    or from an official .pth state dict (config == {}). A missing weight raises KeyError with
    the checkpoint's key name; a mis-shaped one, CheckpointError naming it."""
    hf = bool(config)
    # official name -> the checkpoint's own key
    source = {_hf_to_official(k) if hf else k: k for k in state}
    fields = _fields_from_hf(config) if hf else _fields_from_tensors(state)
    out = {}
    for name, shape in _expected_shapes(fields["n_layer"], fields["d_model"],
                                        fields["vocab_size"]).items():
        if name not in source:
            raise KeyError(rwkv_official_to_hf(name) if hf else name)
        key = source.pop(name)
        tensor = state[key]
        if len(shape) == 1 and tensor.numel() == shape[0] and tensor.dim() in (1, 3):
            tensor = tensor.reshape(shape)  # time_mix (1, 1, d) -> (d,)
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"weight {key!r} has shape {tuple(tensor.shape)}, "
                                  f"expected {shape}")
        out[name] = tensor
    out.update({key: state[key] for key in source.values()})  # left over: reported as unexpected
    return fields, out


# --------------------------------------------------------------------------------------------------
# Hugging Face LLaMA (`model_type: llama`, Llama 1 and 2) and Mistral (`mistral`) checkpoints ->
# zoo.llama, from LlamaForCausalLM / MistralForCausalLM folders (one file or shards).
#
#     model.embed_tokens.weight, model.norm.weight, lm_head.weight
#     model.layers.N.self_attn.{q,k,v,o}_proj.weight, model.layers.N.mlp.{gate,up,down}_proj.weight
#     model.layers.N.input_layernorm.weight, model.layers.N.post_attention_layernorm.weight
#
# The tensors are copied as they are: Hugging Face's q and k rows are already in the rotate-half
# RoPE layout the zoo uses (its conversion script permuted Meta's). Mistral's `sliding_window`
# becomes `window` (null in v0.2 and later; absent means MistralConfig's default, 4096). RoPE's
# base is `rope_parameters.rope_theta` in transformers 5, `rope_theta` before. What zoo.llama
# does not compute is refused, naming the field: scaled RoPE (linear, dynamic, yarn, Llama 3.1's
# "llama3"), biases, an activation other than SiLU, a head size other than d / n_head, a tied head.
# --------------------------------------------------------------------------------------------------

# zoo name inside block N -> Hugging Face name inside model.layers.N
LLAMA_BLOCK_KEYS = {
    "attn_norm": "input_layernorm",
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.o_proj": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn.gate_proj": "mlp.gate_proj",
    "ffn.up_proj": "mlp.up_proj",
    "ffn.down_proj": "mlp.down_proj",
}


def convert_llama(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.llama config fields, zoo state dict) from a LlamaForCausalLM or MistralForCausalLM
    folder. A missing weight raises KeyError with its Hugging Face name; weights left over are
    passed on under their own names, so that loading reports them as unexpected."""
    fields = _llama_config_fields(config)
    names = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
    for i in range(fields["n_layer"]):
        names |= {f"blocks.{i}.{zoo}.weight": f"model.layers.{i}.{hf}.weight"
                  for zoo, hf in LLAMA_BLOCK_KEYS.items()}
    # Old checkpoints store RoPE's inverse frequencies, a buffer the zoo recomputes.
    left = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    out = {zoo: left.pop(hf) for zoo, hf in names.items()}
    return fields, {**out, **left}


def _llama_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """zoo.llama.LlamaConfig fields from a Llama or Mistral config.json."""
    model_type = config.get("model_type")
    if model_type not in ("llama", "mistral"):
        raise CheckpointError(f"config.json: model_type {model_type!r} is not llama or mistral")
    d, n_head = config["hidden_size"], config["num_attention_heads"]
    unsupported = [
        ("hidden_act", config.get("hidden_act", "silu") != "silu"),
        ("attention_bias", bool(config.get("attention_bias"))),
        ("mlp_bias", bool(config.get("mlp_bias"))),
        ("head_dim", config.get("head_dim") not in (None, d // n_head)),
        ("tie_word_embeddings", bool(config.get("tie_word_embeddings"))),
    ]
    for field, refused in unsupported:
        if refused:
            raise CheckpointError(f"config.json: {field} = {config[field]!r} is not supported by "
                                  "zoo.llama (SiLU, no biases, head size d / n_head, untied head)")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"config.json: rope_type {rope_type!r} is not supported by "
                              "zoo.llama (plain RoPE only)")
    window = config.get("sliding_window", 4096) if model_type == "mistral" else None
    return {
        "vocab_size": config["vocab_size"],
        "max_seq_len": config.get("max_position_embeddings", 2048),
        "n_layer": config["num_hidden_layers"],
        "n_head": n_head,
        "n_kv_head": config.get("num_key_value_heads") or n_head,
        "d_model": d,
        "d_ff": config["intermediate_size"],
        "norm_eps": config.get("rms_norm_eps", 1e-6),
        "rope_theta": float(rope.get("rope_theta", config.get("rope_theta", 10_000.0))),
        "window": window,
        "init_std": config.get("initializer_range", 0.02),
    }


# zoo model name -> its converter.
CONVERTERS: dict[str, Converter] = {
    "gpt": convert_gpt,
    "bert": convert_bert,
    "roberta": convert_roberta,
    "mamba": convert_mamba,
    "mamba2": convert_mamba2,
    "rwkv": convert_rwkv,
    "llama": convert_llama,
}


# --------------------------------------------------------------------------------------------------
# Export: zoo models -> Hugging Face layouts (and RWKV-4's official one), the inverse of the
# converters above. An exporter takes the zoo config (the dataclass) and state dict and returns
# (config.json as a dict, with model_type and architectures, state dict in the Hugging Face
# layout); reading them back with the converter gives the zoo config and weights exactly (the
# round trip is tested). A zoo config the Hugging Face class cannot express is a CheckpointError.
# --------------------------------------------------------------------------------------------------

Exporter = Callable[[Any, StateDict], tuple[dict[str, Any], StateDict]]


def _inverse(table: dict[str, str]) -> dict[str, str]:
    """zoo name -> the first Hugging Face name that maps to it (the canonical spelling)."""
    out: dict[str, str] = {}
    for hf_name, zoo_name in table.items():
        out.setdefault(zoo_name, hf_name)
    return out


def export_gpt(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.gpt -> GPT2LMHeadModel (pre-LN) or OpenAIGPTLMHeadModel (post-LN): q, k, v fused
    into c_attn and nn.Linear (out, in) weights transposed into Conv1D (in, out). The head is
    tied to the token embedding, so only the embedding is stored."""
    gpt1 = not c.pre_ln
    table = _inverse(_OPENAI_ACTIVATIONS if gpt1 else _GPT2_ACTIVATIONS)
    if c.activation not in table:
        raise CheckpointError(f"transformers' {'OpenAI GPT' if gpt1 else 'GPT-2'} has no "
                              f"{c.activation!r} activation")
    config = {"vocab_size": c.vocab_size, "n_positions": c.max_seq_len, "n_embd": c.d_model,
              "n_layer": c.n_layer, "n_head": c.n_head, "resid_pdrop": c.dropout,
              "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
              "layer_norm_epsilon": c.layer_norm_eps, "initializer_range": c.init_std}
    if gpt1:
        if c.d_ff != 4 * c.d_model:
            raise CheckpointError(f"transformers' OpenAI GPT fixes d_ff at 4 * d_model; this "
                                  f"config has d_ff {c.d_ff}")
        config |= {"model_type": "openai-gpt", "architectures": ["OpenAIGPTLMHeadModel"],
                   "afn": table[c.activation]}
    else:
        config |= {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                   "n_inner": c.d_ff, "activation_function": table[c.activation],
                   "bos_token_id": None, "eos_token_id": None}
    hf = {("tokens_embed.weight" if gpt1 else "wte.weight"): zoo["wte.weight"],
          ("positions_embed.weight" if gpt1 else "wpe.weight"): zoo["wpe.weight"]}
    for i in range(c.n_layer):
        src, dst = f"blocks.{i}.", f"h.{i}."
        qkv = [f"{src}attn.{p}_proj" for p in "qkv"]
        hf[dst + "attn.c_attn.weight"] = torch.cat([zoo[m + ".weight"] for m in qkv]).t()
        hf[dst + "attn.c_attn.bias"] = torch.cat([zoo[m + ".bias"] for m in qkv])
        for p in ("weight", "bias"):
            for ln in ("ln_1", "ln_2"):
                hf[f"{dst}{ln}.{p}"] = zoo[f"{src}{ln}.{p}"]
            for conv, linear in GPT_CONV1D.items():
                tensor = zoo[f"{src}{linear}.{p}"]
                hf[f"{dst}{conv}.{p}"] = tensor.t() if p == "weight" else tensor
    if not gpt1:
        hf |= {"ln_f.weight": zoo["ln_f.weight"], "ln_f.bias": zoo["ln_f.bias"]}
    return config, {"transformer." + key: tensor for key, tensor in hf.items()}


def _export_bert_like(c: Any, zoo: StateDict, roberta: bool) -> tuple[dict[str, Any], StateDict]:
    """zoo.bert / zoo.roberta -> Bert* / RobertaForMaskedLM: the converters' tables read
    backwards. The MLM decoder is tied to the word embeddings (and its bias to the head's)."""
    if roberta and c.next_sentence_head:
        raise CheckpointError("transformers' RobertaForMaskedLM has no next-sentence head")
    if roberta:
        architecture = "RobertaForMaskedLM"
    else:
        architecture = "BertForPreTraining" if c.next_sentence_head else "BertForMaskedLM"
    config = {"model_type": "roberta" if roberta else "bert", "architectures": [architecture],
              "vocab_size": c.vocab_size, "hidden_size": c.d_model,
              "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
              "intermediate_size": c.d_ff, "hidden_act": "gelu",
              "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.attn_dropout,
              "max_position_embeddings": c.max_position_embeddings,
              "type_vocab_size": c.type_vocab_size, "layer_norm_eps": c.layer_norm_eps,
              "pad_token_id": c.pad_token_id, "position_embedding_type": "absolute",
              "tie_word_embeddings": True}
    prefix = "roberta." if roberta else "bert."
    modules = {zoo_name: prefix + hf_name for zoo_name, hf_name in BERT_EMBEDDING_KEYS.items()}
    for i in range(c.n_layer):
        modules |= {f"blocks.{i}.{zoo_name}": f"{prefix}encoder.layer.{i}.{hf_name}"
                    for zoo_name, hf_name in BERT_BLOCK_KEYS.items()}
    if roberta:
        modules |= {"lm_head.dense": "lm_head.dense", "lm_head.ln": "lm_head.layer_norm",
                    "lm_head.bias": "lm_head.bias"}
    else:
        modules |= {"lm_head.dense": "cls.predictions.transform.dense",
                    "lm_head.ln": "cls.predictions.transform.LayerNorm",
                    "lm_head.bias": "cls.predictions.bias"}
        if c.next_sentence_head:
            modules |= {"pooler": "bert.pooler.dense", "nsp_head": "cls.seq_relationship"}
    hf = {}
    for zoo_name, hf_name in modules.items():
        if zoo_name.endswith((".weight", "lm_head.bias")):  # a single tensor
            hf[hf_name] = zoo[zoo_name]
        else:  # a Linear or a LayerNorm
            for p in ("weight", "bias"):
                hf[f"{hf_name}.{p}"] = zoo[f"{zoo_name}.{p}"]
    return config, hf


def export_bert(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    return _export_bert_like(c, zoo, roberta=False)


def export_roberta(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    return _export_bert_like(c, zoo, roberta=True)


def rwkv_to_official(zoo: StateDict) -> StateDict:
    """The official RWKV-4 .pth layout: the zoo's key names, with time_mix_* as (1, 1, d)."""
    return {key: tensor.reshape(1, 1, -1) if ".time_mix_" in key else tensor
            for key, tensor in zoo.items()}


def export_rwkv(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.rwkv -> RwkvForCausalLM. `rescale_every` is 0: Hugging Face's rescaling of the
    weights at inference would change the numbers; the zoo (and the official package in fp32)
    does not rescale."""
    config = {"model_type": "rwkv", "architectures": ["RwkvForCausalLM"],
              "vocab_size": c.vocab_size, "context_length": c.context_length,
              "hidden_size": c.d_model, "num_hidden_layers": c.n_layer,
              "attention_hidden_size": c.d_model, "intermediate_size": 4 * c.d_model,
              "layer_norm_epsilon": c.layer_norm_eps, "rescale_every": 0,
              "tie_word_embeddings": False}
    return config, {rwkv_official_to_hf(key): tensor
                    for key, tensor in rwkv_to_official(zoo).items()}


def export_llama(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.llama -> LlamaForCausalLM, or MistralForCausalLM when the config has a sliding window
    (`window` -> `sliding_window`): LLAMA_BLOCK_KEYS read backwards, the tensors as they are
    (both sides use the rotate-half RoPE layout). RoPE's base goes into `rope_parameters`, as
    transformers 5 keeps it; the head is untied and nothing has a bias. A block without a
    feed-forward (d_ff 0) has no Hugging Face counterpart."""
    if c.d_ff == 0:
        raise CheckpointError("transformers' Llama and Mistral always have a feed-forward; "
                              "this config has d_ff 0")
    mistral = c.window is not None
    config = {"model_type": "mistral" if mistral else "llama",
              "architectures": ["MistralForCausalLM" if mistral else "LlamaForCausalLM"],
              "vocab_size": c.vocab_size, "max_position_embeddings": c.max_seq_len,
              "hidden_size": c.d_model, "intermediate_size": c.d_ff,
              "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
              "num_key_value_heads": c.n_kv_head, "head_dim": c.d_model // c.n_head,
              "hidden_act": "silu", "rms_norm_eps": c.norm_eps,
              "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
              "initializer_range": c.init_std, "attention_dropout": 0.0,
              "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": None}
    if mistral:
        config["sliding_window"] = c.window
    else:  # MistralConfig has no bias switches: it never has biases
        config |= {"attention_bias": False, "mlp_bias": False}
    hf = {"model.embed_tokens.weight": zoo["tok_emb.weight"],
          "model.norm.weight": zoo["norm.weight"], "lm_head.weight": zoo["lm_head.weight"]}
    for i in range(c.n_layer):
        hf |= {f"model.layers.{i}.{hf_name}.weight": zoo[f"blocks.{i}.{zoo_name}.weight"]
               for zoo_name, hf_name in LLAMA_BLOCK_KEYS.items()}
    return config, hf


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
    hf = {"backbone.embeddings.weight": zoo["embedding.weight"]}
    hf |= {"backbone." + key: tensor for key, tensor in zoo.items()
           if key not in ("embedding.weight", "lm_head.weight")}
    return config, hf


# zoo model name -> its exporter (the inverse of CONVERTERS).
EXPORTERS: dict[str, Exporter] = {
    "gpt": export_gpt,
    "bert": export_bert,
    "roberta": export_roberta,
    "rwkv": export_rwkv,
    "llama": export_llama,
    "mamba": export_mamba,
}
