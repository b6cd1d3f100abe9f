"""OPT checkpoints <-> zoo.opt: Hugging Face OPTForCausalLM folders (and the base and task-head
classes) in (convert_opt), and out (export_opt)."""

from __future__ import annotations

from typing import Any

from zoo.convert.common import (
    CheckpointError,
    StateDict,
    hf_activation,
    read_activation,
    refuse_unsupported,
    tie_head,
)

# --------------------------------------------------------------------------------------------------
# Hugging Face OPT checkpoints (`model_type: opt`: facebook/opt-125m ... opt-66b, and the models
# fine-tuned from them) -> zoo.opt.
#
#     model.decoder.embed_tokens.weight, model.decoder.embed_positions.weight
#     model.decoder.project_in.weight, model.decoder.project_out.weight   (OPT-350m only)
#     model.decoder.final_layer_norm.{weight,bias}                        (pre-LN models only)
#     model.decoder.layers.N.self_attn.{q,k,v,out}_proj.{weight,bias}
#     model.decoder.layers.N.self_attn_layer_norm, ...fc1, ...fc2, ...final_layer_norm
#     lm_head.weight (tied: the embedding, often not stored)
#
# The body's prefix is `model.decoder.`, `decoder.` in the base model (OPTModel) and in the
# folders Meta released, which were saved from it. The position table keeps its two leading rows
# on both sides (zoo.opt.POSITION_OFFSET). The activation is read by name: relu (every released
# OPT), gelu, gelu_new. What zoo.opt does not compute is refused, naming the field: layers
# without biases or LayerNorms without gains (enable_bias, layer_norm_elementwise_affine), a
# pre-LN model without its final LayerNorm (_remove_final_layer_norm), LayerDrop, an untied
# head.
# --------------------------------------------------------------------------------------------------

# zoo name inside block N -> Hugging Face name inside model.decoder.layers.N (a weight and a bias)
OPT_BLOCK_KEYS = {
    "self_attn.q_proj": "self_attn.q_proj",
    "self_attn.k_proj": "self_attn.k_proj",
    "self_attn.v_proj": "self_attn.v_proj",
    "self_attn.out_proj": "self_attn.out_proj",
    "self_attn_layer_norm": "self_attn_layer_norm",
    "mlp.fc_in": "fc1",
    "mlp.fc_out": "fc2",
    "final_layer_norm": "final_layer_norm",
}


def convert_opt(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.opt config fields, zoo state dict) from an OPT folder (the causal-LM, base or a
    task-head class). A missing weight raises KeyError with its Hugging Face name; weights left
    over are passed on under their own names, for loading to report. The head is the embedding
    (a stored one must equal it)."""
    fields = _opt_config_fields(config)
    body = next((key.removesuffix("embed_tokens.weight") for key in state
                 if key.endswith("decoder.embed_tokens.weight")), "model.decoder.")
    names = {f"{name}.weight": f"{body}{name}.weight"
             for name in ("embed_tokens", "embed_positions")}
    if fields["d_embed"] != fields["d_model"]:
        names |= {f"{name}.weight": f"{body}{name}.weight"
                  for name in ("project_in", "project_out")}
    if fields["pre_ln"]:
        names |= {f"final_layer_norm.{p}": f"{body}final_layer_norm.{p}"
                  for p in ("weight", "bias")}
    for i in range(fields["n_layer"]):
        names |= {f"blocks.{i}.{zoo}.{p}": f"{body}layers.{i}.{hf}.{p}"
                  for zoo, hf in OPT_BLOCK_KEYS.items() for p in ("weight", "bias")}
    left = dict(state)
    out = {zoo: left.pop(hf) for zoo, hf in names.items()}
    tie_head(out, left.pop("lm_head.weight", None), "embed_tokens.weight", "zoo.opt")
    return fields, {**out, **left}


def _opt_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """zoo.opt.OPTConfig fields from an OPT config.json."""
    if config.get("model_type") != "opt":
        raise CheckpointError(f"config.json: model_type {config.get('model_type')!r} is not opt")
    pre_ln = bool(config.get("do_layer_norm_before", True))
    activation = config.get("activation_function", "relu")
    refuse_unsupported([  # field, its value, the value zoo.opt computes with, in words
        ("enable_bias", config.get("enable_bias", True), True, "biases in every layer"),
        ("layer_norm_elementwise_affine", config.get("layer_norm_elementwise_affine", True),
         True, "LayerNorms with a gain and a bias"),
        ("_remove_final_layer_norm", config.get("_remove_final_layer_norm", False) and pre_ln,
         False, "a final LayerNorm after pre-LN blocks"),
        ("layerdrop", config.get("layerdrop", 0.0), 0.0, "every layer in every step"),
        ("tie_word_embeddings", config.get("tie_word_embeddings", True), True,
         "the head tied to the embedding"),
    ], "zoo.opt")
    return {
        "vocab_size": config["vocab_size"],
        "max_seq_len": config.get("max_position_embeddings", 2048),
        "n_layer": config["num_hidden_layers"],
        "n_head": config["num_attention_heads"],
        "d_model": config["hidden_size"],
        "d_ff": config["ffn_dim"],
        "d_embed": config.get("word_embed_proj_dim") or config["hidden_size"],
        "pre_ln": pre_ln,
        "activation": read_activation(activation, "activation_function", "zoo.opt"),
        "dropout": float(config.get("dropout", 0.1)),
        "attn_dropout": float(config.get("attention_dropout", 0.0)),
        "init_std": config.get("init_std", 0.02),
    }


def export_opt(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.opt -> OPTForCausalLM: the key maps read backwards, the tensors as they are, the head
    stored once, as the embedding. transformers' OPT always has a feed-forward and LayerNorms
    with eps 1e-5: a zoo config with d_ff 0 or another eps is refused."""
    if c.d_ff == 0:
        raise CheckpointError("transformers' OPT always has a feed-forward; this config has "
                              "d_ff 0")
    if c.layer_norm_eps != 1e-5:
        raise CheckpointError(f"transformers' OPT has LayerNorms with eps 1e-5; this config has "
                              f"layer_norm_eps {c.layer_norm_eps}")
    config = {"model_type": "opt", "architectures": ["OPTForCausalLM"],
              "vocab_size": c.vocab_size, "max_position_embeddings": c.max_seq_len,
              "hidden_size": c.d_model, "ffn_dim": c.d_ff, "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "word_embed_proj_dim": c.d_embed,
              "do_layer_norm_before": c.pre_ln, "activation_function": hf_activation(c.activation),
              "dropout": c.dropout, "attention_dropout": c.attn_dropout, "layerdrop": 0.0,
              "init_std": c.init_std, "enable_bias": True, "layer_norm_elementwise_affine": True,
              "tie_word_embeddings": True, "pad_token_id": None, "bos_token_id": None,
              "eos_token_id": None}
    outer = ["embed_tokens", "embed_positions"]
    outer += ["project_in", "project_out"] if c.d_embed != c.d_model else []
    hf = {f"model.decoder.{name}.weight": zoo[f"{name}.weight"] for name in outer}
    if c.pre_ln:
        hf |= {f"model.decoder.final_layer_norm.{p}": zoo[f"final_layer_norm.{p}"]
               for p in ("weight", "bias")}
    for i in range(c.n_layer):
        hf |= {f"model.decoder.layers.{i}.{hf_name}.{p}": zoo[f"blocks.{i}.{zoo_name}.{p}"]
               for zoo_name, hf_name in OPT_BLOCK_KEYS.items() for p in ("weight", "bias")}
    return config, hf
