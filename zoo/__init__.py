"""The zoo: readable PyTorch implementations of the family's landmark models.

`REGISTRY` (zoo.registry) maps a model name (the `zoo:` key of catalog entries) to
"module:Class"; modules are imported only when a model is built, so `import zoo` stays light
(no torch). The zoo knows nothing of the catalog, the harness or YAML: a model is built from
plain config fields.

    model = zoo.build("gpt", n_layer=2)         # the config's defaults (paper's base) + fields
    plain = zoo.build("gpt", fast=False)        # without the CPU speed routes of zoo.fast
    bert = zoo.from_pretrained("bert", folder)  # a published checkpoint (see zoo.convert)
    zoo.save_pretrained("bert", bert, out)      # and back: a folder transformers loads
    h = bert.hidden_states(ids)                 # (B, T, d_model): what the head reads

Catalog variants (`tiny`, `small`, the published sizes) are resolved by the harness:
`harness.models.build("rwkv", "small")`.
"""

from __future__ import annotations

from typing import Any

from zoo.registry import REGISTRY, load_class

__all__ = ["REGISTRY", "build", "from_pretrained", "load_class", "save_pretrained"]


def build(name: str, *, device: Any = None, dtype: Any = None, fast: bool = True, **fields: Any):
    """Build zoo model `name` from its config's defaults (the paper's base model) and `fields`.
    `device="meta"` builds without allocating weights; without `device` the model is built
    where torch builds tensors by default (the CPU, or the device of an enclosing
    `with torch.device(...)` block). With `fast` (the default) every speed route of zoo.fast is
    applied: same numbers, faster CPU inference; `fast=False` gives the paper's plain modules,
    as constructing the model class directly does."""
    import contextlib

    import torch

    cls = load_class(name)
    config = cls.config_class(**fields)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = cls(config)
    if dtype is not None:
        model = model.to(dtype)
    return _with_routes(model, fast)


def from_pretrained(name: str, path: Any, *, fast: bool = True, output_loading_info: bool = False,
                    **kwargs: Any):
    """Load a published checkpoint (Hugging Face folder in any common layout, an official
    file, or a hub id such as "gpt2" read from the local Hugging Face cache); see zoo.convert
    for the layouts, `dtype` and config overrides. `fast` as for `build`. With
    `output_loading_info`, returns (model, zoo.convert.LoadingInfo)."""
    from zoo.convert import from_pretrained as _from_pretrained

    model, info = _from_pretrained(name, path, output_loading_info=True, **kwargs)
    model = _with_routes(model, fast)
    return (model, info) if output_loading_info else model


def save_pretrained(name: str, model: Any, path: Any, **kwargs: Any):
    """Write zoo model `name` as a Hugging Face folder that transformers loads (`format="hf"`,
    the default) or as an official RWKV .pth (`format="official"`); see
    zoo.convert.save_pretrained. Returns the folder or file written."""
    from zoo.convert import save_pretrained as _save_pretrained

    return _save_pretrained(name, model, path, **kwargs)


def _with_routes(model, fast: bool):
    if fast:
        from zoo import fast as routes

        routes.apply(model)
    return model
