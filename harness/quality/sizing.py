"""A model size for a training budget, so that a short comparison trains models that can learn
in it (Hoffmann et al. 2022: compute-optimal training sees about 20 tokens per parameter).

The `small` variants (27M parameters) see about 300K tokens in 3 minutes on a 2-core CPU: a
hundred steps, 0.01 tokens per parameter, where every model is still learning byte
frequencies. `size_for_budget` keeps the variant's other fields and picks the widest d_model of
`WIDTHS` at which every model of the comparison gets at least `TOKENS_PER_PARAM` tokens per
parameter from the budget. A token budget gives the tokens directly, a FLOPs budget through
the models' analytic cost, a time budget through each model's training throughput measured
here on a few steps (so the choice depends on the machine, and says so).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from harness.catalog import Catalog
    from harness.quality.spec import RunSpec

WIDTHS = (64, 96, 128, 192, 256, 384, 512)
TOKENS_PER_PARAM = 20


@dataclass(frozen=True)
class Choice:
    width: int
    params: dict[str, int]  # model -> parameters at that width
    tokens: dict[str, float]  # model -> tokens the budget buys it (estimated for time budgets)
    reason: str  # one line for the user and the records


def width_fields(model: str, fields: dict[str, Any], width: int, depth: bool = False
                 ) -> dict[str, Any]:
    """The variant's fields at d_model = `width`, with a feed-forward width the variant fixed
    scaled by the same factor (Pangu-π's `small` sets d_ff), so that models stay matched. The
    heads keep their number, so a count of each head's channels scales too (T5's head width
    d_kv; GPT-J's rotary_dim, truncated as GPT-NeoX truncates its share: its config refuses an
    odd count).
    With `depth`, the layers scale too (at least 2): a narrow model is also a shallow one, as in
    every published family of sizes."""
    out = {**fields, "d_model": width}
    scale = width / (fields.get("d_model") or _default_width(model))
    if fields.get("d_ff"):
        out["d_ff"] = max(8, round(fields["d_ff"] * scale / 8) * 8)
    if fields.get("d_kv"):
        out["d_kv"] = max(1, int(fields["d_kv"] * scale))
    if fields.get("rotary_dim"):
        out["rotary_dim"] = int(fields["rotary_dim"] * scale)
    if depth and fields.get("n_layer"):
        out["n_layer"] = max(2, round(fields["n_layer"] * scale))
    return out


def _default_width(model: str) -> int:
    """d_model of `model`'s config defaults, which a variant that does not name it keeps (the
    Transformer's `small`)."""
    import zoo

    return next(f.default for f in dataclasses.fields(zoo.load_class(model).config_class)
                if f.name == "d_model")


def size_for_budget(models: list[str], spec: RunSpec, vocab_size: int,
                    catalog: Catalog | None = None) -> Choice:
    """The widest width of WIDTHS at which every model gets TOKENS_PER_PARAM tokens per
    parameter of the budget (the narrowest when none does). A width some model's config
    refuses is passed over (GPT-NeoX's 8 heads at 96: a head of 12 has an odd 3 rotary
    channels); when every width is refused, the first refusal is raised."""
    from harness.models import build, variant_fields

    config = spec.train_config
    budget = spec.budget
    chosen: Choice | None = None
    refused: ValueError | None = None
    for width in WIDTHS:
        params, tokens = {}, {}
        try:
            nets = {model: build(model, overrides={
                        **width_fields(model, variant_fields(model, spec.variant, catalog),
                                       width, depth=True),
                        "vocab_size": vocab_size, **dict(spec.overrides)},  # --set's too
                        seqlen=config.seqlen, seed=0,
                        device="cpu" if budget.seconds else "meta").model  # meta: no weights
                    for model in models}
        except ValueError as exc:  # a config this width makes is refused: not a choice
            refused = refused or exc
            continue
        for model, net in nets.items():
            params[model] = net.num_params()
            if budget.tokens:
                tokens[model] = float(budget.tokens)
            elif budget.flops:
                tokens[model] = budget.flops / (3 * net.flops_per_token(config.seqlen))
            else:
                tokens[model] = budget.seconds * training_throughput(net, config.batch_size,
                                                                     config.seqlen)
        fits = all(tokens[m] >= TOKENS_PER_PARAM * params[m] for m in models)
        if chosen is not None and not fits:
            break
        chosen = Choice(width, params, tokens, "")
        if not fits:
            break
    if chosen is None:
        assert refused is not None
        raise refused
    fewest = min(chosen.tokens[m] / chosen.params[m] for m in models)
    how = ("measured training speed on this machine" if budget.seconds else
           "the models' training FLOPs" if budget.flops else "the token budget")
    reason = (f"d_model {chosen.width} (layers scaled with it) chosen for a budget of "
              f"{budget}: at least {fewest:.2g} tokens per parameter for every model (from "
              f"{how}; Hoffmann et al. suggest about {TOKENS_PER_PARAM}); give --width or "
              "--variant to choose yourself")
    return Choice(chosen.width, chosen.params, chosen.tokens, reason)


def sizing_inputs(models: list[str], spec: RunSpec, vocab_size: int) -> dict[str, Any]:
    """What a choice depends on, beside the machine: a kept choice is reused only for these."""
    config = spec.train_config
    return {"models": list(models), "variant": spec.variant, "budget": str(spec.budget),
            "vocab_size": vocab_size, "seqlen": config.seqlen, "batch": config.batch_size,
            "dtype": config.dtype, "device": spec.device,
            "overrides": [list(pair) for pair in spec.overrides]}


def kept_choice(path: Path, inputs: dict[str, Any]) -> Choice | None:
    """The choice an earlier run kept at `path` for the same `inputs`, else None. A time
    budget's choice rests on speed measured that day: the comparison it started (its resume,
    a grid's rerun) must train the models it sized, not ones sized again."""
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept["inputs"] != inputs:
            return None
        return Choice(kept["width"], kept["params"], kept["tokens"],
                      kept["reason"] + f" (sized by an earlier run: {path})")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep_choice(path: Path, inputs: dict[str, Any], choice: Choice) -> None:
    """Write the choice for `kept_choice`; where it cannot be written (the folder's own
    problem, which the run's checks name) the next run measures again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"inputs": inputs, **dataclasses.asdict(choice)}, indent=1)
                        + "\n", encoding="utf-8")
    except OSError:
        pass


def training_throughput(net, batch: int, seqlen: int, steps: int = 3) -> float:
    """Tokens per second of `net`'s training step (forward, backward, AdamW) on random
    tokens: the median of `steps` timed steps after one warm-up step. An encoder-decoder's
    `seqlen` tokens are split as the seq2seq task splits them: half read, half written."""
    from harness.optim import adamw

    optimizer = adamw(net.parameters(), lr=1e-4)
    encoder_decoder = hasattr(net, "encode")
    with torch.random.fork_rng():  # the runs' own seeds decide their draws
        torch.manual_seed(0)
        inputs = net.dummy_inputs(batch, seqlen // 2 if encoder_decoder else seqlen)
    targets = inputs["tgt_ids" if encoder_decoder else "input_ids"]
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = net(**inputs, targets=targets).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch * seqlen / sorted(times[1:])[len(times[1:]) // 2]
