"""BART, mBART and Pegasus checkpoints <-> zoo.bart: Hugging Face BartForConditionalGeneration,
MBartForConditionalGeneration and PegasusForConditionalGeneration folders (and the base and
task-head classes) in (convert_bart), and out (export_bart)."""

from __future__ import annotations

from typing import Any

import torch

from zoo.convert.common import (
    CheckpointError,
    StateDict,
    hf_activation,
    read_activation,
    refuse_unsupported,
    tie_head,
)
from zoo.layers import split_sinusoids

# --------------------------------------------------------------------------------------------------
# Hugging Face BART checkpoints (`model_type: bart`: facebook/bart-base, bart-large, their
# fine-tunes such as bart-large-cnn) -> zoo.bart.
#
#     model.shared.weight                              (also encoder/decoder.embed_tokens, lm_head)
#     model.{encoder,decoder}.embed_positions.weight   (max_position_embeddings + 2 rows)
#     model.{encoder,decoder}.layernorm_embedding.{weight,bias}
#     model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2,
#                             final_layer_norm}.{weight,bias}
#     model.decoder.layers.N.{... the same, encoder_attn.{q,k,v,out}_proj,
#                             encoder_attn_layer_norm}.{weight,bias}
#     final_logits_bias (1, V)                         (a buffer, not trained)
#     model.{encoder,decoder}.layer_norm.{weight,bias} (mBART: each stack's final LayerNorm)
#
# mBART's folders (`model_type: mbart`: facebook/mbart-large-cc25, mbart-large-50 and their
# translation fine-tunes) have BART's keys plus the two final LayerNorms; their layers are
# pre-LN (transformers' MBart has no switch for it), so they load with pre_ln = True.
# Pegasus's (`model_type: pegasus`: google/pegasus-large and its summarisation fine-tunes) are
# pre-LN too, without layernorm_embedding, and their embed_positions hold fixed sinusoids that
# zoo.bart computes (zoo.bart.split_sinusoids): the stored copies are dropped on reading and
# written again on export. scale_embedding is read from every config; KINDS lists what each
# model_type fixes.
# The base model (BartModel) has no head, no final_logits_bias and no `model.` prefix; the
# classification and question-answering classes add heads left unused. Every tensor is copied
# as it is. The token table is read from `shared` or, where a file stores only the copies, from
# `encoder.embed_tokens`; every stored copy must equal it. What zoo.bart does not compute is
# refused, naming the field: stacks of different widths or head counts, LayerDrop, an untied
# head.
# --------------------------------------------------------------------------------------------------

# zoo name inside a layer -> Hugging Face name inside model.{encoder,decoder}.layers.N; every one
# has a weight and a bias
ENCODER_KEYS = {
    "self_attn.q_proj": "self_attn.q_proj",
    "self_attn.k_proj": "self_attn.k_proj",
    "self_attn.v_proj": "self_attn.v_proj",
    "self_attn.out_proj": "self_attn.out_proj",
    "self_attn_layer_norm": "self_attn_layer_norm",
    "ffn.fc1": "fc1",
    "ffn.fc2": "fc2",
    "final_layer_norm": "final_layer_norm",
}
DECODER_KEYS = {
    **ENCODER_KEYS,
    "encoder_attn.q_proj": "encoder_attn.q_proj",
    "encoder_attn.k_proj": "encoder_attn.k_proj",
    "encoder_attn.v_proj": "encoder_attn.v_proj",
    "encoder_attn.out_proj": "encoder_attn.out_proj",
    "encoder_attn_layer_norm": "encoder_attn_layer_norm",
}


# model_type -> the zoo.bart switches its transformers class hard-codes
KINDS = {
    "bart": {"pre_ln": False, "positions": "learned", "embedding_norm": True},
    "mbart": {"pre_ln": True, "positions": "learned", "embedding_norm": True},
    "pegasus": {"pre_ln": True, "positions": "sinusoidal", "embedding_norm": False},
}
ARCHITECTURE = {"bart": "BartForConditionalGeneration", "mbart": "MBartForConditionalGeneration",
                "pegasus": "PegasusForConditionalGeneration"}


def _names(encoder_layers: int, decoder_layers: int, body: str, pre_ln: bool = False,
           positions: str = "learned", embedding_norm: bool = True) -> dict[str, str]:
    """zoo key -> Hugging Face key of every tensor but the token table, `body` the stacks'
    prefix ("model." or ""): the learned position tables and embedding norms where the model
    has them, the final LayerNorms where it is pre-LN (mBART's, Pegasus's)."""
    names = {}
    for stack, short, layers, keys in (("encoder", "enc", encoder_layers, ENCODER_KEYS),
                                       ("decoder", "dec", decoder_layers, DECODER_KEYS)):
        if positions == "learned":
            names[f"{short}_pos.weight"] = f"{body}{stack}.embed_positions.weight"
        if embedding_norm:
            names |= {f"{short}_ln_emb.{p}": f"{body}{stack}.layernorm_embedding.{p}"
                      for p in ("weight", "bias")}
        if pre_ln:
            names |= {f"{short}_ln_out.{p}": f"{body}{stack}.layer_norm.{p}"
                      for p in ("weight", "bias")}
        names |= {f"{stack}.{i}.{zoo}.{p}": f"{body}{stack}.layers.{i}.{hf}.{p}"
                  for i in range(layers) for zoo, hf in keys.items() for p in ("weight", "bias")}
    return names


def _kind(c: Any) -> str:
    """The transformers model_type whose class computes zoo.bart config `c`; a CheckpointError
    names the switches no class combines."""
    switches = {"pre_ln": c.pre_ln, "positions": c.positions, "embedding_norm": c.embedding_norm}
    for kind, fixed in KINDS.items():
        if switches == fixed:
            return kind
    raise CheckpointError(f"no transformers class has pre_ln={c.pre_ln}, positions="
                          f"{c.positions!r} and embedding_norm={c.embedding_norm} together "
                          "(BART: post-LN, learned, normed; mBART: pre-LN, learned, normed; "
                          "Pegasus: pre-LN, sinusoidal, not normed)")


def convert_bart(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.bart config fields, zoo state dict) from a BART folder (the conditional-generation,
    base or a task-head class). A missing weight raises KeyError with its Hugging Face name;
    weights left over are passed on under their own names, for loading to report."""
    fields = _bart_config_fields(config)
    body = "model." if any(key.startswith("model.") for key in state) else ""
    left = dict(state)
    copies = [f"{body}shared.weight", f"{body}encoder.embed_tokens.weight",
              f"{body}decoder.embed_tokens.weight"]
    stored = [left.pop(key) for key in copies if key in left]
    if not stored:
        raise KeyError(copies[0])
    table = stored[0]
    if any(t.shape != table.shape or not torch.equal(t, table) for t in stored[1:]):
        raise CheckpointError("the token tables of the encoder, the decoder and `shared` "
                              "differ; zoo.bart shares one")
    out = {"tok_emb.weight": table}
    names = _names(fields["n_layer"], fields["decoder_layers"], body, fields["pre_ln"],
                   fields["positions"], fields["embedding_norm"])
    out |= {zoo: left.pop(hf) for zoo, hf in names.items()}
    if fields["positions"] == "sinusoidal":  # Pegasus's fixed tables: zoo.bart computes them
        for stack in ("encoder", "decoder"):
            left.pop(f"{body}{stack}.embed_positions.weight", None)
    tie_head(out, left.pop("lm_head.weight", None), "tok_emb.weight", "zoo.bart")
    if "final_logits_bias" in left:
        out["final_logits_bias"] = left.pop("final_logits_bias")
    return fields, {**out, **left}


def _bart_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """zoo.bart.BartConfig fields from a BART or mBART config.json (transformers' BartConfig
    names: d_model, encoder_layers, encoder_ffn_dim, encoder_attention_heads, ...)."""
    kind = config.get("model_type")
    if kind not in KINDS:
        raise CheckpointError(f"config.json: model_type {kind!r} is not one of "
                              f"{', '.join(KINDS)}")
    activation = config.get("activation_function", "gelu")
    heads = config.get("encoder_attention_heads", 16)
    ffn = config.get("encoder_ffn_dim", 4096)
    refuse_unsupported([  # field, its value, the value zoo.bart computes with, in words
        ("decoder_attention_heads", config.get("decoder_attention_heads", 16), heads,
         "the encoder's head count"),
        ("decoder_ffn_dim", config.get("decoder_ffn_dim", 4096), ffn,
         "the encoder's feed-forward width"),
        ("encoder_layerdrop", float(config.get("encoder_layerdrop", 0.0)), 0.0, "no LayerDrop"),
        ("decoder_layerdrop", float(config.get("decoder_layerdrop", 0.0)), 0.0, "no LayerDrop"),
        ("tie_word_embeddings", config.get("tie_word_embeddings", True), True,
         "the head tied to the token embedding"),
    ], "zoo.bart")
    return {
        "vocab_size": config["vocab_size"],
        "max_seq_len": config.get("max_position_embeddings", 1024),
        "n_layer": config.get("encoder_layers", 12),
        "decoder_layers": config.get("decoder_layers", 12),
        "n_head": heads,
        "d_model": config.get("d_model", 1024),
        "d_ff": ffn,
        "activation": read_activation(activation, "activation_function", "zoo.bart"),
        "dropout": float(config.get("dropout", 0.1)),
        "attn_dropout": float(config.get("attention_dropout", 0.0)),
        "act_dropout": float(config.get("activation_dropout", 0.0)),
        "init_std": config.get("init_std", 0.02),
        "pad_token_id": config.get("pad_token_id", 1),
        "decoder_start_id": _decoder_start(config),
        "scale_embedding": bool(config.get("scale_embedding", False)),
        **KINDS[kind],
    }


def _decoder_start(config: dict[str, Any]) -> int:
    """The decoder's first token, as transformers' generate picks it: decoder_start_token_id,
    else bos_token_id (mBART's pretrained configs leave the first unset: a translation
    fine-tune names its target's language code), else </s> (2), BART's."""
    for field in ("decoder_start_token_id", "bos_token_id"):
        if config.get(field) is not None:
            return config[field]
    return 2


def export_bart(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.bart -> BartForConditionalGeneration, or MBartForConditionalGeneration when pre-LN:
    the names above read backwards, the tensors as they are. transformers' BART has LayerNorm
    eps 1e-5: another is refused."""
    if c.layer_norm_eps != 1e-5:
        raise CheckpointError(f"transformers' BART has LayerNorm eps 1e-5; this config has "
                              f"layer_norm_eps {c.layer_norm_eps}")
    kind = _kind(c)
    config = {"model_type": kind, "architectures": [ARCHITECTURE[kind]],
              "vocab_size": c.vocab_size, "max_position_embeddings": c.max_seq_len,
              "d_model": c.d_model, "encoder_layers": c.n_layer,
              "decoder_layers": c.decoder_layers, "encoder_attention_heads": c.n_head,
              "decoder_attention_heads": c.n_head, "encoder_ffn_dim": c.d_ff,
              "decoder_ffn_dim": c.d_ff, "activation_function": hf_activation(c.activation),
              "dropout": c.dropout, "attention_dropout": c.attn_dropout,
              "activation_dropout": c.act_dropout, "init_std": c.init_std,
              "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0,
              "scale_embedding": c.scale_embedding,
              "tie_word_embeddings": True, "pad_token_id": c.pad_token_id,
              "decoder_start_token_id": c.decoder_start_id, "is_encoder_decoder": True,
              "bos_token_id": None, "eos_token_id": None, "forced_eos_token_id": None}
    hf = {"model.shared.weight": zoo["tok_emb.weight"],
          "final_logits_bias": zoo["final_logits_bias"]}
    hf |= {hf_key: zoo[zoo_key]
           for zoo_key, hf_key in _names(c.n_layer, c.decoder_layers, "model.", c.pre_ln,
                                         c.positions, c.embedding_norm).items()}
    if c.positions == "sinusoidal":  # transformers' Pegasus stores its fixed tables
        table = split_sinusoids(c.max_seq_len, c.d_model).to(zoo["tok_emb.weight"])
        hf |= {f"model.{stack}.embed_positions.weight": table
               for stack in ("encoder", "decoder")}
    return config, hf  # the head and the stacks' embed_tokens are `shared`: tied on loading
