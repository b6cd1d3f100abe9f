"""RWKV-6 checkpoints <-> zoo.rwkv6: BlinkDL's official .pth files in (convert_rwkv6), and the
same layout out (rwkv6_to_official), as the `rwkv` pip package reads them (version 6.0).

Official keys (prefix `blocks.N.`; plus `emb.weight`, `blocks.0.ln0.*`, `ln_out.*`,
`head.weight`): `ln1.*`, `ln2.*`; `att.time_maa_{x,w,k,v,r,g}` (1, 1, d), `att.time_maa_w1`
(d, 5 r), `att.time_maa_w2` (5, r, d), `att.time_decay` (1, 1, d), `att.time_decay_w1` (d, r'),
`att.time_decay_w2` (r', d), `att.time_faaaa` (H, N), `att.{receptance,key,value,gate,
output}.weight`, `att.ln_x.*`; `ffn.time_maa_{k,r}` (1, 1, d), `ffn.{key,receptance,value}
.weight`. The zoo uses the same names; the (1, 1, d) vectors become (d,). The sizes (head count
from `time_faaaa`, as the package reads it; adapter and channel-mix widths) come from the
tensors.
"""

from __future__ import annotations

from typing import Any

from zoo.convert.common import CheckpointError, StateDict
from zoo.convert.rwkv import official_n_layer, official_version, within_block, wrong_version

# Vectors stored (1, 1, d) in official files, (d,) in the zoo.
_VECTORS = ("att.time_maa_x", "att.time_maa_w", "att.time_maa_k", "att.time_maa_v",
            "att.time_maa_r", "att.time_maa_g", "att.time_decay", "ffn.time_maa_k",
            "ffn.time_maa_r")


def _is_vector(key: str) -> bool:
    return within_block(key) in _VECTORS


def _fields(state: StateDict) -> dict[str, Any]:
    vocab, d = state["emb.weight"].shape
    n_head, head_size = state["blocks.0.att.time_faaaa"].shape
    if n_head * head_size != d:
        raise CheckpointError(f"weight 'blocks.0.att.time_faaaa' has shape "
                              f"{(n_head, head_size)}; expected (heads, head size) with heads * "
                              f"head size = {d}")
    return {"vocab_size": vocab, "n_layer": official_n_layer(state), "d_model": d,
            "head_size": head_size, "d_ff": state["blocks.0.ffn.key.weight"].shape[0],
            "mix_lora": state["blocks.0.att.time_maa_w2"].shape[1],
            "decay_lora": state["blocks.0.att.time_decay_w1"].shape[1]}


def convert_rwkv6(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.rwkv6 config fields, zoo state dict) from an official RWKV-6 .pth state dict. A
    file of another RWKV version, or a Hugging Face folder, is a CheckpointError; a missing
    weight raises KeyError with its name (a wrong shape is reported when loading)."""
    if config:
        raise CheckpointError("a Hugging Face folder; zoo model 'rwkv6' reads the official "
                              "RWKV-6 .pth file (keys blocks.N.att.time_maa_w1, ...)")
    version = official_version(state)
    if version != "6":
        raise CheckpointError(wrong_version(version, "rwkv6"))
    return _fields(state), {key: tensor.reshape(-1) if _is_vector(key) else tensor
                            for key, tensor in state.items()}


def rwkv6_to_official(zoo: StateDict) -> StateDict:
    """The official RWKV-6 .pth layout: the zoo's key names, the per-channel vectors (1, 1, d)."""
    return {key: tensor.reshape(1, 1, -1) if _is_vector(key) else tensor
            for key, tensor in zoo.items()}
