"""RWKV-4 checkpoints <-> zoo.rwkv: Hugging Face RwkvForCausalLM and RwkvModel folders and
BlinkDL's official .pth files in (convert_rwkv), and both layouts out (export_rwkv,
rwkv_to_official)."""

from __future__ import annotations

import re
from typing import Any

from zoo.convert.common import CheckpointError, StateDict

# --------------------------------------------------------------------------------------------------
# RWKV-4 checkpoints -> zoo.rwkv.
#
# Two sources:
#   - a Hugging Face folder (config.json with model_type "rwkv"): keys `rwkv.embeddings.weight`,
#     `rwkv.blocks.N.pre_ln|ln1|ln2.*`, `rwkv.blocks.N.attention.time_mix_key|value|receptance`,
#     `...feed_forward.*`, `rwkv.ln_out.*`, `head.weight` (a base RwkvModel: no `rwkv.` prefix
#     and no head, which is then left new);
#   - an official `.pth` state dict (BlinkDL, e.g. RWKV-4-Pile-169M-20220807-8023.pth; config {}):
#     keys `emb.weight`, `blocks.N.ln0|ln1|ln2.*`, `blocks.N.att.time_mix_k|v|r`, `blocks.N.ffn.*`,
#     `ln_out.*`, `head.weight`; the sizes are read off the tensors.
# The zoo uses the official names; the time_* vectors, stored (1, 1, d) in both formats, become
# (d,). Both formats hold raw time_decay (w = -exp(time_decay) is applied in the model) and raw
# time_first. HF's `rescale_every` is an inference-time rescaling applied by HF in eval mode, not a
# property of the stored weights, so it is not carried over.
# --------------------------------------------------------------------------------------------------


_HF_RENAMES = [  # (HF pattern, official replacement), applied in order after dropping "rwkv."
    (r"^embeddings\.", "emb."),
    (r"^blocks\.0\.pre_ln\.", "blocks.0.ln0."),
    (r"\.attention\.", ".att."),
    (r"\.feed_forward\.", ".ffn."),
    (r"\.time_mix_key$", ".time_mix_k"),
    (r"\.time_mix_value$", ".time_mix_v"),
    (r"\.time_mix_receptance$", ".time_mix_r"),
]


def _hf_to_official(name: str) -> str:
    name = name.removeprefix("rwkv.")
    for pattern, repl in _HF_RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def rwkv_official_to_hf(name: str) -> str:
    """The HF spelling of an official key (to name a missing weight of an HF checkpoint)."""
    if name == "head.weight":
        return name
    name = re.sub(r"^emb\.", "embeddings.", name)
    name = re.sub(r"^blocks\.0\.ln0\.", "blocks.0.pre_ln.", name)
    name = name.replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.")
    for short, long in (("k", "key"), ("v", "value"), ("r", "receptance")):
        name = re.sub(rf"\.time_mix_{short}$", f".time_mix_{long}", name)
    return "rwkv." + name


def _expected_shapes(n_layer: int, d: int, vocab: int, d_ff: int | None
                     ) -> dict[str, tuple[int, ...]]:
    """Official key -> the zoo's shape (time_* vectors as (d,)); d_ff None is the paper's 4 d."""
    f = 4 * d if d_ff is None else d_ff
    shapes = {"emb.weight": (vocab, d), "blocks.0.ln0.weight": (d,), "blocks.0.ln0.bias": (d,)}
    for i in range(n_layer):
        b = f"blocks.{i}."
        for name in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.time_decay",
                     "att.time_first", "att.time_mix_k", "att.time_mix_v", "att.time_mix_r",
                     "ffn.time_mix_k", "ffn.time_mix_r"):
            shapes[b + name] = (d,)
        for name in ("att.key", "att.value", "att.receptance", "att.output", "ffn.receptance"):
            shapes[b + name + ".weight"] = (d, d)
        shapes[b + "ffn.key.weight"] = (f, d)
        shapes[b + "ffn.value.weight"] = (d, f)
    shapes.update({"ln_out.weight": (d,), "ln_out.bias": (d,), "head.weight": (vocab, d)})
    return shapes


def _fields_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("model_type") != "rwkv":
        raise CheckpointError(f"config.json has model_type {config.get('model_type')!r}, "
                              "expected 'rwkv' (RWKV-4)")
    d = config["hidden_size"]
    if config.get("attention_hidden_size") not in (None, d):
        raise CheckpointError(f"config.json field 'attention_hidden_size' = "
                              f"{config['attention_hidden_size']} is not supported: RWKV-4 "
                              f"uses {d} (d_model {d})")
    hidden = config.get("intermediate_size")
    if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
        raise CheckpointError(f"config.json field 'intermediate_size' = {hidden!r}: expected "
                              "a positive width of the channel mix")
    if config.get("tie_word_embeddings"):
        raise CheckpointError("config.json field 'tie_word_embeddings' is true; "
                              "RWKV-4's head is untied")
    return {"vocab_size": config["vocab_size"], "n_layer": config["num_hidden_layers"],
            "d_model": d, "d_ff": None if hidden in (None, 4 * d) else hidden,
            "context_length": config.get("context_length", 1024),
            "layer_norm_eps": config.get("layer_norm_epsilon", 1e-5)}


def official_version(state: StateDict) -> str:
    """The RWKV version of an official .pth state dict ("4", "5", "5.1", "5.2", "6" or "7"),
    read off its keys as the `rwkv` package reads versions 4 to 6: `ln_x` -> 5, `gate.weight`
    -> 5.1, a 2-D time_decay (H, N) -> 5.2, `time_maa` -> 6. The package cannot tell RWKV-7
    (its user sets RWKV_V7_ON=1); its v7 keys are `att.r_k`, `att.w0`, `att.k_k`."""
    if any(key.endswith((".att.r_k", ".att.w0", ".att.k_k")) for key in state):
        return "7"
    version = "4"
    if any("ln_x" in key for key in state):
        version = "5"
    if any("gate.weight" in key for key in state):
        version = "5.1"
    if version.startswith("5") and any(
            key.endswith("att.time_decay") and tensor.dim() > 1 and tensor.shape[1] > 1
            for key, tensor in state.items()):
        version = "5.2"
    if any("time_maa" in key for key in state):
        version = "6"
    return version


def official_n_layer(state: StateDict) -> int:
    """The layer count of an official RWKV state dict: one more than the largest N of the
    `blocks.N.` keys (CheckpointError when there are none)."""
    layers = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not layers:
        raise CheckpointError("no 'blocks.N.' weights: not an RWKV state dict")
    return max(layers) + 1


def within_block(key: str) -> str:
    """An official key without its `blocks.N.` prefix ('att.time_decay')."""
    return re.sub(r"^blocks\.\d+\.", "", key)


# The zoo model that reads each official version (versions 5 and 5.1 have none), and the keys
# that tell that version apart.
ZOO_MODEL_OF_VERSION = {"4": "rwkv", "5.2": "rwkv5", "6": "rwkv6", "7": "rwkv7"}
_TELLING_KEYS = {"4": "att.time_first, no att.ln_x", "5.2": "att.time_decay (H, N), att.gate",
                 "6": "att.time_maa_w1, att.time_decay_w1", "7": "att.r_k, att.w0, att.k_k"}


def wrong_version(version: str, zoo_name: str) -> str:
    """The one-line message for an official file of `version` given to zoo model `zoo_name`,
    naming the zoo model that reads it, if any."""
    reads = {name: v for v, name in ZOO_MODEL_OF_VERSION.items()}[zoo_name]
    right = ZOO_MODEL_OF_VERSION.get(version)
    return (f"an RWKV-{version} checkpoint; zoo model {zoo_name!r} reads RWKV-{reads} (keys "
            f"{_TELLING_KEYS[reads]}, ...)"
            + (f"; load it as {right!r}" if right else "; no zoo model reads this version"))


def _fields_from_tensors(state: StateDict) -> dict[str, Any]:
    version = official_version(state)
    if version != "4":
        raise CheckpointError(wrong_version(version, "rwkv"))
    vocab, d = state["emb.weight"].shape
    hidden = state["blocks.0.ffn.key.weight"].shape[0]
    return {"vocab_size": vocab, "n_layer": official_n_layer(state), "d_model": d,
            "d_ff": None if hidden == 4 * d else hidden}


def convert_rwkv(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.rwkv config fields, zoo state dict) from an HF RWKV-4 folder's config and weights,
    or from an official .pth state dict (config == {}). A missing weight raises KeyError with
    the checkpoint's key name; a mis-shaped one, CheckpointError naming it."""
    hf = bool(config)
    # official name -> the checkpoint's own key
    source = {_hf_to_official(k) if hf else k: k for k in state}
    fields = _fields_from_hf(config) if hf else _fields_from_tensors(state)
    out = {}
    for name, shape in _expected_shapes(fields["n_layer"], fields["d_model"],
                                        fields["vocab_size"], fields["d_ff"]).items():
        if name == "head.weight" and name not in source and hf:  # RwkvModel: no head
            continue
        if name not in source:
            raise KeyError(rwkv_official_to_hf(name) if hf else name)
        key = source.pop(name)
        tensor = state[key]
        if len(shape) == 1 and tensor.numel() == shape[0] and tensor.dim() in (1, 3):
            tensor = tensor.reshape(shape)  # time_mix (1, 1, d) -> (d,)
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"weight {key!r} has shape {tuple(tensor.shape)}, "
                                  f"expected {shape}")
        out[name] = tensor
    out.update({key: state[key] for key in source.values()})  # left over: reported as unexpected
    return fields, out


def rwkv_to_official(zoo: StateDict) -> StateDict:
    """The official RWKV-4 .pth layout: the zoo's key names, with time_mix_* as (1, 1, d)."""
    return {key: tensor.reshape(1, 1, -1) if ".time_mix_" in key else tensor
            for key, tensor in zoo.items()}


def export_rwkv(c: Any, zoo: StateDict) -> tuple[dict[str, Any], StateDict]:
    """zoo.rwkv -> RwkvForCausalLM. `rescale_every` is 0: Hugging Face's rescaling of the
    weights at inference would change the numbers; the zoo (and the official package in fp32)
    does not rescale. A block without a channel mix (d_ff 0) has no Hugging Face counterpart."""
    if c.d_ff == 0:
        raise CheckpointError("transformers' RWKV always has a channel mix (feed-forward); this "
                              "config has d_ff 0")
    config = {"model_type": "rwkv", "architectures": ["RwkvForCausalLM"],
              "vocab_size": c.vocab_size, "context_length": c.context_length,
              "hidden_size": c.d_model, "num_hidden_layers": c.n_layer,
              "attention_hidden_size": c.d_model,
              "intermediate_size": 4 * c.d_model if c.d_ff is None else c.d_ff,
              "layer_norm_epsilon": c.layer_norm_eps, "rescale_every": 0,
              "tie_word_embeddings": False}
    return config, {rwkv_official_to_hf(key): tensor
                    for key, tensor in rwkv_to_official(zoo).items()}
