"""RWKV-5.2 checkpoints <-> zoo.rwkv5: BlinkDL's official .pth files in (convert_rwkv5), and
the same layout out (rwkv5_to_official), as the `rwkv` pip package reads them (version 5.2, the
released Eagle models; the earlier 5 and 5.1 layouts are refused).

Official keys (prefix `blocks.N.`; plus `emb.weight`, `blocks.0.ln0.*`, `ln_out.*`,
`head.weight`): `ln1.*`, `ln2.*`; `att.time_mix_{k,v,r,g}` (1, 1, d), `att.time_decay` (H, N),
`att.time_faaaa` (H, N), `att.{receptance,key,value,gate,output}.weight`, `att.ln_x.*`;
`ffn.time_mix_{k,r}` (1, 1, d), `ffn.{key,receptance,value}.weight`. The zoo uses the same
names; the (1, 1, d) vectors become (d,). The sizes (head count from `time_decay`, as the
package reads it; channel-mix width) come from the tensors.
"""

from __future__ import annotations

from typing import Any

from zoo.convert.common import CheckpointError, StateDict
from zoo.convert.rwkv import official_n_layer, official_version, within_block, wrong_version

# Vectors stored (1, 1, d) in official files, (d,) in the zoo.
_VECTORS = ("att.time_mix_k", "att.time_mix_v", "att.time_mix_r", "att.time_mix_g",
            "ffn.time_mix_k", "ffn.time_mix_r")


def _is_vector(key: str) -> bool:
    return within_block(key) in _VECTORS


def _fields(state: StateDict) -> dict[str, Any]:
    vocab, d = state["emb.weight"].shape
    n_head, head_size = state["blocks.0.att.time_decay"].shape
    if n_head * head_size != d:
        raise CheckpointError(f"weight 'blocks.0.att.time_decay' has shape "
                              f"{(n_head, head_size)}; expected (heads, head size) with heads * "
                              f"head size = {d}")
    return {"vocab_size": vocab, "n_layer": official_n_layer(state), "d_model": d,
            "head_size": head_size, "d_ff": state["blocks.0.ffn.key.weight"].shape[0]}


def convert_rwkv5(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.rwkv5 config fields, zoo state dict) from an official RWKV-5.2 .pth state dict. A
    file of another RWKV version, or a Hugging Face folder, is a CheckpointError; a missing
    weight raises KeyError with its name (a wrong shape is reported when loading)."""
    if config:
        raise CheckpointError("a Hugging Face folder; zoo model 'rwkv5' reads the official "
                              "RWKV-5.2 .pth file (keys blocks.N.att.time_faaaa, att.gate, ...)")
    version = official_version(state)
    if version != "5.2":
        raise CheckpointError(wrong_version(version, "rwkv5"))
    return _fields(state), {key: tensor.reshape(-1) if _is_vector(key) else tensor
                            for key, tensor in state.items()}


def rwkv5_to_official(zoo: StateDict) -> StateDict:
    """The official RWKV-5.2 .pth layout: the zoo's key names, the per-channel vectors (1, 1, d)."""
    return {key: tensor.reshape(1, 1, -1) if _is_vector(key) else tensor
            for key, tensor in zoo.items()}
