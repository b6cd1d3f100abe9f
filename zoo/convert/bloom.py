"""BLOOM checkpoints <-> zoo.bloom: Hugging Face BloomForCausalLM folders (and the base and
task-head classes) in (convert_bloom), and out (export_bloom)."""

from __future__ import annotations

from typing import Any

from zoo.convert.common import CheckpointError, StateDict, refuse_unsupported, tie_head

# --------------------------------------------------------------------------------------------------
# Hugging Face BLOOM checkpoints (`model_type: bloom`: bigscience/bloom and bloom-560m ... 7b1,
# bloomz) -> zoo.bloom.
#
#     transformer.word_embeddings.weight, transformer.word_embeddings_layernorm.{weight,bias}
#     transformer.h.N.input_layernorm, ...self_attention.query_key_value, ...self_attention.dense,
#     transformer.h.N.post_attention_layernorm, ...mlp.dense_h_to_4h, ...mlp.dense_4h_to_h
#     transformer.ln_f.{weight,bias}; lm_head.weight (tied: the embedding, often not stored)
#
# The body's prefix is `transformer.`, none in the base model (BloomModel). The fused
# query-key-value matrix is copied as it is: both sides lay it out head by head. What zoo.bloom
# does not compute is refused, naming the field: the residual taken after the LayerNorm
# (apply_residual_connection_post_layernorm), an untied head, and Megatron's tensor-parallel
# "slow but exact" products (which change the order of additions only; refused so that a
# checkpoint that asked for them is not read as if it had not).
# --------------------------------------------------------------------------------------------------

# zoo name inside block N -> Hugging Face name inside transformer.h.N (a weight and a bias each)
BLOOM_BLOCK_KEYS = {
    "input_layernorm": "input_layernorm",
    "self_attention.query_key_value": "self_attention.query_key_value",
    "self_attention.dense": "self_attention.dense",
    "post_attention_layernorm": "post_attention_layernorm",
    "mlp.fc_in": "mlp.dense_h_to_4h",
    "mlp.fc_out": "mlp.dense_4h_to_h",
}
# zoo name -> Hugging Face name inside transformer. (a weight and a bias each)
BLOOM_OUTER_KEYS = {"embed_norm": "word_embeddings_layernorm", "ln_f": "ln_f"}


def convert_bloom(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.bloom config fields, zoo state dict) from a BLOOM folder (the causal-LM, base or a
    task-head class). A missing weight raises KeyError with its Hugging Face name; weights left
    over are passed on under their own names, for loading to report. The head is the embedding
    (a stored one must equal it)."""
    fields = _bloom_config_fields(config)
    body = next((key.removesuffix("word_embeddings.weight") for key in state
                 if key.endswith("word_embeddings.weight")), "transformer.")
    names = {"word_embeddings.weight": body + "word_embeddings.weight"}
    names |= {f"{zoo}.{p}": f"{body}{hf}.{p}" for zoo, hf in BLOOM_OUTER_KEYS.items()
              for p in ("weight", "bias")}
    for i in range(fields["n_layer"]):
        names |= {f"blocks.{i}.{zoo}.{p}": f"{body}h.{i}.{hf}.{p}"
                  for zoo, hf in BLOOM_BLOCK_KEYS.items() for p in ("weight", "bias")}
    left = dict(state)
    out = {zoo: left.pop(hf) for zoo, hf in names.items()}
    tie_head(out, left.pop("lm_head.weight", None), "word_embeddings.weight", "zoo.bloom")
    return fields, {**out, **left}


def _bloom_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """zoo.bloom.BloomConfig fields from a BLOOM config.json."""
    if config.get("model_type") != "bloom":
        raise CheckpointError(f"config.json: model_type {config.get('model_type')!r} is not "
                              "bloom")
    checks = [  # field, its value, the value zoo.bloom computes with, in words
        ("apply_residual_connection_post_layernorm",
         config.get("apply_residual_connection_post_layernorm", False), False,
         "the residual taken before the LayerNorm"),
        ("tie_word_embeddings", config.get("tie_word_embeddings", True), True,
         "the head tied to the embedding"),
        ("slow_but_exact", config.get("slow_but_exact", False), False,
         "one product per linear layer"),
    ]
    refuse_unsupported(checks, "zoo.bloom")
    d = config.get("hidden_size", config.get("n_embed"))
    return {
        "vocab_size": config["vocab_size"],
        "n_layer": config.get("n_layer", config.get("num_hidden_layers")),
        "n_head": config.get("n_head", config.get("num_attention_heads")),
        "d_model": d,
        "d_ff": 4 * d,
        "max_seq_len": config.get("seq_length", 2048),  # the trained context, where recorded
        "dropout": float(config.get("hidden_dropout", 0.0)),
        "attn_dropout": float(config.get("attention_dropout", 0.0)),
        "layer_norm_eps": config.get("layer_norm_epsilon", 1e-5),
        "init_std": config.get("initializer_range", 0.02),
    }


def export_bloom(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.bloom -> BloomForCausalLM: the key maps read backwards, the tensors as they are, the
    head stored once, as the embedding, the trained context as `seq_length` (which BLOOM's
    configuration keeps without using). BLOOM's feed-forward is always 4d wide: a zoo config
    with another width is refused."""
    if c.d_ff != 4 * c.d_model:
        raise CheckpointError(f"transformers' BLOOM has a feed-forward of 4 * d_model = "
                              f"{4 * c.d_model}; this config has d_ff {c.d_ff}")
    config = {"model_type": "bloom", "architectures": ["BloomForCausalLM"],
              "vocab_size": c.vocab_size, "hidden_size": c.d_model, "n_layer": c.n_layer,
              "n_head": c.n_head, "layer_norm_epsilon": c.layer_norm_eps,
              "hidden_dropout": c.dropout, "attention_dropout": c.attn_dropout,
              "initializer_range": c.init_std, "tie_word_embeddings": True,
              "apply_residual_connection_post_layernorm": False, "slow_but_exact": False,
              "pretraining_tp": 1, "seq_length": c.max_seq_len, "bos_token_id": None,
              "eos_token_id": None}
    hf = {"transformer.word_embeddings.weight": zoo["word_embeddings.weight"]}
    hf |= {f"transformer.{hf_name}.{p}": zoo[f"{zoo_name}.{p}"]
           for zoo_name, hf_name in BLOOM_OUTER_KEYS.items() for p in ("weight", "bias")}
    for i in range(c.n_layer):
        hf |= {f"transformer.h.{i}.{hf_name}.{p}": zoo[f"blocks.{i}.{zoo_name}.{p}"]
               for zoo_name, hf_name in BLOOM_BLOCK_KEYS.items() for p in ("weight", "bias")}
    return config, hf
