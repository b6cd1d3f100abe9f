"""GPT-J checkpoints <-> zoo.gptj: Hugging Face GPTJForCausalLM folders (and the base and
task-head classes) in (convert_gptj), and out (export_gptj)."""

from __future__ import annotations

from typing import Any

from zoo.convert.common import (
    CheckpointError,
    StateDict,
    block_names,
    hf_activation,
    read_activation,
    refuse_unsupported,
)

# --------------------------------------------------------------------------------------------------
# Hugging Face GPT-J checkpoints (`model_type: gptj`: EleutherAI/gpt-j-6b and the models
# fine-tuned from it) -> zoo.gptj.
#
#     transformer.wte.weight, transformer.ln_f.{weight,bias}, lm_head.{weight,bias}
#     transformer.h.N.ln_1.{weight,bias}
#     transformer.h.N.attn.{q,k,v,out}_proj.weight                       (no biases)
#     transformer.h.N.mlp.fc_in.{weight,bias}, ...mlp.fc_out.{weight,bias}
#
# The base model (GPTJModel) has no head and no `transformer.` prefix. Every tensor is copied as
# it is: both sides keep RoPE's interleaved channel pairs. Older folders also store the buffers
# transformers 4 recomputed (the causal mask `attn.bias`, `attn.masked_bias`); they are dropped.
# The activation is read by name (gelu_new, GPT-J's; gelu; relu). What zoo.gptj does not
# compute is refused, naming the field: a tied head, a rotary_dim of None (transformers then
# sizes its sine table by the model's width, not a head's), embedding dropout unlike the
# branches'.
# --------------------------------------------------------------------------------------------------

# zoo name inside block N -> Hugging Face name inside transformer.h.N, and whether it has a bias
GPTJ_BLOCK_KEYS = {
    "ln_1": ("ln_1", True),
    "attn.q_proj": ("attn.q_proj", False),
    "attn.k_proj": ("attn.k_proj", False),
    "attn.v_proj": ("attn.v_proj", False),
    "attn.out_proj": ("attn.out_proj", False),
    "mlp.fc_in": ("mlp.fc_in", True),
    "mlp.fc_out": ("mlp.fc_out", True),
}
_RECOMPUTED = ("attn.bias", "attn.masked_bias")


def convert_gptj(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.gptj config fields, zoo state dict) from a GPT-J folder (the causal-LM, base or a
    task-head class). A missing weight raises KeyError with its Hugging Face name; weights left
    over are passed on under their own names, for loading to report."""
    fields = _gptj_config_fields(config)
    body = next((key.removesuffix("wte.weight") for key in state
                 if key.endswith("wte.weight")), "transformer.")  # "transformer.", "", ...
    names = {"wte.weight": body + "wte.weight"}
    names |= {f"ln_f.{p}": f"{body}ln_f.{p}" for p in ("weight", "bias")}
    names |= {f"lm_head.{p}": f"lm_head.{p}" for p in ("weight", "bias") if f"lm_head.{p}" in state}
    names |= block_names(GPTJ_BLOCK_KEYS, fields["n_layer"], body + "h.")
    left = {k: v for k, v in state.items() if not k.endswith(_RECOMPUTED)}
    out = {zoo: left.pop(hf) for zoo, hf in names.items()}
    return fields, {**out, **left}


def _gptj_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """zoo.gptj.GPTJConfig fields from a GPT-J config.json (transformers' GPTJConfig names:
    n_embd, n_layer, n_head, n_inner, n_positions, ...)."""
    if config.get("model_type") != "gptj":
        raise CheckpointError(f"config.json: model_type {config.get('model_type')!r} is not gptj")
    dropout = float(config.get("resid_pdrop", 0.0))
    activation = config.get("activation_function", "gelu_new")
    refuse_unsupported([  # field, its value, the value zoo.gptj computes with, in words
        ("tie_word_embeddings", config.get("tie_word_embeddings", False), False,
         "an untied head with a bias"),
        ("embd_pdrop", float(config.get("embd_pdrop", 0.0)), dropout,
         "the embedding's dropout equal to resid_pdrop"),
    ], "zoo.gptj")
    if config.get("rotary_dim", 64) is None:
        raise CheckpointError("config.json: rotary_dim = None is not supported by zoo.gptj "
                              "(a number of each head's channels)")
    d_model = config["n_embd"]
    return {
        "vocab_size": config["vocab_size"],
        "max_seq_len": config.get("n_positions", 2048),
        "n_layer": config["n_layer"],
        "n_head": config["n_head"],
        "d_model": d_model,
        "d_ff": config.get("n_inner") or 4 * d_model,
        "rotary_dim": config.get("rotary_dim", 64),
        "activation": read_activation(activation, "activation_function", "zoo.gptj"),
        "dropout": dropout,
        "attn_dropout": float(config.get("attn_pdrop", 0.0)),
        "layer_norm_eps": config.get("layer_norm_epsilon", 1e-5),
    }


def export_gptj(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.gptj -> GPTJForCausalLM: GPTJ_BLOCK_KEYS read backwards, the tensors as they are.
    transformers' GPT-J always has a feed-forward and turns by RoPE's base of 10,000: a zoo
    config with d_ff 0 or another rope_theta is refused."""
    if c.d_ff == 0:
        raise CheckpointError("transformers' GPT-J always has a feed-forward; this config has "
                              "d_ff 0")
    if c.rope_theta != 10_000.0:
        raise CheckpointError(f"transformers' GPT-J turns by RoPE's base 10000; this config has "
                              f"rope_theta {c.rope_theta}")
    config = {"model_type": "gptj", "architectures": ["GPTJForCausalLM"],
              "vocab_size": c.vocab_size, "n_positions": c.max_seq_len, "n_embd": c.d_model,
              "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.d_ff,
              "rotary_dim": c.rotary_dim, "activation_function": hf_activation(c.activation),
              "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.attn_dropout,
              "layer_norm_epsilon": c.layer_norm_eps, "tie_word_embeddings": False,
              "bos_token_id": None, "eos_token_id": None}
    hf = {"transformer.wte.weight": zoo["wte.weight"]}
    hf |= {f"transformer.ln_f.{p}": zoo[f"ln_f.{p}"] for p in ("weight", "bias")}
    hf |= {f"lm_head.{p}": zoo[f"lm_head.{p}"] for p in ("weight", "bias")}
    blocks = block_names(GPTJ_BLOCK_KEYS, c.n_layer, "transformer.h.")
    hf |= {hf_key: zoo[zoo_key] for zoo_key, hf_key in blocks.items()}
    return config, hf
