"""LLaMA and Mistral checkpoints <-> zoo.llama: Hugging Face LlamaForCausalLM and
MistralForCausalLM folders, and their base and task-head classes, in (convert_llama), and out
(export_llama)."""

from __future__ import annotations

from typing import Any

from zoo.convert.common import CheckpointError, StateDict

# --------------------------------------------------------------------------------------------------
# Hugging Face LLaMA (`model_type: llama`, Llama 1 and 2) and Mistral (`mistral`) checkpoints ->
# zoo.llama, from LlamaForCausalLM / MistralForCausalLM folders (one file or shards).
#
#     model.embed_tokens.weight, model.norm.weight, lm_head.weight
#     model.layers.N.self_attn.{q,k,v,o}_proj.weight, model.layers.N.mlp.{gate,up,down}_proj.weight
#     model.layers.N.input_layernorm.weight, model.layers.N.post_attention_layernorm.weight
#
# The body's prefix is `model.`, none in the base models (LlamaModel, MistralModel: no
# lm_head.weight, so the zoo's head is left new) and `transformer.` in LlamaForQuestionAnswering;
# the task heads (`score.`, `qa_outputs.`) are passed on under their own names, left unused.
#
# The tensors are copied as they are: Hugging Face's q and k rows are already in the rotate-half
# RoPE layout the zoo uses (its conversion script permuted Meta's). Mistral's `sliding_window`
# becomes `window` (null in v0.2 and later; absent means MistralConfig's default, 4096). RoPE's
# base is `rope_parameters.rope_theta` in transformers 5, `rope_theta` before. What zoo.llama
# does not compute is refused, naming the field: scaled RoPE other than Llama 3.1's "llama3"
# (linear, dynamic, yarn), biases, an activation other than SiLU, a head size other than
# d / n_head. A tied head (Llama 3.2 1B, 3B) has no lm_head.weight: it is the embedding.
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
    """(zoo.llama config fields, zoo state dict) from a Llama or Mistral folder (the causal-LM,
    base or a task-head class). A missing weight raises KeyError with its Hugging Face name;
    weights left over are passed on under their own names, for loading to report."""
    fields = _llama_config_fields(config)
    body = next((key.removesuffix("embed_tokens.weight") for key in state
                 if key.endswith("embed_tokens.weight")), "model.")  # "model.", "", ...
    names = {"tok_emb.weight": body + "embed_tokens.weight", "norm.weight": body + "norm.weight"}
    if "lm_head.weight" in state:
        names["lm_head.weight"] = "lm_head.weight"
    for i in range(fields["n_layer"]):
        names |= {f"blocks.{i}.{zoo}.weight": f"{body}layers.{i}.{hf}.weight"
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
    ]
    for field, refused in unsupported:
        if refused:
            raise CheckpointError(f"config.json: {field} = {config[field]!r} is not supported by "
                                  "zoo.llama (SiLU, no biases, head size d / n_head)")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise CheckpointError(f"config.json: rope_type {rope_type!r} is not supported by "
                              "zoo.llama (plain RoPE, or Llama 3.1's llama3 scaling)")
    scaling = {}
    if rope_type == "llama3":
        scaling = {"rope_factor": float(rope["factor"]),
                   "rope_low_freq_factor": float(rope["low_freq_factor"]),
                   "rope_high_freq_factor": float(rope["high_freq_factor"]),
                   "rope_original_len": int(rope["original_max_position_embeddings"])}
    window = config.get("sliding_window", 4096) if model_type == "mistral" else None
    return {**scaling,
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
        "tie_embeddings": bool(config.get("tie_word_embeddings", False)),
        "init_std": config.get("initializer_range", 0.02),
    }


def export_llama(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.llama -> LlamaForCausalLM, or MistralForCausalLM when the config has a sliding window
    (`window` -> `sliding_window`): LLAMA_BLOCK_KEYS read backwards, the tensors as they are
    (both sides use the rotate-half RoPE layout). RoPE's base (and Llama 3.1's scaling) goes into
    `rope_parameters`, as transformers 5 keeps it; a tied head is stored once, as the
    embedding; nothing has a bias. A block without a
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
              "tie_word_embeddings": c.tie_embeddings, "bos_token_id": None,
              "eos_token_id": None}
    if c.rope_factor is not None:  # Llama 3.1's scaling
        config["rope_parameters"] |= {
            "rope_type": "llama3", "factor": c.rope_factor,
            "low_freq_factor": c.rope_low_freq_factor,
            "high_freq_factor": c.rope_high_freq_factor,
            "original_max_position_embeddings": c.rope_original_len}
    if mistral:
        config["sliding_window"] = c.window
    else:  # MistralConfig has no bias switches: it never has biases
        config |= {"attention_bias": False, "mlp_bias": False}
    hf = {"model.embed_tokens.weight": zoo["tok_emb.weight"],
          "model.norm.weight": zoo["norm.weight"]}
    if not c.tie_embeddings:  # a tied head is the embedding, stored once
        hf["lm_head.weight"] = zoo["lm_head.weight"]
    for i in range(c.n_layer):
        hf |= {f"model.layers.{i}.{hf_name}.weight": zoo[f"blocks.{i}.{zoo_name}.weight"]
               for zoo_name, hf_name in LLAMA_BLOCK_KEYS.items()}
    return config, hf
