"""The one model builder of the harness: a catalog variant (plus overrides) -> a zoo model.

The zoo builds models from plain config fields (`zoo.build("gpt", n_layer=2)`); the catalog
names sizes of them (`tiny`, `small`, `gpt2-medium`, ...). This module joins the two, and adds
what every caller of the harness needs: a position table long enough for the sequence length
asked for, a seed (so that every process and every peer starts from the same weights), a dtype
and a device.

    built = build("rwkv", "small", seqlen=4096, seed=0)
    built.model, built.notes                # notes: e.g. a lengthened position table

The shipped catalog is read once per process (`shipped_catalog`); a caller that reads another
folder (`catalog --catalog-dir`) passes its `Catalog` down.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a cell's process builds from fields alone: it need not load YAML
    from harness.catalog import Catalog


@functools.cache
def shipped_catalog() -> Catalog:
    """The catalog shipped with the package, loaded and validated once per process."""
    from harness.catalog import load_catalog

    return load_catalog()


def variant_fields(name: str, variant: str, catalog: Catalog | None = None) -> dict[str, Any]:
    """Config fields of `variant` of zoo model `name`; CatalogError (naming the variants there
    are) when the catalog has no such variant."""
    return (catalog or shipped_catalog()).variant(name, variant).config


def config_field_names(name: str) -> set[str]:
    """The fields of zoo model `name`'s config."""
    import zoo

    return {f.name for f in dataclasses.fields(zoo.load_class(name).config_class)}


@dataclass
class Built:
    """A built model, the config fields it was built from, and notes for its records (say, a
    position table lengthened past the published length)."""

    model: Any
    fields: dict[str, Any]
    notes: tuple[str, ...] = ()


def build(name: str, variant: str | None = None, *, catalog: Catalog | None = None,
          overrides: Mapping[str, Any] | None = None, seqlen: int | None = None,
          seed: int | None = None, dtype: Any = None, device: Any = None,
          fast: bool = True, routes: list[str] | None = None) -> Built:
    """Zoo model `name`: the config's defaults, then the catalog `variant`'s fields (when one is
    named), then `overrides`. With `seqlen`, a learned position table shorter than that is
    lengthened (the extra rows are untrained; the notes say so). With `seed`, the weights are
    drawn from `torch.manual_seed(seed)`. `device=None` builds where torch builds by default
    (honouring an enclosing `with torch.device(...)`). With `fast` (the default) the zoo's CPU
    speed routes are applied (zoo.fast: same numbers), or only those named in `routes`;
    `fast=False` keeps the plain modules."""
    import contextlib

    import torch

    import zoo

    cls = zoo.load_class(name)
    fields = {**(variant_fields(name, variant, catalog) if variant else {}), **(overrides or {})}
    config = cls.config_class(**fields)
    notes: tuple[str, ...] = ()
    if seqlen is not None:
        config, note = cls.config_for_length(config, seqlen)
        notes = (note,) if note else ()
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = cls(config)
    if dtype is not None:
        model = model.to(dtype)
    if fast:
        import zoo.fast

        zoo.fast.apply(model, routes)
    return Built(model, dataclasses.asdict(config), notes)


def build_variant(name: str, variant: str | None = None, **options: Any):
    """The model alone of `build(name, variant, ...)`; other keyword arguments not among
    `build`'s options are config overrides: `build_variant("gpt", "tiny", n_layer=1)`."""
    known = ("catalog", "seqlen", "seed", "dtype", "device", "fast", "routes")
    kwargs = {k: options.pop(k) for k in known if k in options}
    return build(name, variant, overrides=options, **kwargs).model


# ---------------------------------------------------------------------------------------------
# --set FIELD=VALUE: config fields on top of a variant's (`catalog quality`, `catalog bench`)

class OverrideError(ValueError):
    """A --set that cannot be read, names no field of the model, or that its config refuses."""


def set_texts(overrides: tuple[tuple[str, Any], ...]) -> tuple[str, ...]:
    """--set's (field, value) pairs as the "field=value" texts records and folders name."""
    return tuple(f"{name}={value}" for name, value in overrides)


def variant_label(variant: str, overrides: tuple[tuple[str, Any], ...]) -> str:
    """The variant as records name it: "tiny", or "tiny d_state=128" with --set fields."""
    return " ".join((variant, ",".join(set_texts(overrides)))) if overrides else variant


def parse_overrides(texts: list[str] | None, reserved: Mapping[str, str] | None = None
                    ) -> tuple[tuple[str, Any], ...]:
    """--set's "FIELD=VALUE" texts as (field, value) pairs: numbers, True / False and None as
    Python reads them, anything else as text. An OverrideError names a malformed one, or a
    field of `reserved` (field -> the option that decides it)."""
    pairs: dict[str, Any] = {}
    for text in texts or ():
        name, sep, raw = text.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name.isidentifier() or not raw:
            raise OverrideError(f"--set {text!r}: give FIELD=VALUE, e.g. --set d_state=128")
        if name in (reserved or {}):
            raise OverrideError(f"--set {name}: {name} is set by {reserved[name]}")
        words = {"true": True, "false": False, "none": None}
        if raw.lower() in words:
            value: Any = words[raw.lower()]
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        pairs[name] = value  # the last of a repeated field wins, as for any option
    return tuple(pairs.items())


def check_overrides(model: str, overrides: tuple[tuple[str, Any], ...],
                    fields: Mapping[str, Any]) -> None:
    """An OverrideError when zoo model `model`'s config has no such field, the value is not of
    the field's kind (an integer for an integer field, a number for a float one, True or False
    for a switch), or the config refuses the result (`fields`: the variant's, which --set
    changes)."""
    import torch

    import zoo

    config_class = zoo.load_class(model).config_class
    defaults = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    for name, value in overrides:
        if name not in defaults:
            raise OverrideError(f"--set {name}: {model} has no config field {name!r}; its "
                                f"fields: {', '.join(sorted(defaults))}")
        field = defaults[name]
        default = field.default if field.default is not dataclasses.MISSING else None
        kind = type(default)
        if default is None:  # "int | None" and the like: None, or a value of the other kind
            if value is None:
                continue
            kinds = [k for k in typing.get_args(hints.get(name)) if k is not type(None)]
            kind = kinds[0] if len(kinds) == 1 else type(None)
        wanted = {bool: "True or False", int: "an integer", float: "a number"}.get(kind)
        if kind is bool and not isinstance(value, bool) \
                or kind is int and (isinstance(value, bool) or not isinstance(value, int)) \
                or kind is float and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
            raise OverrideError(f"--set {name}={value}: {model}'s {name} is {wanted} (its "
                                f"default: {default})")
    # The config's checks (zoo.model.check_config and its own), then the model built on the
    # meta device (no memory): whatever a value breaks in building is refused here, before
    # anything runs.
    try:
        config = config_class(**{**fields, **dict(overrides)})
        with torch.device("meta"):
            zoo.load_class(model)(config)
    except (TypeError, ValueError, AssertionError, ArithmeticError, RuntimeError) as error:
        raise OverrideError(f"--set {','.join(set_texts(overrides))}: {model} "
                            f"refuses it: {error or type(error).__name__}") from None
