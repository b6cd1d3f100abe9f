"""GPT-NeoX and Pythia checkpoints <-> zoo.gpt_neox: Hugging Face GPTNeoXForCausalLM folders (and
the base and task-head classes) in (convert_gpt_neox), and out (export_gpt_neox)."""

from __future__ import annotations

from typing import Any

from zoo.convert.common import CheckpointError, StateDict, refuse_unsupported

# --------------------------------------------------------------------------------------------------
# Hugging Face GPT-NeoX checkpoints (`model_type: gpt_neox`: EleutherAI's gpt-neox-20b, every
# Pythia) -> zoo.gpt_neox.
#
#     gpt_neox.embed_in.weight, gpt_neox.final_layer_norm.{weight,bias}, embed_out.weight
#     gpt_neox.layers.N.attention.query_key_value.{weight,bias}, ...attention.dense.{weight,bias}
#     gpt_neox.layers.N.mlp.dense_h_to_4h.{weight,bias}, ...mlp.dense_4h_to_h.{weight,bias}
#     gpt_neox.layers.N.input_layernorm.{weight,bias}, ...post_attention_layernorm.{weight,bias}
#
# The head is `embed_out.weight` in the released folders and `lm_head.weight` where transformers
# 5 saved it; the base model (GPTNeoXModel) has neither and no `gpt_neox.` prefix. The fused
# query-key-value matrix is copied as it is: both sides lay it out head by head. Old folders
# also store buffers the zoo recomputes (the causal mask `attention.bias`, `masked_bias`, RoPE's
# `rotary_emb.inv_freq`); they are dropped. RoPE's base and share are `rotary_emb_base` and
# `rotary_pct` in the released config.json files, `rope_parameters.rope_theta` and
# `partial_rotary_factor` in transformers 5. What zoo.gpt_neox does not compute is refused,
# naming the field: an activation other than exact GELU, no attention bias, a tied head, scaled
# RoPE.
# --------------------------------------------------------------------------------------------------

# zoo name inside block N -> Hugging Face name inside gpt_neox.layers.N (a weight and a bias each)
GPT_NEOX_BLOCK_KEYS = {
    "input_layernorm": "input_layernorm",
    "attention.query_key_value": "attention.query_key_value",
    "attention.dense": "attention.dense",
    "post_attention_layernorm": "post_attention_layernorm",
    "mlp.fc_in": "mlp.dense_h_to_4h",
    "mlp.fc_out": "mlp.dense_4h_to_h",
}
_RECOMPUTED = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")


def convert_gpt_neox(config: dict[str, Any],
                     state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.gpt_neox config fields, zoo state dict) from a GPT-NeoX folder (the causal-LM, base
    or a task-head class). A missing weight raises KeyError with its Hugging Face name; weights
    left over are passed on under their own names, for loading to report."""
    fields = _gpt_neox_config_fields(config)
    body = next((key.removesuffix("embed_in.weight") for key in state
                 if key.endswith("embed_in.weight")), "gpt_neox.")  # "gpt_neox.", "", ...
    names = {"embed_in.weight": body + "embed_in.weight"}
    names |= {f"final_layer_norm.{p}": f"{body}final_layer_norm.{p}" for p in ("weight", "bias")}
    head = next((key for key in ("embed_out.weight", "lm_head.weight") if key in state), None)
    if head is not None:
        names["lm_head.weight"] = head
    for i in range(fields["n_layer"]):
        names |= {f"blocks.{i}.{zoo}.{p}": f"{body}layers.{i}.{hf}.{p}"
                  for zoo, hf in GPT_NEOX_BLOCK_KEYS.items() for p in ("weight", "bias")}
    left = {k: v for k, v in state.items() if not k.endswith(_RECOMPUTED)}
    out = {zoo: left.pop(hf) for zoo, hf in names.items()}
    return fields, {**out, **left}


def _gpt_neox_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """zoo.gpt_neox.GPTNeoXConfig fields from a GPT-NeoX config.json."""
    if config.get("model_type") != "gpt_neox":
        raise CheckpointError(f"config.json: model_type {config.get('model_type')!r} is not "
                              "gpt_neox")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    checks = [  # field, its value, the value zoo.gpt_neox computes with, in words
        ("hidden_act", config.get("hidden_act", "gelu"), "gelu", "exact GELU"),
        ("attention_bias", config.get("attention_bias", True), True, "biases in attention"),
        ("tie_word_embeddings", config.get("tie_word_embeddings", False), False,
         "an untied head"),
        ("rope_type", rope_type, "default", "plain RoPE"),
    ]
    refuse_unsupported(checks, "zoo.gpt_neox")
    return {
        "vocab_size": config["vocab_size"],
        "max_seq_len": config.get("max_position_embeddings", 2048),
        "n_layer": config["num_hidden_layers"],
        "n_head": config["num_attention_heads"],
        "d_model": config["hidden_size"],
        "d_ff": config["intermediate_size"],
        "rotary_pct": float(rope.get("partial_rotary_factor", config.get("rotary_pct", 0.25))),
        "rope_theta": float(rope.get("rope_theta", config.get("rotary_emb_base", 10_000.0))),
        "parallel_residual": bool(config.get("use_parallel_residual", True)),
        "dropout": float(config.get("hidden_dropout", 0.0)),
        "attn_dropout": float(config.get("attention_dropout", 0.0)),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-5),
    }


def export_gpt_neox(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.gpt_neox -> GPTNeoXForCausalLM: GPT_NEOX_BLOCK_KEYS read backwards, the tensors as
    they are, the head as `embed_out.weight` (the name of the released folders, which
    transformers 4 and 5 both read), RoPE's base and share in `rope_parameters` as transformers
    5 keeps them and as `rotary_emb_base` and `rotary_pct` for older readers. A block without a
    feed-forward (d_ff 0) has no Hugging Face counterpart."""
    if c.d_ff == 0:
        raise CheckpointError("transformers' GPT-NeoX always has a feed-forward; this config "
                              "has d_ff 0")
    config = {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"],
              "vocab_size": c.vocab_size, "max_position_embeddings": c.max_seq_len,
              "hidden_size": c.d_model, "intermediate_size": c.d_ff,
              "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
              "hidden_act": "gelu", "layer_norm_eps": c.layer_norm_eps,
              "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta,
                                  "partial_rotary_factor": c.rotary_pct},
              "rotary_emb_base": c.rope_theta, "rotary_pct": c.rotary_pct,
              "use_parallel_residual": c.parallel_residual, "attention_bias": True,
              "hidden_dropout": c.dropout, "attention_dropout": c.attn_dropout,
              "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": None}
    hf = {"gpt_neox.embed_in.weight": zoo["embed_in.weight"],
          "embed_out.weight": zoo["lm_head.weight"]}
    hf |= {f"gpt_neox.final_layer_norm.{p}": zoo[f"final_layer_norm.{p}"]
           for p in ("weight", "bias")}
    for i in range(c.n_layer):
        hf |= {f"gpt_neox.layers.{i}.{hf_name}.{p}": zoo[f"blocks.{i}.{zoo_name}.{p}"]
               for zoo_name, hf_name in GPT_NEOX_BLOCK_KEYS.items() for p in ("weight", "bias")}
    return config, hf
