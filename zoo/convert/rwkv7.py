"""RWKV-7 checkpoints <-> zoo.rwkv7: BlinkDL's official .pth files in (convert_rwkv7), and the
same layout out (rwkv7_to_official), as the `rwkv` pip package reads them.

Official keys (prefix `blocks.N.`; plus `emb.weight`, `blocks.0.ln0.*`, `ln_out.*`,
`head.weight`): `ln1.*`, `ln2.*`; `att.x_{r,w,k,v,a,g}`, `att.w0/w1/w2`, `att.a0/a1/a2`,
`att.v0/v1/v2` (layers >= 1), `att.g1/g2`, `att.k_k`, `att.k_a`, `att.r_k` (H, N),
`att.{receptance,key,value,output}.weight`, `att.ln_x.*`; `ffn.x_k`, `ffn.{key,value}.weight`.
The zoo uses the same names; the per-channel vectors, stored (1, 1, d), become (d,). The sizes
(head count from `blocks.0.att.r_k`, as the package reads it; adapter widths) come from the
tensors. Layer 0 has no value residual: the released checkpoints hold no `blocks.0.att.v0/v1/v2`,
but RWKV-LM's training code creates them (unused), and the package ignores them; so does the
converter, which drops them.
"""

from __future__ import annotations

from typing import Any

from zoo.convert.common import CheckpointError, StateDict
from zoo.convert.rwkv import official_n_layer, official_version, within_block, wrong_version

# Vectors stored (1, 1, d) in official files, (d,) in the zoo.
_VECTORS = ("att.x_r", "att.x_w", "att.x_k", "att.x_v", "att.x_a", "att.x_g", "att.w0",
            "att.a0", "att.v0", "att.k_k", "att.k_a", "ffn.x_k")


def _is_vector(key: str) -> bool:
    return within_block(key) in _VECTORS


def _fields(state: StateDict) -> dict[str, Any]:
    vocab, d = state["emb.weight"].shape
    n_head, head_size = state["blocks.0.att.r_k"].shape
    if n_head * head_size != d:
        raise CheckpointError(f"weight 'blocks.0.att.r_k' has shape {(n_head, head_size)}; "
                              f"expected (heads, head size) with heads * head size = {d}")
    fields = {"vocab_size": vocab, "n_layer": official_n_layer(state), "d_model": d,
              "head_size": head_size, "d_ff": state["blocks.0.ffn.key.weight"].shape[0],
              "decay_lora": state["blocks.0.att.w1"].shape[1],
              "iclr_lora": state["blocks.0.att.a1"].shape[1],
              "gate_lora": state["blocks.0.att.g1"].shape[1]}
    if "blocks.1.att.v1" in state:
        fields["value_lora"] = state["blocks.1.att.v1"].shape[1]
    return fields


def convert_rwkv7(config: dict[str, Any], state: StateDict) -> tuple[dict[str, Any], StateDict]:
    """(zoo.rwkv7 config fields, zoo state dict) from an official RWKV-7 .pth state dict. A
    file of another RWKV version, or a Hugging Face folder, is a CheckpointError; a missing
    weight raises KeyError with its name (a wrong shape is reported when loading)."""
    if config:
        raise CheckpointError("a Hugging Face folder; zoo model 'rwkv7' reads the official "
                              "RWKV-7 .pth file (keys blocks.N.att.r_k, att.w0, ...)")
    version = official_version(state)
    if version != "7":
        raise CheckpointError(wrong_version(version, "rwkv7"))
    fields = _fields(state)
    unused = {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"}  # layer 0 has v itself
    return fields, {key: tensor.reshape(-1) if _is_vector(key) else tensor
                    for key, tensor in state.items() if key not in unused}


def rwkv7_to_official(zoo: StateDict) -> StateDict:
    """The official RWKV-7 .pth layout: the zoo's key names, the per-channel vectors (1, 1, d)."""
    return {key: tensor.reshape(1, 1, -1) if _is_vector(key) else tensor
            for key, tensor in zoo.items()}
