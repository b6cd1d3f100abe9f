"""GPT-1 / GPT-2 checkpoints <-> zoo.gpt: Hugging Face GPT2LMHeadModel and OpenAIGPTLMHeadModel
folders, and their base and task-head classes, in (convert_gpt), and out (export_gpt)."""

from __future__ import annotations

from typing import Any

import torch

from zoo.convert.common import CheckpointError, StateDict, tie_head

# --------------------------------------------------------------------------------------------------
# Hugging Face GPT-2 (`model_type: gpt2`) and OpenAI GPT (`openai-gpt`) checkpoints -> zoo.gpt.
#
# Both store their matrices as `Conv1D` weights of shape (in, out), the transpose of an
# `nn.Linear` weight, and fuse the query, key and value projections into one `c_attn` of width
# 3 * d_model (in that order), which is split here. The output head is tied to the token
# embedding: the zoo's `lm_head.weight` is that matrix, and a stored `lm_head.weight` must be it.
# Keys may carry a `transformer.` prefix (`*LMHeadModel`, the task-head classes) or not
# (`GPT2Model`, `OpenAIGPTModel`, old hub files). Keys left over (a task class's `score.` or
# `multiple_choice_head.`) are passed on under their own names, for loading to report.
# A bare weights file (config {}) is read as GPT-2 unless it has GPT-1's `tokens_embed`; its
# sizes come from the tensors, and its head count is d_model / 64, as in every published size.
# --------------------------------------------------------------------------------------------------

# Hugging Face activation names -> zoo.layers.ACTIVATIONS. OpenAI GPT's afn="gelu" is the tanh
# form (its modeling code maps it to gelu_new); GPT-2's activation_function="gelu" is exact.
_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                     "relu": "relu"}
_OPENAI_ACTIVATIONS = {"gelu": "gelu_tanh", "relu": "relu"}
# Per-block Conv1D layers other than the fused c_attn -> zoo module names.
GPT_CONV1D = {"attn.c_proj": "attn.out_proj", "mlp.c_fc": "mlp.fc_in", "mlp.c_proj": "mlp.fc_out"}
GPT_CONV1D_WEIGHTS = tuple(f"{conv}.weight" for conv in GPT_CONV1D)
# Buffers of old checkpoints (the causal mask) that hold no weights.
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def convert_gpt(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    original = {k.removeprefix("transformer."): k for k in state}  # -> the checkpoint's name
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    default_type = "openai-gpt" if "tokens_embed.weight" in state else "gpt2"
    model_type = config.get("model_type") or default_type
    if model_type not in ("gpt2", "openai-gpt"):
        raise CheckpointError(f"config.json: model_type {model_type!r} is not gpt2 or openai-gpt")
    gpt1 = model_type == "openai-gpt"
    # zoo key -> source key of every tensor copied as it is (or transposed, for Conv1D weights).
    names = {"wte.weight": "tokens_embed.weight" if gpt1 else "wte.weight",
             "wpe.weight": "positions_embed.weight" if gpt1 else "wpe.weight"}
    fields = _gpt_config_fields(config, gpt1, state[names["wte.weight"]],
                                state[names["wpe.weight"]], state)

    d = fields["d_model"]
    out: StateDict = {}
    for i in range(fields["n_layer"]):
        src, dst = f"h.{i}.", f"blocks.{i}."
        out.update(_split_qkv(state, src + "attn.c_attn", dst + "attn", d))
        for p in ("weight", "bias"):
            for ln in ("ln_1", "ln_2"):
                names[f"{dst}{ln}.{p}"] = f"{src}{ln}.{p}"
            for conv, linear in GPT_CONV1D.items():
                names[f"{dst}{linear}.{p}"] = f"{src}{conv}.{p}"
    if not gpt1:  # GPT-2's final LayerNorm
        names |= {"ln_f.weight": "ln_f.weight", "ln_f.bias": "ln_f.bias"}
    for key, source in names.items():
        tensor = state[source]
        # Conv1D (in, out) -> nn.Linear (out, in)
        out[key] = tensor.t().contiguous() if source.endswith(GPT_CONV1D_WEIGHTS) else tensor

    used = set(names.values()) | {f"h.{i}.attn.c_attn.{p}" for i in range(fields["n_layer"])
                                  for p in ("weight", "bias")}
    used.add("lm_head.weight")
    tie_head(out, state.get("lm_head.weight"), "wte.weight", "zoo.gpt")
    out.update({original[k]: v for k, v in state.items()  # left over: reported when loading
                if k not in used and not k.endswith(_BUFFERS)})
    return fields, out


def _split_qkv(state: StateDict, src: str, dst: str, d: int) -> StateDict:
    """The fused (d, 3d) Conv1D `c_attn` -> three (d, d) nn.Linear projections."""
    weight, bias = state[src + ".weight"], state[src + ".bias"]
    for key, tensor, shape in ((".weight", weight, (d, 3 * d)), (".bias", bias, (3 * d,))):
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"weight {src + key!r} has shape {tuple(tensor.shape)}; "
                                  f"expected {shape} (fused query, key, value)")
    out = {}
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.split(d, dim=1), bias.split(d),
                          strict=True):
        out[f"{dst}.{name}.weight"] = w.t().contiguous()
        out[f"{dst}.{name}.bias"] = b.contiguous()
    return out


def _gpt_config_fields(config: dict[str, Any], gpt1: bool, wte: torch.Tensor, wpe: torch.Tensor,
                   state: StateDict) -> dict[str, Any]:
    """zoo.gpt.GPTConfig fields from config.json, or from the tensors' shapes where it is silent."""
    if config.get("tie_word_embeddings") is False:
        raise CheckpointError("config.json: tie_word_embeddings is false; zoo.gpt ties its head")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                 "add_cross_attention"):
        if config.get(flag):
            raise CheckpointError(f"config.json: {flag}=true is not supported by zoo.gpt")
    if config.get("scale_attn_weights") is False:
        raise CheckpointError("config.json: scale_attn_weights=false is not supported by zoo.gpt")
    activations = _OPENAI_ACTIVATIONS if gpt1 else _GPT2_ACTIVATIONS
    if gpt1:
        act_name = config.get("afn", "gelu")
    else:
        act_name = config.get("activation_function", "gelu_new")
    if act_name not in activations:
        raise CheckpointError(f"config.json: activation {act_name!r} is not one of "
                              f"{', '.join(activations)}")
    d_model = config.get("n_embd", wte.size(1))
    n_layer = config.get("n_layer")
    if n_layer is None:  # count the blocks h.0, h.1, ...
        n_layer = len({k.split(".")[1] for k in state if k.startswith("h.")})
    return {
        "vocab_size": config.get("vocab_size", wte.size(0)),
        "max_seq_len": config.get("n_positions", wpe.size(0)),
        "n_layer": n_layer,
        "n_head": config.get("n_head", d_model // 64),
        "d_model": d_model,
        "d_ff": config.get("n_inner") or state["h.0.mlp.c_fc.weight"].size(1),
        "pre_ln": not gpt1,
        "activation": activations[act_name],
        "dropout": config.get("resid_pdrop", 0.1),
        "layer_norm_eps": config.get("layer_norm_epsilon", 1e-5),
        "init_std": config.get("initializer_range", 0.02),
    }


def _inverse(table: dict[str, str]) -> dict[str, str]:
    """zoo name -> the first Hugging Face name that maps to it (the canonical spelling)."""
    out: dict[str, str] = {}
    for hf_name, zoo_name in table.items():
        out.setdefault(zoo_name, hf_name)
    return out


def export_gpt(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.gpt -> GPT2LMHeadModel (pre-LN) or OpenAIGPTLMHeadModel (post-LN): q, k, v fused
    into c_attn and nn.Linear (out, in) weights transposed into Conv1D (in, out). The head is
    tied to the token embedding, so only the embedding is stored. A block without a
    feed-forward (d_ff 0) has no Hugging Face counterpart."""
    gpt1 = not c.pre_ln
    if c.d_ff == 0:
        raise CheckpointError(f"transformers' {'OpenAI GPT' if gpt1 else 'GPT-2'} always has a "
                              "feed-forward; this config has d_ff 0")
    table = _inverse(_OPENAI_ACTIVATIONS if gpt1 else _GPT2_ACTIVATIONS)
    if c.activation not in table:
        raise CheckpointError(f"transformers' {'OpenAI GPT' if gpt1 else 'GPT-2'} has no "
                              f"{c.activation!r} activation")
    config = {"vocab_size": c.vocab_size, "n_positions": c.max_seq_len, "n_embd": c.d_model,
              "n_layer": c.n_layer, "n_head": c.n_head, "resid_pdrop": c.dropout,
              "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
              "layer_norm_epsilon": c.layer_norm_eps, "initializer_range": c.init_std}
    if gpt1:
        if c.d_ff != 4 * c.d_model:
            raise CheckpointError(f"transformers' OpenAI GPT fixes d_ff at 4 * d_model; this "
                                  f"config has d_ff {c.d_ff}")
        config |= {"model_type": "openai-gpt", "architectures": ["OpenAIGPTLMHeadModel"],
                   "afn": table[c.activation]}
    else:
        config |= {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                   "n_inner": c.d_ff, "activation_function": table[c.activation],
                   "bos_token_id": None, "eos_token_id": None}
    hf = {("tokens_embed.weight" if gpt1 else "wte.weight"): zoo["wte.weight"],
          ("positions_embed.weight" if gpt1 else "wpe.weight"): zoo["wpe.weight"]}
    for i in range(c.n_layer):
        src, dst = f"blocks.{i}.", f"h.{i}."
        qkv = [f"{src}attn.{p}_proj" for p in "qkv"]
        hf[dst + "attn.c_attn.weight"] = torch.cat([zoo[m + ".weight"] for m in qkv]).t()
        hf[dst + "attn.c_attn.bias"] = torch.cat([zoo[m + ".bias"] for m in qkv])
        for p in ("weight", "bias"):
            for ln in ("ln_1", "ln_2"):
                hf[f"{dst}{ln}.{p}"] = zoo[f"{src}{ln}.{p}"]
            for conv, linear in GPT_CONV1D.items():
                tensor = zoo[f"{src}{linear}.{p}"]
                hf[f"{dst}{conv}.{p}"] = tensor.t() if p == "weight" else tensor
    if not gpt1:
        hf |= {"ln_f.weight": zoo["ln_f.weight"], "ln_f.bias": zoo["ln_f.bias"]}
    return config, {"transformer." + key: tensor for key, tensor in hf.items()}
