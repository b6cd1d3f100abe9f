"""Import published checkpoints into zoo models, and export zoo models to them.

`from_pretrained(name, path)` reads a Hugging Face-format folder (config.json with
model.safetensors or pytorch_model.bin, whole or in shards) or a single weights file (an
official RWKV-4 to RWKV-7 `.pth`), turns its config and weights into the zoo's with the
model's converter below, and loads them strictly: a missing, unexpected or mis-shaped key is an
error that names the key.

Where things live; each family module holds its converter (checkpoint -> zoo) and its exporter
(zoo -> Hugging Face layout) side by side:

    common.py   CheckpointError, StateDict, the Converter and Exporter types, reading files
                (read_state_dict, read_checkpoint, read_sharded) and load_into
    gpt.py      GPT-1 / GPT-2            convert_gpt, export_gpt
    bert.py     BERT and RoBERTa         convert_bert, convert_roberta, export_bert, export_roberta
    rwkv.py     RWKV-4                   convert_rwkv, export_rwkv, rwkv_to_official,
                                         official_version (the version of an official .pth)
    rwkv5.py    RWKV-5.2 (Eagle)         convert_rwkv5, rwkv5_to_official
    rwkv6.py    RWKV-6 (Finch)           convert_rwkv6, rwkv6_to_official
    rwkv7.py    RWKV-7                   convert_rwkv7, rwkv7_to_official
    llama.py    LLaMA and Mistral        convert_llama, export_llama
    mamba.py    Mamba and Mamba-2        convert_mamba, convert_mamba2, export_mamba,
                                         export_mamba2

This module holds the two registries (CONVERTERS, EXPORTERS) and `from_pretrained`, and
re-exports the public names above, so `from zoo.convert import ...` reads any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.convert.bert import (
    BERT_BLOCK_KEYS,
    BERT_EMBEDDING_KEYS,
    convert_bert,
    convert_roberta,
    export_bert,
    export_roberta,
)
from zoo.convert.common import (
    CheckpointError,
    Converter,
    Exporter,
    StateDict,
    load_into,
    read_checkpoint,
    read_sharded,
    read_state_dict,
)
from zoo.convert.detect import detect_model
from zoo.convert.gpt import GPT_CONV1D, GPT_CONV1D_WEIGHTS, convert_gpt, export_gpt
from zoo.convert.hub import resolve
from zoo.convert.llama import LLAMA_BLOCK_KEYS, convert_llama, export_llama
from zoo.convert.mamba import convert_mamba, convert_mamba2, export_mamba, export_mamba2
from zoo.convert.rwkv import (
    convert_rwkv,
    export_rwkv,
    official_version,
    rwkv_official_to_hf,
    rwkv_to_official,
)
from zoo.convert.rwkv5 import convert_rwkv5, rwkv5_to_official
from zoo.convert.rwkv6 import convert_rwkv6, rwkv6_to_official
from zoo.convert.rwkv7 import convert_rwkv7, rwkv7_to_official

__all__ = [
    "BERT_BLOCK_KEYS", "BERT_EMBEDDING_KEYS", "CONVERTERS", "EXPORTERS", "GPT_CONV1D",
    "GPT_CONV1D_WEIGHTS", "LLAMA_BLOCK_KEYS", "CheckpointError", "Converter", "Exporter",
    "StateDict", "convert_bert", "convert_gpt", "convert_llama", "convert_mamba", "convert_mamba2",
    "convert_roberta", "convert_rwkv", "convert_rwkv5", "convert_rwkv6", "convert_rwkv7",
    "export_bert", "export_gpt", "export_llama", "export_mamba", "export_mamba2", "export_roberta",
    "export_rwkv", "from_pretrained", "load_into", "official_version", "read_checkpoint",
    "read_sharded", "read_state_dict", "rwkv5_to_official", "rwkv6_to_official",
    "rwkv7_to_official", "rwkv_official_to_hf", "rwkv_to_official",
]
__all__ += ["detect_model", "resolve"]  # hub ids and model detection (hub.py, detect.py)

# zoo model name -> its converter.
CONVERTERS: dict[str, Converter] = {
    "gpt": convert_gpt,
    "bert": convert_bert,
    "roberta": convert_roberta,
    "mamba": convert_mamba,
    "mamba2": convert_mamba2,
    "rwkv": convert_rwkv,
    "rwkv5": convert_rwkv5,
    "rwkv6": convert_rwkv6,
    "rwkv7": convert_rwkv7,
    "llama": convert_llama,
}

# zoo model name -> its exporter (the inverse of CONVERTERS).
EXPORTERS: dict[str, Exporter] = {
    "gpt": export_gpt,
    "bert": export_bert,
    "roberta": export_roberta,
    "rwkv": export_rwkv,
    "llama": export_llama,
    "mamba": export_mamba,
    "mamba2": export_mamba2,
}


def from_pretrained(name: str, path: Path | str, **overrides: Any):
    """A zoo model `name` with the weights of the checkpoint at `path` (fp32, eval mode)."""
    from zoo.registry import load_class

    if name not in CONVERTERS:
        raise CheckpointError(f"no checkpoint converter for zoo model {name!r}; "
                              f"available: {', '.join(sorted(CONVERTERS)) or 'none'}")
    config, state, weights_file = read_checkpoint(resolve(path))  # a hub id: its cached folder
    try:
        fields, state = CONVERTERS[name](config, state)
    except KeyError as exc:
        raise CheckpointError(f"{weights_file}: missing weight or config field {exc}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{weights_file}: {exc}") from None
    cls = load_class(name)
    model = cls(cls.config_class(**{**fields, **overrides}))
    load_into(model, {k: v.float() for k, v in state.items()}, weights_file)
    return model.eval()
