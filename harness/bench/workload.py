"""What a benchmark cell measures: its mode, its inputs and one timed run.

Modes:
  forward   one forward pass over (batch, seqlen) tokens, without gradients (prefill / encode);
  train     forward + backward + an AdamW step, with a next-token (or masked-token) loss;
  generate  incremental decoding after a prompt of `seqlen` tokens: each timed run decodes one
            token per sequence on the KV cache or recurrent state (greedy).

The inputs of a cell are drawn here, once, from a fixed seed (`draw_inputs`), and handed to
whichever implementation runs the cell: the zoo's model and every peer see the same token ids
and targets because they are given the same tensors, not because they draw random numbers in
the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

MODES = ("forward", "train", "generate")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEED = 0  # every cell builds its model from this seed: a peer converts these same weights
INPUT_SEED = 1  # and draws its inputs from this one, whatever building the model drew


class BenchError(ValueError):
    """A cell that cannot be run as asked (a mode the model lacks, an unknown peer, ...)."""


@dataclass(frozen=True)
class Cell:
    """One measurement: which model (and its config fields, resolved from the catalog by the
    sweep), which implementation, mode, sizes, dtype and device, how many runs, and whether
    the zoo's speed routes are used."""

    model: str
    variant: str
    impl: str
    mode: str
    seqlen: int
    batch: int
    dtype: str
    device: str
    threads: int | None
    warmup: int
    repeat: int
    new_tokens: int
    max_memory: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # the variant's config fields
    fast: bool = True  # the zoo's speed routes (zoo.fast); False: the plain model
    routes: list[str] | None = None  # where fast, only these routes (None: every one)

    @property
    def length(self) -> int:
        """The positions the model must take: decoding goes past the prompt by the warm-up
        and timed tokens."""
        extra = self.warmup + self.new_tokens if self.mode == "generate" else 0
        return self.seqlen + extra


@dataclass(frozen=True)
class Inputs:
    """What every implementation of a cell is given: keyword arguments of the zoo model's
    forward (token ids, and whatever else the model takes) and, for training, the targets."""

    forward: dict[str, torch.Tensor]
    targets: torch.Tensor | None = None

    @property
    def input_ids(self) -> torch.Tensor:
        return self.forward["input_ids"]


def draw_inputs(model: Any, mode: str, batch: int, seqlen: int, device: torch.device,
                seed: int = INPUT_SEED) -> Inputs:
    """The inputs of a cell: `model.dummy_inputs` and, in train mode, random targets over the
    vocabulary, drawn from `seed` (so they do not depend on what was drawn before)."""
    torch.manual_seed(seed)
    forward = model.dummy_inputs(batch, seqlen, device)
    targets = None
    if mode == "train":
        targets = torch.randint(0, model.config.vocab_size, (batch, seqlen), device=device)
    return Inputs(forward, targets)


@dataclass
class Workload:
    """What a mode times: `run()` once per timed repetition, processing `tokens` tokens.
    `flops` is the analytic cost of one run (for MFU); `min_warmup` the untimed runs it needs
    at least (torch.compile compiles during them)."""

    run: Callable[[], Any]
    tokens: int
    flops: float | None
    notes: tuple[str, ...] = ()
    min_warmup: int = 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def accounting(model: Any, mode: str, batch: int, seqlen: int) -> tuple[int, float | None]:
    """(tokens, FLOPs) of one timed run of `mode`, for the zoo model and its peers alike.
    Training costs 3x the forward (backward about twice the forward, Kaplan et al. 2020).
    A decoded token after `seqlen` positions costs what a forward over seqlen + 1 tokens adds
    to one over seqlen (see the models' flops_per_token): every weight once and attention over
    seqlen + 1 keys, or the window's, for a recurrent model the same as any token. (The timed
    tokens come a few positions later, after the warm-up's: a difference of a few keys.) The
    encoder-decoder's decoding cost per token is not modelled: its FLOPs are None (no MFU)."""
    if mode == "generate":
        if not getattr(model, "causal_lm", False):
            return batch, None
        return batch, decoded_token_flops(model, seqlen) * batch
    forward = model.flops_per_token(seqlen) * batch * seqlen
    return batch * seqlen, 3 * forward if mode == "train" else forward


def decoded_token_flops(model: Any, position: int) -> float:
    """The forward FLOPs of the token at `position` (0-based) of a causal model, decoded on a
    cache of the `position` tokens before it: the total over position + 1 tokens less the total
    over `position`. Where that is the same per token (a recurrent model) it is returned as
    flops_per_token, free of the subtraction's rounding."""
    after = model.flops_per_token(position + 1)
    if position == 0 or after == model.flops_per_token(position):
        return after
    return after * (position + 1) - model.flops_per_token(position) * position


def decoding_models() -> str:
    """The zoo models that can run generate mode, for error messages: "gpt, rwkv, ..."."""
    import zoo

    return ", ".join(m for m in zoo.REGISTRY if hasattr(zoo.load_class(m), "generate"))


def check_mode(name: str, model: Any, mode: str) -> None:
    """BenchError for a mode that does not exist or that the model cannot run."""
    if mode not in MODES:
        raise BenchError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "generate" and not hasattr(model, "generate"):
        raise BenchError(f"{name} is an encoder: generate mode needs a model that decodes "
                         f"({decoding_models()})")
