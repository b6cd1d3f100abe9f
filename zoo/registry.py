"""The zoo's models by name: `REGISTRY` maps a model name (the `zoo:` key of catalog entries)
to "module:Class". Modules are imported only when a model is built, so that importing the
registry stays light (no torch)."""

from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "transformer": "zoo.transformer:Transformer",
    "bert": "zoo.bert:Bert",
    "gpt": "zoo.gpt:GPT",
    "roberta": "zoo.roberta:Roberta",
    "mosaic-bert": "zoo.mosaic_bert:MosaicBert",
    "rwkv": "zoo.rwkv:RWKV",
    "rwkv5": "zoo.rwkv5:RWKV5",
    "rwkv6": "zoo.rwkv6:RWKV6",
    "rwkv7": "zoo.rwkv7:RWKV7",
    "mamba": "zoo.mamba:Mamba",
    "mamba2": "zoo.mamba2:Mamba2",
    "pangu-pi": "zoo.pangu_pi:PanguPi",
    "llama": "zoo.llama:Llama",
    "gpt-neox": "zoo.gpt_neox:GPTNeoX",
    "bloom": "zoo.bloom:Bloom",
    "opt": "zoo.opt:OPT",
    "gpt-j": "zoo.gptj:GPTJ",
    "gpt-neo": "zoo.gpt_neo:GPTNeo",
    "t5": "zoo.t5:T5",
    "bart": "zoo.bart:Bart",
    "albert": "zoo.albert:Albert",
    "ctrl": "zoo.ctrl:CTRL",
}


def load_class(name: str) -> type:
    """The model class registered under `name`."""
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY)) or "none yet"
        raise KeyError(f"unknown zoo model {name!r}; known: {known}")
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)
