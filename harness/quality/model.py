"""The model of a quality run: which task a zoo model runs (decided by what the model is, not
by its name) and the model itself, built through `harness.models` at the spec's variant with
the task's vocabulary and length."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from harness.models import OverrideError, check_overrides
from harness.quality.spec import (
    MQAR_MIXER_ONLY,
    MQAR_NO_DROPOUT,
    MQAR_ONE_HEAD,
    QualityError,
    RunSpec,
    mqar_init_std,
)

if TYPE_CHECKING:
    from harness.catalog import Catalog
    from harness.quality.data import Prepared


def architecture(model: str) -> str:
    """"decoder", "encoder" or "encoder-decoder", from the zoo class itself."""
    import zoo

    cls = zoo.load_class(model)
    if getattr(cls, "causal_lm", False):
        return "decoder"
    if "src_ids" in inspect.signature(cls.forward).parameters:
        return "encoder-decoder"
    return "encoder"


def task_for(model: str, task: str) -> str:
    """The task `model` runs for the requested one (the encoder-decoder runs `lm` as seq2seq),
    or a QualityError saying which tasks it takes."""
    arch = architecture(model)
    allowed = {"decoder": ("lm", "mqar"), "encoder": ("mlm",),
               "encoder-decoder": ("seq2seq", "lm")}[arch]
    if task not in allowed:
        raise QualityError(f"{model} is {'an' if arch[0] == 'e' else 'a'} {arch}: it runs "
                           f"--task {' or '.join(allowed)}, not {task}")
    return "seq2seq" if arch == "encoder-decoder" else task


def check_model(model: str, spec: RunSpec, catalog: Catalog | None = None) -> str:
    """The task `model` runs for the spec, after checking that `catalog` (default: the shipped
    one) has the spec's variant of it and that the model takes the spec's --set fields."""
    task = task_for(model, spec.task)
    fields = _variant_fields(model, spec, catalog)
    if spec.overrides:
        check_overrides(model, spec.overrides, fields)
    return task


def _variant_fields(model: str, spec: RunSpec, catalog: Catalog | None) -> dict[str, Any]:
    from harness.catalog import CatalogError
    from harness.models import variant_fields

    try:
        return variant_fields(model, spec.variant, catalog)
    except CatalogError as error:  # the catalog's own message names the variants it has
        raise QualityError(str(error)) from None


def _default(model: str, name: str) -> Any:
    import zoo

    return getattr(zoo.load_class(model).config_class(), name)


def build_model(model: str, task: str, data: Prepared, catalog: Catalog | None = None):
    """The zoo model `model` at the spec's variant, sized for the task's vocabulary and
    length; seeded with the spec's seed, so every run of a comparison starts alike."""
    from harness.models import build, config_field_names

    spec = data.spec
    fields = _variant_fields(model, spec, catalog)
    overrides: dict[str, Any] = {}
    names = config_field_names(model)
    if task == "mqar":
        overrides["vocab_size"] = spec.mqar.vocab_size
        overrides.update({name: 0.0 for name in MQAR_NO_DROPOUT if name in names})
        overrides.update({k: v for k, v in {**MQAR_MIXER_ONLY, **MQAR_ONE_HEAD}.items()
                          if k in names})
    else:
        tok = data.tokenizer
        overrides["vocab_size"] = tok.vocab_size + (task == "mlm")  # + [MASK] for encoders
        if "pad_token_id" in names:
            overrides["pad_token_id"] = tok.pad_id
    if "next_sentence_head" in names:
        overrides["next_sentence_head"] = False  # no sentence pairs here: MLM alone
    if spec.width is not None:  # d_model, the variant's other fields (a fixed d_ff scaled)
        from harness.quality.sizing import width_fields

        # The task's own fields win: MQAR's mixer-only d_ff 0 stays 0 where the variant fixes
        # a d_ff that the width would scale (LLaMA's tiny, Pangu-π's small).
        overrides.update({k: v for k, v in width_fields(
            model, fields, spec.width, depth=spec.depth).items()
            if k in ("d_model", "d_ff", "n_layer", "d_kv", "rotary_dim") and k not in overrides})
    if task == "mqar" and "rotary_dim" in names and "n_head" in overrides:
        # GPT-J's rotary_dim counts channels of a head, and MQAR's one head spans d_model: keep
        # the variant's share of a head (a quarter), not its count. None (the whole head)
        # stays None.
        def value(name: str) -> Any:
            return fields[name] if name in fields else _default(model, name)

        rotary = value("rotary_dim")
        if rotary is not None:
            head = value("d_model") / value("n_head")
            width = overrides.get("d_model") or value("d_model")
            overrides["rotary_dim"] = int(rotary / head * width / overrides["n_head"])
    # Drawn on the CPU whatever the device, so that a seed gives the same initial weights on
    # every machine; then moved.
    if task == "mqar" and "init_std" in names:
        width = overrides.get("d_model") or fields.get("d_model") or _default(model, "d_model")
        overrides["init_std"] = mqar_init_std(width)
    overrides.update(spec.overrides)  # --set: the user's fields win over the task's
    try:
        built = build(model, overrides={**fields, **overrides}, seqlen=spec.train_config.seqlen,
                      seed=spec.seed, device="cpu")
    except ValueError as error:  # a config the width made: say so, since the user set neither
        if spec.width is None or isinstance(error, (QualityError, OverrideError)):
            raise
        raise QualityError(f"{model} at d_model {spec.width} (its variant's fields scaled to "
                           f"that width): {error}") from None
    return built.model.to(spec.device)
