"""ALBERT checkpoints <-> zoo.albert: Hugging Face AlbertForPreTraining and AlbertForMaskedLM
folders (and the base and task-head classes) in (convert_albert), and out (export_albert)."""

from __future__ import annotations

from typing import Any

from zoo.convert.common import (
    CheckpointError,
    StateDict,
    hf_activation,
    read_activation,
    refuse_unsupported,
)

# --------------------------------------------------------------------------------------------------
# Hugging Face ALBERT checkpoints (`model_type: albert`: albert-base-v1/v2 ... xxlarge, their
# fine-tunes) -> zoo.albert.
#
#     albert.embeddings.{word,position,token_type}_embeddings.weight, .LayerNorm   (width E)
#     albert.encoder.embedding_hidden_mapping_in                                   (E -> H)
#     albert.encoder.albert_layer_groups.0.albert_layers.0.attention.{query,key,value,dense}
#         ....attention.LayerNorm, .ffn, .ffn_output, .full_layer_layer_norm       (the one block)
#     albert.pooler, sop_classifier.classifier                   (AlbertForPreTraining, SOP)
#     predictions.{dense, LayerNorm, bias}                       (masked-LM head, H -> E -> V)
#
# AlbertForMaskedLM has no pooler; the base model (AlbertModel) has no `albert.` prefix and no
# heads; the task-head classes add `classifier.` or `qa_outputs.`, left unused. The decoder is
# tied to the word embeddings and its bias to the head's: the stored copies
# (`predictions.decoder.*`) are dropped. A pooler without the SOP classifier is passed on under
# its own name, for loading to report as unused. Every released ALBERT shares one block across
# all layers (num_hidden_groups = inner_group_num = 1); other groupings are refused, naming the
# field. The depth is config.json's: a bare weights file does not say it, so only folders load.
# --------------------------------------------------------------------------------------------------

LAYER = "encoder.albert_layer_groups.0.albert_layers.0."
# zoo module -> Hugging Face module inside the body (`albert.` or nothing); each has a weight
# and, but for the tables, a bias
BODY_KEYS = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings.ln": "embeddings.LayerNorm",
    "embeddings.project": "encoder.embedding_hidden_mapping_in",
    "block.attn.q_proj": LAYER + "attention.query",
    "block.attn.k_proj": LAYER + "attention.key",
    "block.attn.v_proj": LAYER + "attention.value",
    "block.attn.out_proj": LAYER + "attention.dense",
    "block.ln_attn": LAYER + "attention.LayerNorm",
    "block.ffn.fc_in": LAYER + "ffn",
    "block.ffn.fc_out": LAYER + "ffn_output",
    "block.ln_ffn": LAYER + "full_layer_layer_norm",
}
MLM_HEAD_KEYS = {"lm_head.dense": "predictions.dense", "lm_head.ln": "predictions.LayerNorm"}
SOP_HEAD_KEYS = {"sop_head": "sop_classifier.classifier"}
_TABLES = ("embeddings.word_embeddings", "embeddings.position_embeddings",
           "embeddings.token_type_embeddings")


def _names(modules: dict[str, str]) -> dict[str, str]:
    """zoo tensor key -> Hugging Face tensor key, for modules given by name."""
    return {f"{zoo}.{p}": f"{hf}.{p}" for zoo, hf in modules.items()
            for p in (("weight",) if zoo in _TABLES else ("weight", "bias"))}


def convert_albert(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.albert config fields, zoo state dict) from an ALBERT folder. The masked-LM head is
    read where the checkpoint has one, the pooler and SOP classifier where it has the latter.
    A missing weight raises KeyError with its Hugging Face name; weights left over are passed
    on under their own names."""
    if not config:
        raise CheckpointError("an ALBERT weights file without config.json: its layers share one "
                              "set of weights, so only config.json says how many there are")
    fields = _albert_config_fields(config)
    body = "albert." if any(k.startswith("albert.") for k in state) else ""
    fields["next_sentence_head"] = "sop_classifier.classifier.weight" in state
    names = {zoo: body + hf for zoo, hf in _names(BODY_KEYS).items()}
    if any(k.startswith("predictions.") for k in state):
        names |= _names(MLM_HEAD_KEYS) | {"lm_head.bias": "predictions.bias"}
    if fields["next_sentence_head"]:
        names |= _names(SOP_HEAD_KEYS | {"pooler": body + "pooler"})
    left = {k: v for k, v in state.items()
            if not k.endswith(("predictions.decoder.weight", "predictions.decoder.bias",
                               "embeddings.position_ids", "embeddings.token_type_ids"))}
    out = {zoo: left.pop(hf) for zoo, hf in names.items()}
    # the tied decoder: the word embeddings and the head's bias under its own keys
    out["lm_head.decoder.weight"] = out["embeddings.word_embeddings.weight"]
    if "lm_head.bias" in out:
        out["lm_head.decoder.bias"] = out["lm_head.bias"]
    return fields, {**out, **left}


def _albert_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """zoo.albert.AlbertConfig fields from an ALBERT config.json (transformers' AlbertConfig
    names)."""
    refuse_unsupported([  # field, its value, the value zoo.albert computes with, in words
        ("num_hidden_groups", config.get("num_hidden_groups", 1), 1,
         "one block shared by every layer"),
        ("inner_group_num", config.get("inner_group_num", 1), 1, "one block per group"),
        ("position_embedding_type", config.get("position_embedding_type", "absolute"),
         "absolute", "learned absolute positions"),
        ("tie_word_embeddings", config.get("tie_word_embeddings", True), True,
         "the masked-LM decoder tied to the word embeddings"),
    ], "zoo.albert")
    return {
        "vocab_size": config["vocab_size"],
        "embedding_size": config.get("embedding_size", 128),
        "max_position_embeddings": config.get("max_position_embeddings", 512),
        "type_vocab_size": config.get("type_vocab_size", 2),
        "n_layer": config["num_hidden_layers"],
        "d_model": config["hidden_size"],
        "n_head": config["num_attention_heads"],
        "d_ff": config["intermediate_size"],
        "activation": read_activation(config.get("hidden_act", "gelu_new"), "hidden_act",
                                      "zoo.albert"),
        "dropout": float(config.get("hidden_dropout_prob", 0.0)),
        "attn_dropout": float(config.get("attention_probs_dropout_prob", 0.0)),
        "classifier_dropout": float(config.get("classifier_dropout_prob", 0.1)),
        "layer_norm_eps": config.get("layer_norm_eps", 1e-12),
        "pad_token_id": config.get("pad_token_id", 0),
    }


def export_albert(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.albert -> AlbertForPreTraining (with the SOP head) or AlbertForMaskedLM: the
    converter's tables read backwards, the tensors as they are."""
    if c.type_vocab_size == 0:
        raise CheckpointError("transformers' ALBERT always has a token-type table; this config "
                              "has type_vocab_size 0")
    architecture = "AlbertForPreTraining" if c.next_sentence_head else "AlbertForMaskedLM"
    config = {"model_type": "albert", "architectures": [architecture],
              "vocab_size": c.vocab_size, "embedding_size": c.embedding_size,
              "hidden_size": c.d_model, "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "intermediate_size": c.d_ff,
              "num_hidden_groups": 1, "inner_group_num": 1,
              "hidden_act": hf_activation(c.activation), "hidden_dropout_prob": c.dropout,
              "attention_probs_dropout_prob": c.attn_dropout,
              "classifier_dropout_prob": c.classifier_dropout,
              "max_position_embeddings": c.max_position_embeddings,
              "type_vocab_size": c.type_vocab_size, "layer_norm_eps": c.layer_norm_eps,
              "pad_token_id": c.pad_token_id, "tie_word_embeddings": True}
    names = {zoo: "albert." + hf for zoo, hf in _names(BODY_KEYS).items()}
    names |= _names(MLM_HEAD_KEYS) | {"lm_head.bias": "predictions.bias"}
    if c.next_sentence_head:
        names |= _names(SOP_HEAD_KEYS | {"pooler": "albert.pooler"})
    return config, {hf: zoo[key] for key, hf in names.items()}
