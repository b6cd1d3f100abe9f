"""CTRL checkpoints <-> zoo.ctrl: Hugging Face CTRLLMHeadModel folders (and the base and
classification classes) in (convert_ctrl), and out (export_ctrl)."""

from __future__ import annotations

from typing import Any

from zoo.convert.common import (
    CheckpointError,
    StateDict,
    block_names,
    refuse_unsupported,
    tie_head,
)

# --------------------------------------------------------------------------------------------------
# Hugging Face CTRL checkpoints (`model_type: ctrl`: Salesforce/ctrl) -> zoo.ctrl.
#
#     transformer.w.weight                                   (the token table; the head's weight)
#     transformer.h.N.multi_head_attention.{Wq,Wk,Wv,dense}.{weight,bias}
#     transformer.h.N.ffn.0.{weight,bias}, transformer.h.N.ffn.2.{weight,bias}   (ReLU between)
#     transformer.h.N.layernorm1.{weight,bias}, transformer.h.N.layernorm2.{weight,bias}
#     transformer.layernorm.{weight,bias}
#     lm_head.weight (the token table again, where stored), lm_head.bias
#
# The base model (CTRLModel) has no head and no `transformer.` prefix; the classification class
# adds `classifier.`, left unused. The sinusoid table is computed, not stored, on both sides.
# Every tensor is copied as it is (nn.Linear's layout on both sides). transformers' CTRL fixes
# the blocks' LayerNorm eps at 1e-6 and has no attention dropout: a config that says otherwise
# is refused on export, naming the field.
# --------------------------------------------------------------------------------------------------

# zoo name inside block N -> Hugging Face name inside transformer.h.N, and whether it has a bias
CTRL_BLOCK_KEYS = {
    "ln_1": ("layernorm1", True),
    "attn.q_proj": ("multi_head_attention.Wq", True),
    "attn.k_proj": ("multi_head_attention.Wk", True),
    "attn.v_proj": ("multi_head_attention.Wv", True),
    "attn.out_proj": ("multi_head_attention.dense", True),
    "ln_2": ("layernorm2", True),
    "mlp.fc_in": ("ffn.0", True),
    "mlp.fc_out": ("ffn.2", True),
}


def convert_ctrl(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.ctrl config fields, zoo state dict) from a CTRL folder. A missing weight raises
    KeyError with its Hugging Face name; weights left over are passed on under their own
    names, for loading to report."""
    fields = _ctrl_config_fields(config)
    body = "" if "w.weight" in state else "transformer."  # CTRLModel: no prefix
    names = {"wte.weight": body + "w.weight"}
    names |= {f"ln_f.{p}": f"{body}layernorm.{p}" for p in ("weight", "bias")}
    names |= block_names(CTRL_BLOCK_KEYS, fields["n_layer"], body + "h.")
    left = dict(state)
    out = {zoo: left.pop(hf) for zoo, hf in names.items()}
    tie_head(out, left.pop("lm_head.weight", None), "wte.weight", "zoo.ctrl")
    if "lm_head.bias" in left:
        out["lm_head.bias"] = left.pop("lm_head.bias")
    return fields, {**out, **left}


def _ctrl_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """zoo.ctrl.CTRLConfig fields from a CTRL config.json (transformers' CTRLConfig names:
    n_embd, n_layer, n_head, dff, n_positions, resid_pdrop, embd_pdrop, ...)."""
    if config.get("model_type") != "ctrl":
        raise CheckpointError(f"config.json: model_type {config.get('model_type')!r} is not "
                              "ctrl")
    dropout = float(config.get("resid_pdrop", 0.1))
    refuse_unsupported([  # field, its value, the value zoo.ctrl computes with, in words
        ("tie_word_embeddings", config.get("tie_word_embeddings", True), True,
         "the head tied to the token embedding"),
        ("embd_pdrop", float(config.get("embd_pdrop", 0.1)), dropout,
         "the embedding's dropout equal to resid_pdrop"),
    ], "zoo.ctrl")
    return {
        "vocab_size": config["vocab_size"],
        "max_seq_len": config.get("n_positions", 256),
        "n_layer": config["n_layer"],
        "n_head": config["n_head"],
        "d_model": config["n_embd"],
        "d_ff": config.get("dff", 8192),
        "dropout": dropout,
        "attn_dropout": 0.0,
        "layer_norm_eps": config.get("layer_norm_epsilon", 1e-6),
        "init_std": config.get("initializer_range", 0.02),
    }


def export_ctrl(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.ctrl -> CTRLLMHeadModel: CTRL_BLOCK_KEYS read backwards, the tensors as they are."""
    if c.d_ff == 0:
        raise CheckpointError("transformers' CTRL always has a feed-forward; this config has "
                              "d_ff 0")
    if c.attn_dropout:
        raise CheckpointError(f"transformers' CTRL has no attention dropout; this config has "
                              f"attn_dropout {c.attn_dropout}")
    if c.layer_norm_eps != 1e-6:
        raise CheckpointError(f"transformers' CTRL blocks have LayerNorm eps 1e-6; this config "
                              f"has layer_norm_eps {c.layer_norm_eps}")
    config = {"model_type": "ctrl", "architectures": ["CTRLLMHeadModel"],
              "vocab_size": c.vocab_size, "n_positions": c.max_seq_len, "n_embd": c.d_model,
              "n_layer": c.n_layer, "n_head": c.n_head, "dff": c.d_ff,
              "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
              "layer_norm_epsilon": c.layer_norm_eps, "initializer_range": c.init_std,
              "tie_word_embeddings": True}
    hf = {"transformer.w.weight": zoo["wte.weight"], "lm_head.bias": zoo["lm_head.bias"]}
    hf |= {f"transformer.layernorm.{p}": zoo[f"ln_f.{p}"] for p in ("weight", "bias")}
    blocks = block_names(CTRL_BLOCK_KEYS, c.n_layer, "transformer.h.")
    hf |= {hf_key: zoo[zoo_key] for zoo_key, hf_key in blocks.items()}
    return config, hf  # the head's weight is the token table: transformers ties it on loading
