"""GPT-Neo checkpoints <-> zoo.gpt_neo: Hugging Face GPTNeoForCausalLM folders (and the base and
task-head classes) in (convert_gpt_neo), and out (export_gpt_neo)."""

from __future__ import annotations

from typing import Any

from zoo.convert.common import (
    CheckpointError,
    StateDict,
    block_names,
    hf_activation,
    read_activation,
    refuse_unsupported,
    tie_head,
)
from zoo.gpt_neo import ATTENTION_KINDS, shortest_pattern

# --------------------------------------------------------------------------------------------------
# Hugging Face GPT-Neo checkpoints (`model_type: gpt_neo`: EleutherAI/gpt-neo-125m, 1.3B, 2.7B,
# the TinyStories models) -> zoo.gpt_neo.
#
#     transformer.wte.weight, transformer.wpe.weight, transformer.ln_f.{weight,bias}
#     transformer.h.N.ln_1.{weight,bias}, transformer.h.N.ln_2.{weight,bias}
#     transformer.h.N.attn.attention.{q,k,v}_proj.weight                 (no biases)
#     transformer.h.N.attn.attention.out_proj.{weight,bias}
#     transformer.h.N.mlp.c_fc.{weight,bias}, ...mlp.c_proj.{weight,bias}
#     lm_head.weight                                     (the token embedding, where stored)
#
# The base model (GPTNeoModel) has no head and no `transformer.` prefix. Every tensor is copied
# as it is (nn.Linear's layout on both sides). Older folders also store the masks transformers 4
# recomputed (`attn.attention.bias`, `attn.attention.masked_bias`); they are dropped.
# config.json's attention_types ([[["global", "local"], 12]]: a pattern and its repeats) becomes
# one kind a layer, then the shortest pattern repeating to them (zoo.gpt_neo's config's form).
# The head is the token embedding (tied): a stored lm_head.weight must equal it, and the export
# stores the embedding alone. What zoo.gpt_neo does not compute is refused, naming the field: an
# untied head, embedding dropout unlike the branches'.
# --------------------------------------------------------------------------------------------------

# zoo name inside block N -> Hugging Face name inside transformer.h.N, and whether it has a bias
GPT_NEO_BLOCK_KEYS = {
    "ln_1": ("ln_1", True),
    "attn.q_proj": ("attn.attention.q_proj", False),
    "attn.k_proj": ("attn.attention.k_proj", False),
    "attn.v_proj": ("attn.attention.v_proj", False),
    "attn.out_proj": ("attn.attention.out_proj", True),
    "ln_2": ("ln_2", True),
    "mlp.fc_in": ("mlp.c_fc", True),
    "mlp.fc_out": ("mlp.c_proj", True),
}
_RECOMPUTED = ("attn.attention.bias", "attn.attention.masked_bias")


def convert_gpt_neo(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.gpt_neo config fields, zoo state dict) from a GPT-Neo folder (the causal-LM, base or
    a task-head class). A missing weight raises KeyError with its Hugging Face name; weights left
    over are passed on under their own names, for loading to report."""
    fields = _gpt_neo_config_fields(config)
    body = next((key.removesuffix("wte.weight") for key in state
                 if key.endswith("wte.weight")), "transformer.")  # "transformer.", "", ...
    names = {"wte.weight": body + "wte.weight", "wpe.weight": body + "wpe.weight"}
    names |= {f"ln_f.{p}": f"{body}ln_f.{p}" for p in ("weight", "bias")}
    names |= block_names(GPT_NEO_BLOCK_KEYS, fields["n_layer"], body + "h.")
    left = {k: v for k, v in state.items() if not k.endswith(_RECOMPUTED)}
    out = {zoo: left.pop(hf) for zoo, hf in names.items()}
    tie_head(out, left.pop("lm_head.weight", None), "wte.weight", "zoo.gpt_neo")
    return fields, {**out, **left}


def _expand_attention_types(attention_types: Any, n_layer: int) -> list[str]:
    """transformers' attention_types ([[pattern, repeats], ...]) as one kind per layer."""
    try:
        layers = [kind for pattern, repeats in attention_types for _ in range(repeats)
                  for kind in pattern]
    except (TypeError, ValueError):
        layers = None
    if layers is None or len(layers) != n_layer or not all(k in ATTENTION_KINDS
                                                           for k in layers):
        raise CheckpointError(f"config.json: attention_types = {attention_types!r} is not a list "
                              f"of [pattern of \"global\"/\"local\", repeats] giving num_layers "
                              f"({n_layer}) layers")
    return layers


def _gpt_neo_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """zoo.gpt_neo.GPTNeoConfig fields from a GPT-Neo config.json (transformers' GPTNeoConfig
    names: hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings,
    attention_types, window_size, ...)."""
    if config.get("model_type") != "gpt_neo":
        raise CheckpointError(f"config.json: model_type {config.get('model_type')!r} is not "
                              "gpt_neo")
    dropout = float(config.get("resid_dropout", 0.0))
    activation = config.get("activation_function", "gelu_new")
    refuse_unsupported([  # field, its value, the value zoo.gpt_neo computes with, in words
        ("tie_word_embeddings", config.get("tie_word_embeddings", True), True,
         "the head tied to the token embedding"),
        ("embed_dropout", float(config.get("embed_dropout", 0.0)), dropout,
         "the embedding's dropout equal to resid_dropout"),
    ], "zoo.gpt_neo")
    d_model, n_layer = config["hidden_size"], config["num_layers"]
    layers = _expand_attention_types(
        config.get("attention_types", [[["global", "local"], n_layer // 2]]), n_layer)
    return {
        "vocab_size": config["vocab_size"],
        "max_seq_len": config.get("max_position_embeddings", 2048),
        "n_layer": n_layer,
        "n_head": config["num_heads"],
        "d_model": d_model,
        "d_ff": config.get("intermediate_size") or 4 * d_model,
        "attention_layers": shortest_pattern(layers),
        "window": config.get("window_size", 256),
        "activation": read_activation(activation, "activation_function", "zoo.gpt_neo"),
        "dropout": dropout,
        "attn_dropout": float(config.get("attention_dropout", 0.0)),
        "layer_norm_eps": config.get("layer_norm_epsilon", 1e-5),
        "init_std": config.get("initializer_range", 0.02),
    }


def export_gpt_neo(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.gpt_neo -> GPTNeoForCausalLM: GPT_NEO_BLOCK_KEYS read backwards, the tensors as they
    are; the layers' pattern written out as attention_types. transformers' GPT-Neo always has a
    feed-forward: a zoo config with d_ff 0 is refused."""
    if c.d_ff == 0:
        raise CheckpointError("transformers' GPT-Neo always has a feed-forward; this config has "
                              "d_ff 0")
    config = {"model_type": "gpt_neo", "architectures": ["GPTNeoForCausalLM"],
              "vocab_size": c.vocab_size, "max_position_embeddings": c.max_seq_len,
              "hidden_size": c.d_model, "num_layers": c.n_layer, "num_heads": c.n_head,
              "intermediate_size": c.d_ff,
              "attention_types": _attention_types(c.attention_layers.split(","), c.n_layer),
              "window_size": c.window, "activation_function": hf_activation(c.activation),
              "resid_dropout": c.dropout, "embed_dropout": c.dropout,
              "attention_dropout": c.attn_dropout, "layer_norm_epsilon": c.layer_norm_eps,
              "initializer_range": c.init_std, "tie_word_embeddings": True,
              "bos_token_id": None, "eos_token_id": None}
    hf = {"transformer.wte.weight": zoo["wte.weight"], "transformer.wpe.weight": zoo["wpe.weight"]}
    hf |= {f"transformer.ln_f.{p}": zoo[f"ln_f.{p}"] for p in ("weight", "bias")}
    blocks = block_names(GPT_NEO_BLOCK_KEYS, c.n_layer, "transformer.h.")
    hf |= {hf_key: zoo[zoo_key] for zoo_key, hf_key in blocks.items()}
    return config, hf  # the head is the token embedding: transformers ties it on loading


def _attention_types(pattern: list[str], n_layer: int) -> list[list[Any]]:
    """transformers' attention_types for the zoo's pattern repeated over n_layer layers:
    [[pattern, repeats]], and the pattern's first layers once more where it does not divide."""
    whole, rest = divmod(n_layer, len(pattern))
    return [[pattern, whole]] * (whole > 0) + [[pattern[:rest], 1]] * (rest > 0)
