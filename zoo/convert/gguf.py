"""GGUF files (llama.cpp's single-file format) -> the Hugging Face layout the converters read.

A .gguf file holds the model's settings as metadata (`general.architecture`, then
`ARCH.block_count`, `ARCH.embedding_length`, ...) and its tensors under llama.cpp's names,
often quantized. `read_gguf` turns both into what a Hugging Face folder holds, config.json's
fields and a state dict under transformers' names, so that the family's converter
(convert_llama) reads it as it reads a folder:

    token_embd.weight            -> model.embed_tokens.weight
    blk.N.attn_norm.weight       -> model.layers.N.input_layernorm.weight
    blk.N.attn_{q,k,v}.weight    -> model.layers.N.self_attn.{q,k,v}_proj.weight
    blk.N.attn_output.weight     -> model.layers.N.self_attn.o_proj.weight
    blk.N.ffn_norm.weight        -> model.layers.N.post_attention_layernorm.weight
    blk.N.ffn_{gate,up,down}.weight -> model.layers.N.mlp.{gate,up,down}_proj.weight
    output_norm.weight, output.weight -> model.norm.weight, lm_head.weight

Two things differ from a folder. llama.cpp's conversion reorders the rows of q and k within
each head from the rotate-half RoPE layout of Hugging Face's checkpoints back to Meta's
interleaved one (pairs of rows (2i, 2i + 1) rotate together); read_gguf undoes it. And the
tensors may be quantized (Q8_0, Q4_K, ...): they are dequantized to float32 with the `gguf`
package, ggml-org's own reader, which also parses the file. Llama 3.1's RoPE scaling is not in
the metadata: llama.cpp stores it as one divisor per frequency (`rope_freqs.weight`), from
which `_llama3_scaling` recovers the scaling's settings. Architectures read: llama (LLaMA,
Llama 2 and 3, Mistral and their fine-tunes, which llama.cpp files under llama) and mistral.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from zoo.convert.common import CheckpointError, StateDict
from zoo.llama import llama3_scaled

GGUF_ARCHITECTURES = ("llama", "mistral")  # general.architecture values read
GGUF_MODEL = "llama"  # the zoo model they are

# llama.cpp's name inside blk.N -> transformers' name inside model.layers.N
_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight",
           "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}

# ARCH.<key> -> config.json field (Hugging Face's LlamaConfig names)
_CONFIG = {
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "rope.freq_base": "rope_theta",
    "context_length": "max_position_embeddings",
    "attention.sliding_window": "sliding_window",
}


def is_gguf(path: Path) -> bool:
    """Whether `path` is a GGUF file (its first four bytes are b"GGUF")."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def read_gguf(path: Path, *, weights: bool = True) -> tuple[dict[str, Any], StateDict]:
    """(config.json's fields, state dict under transformers' names) of a GGUF file; float32
    tensors (dequantized where the file quantizes them), or meta tensors of their shapes when
    `weights` is False (the header alone is read). Llama 3.1's RoPE scaling, which llama.cpp
    stores as one divisor per frequency (rope_freqs), becomes rope_parameters again. A file of
    another architecture, a damaged file or a setting the zoo does not compute (another RoPE
    scaling) is a CheckpointError."""
    reader = _reader(path)
    metadata = {name: _value(field) for name, field in reader.fields.items()}
    arch = metadata.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise CheckpointError(f"{path}: a GGUF file of architecture {arch!r}; the zoo reads "
                              f"{', '.join(GGUF_ARCHITECTURES)} GGUF files")
    config: dict[str, Any] = {"model_type": arch, "architectures": ["LlamaForCausalLM"]}
    for key, field in _CONFIG.items():
        if f"{arch}.{key}" in metadata:
            config[field] = metadata[f"{arch}.{key}"]
    if arch == "mistral":  # a window only where the file gives one (not MistralConfig's 4096)
        config.setdefault("sliding_window", None)
    if f"{arch}.rope.scaling.type" in metadata:
        raise CheckpointError(f"{path}: RoPE scaling {metadata[f'{arch}.rope.scaling.type']!r}, "
                              "which zoo.llama does not compute (plain RoPE, or Llama 3.1's)")
    rope_freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if rope_freqs is not None:  # Llama 3.1 and 3.2: the scaling as one divisor per frequency
        config["rope_parameters"] = _llama3_scaling(
            _dequantized(rope_freqs, (int(rope_freqs.n_elements),), path), config, path)
    names = {t.name for t in reader.tensors}
    config["tie_word_embeddings"] = "output.weight" not in names
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embedding is None:
        raise CheckpointError(f"{path}: no tensor 'token_embd.weight'")
    config["vocab_size"] = int(embedding.shape[1])  # GGUF lists a tensor's dims innermost first
    n_head = config.get("num_attention_heads")
    n_kv = config.get("num_key_value_heads") or n_head
    state: StateDict = {}
    for tensor in reader.tensors:
        if tensor is rope_freqs:
            continue
        name = _hf_name(tensor.name)
        if name is None:
            raise CheckpointError(f"{path}: tensor {tensor.name!r} has no place in a {arch} "
                                  "model")
        shape = tuple(int(n) for n in reversed(tensor.shape))
        if not weights:
            state[name] = torch.empty(shape, device="meta")
            continue
        value = _dequantized(tensor, shape, path)
        if tensor.name.endswith(".attn_q.weight"):
            value = _rotate_half_rows(value, n_head)
        elif tensor.name.endswith(".attn_k.weight"):
            value = _rotate_half_rows(value, n_kv)
        state[name] = value
    return config, state


def _llama3_scaling(divisors: torch.Tensor, config: dict[str, Any], path: Path
                    ) -> dict[str, Any]:
    """Llama 3.1's RoPE scaling (rope_parameters as transformers writes them) that gives the
    divisor of each frequency llama.cpp stores in rope_freqs: the factor is the largest
    divisor, the low and high frequency factors Llama 3.1's 1 and 4, and the original context
    the one a blended divisor implies (or 8192, Llama 3's), checked against every divisor.
    Other divisors are a CheckpointError: the zoo computes this scaling only."""
    theta = float(config.get("rope_theta", 10_000.0))
    head_size = config["hidden_size"] // config["num_attention_heads"]
    f = theta ** -(torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)
    wavelength = 2 * math.pi / f
    d = divisors.double()
    factor, low, high = float(d.max()), 1.0, 4.0
    between = (d > 1 + 1e-6) & (d < factor - 1e-6)
    # a blended divisor 1 / ((1 - s) / factor + s) gives s, and s gives the original context
    s = (1 / d[between] - 1 / factor) / (1 - 1 / factor)
    originals = [round(float(w)) for w in wavelength[between] * (low + s * (high - low))]
    for original in dict.fromkeys([*originals, 8192]):
        expected = f / llama3_scaled(f, factor, low, high, original)  # what llama.cpp stores
        if d.shape == expected.shape and torch.allclose(d, expected, rtol=1e-4, atol=0):
            return {"rope_type": "llama3", "rope_theta": theta, "factor": factor,
                    "low_freq_factor": low, "high_freq_factor": high,
                    "original_max_position_embeddings": original}
    raise CheckpointError(f"{path}: rope_freqs holds RoPE divisors that are not Llama 3.1's "
                          "scaling, the one zoo.llama computes")


def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise CheckpointError(f"{path}: reading GGUF files needs the gguf package "
                              "(pip install gguf)") from None
    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # a truncated or damaged file: numpy and struct errors of all kinds
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: cannot read it as GGUF ({type(exc).__name__}: "
                              f"{reason})") from None


def _value(field: Any) -> Any:
    """A metadata field's value: a number, a string, or a list of them."""
    return field.contents()


def _hf_name(name: str) -> str | None:
    if name in _GLOBAL:
        return _GLOBAL[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _BLOCK and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{_BLOCK[parts[2]]}.weight"
    return None


def _dequantized(tensor: Any, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    """The tensor's values as float32, of `shape` (rows, columns)."""
    import gguf
    import numpy as np

    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except (NotImplementedError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: tensor {tensor.name!r} is stored as "
                              f"{tensor.tensor_type.name}, which cannot be read ({exc})") from None
    # a copy: the file is mapped read-only
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))


def _rotate_half_rows(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """q or k rows from Meta's interleaved RoPE order (llama.cpp's) to rotate-half order
    (Hugging Face's, the zoo's): within each head, row 2i + j moves to j * half + i."""
    rows = weight.shape[0]
    half = rows // n_head // 2
    return (weight.reshape(n_head, half, 2, *weight.shape[1:]).transpose(1, 2)
            .reshape(weight.shape).contiguous())
