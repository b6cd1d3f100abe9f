"""T5 checkpoints <-> zoo.t5: Hugging Face T5ForConditionalGeneration folders (and the T5Model
base class) in (convert_t5), and out (export_t5)."""

from __future__ import annotations

from typing import Any

import torch

from zoo.convert.common import CheckpointError, StateDict

# --------------------------------------------------------------------------------------------------
# Hugging Face T5 checkpoints (`model_type: t5`: google-t5/t5-small ... t5-11b, google/t5-v1_1-*,
# google/flan-t5-*, and the models fine-tuned from them) -> zoo.t5.
#
#     shared.weight (also stored as encoder.embed_tokens.weight, decoder.embed_tokens.weight)
#     encoder.block.N.layer.0.SelfAttention.{q,k,v,o}.weight, ...layer.0.layer_norm.weight
#     encoder.block.N.layer.1.DenseReluDense.{wi,wo}.weight (v1.1: wi_0, wi_1, wo)
#     encoder.block.N.layer.1.layer_norm.weight, encoder.final_layer_norm.weight
#     decoder.block.N.layer.0.SelfAttention..., layer.1.EncDecAttention..., layer.2.DenseReluDense
#     {encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias.weight
#     lm_head.weight (T5: the embedding; T5 v1.1: a matrix of its own)
#
# Which output layer a folder has: T5's config.json says `tie_word_embeddings` (absent = true),
# T5 v1.1's says false, which also means that the states are not rescaled. transformers 5
# always writes true, says `scale_decoder_outputs` apart, and stores an untied output matrix
# as `lm_head.weight` (which its loader unties since it differs from the embedding); a new
# v1.1 model it builds is tied and not rescaled. The feed-forward is read by name: relu
# (T5) or gated-gelu (T5 v1.1, Flan-T5); others are refused. The decoder's start token is
# `decoder_start_token_id` (T5's: the padding token, 0).
# --------------------------------------------------------------------------------------------------

ATTENTION = ("q", "k", "v", "o")
FEED_FORWARD = {"relu": ("wi", "wo"), "gated-gelu": ("wi_0", "wi_1", "wo")}


def _block_keys(fields: dict[str, Any]) -> dict[str, str]:
    """zoo name -> Hugging Face name of every weight in the two stacks."""
    ffn = FEED_FORWARD[fields["feed_forward"]]
    decoder_layers = fields["n_decoder_layer"] or fields["n_layer"]
    keys = {"enc_bias.table.weight":
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "dec_bias.table.weight":
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "enc_norm.weight": "encoder.final_layer_norm.weight",
            "dec_norm.weight": "decoder.final_layer_norm.weight"}
    for i in range(fields["n_layer"]):
        hf = f"encoder.block.{i}.layer"
        keys |= {f"encoder.{i}.self_attn.{m}.weight": f"{hf}.0.SelfAttention.{m}.weight"
                 for m in ATTENTION}
        keys |= {f"encoder.{i}.ffn.{m}.weight": f"{hf}.1.DenseReluDense.{m}.weight" for m in ffn}
        keys |= {f"encoder.{i}.ln1.weight": f"{hf}.0.layer_norm.weight",
                 f"encoder.{i}.ln2.weight": f"{hf}.1.layer_norm.weight"}
    for i in range(decoder_layers):
        hf = f"decoder.block.{i}.layer"
        keys |= {f"decoder.{i}.self_attn.{m}.weight": f"{hf}.0.SelfAttention.{m}.weight"
                 for m in ATTENTION}
        keys |= {f"decoder.{i}.cross_attn.{m}.weight": f"{hf}.1.EncDecAttention.{m}.weight"
                 for m in ATTENTION}
        keys |= {f"decoder.{i}.ffn.{m}.weight": f"{hf}.2.DenseReluDense.{m}.weight" for m in ffn}
        keys |= {f"decoder.{i}.ln{n + 1}.weight": f"{hf}.{n}.layer_norm.weight" for n in range(3)}
    return keys


def convert_t5(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.t5 config fields, zoo state dict) from a T5 folder (T5ForConditionalGeneration or
    the T5Model base class, which has no output layer). A missing weight raises KeyError with
    its Hugging Face name; weights left over are passed on under their own names, for loading
    to report. A stored output layer that differs from the embedding is the model's own, as
    transformers 5 reads it, whatever tie_word_embeddings says."""
    fields = _t5_config_fields(config)
    left = dict(state)
    # shared.weight, saved again as each stack's embed_tokens by older transformers
    copies = [left.pop(key, None) for key in ("shared.weight", "encoder.embed_tokens.weight",
                                              "decoder.embed_tokens.weight")]
    embedding = next((table for table in copies if table is not None), None)
    if embedding is None:
        raise KeyError("shared.weight")
    out = {"tok_emb.weight": embedding}
    out |= {zoo: left.pop(hf) for zoo, hf in _block_keys(fields).items()}
    head = left.pop("lm_head.weight", None)
    if head is not None and (head.shape != embedding.shape or not torch.equal(head, embedding)):
        fields["tie_embeddings"] = False
    if fields["tie_embeddings"]:
        out["lm_head.weight"] = embedding
    elif head is not None:
        out["lm_head.weight"] = head
    return fields, {**out, **left}


def _t5_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """zoo.t5.T5Config fields from a T5 config.json (transformers' T5Config names)."""
    if config.get("model_type") != "t5":
        raise CheckpointError(f"config.json: model_type {config.get('model_type')!r} is not t5")
    feed_forward = config.get("feed_forward_proj", "relu")
    if feed_forward not in FEED_FORWARD:
        raise CheckpointError(f"config.json: feed_forward_proj = {feed_forward!r} is not "
                              f"supported by zoo.t5 (one of {', '.join(FEED_FORWARD)})")
    start = config.get("decoder_start_token_id")
    start = config.get("pad_token_id") if start is None else start
    tied = config.get("tie_word_embeddings", True) is not False
    layers = config["num_layers"]
    decoder_layers = config.get("num_decoder_layers") or layers
    return {
        "vocab_size": config["vocab_size"],
        "d_model": config["d_model"],
        "d_kv": config["d_kv"],
        "n_head": config["num_heads"],
        "d_ff": config["d_ff"],
        "n_layer": layers,
        "n_decoder_layer": None if decoder_layers == layers else decoder_layers,
        "num_buckets": config.get("relative_attention_num_buckets", 32),
        "max_distance": config.get("relative_attention_max_distance", 128),
        "feed_forward": feed_forward,
        "tie_embeddings": tied,
        "scale_output": config.get("scale_decoder_outputs", tied) is not False,
        "dropout": float(config.get("dropout_rate", 0.1)),
        "layer_norm_eps": config.get("layer_norm_epsilon", 1e-6),
        "decoder_start_id": 0 if start is None else start,
    }


def export_t5(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.t5 -> T5ForConditionalGeneration: the key map read backwards, the tensors as they
    are; the embedding stored once (transformers ties the two stacks' copies to it), the output
    layer stored only when it is a matrix of its own."""
    config = {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
              "vocab_size": c.vocab_size, "d_model": c.d_model, "d_kv": c.d_kv,
              "num_heads": c.n_head, "d_ff": c.d_ff, "num_layers": c.n_layer,
              "num_decoder_layers": c.decoder_layers,
              "relative_attention_num_buckets": c.num_buckets,
              "relative_attention_max_distance": c.max_distance,
              "feed_forward_proj": c.feed_forward, "tie_word_embeddings": c.tie_embeddings,
              "scale_decoder_outputs": c.scale_output,
              "dropout_rate": c.dropout, "layer_norm_epsilon": c.layer_norm_eps,
              "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1,
              "decoder_start_token_id": c.decoder_start_id}  # T5's ids; a run's replace them
    fields = {"feed_forward": c.feed_forward, "n_layer": c.n_layer,
              "n_decoder_layer": c.n_decoder_layer}
    hf = {"shared.weight": zoo["tok_emb.weight"]}
    hf |= {hf_name: zoo[zoo_name] for zoo_name, hf_name in _block_keys(fields).items()}
    if not c.tie_embeddings:
        hf["lm_head.weight"] = zoo["lm_head.weight"]
    return config, hf
