"""The zoo: readable PyTorch implementations of the family's landmark models.

`REGISTRY` maps a model name (the `zoo:` key of catalog entries) to "module:Class"; modules are
imported only when a model is built, so `import zoo` stays light (no torch, no YAML).

    model = zoo.build("rwkv", "small")          # a variant from the catalog's YAML
    model = zoo.build("gpt", n_layer=2)         # the config's defaults (paper's base) + overrides
"""

from __future__ import annotations

import importlib
from typing import Any

REGISTRY: dict[str, str] = {
    "transformer": "zoo.transformer:Transformer",
    "bert": "zoo.bert:Bert",
    "gpt": "zoo.gpt:GPT",
    "roberta": "zoo.roberta:Roberta",
    "mosaic-bert": "zoo.mosaic_bert:MosaicBert",
    "rwkv": "zoo.rwkv:RWKV",
    "pangu-pi": "zoo.pangu_pi:PanguPi",
}


def load_class(name: str) -> type:
    """The model class registered under `name`."""
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY)) or "none yet"
        raise KeyError(f"unknown zoo model {name!r}; known: {known}")
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def variant_config(name: str, variant: str, catalog_dir: Any = None) -> dict[str, Any]:
    """Config fields of a catalog variant of zoo model `name` (e.g. "rwkv", "small")."""
    from harness.catalog import load_catalog  # the catalog is data: read only when asked

    return load_catalog(catalog_dir).variant(name, variant).config


def build(name: str, variant: str | None = None, *, device: Any = None, dtype: Any = None,
          catalog_dir: Any = None, **overrides: Any):
    """Build zoo model `name`: the config's defaults, then the catalog variant's fields (if a
    variant is named), then `overrides`. `device="meta"` builds without allocating weights."""
    import torch

    cls = load_class(name)
    fields = variant_config(name, variant, catalog_dir) if variant else {}
    config = cls.config_class(**{**fields, **overrides})
    with torch.device(device if device is not None else "cpu"):
        model = cls(config)
    return model.to(dtype) if dtype is not None else model


def from_pretrained(name: str, path: Any, **kwargs: Any):
    """Load a published checkpoint (Hugging Face folder or official file); see zoo.convert."""
    from zoo.convert import from_pretrained as _from_pretrained

    return _from_pretrained(name, path, **kwargs)
