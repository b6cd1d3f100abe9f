"""BERT and RoBERTa checkpoints <-> zoo.bert / zoo.roberta: Hugging Face BertForPreTraining,
BertForMaskedLM and RobertaForMaskedLM folders (and DistilBERT's and XLM-RoBERTa's), and their
base and task-head classes, in (convert_bert, convert_roberta), and out (export_bert,
export_roberta)."""

from __future__ import annotations

from typing import Any

from zoo.convert.common import CheckpointError, StateDict, hf_activation, read_activation

# --------------------------------------------------------------------------------------------------
# Hugging Face BERT / RoBERTa checkpoints -> zoo.bert / zoo.roberta.
#
# Reads folders written by `BertForPreTraining`, `BertForMaskedLM` and `RobertaForMaskedLM`
# (or a bare state dict of one of them; XLM-RoBERTa's, model_type "xlm-roberta", have RoBERTa's
# keys), by the base models `BertModel` and `RobertaModel`
# (no prefix, no head: the zoo's masked-LM head is then left new) and by the task-head classes
# (`BertForSequenceClassification`, ...: their `classifier.` / `qa_outputs.` are left unused).
# Key layout of the Hugging Face side:
#
#     {bert|roberta}.embeddings.{word,position,token_type}_embeddings.weight, .LayerNorm
#     {bert|roberta}.encoder.layer.N.attention.self.{query,key,value}
#     {bert|roberta}.encoder.layer.N.attention.output.{dense,LayerNorm}
#     {bert|roberta}.encoder.layer.N.intermediate.dense, .output.{dense,LayerNorm}
#     bert.pooler.dense, cls.seq_relationship                       (BertForPreTraining, NSP)
#     cls.predictions.{transform.dense, transform.LayerNorm, bias}  (BERT MLM head)
#     lm_head.{dense, layer_norm, bias}                             (RoBERTa MLM head)
#
# The decoder weight is tied to the word embeddings and its bias to the head's bias: the zoo's
# `lm_head.decoder.*` keys are given those tensors, and the checkpoint's copies of them
# (`*.decoder.weight`, `*.decoder.bias`) are dropped, as are the non-persistent
# `position_ids` / `token_type_ids` buffers that old checkpoints carry. Old TF-converted files
# name LayerNorm parameters gamma/beta; they are read as weight/bias. A pooler without the NSP
# head on top of it (RoBERTa's, in the published roberta-base files; a BertModel's) is passed on
# under its own name, for loading to report as unused. A causal BERT (`is_decoder`, the
# LM-head classes `BertLMHeadModel` / `RobertaForCausalLM`) is refused: the zoo's is
# bidirectional.
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
# DistilBERT's names for the same modules (DistilBertForMaskedLM, DistilBertModel, ...): its
# blocks under transformer.layer.N, no token-type table, and its masked-LM head as
# vocab_transform -> GELU -> vocab_layer_norm -> vocab_projector (tied, with its own bias).
DISTILBERT_BLOCK_KEYS = {
    "attn.q_proj": "attention.q_lin",
    "attn.k_proj": "attention.k_lin",
    "attn.v_proj": "attention.v_lin",
    "attn.out_proj": "attention.out_lin",
    "ln_attn": "sa_layer_norm",
    "ffn.fc_in": "ffn.lin1",
    "ffn.fc_out": "ffn.lin2",
    "ln_ffn": "output_layer_norm",
}
DISTILBERT_EMBEDDING_KEYS = {zoo: hf for zoo, hf in BERT_EMBEDDING_KEYS.items()
                             if "token_type" not in zoo}
DISTILBERT_HEAD_KEYS = {"lm_head.dense": "vocab_transform", "lm_head.ln": "vocab_layer_norm",
                        "lm_head.bias": "vocab_projector.bias"}
_REDUNDANT_SUFFIXES = ("decoder.weight", "decoder.bias", "embeddings.position_ids",
                       "embeddings.token_type_ids")


def convert_bert(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """A BERT checkpoint (BertForPreTraining, BertForMaskedLM, BertModel, a task-head class)
    -> (BertConfig fields, Bert state). The masked-LM head is read when the checkpoint has one;
    the pooler and NSP head are kept when it has the NSP classifier."""
    state = _normalised(state)
    if config.get("model_type") == "distilbert" or any(
            k.startswith(("distilbert.", "transformer.layer.")) for k in state):
        return _convert_distilbert(config, state)
    prefix = "bert." if any(k.startswith("bert.") for k in state) else ""
    has_nsp = "cls.seq_relationship.weight" in state
    fields = _bert_config_fields(config, state, prefix)
    fields["next_sentence_head"] = has_nsp
    head = {}
    if any(k.startswith("cls.predictions.") for k in state):
        head = {"lm_head.dense": "cls.predictions.transform.dense",
                "lm_head.ln": "cls.predictions.transform.LayerNorm",
                "lm_head.bias": "cls.predictions.bias"}
    if has_nsp:
        head.update({"pooler": prefix + "pooler.dense", "nsp_head": "cls.seq_relationship"})
    return fields, _renamed(state, prefix, fields["n_layer"], head)


def convert_roberta(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """A RoBERTa checkpoint (RobertaForMaskedLM, RobertaModel, a task-head class) ->
    (RobertaConfig fields, Roberta state); the masked-LM head is read when it is there."""
    state = _normalised(state)
    prefix = "roberta." if any(k.startswith("roberta.") for k in state) else ""
    fields = _bert_config_fields(config, state, prefix, default_pad=1)
    head = {}
    if any(k.startswith("lm_head.") for k in state):
        head = {"lm_head.dense": "lm_head.dense", "lm_head.ln": "lm_head.layer_norm",
                "lm_head.bias": "lm_head.bias"}
    return fields, _renamed(state, prefix, fields["n_layer"], head)


def _convert_distilbert(config: dict[str, Any],
                        state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """A DistilBERT checkpoint (DistilBertForMaskedLM, DistilBertModel, a task-head class) ->
    (BertConfig fields, Bert state): BERT's network without token types or the NSP head."""
    prefix = "distilbert." if any(k.startswith("distilbert.") for k in state) else ""
    state.pop("vocab_projector.weight", None)  # the tied word embeddings again
    if config:
        _require_tied(config)
        fields = {"vocab_size": config["vocab_size"],
                  "activation": read_activation(config.get("activation", "gelu"), "activation",
                                                "zoo.bert"),
                  "max_position_embeddings": config["max_position_embeddings"],
                  "n_layer": config["n_layers"], "d_model": config["dim"],
                  "n_head": config["n_heads"], "d_ff": config["hidden_dim"],
                  "dropout": config["dropout"], "attn_dropout": config["attention_dropout"],
                  "pad_token_id": config.get("pad_token_id", 0)}
    else:  # a bare weights file: sizes from the shapes, 64-wide heads
        words = state[prefix + "embeddings.word_embeddings.weight"]
        layers = prefix + "transformer.layer."
        fields = {"vocab_size": words.size(0), "d_model": words.size(1),
                  "n_head": words.size(1) // 64,
                  "max_position_embeddings":
                      state[prefix + "embeddings.position_embeddings.weight"].size(0),
                  "n_layer": 1 + max(int(k[len(layers):].split(".")[0])
                                     for k in state if k.startswith(layers)),
                  "d_ff": state[layers + "0.ffn.lin1.weight"].size(0)}
    fields.update(type_vocab_size=0, layer_norm_eps=1e-12, next_sentence_head=False)
    head = DISTILBERT_HEAD_KEYS if any(k.startswith("vocab_transform.") for k in state) else {}
    return fields, _renamed(state, prefix, fields["n_layer"], head, "transformer.layer",
                            DISTILBERT_BLOCK_KEYS, DISTILBERT_EMBEDDING_KEYS)


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
    _require_tied(config)
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"position_embedding_type {config['position_embedding_type']!r} "
                              "is not supported (only 'absolute')")
    for flag in ("is_decoder", "add_cross_attention"):
        if config.get(flag):
            raise CheckpointError(f"config.json: {flag} is true (a causal BERT, as "
                                  "BertLMHeadModel); the zoo's BERT and RoBERTa are "
                                  "bidirectional encoders")
    return {
        "vocab_size": config["vocab_size"],
        "activation": read_activation(config.get("hidden_act", "gelu"), "hidden_act",
                                      "zoo.bert"),
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


def _require_tied(config: dict[str, Any]) -> None:
    """The zoo's BERT has a decoder tied to the word embeddings; a CheckpointError names the
    field of a config that has not."""
    if not config.get("tie_word_embeddings", True):
        raise CheckpointError("tie_word_embeddings is false; the zoo's MLM decoder is always "
                              "tied to the word embeddings")


def _body_names(prefix: str, n_layer: int, layers: str = "encoder.layer",
                block_keys: dict[str, str] = BERT_BLOCK_KEYS,
                embedding_keys: dict[str, str] = BERT_EMBEDDING_KEYS) -> dict[str, str]:
    """Zoo module name -> Hugging Face module name, for the embeddings and every block: what
    the converters read and the exporters write."""
    modules = {zoo: prefix + hf for zoo, hf in embedding_keys.items()}
    for i in range(n_layer):
        modules |= {f"blocks.{i}.{zoo}": f"{prefix}{layers}.{i}.{hf}"
                    for zoo, hf in block_keys.items()}
    return modules


def _renamed(state: StateDict, prefix: str, n_layer: int, head: dict[str, str],
             layers: str = "encoder.layer", block_keys: dict[str, str] = BERT_BLOCK_KEYS,
             embedding_keys: dict[str, str] = BERT_EMBEDDING_KEYS) -> StateDict:
    """Zoo state dict; a missing Hugging Face key raises KeyError naming it (every key of the
    body, and of each head in `head`). Keys left over in the checkpoint are passed on
    unchanged, for loading to report as unused or unexpected."""
    modules = _body_names(prefix, n_layer, layers, block_keys, embedding_keys) | head
    out = {}
    for zoo, hf in modules.items():
        if zoo.endswith((".weight", "lm_head.bias")):  # a single tensor
            out[zoo] = state.pop(hf)
        else:  # a Linear or LayerNorm: weight and bias
            out[zoo + ".weight"] = state.pop(hf + ".weight")
            out[zoo + ".bias"] = state.pop(hf + ".bias")
    # The tied MLM decoder: the same tensors under its own keys (without a head in the
    # checkpoint, the decoder is still the word embeddings; its bias is the new head's).
    out["lm_head.decoder.weight"] = out["embeddings.word_embeddings.weight"]
    if "lm_head.bias" in out:
        out["lm_head.decoder.bias"] = out["lm_head.bias"]
    return {**out, **state}


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
              "intermediate_size": c.d_ff, "hidden_act": hf_activation(c.activation),
              "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.attn_dropout,
              "max_position_embeddings": c.max_position_embeddings,
              "type_vocab_size": c.type_vocab_size, "layer_norm_eps": c.layer_norm_eps,
              "pad_token_id": c.pad_token_id, "position_embedding_type": "absolute",
              "tie_word_embeddings": True}
    prefix = "roberta." if roberta else "bert."
    modules = _body_names(prefix, c.n_layer)
    if roberta:
        modules |= {"lm_head.dense": "lm_head.dense", "lm_head.ln": "lm_head.layer_norm",
                    "lm_head.bias": "lm_head.bias"}
    else:
        modules |= {"lm_head.dense": "cls.predictions.transform.dense",
                    "lm_head.ln": "cls.predictions.transform.LayerNorm",
                    "lm_head.bias": "cls.predictions.bias"}
        if c.next_sentence_head:
            modules |= {"pooler": "bert.pooler.dense", "nsp_head": "cls.seq_relationship"}
    return config, _exported(modules, zoo)


def _export_distilbert(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.bert without token types -> DistilBertForMaskedLM, whose network it is."""
    if c.next_sentence_head:
        raise CheckpointError("a BERT without token types is written as DistilBertForMaskedLM, "
                              "which has no next-sentence head")
    if c.layer_norm_eps != 1e-12:
        raise CheckpointError(f"layer_norm_eps {c.layer_norm_eps} cannot be written: "
                              "DistilBertForMaskedLM's LayerNorms all use 1e-12")
    config = {"model_type": "distilbert", "architectures": ["DistilBertForMaskedLM"],
              "vocab_size": c.vocab_size, "dim": c.d_model, "n_layers": c.n_layer,
              "n_heads": c.n_head, "hidden_dim": c.d_ff,
              "activation": hf_activation(c.activation),
              "dropout": c.dropout, "attention_dropout": c.attn_dropout,
              "max_position_embeddings": c.max_position_embeddings,
              "sinusoidal_pos_embds": False, "pad_token_id": c.pad_token_id,
              "tie_word_embeddings": True}
    modules = _body_names("distilbert.", c.n_layer, "transformer.layer", DISTILBERT_BLOCK_KEYS,
                          DISTILBERT_EMBEDDING_KEYS)
    return config, _exported(modules | DISTILBERT_HEAD_KEYS, zoo)


def _exported(modules: dict[str, str], zoo: StateDict) -> StateDict:
    """The checkpoint's tensors under the Hugging Face name each zoo name maps to."""
    hf = {}
    for zoo_name, hf_name in modules.items():
        if zoo_name.endswith((".weight", "lm_head.bias")):  # a single tensor
            hf[hf_name] = zoo[zoo_name]
        else:  # a Linear or a LayerNorm
            for p in ("weight", "bias"):
                hf[f"{hf_name}.{p}"] = zoo[f"{zoo_name}.{p}"]
    return hf


def export_bert(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    if c.type_vocab_size == 0:
        return _export_distilbert(c, zoo)
    return _export_bert_like(c, zoo, roberta=False)


def export_roberta(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    return _export_bert_like(c, zoo, roberta=True)
