"""What every zoo model offers, so that the harness never special-cases a model.

A model subclasses `ZooModel` and provides:
  - `config`: its frozen config dataclass (defaults = the paper's base model);
  - `forward(...) -> Output`: logits, plus the loss when `targets` are given;
  - `hidden_states(...)`: the final hidden states (B, T, d_model) that the output head reads,
    from `forward`'s inputs less `targets` and `use_cache` (the KV-cache decoders take
    `cache=` and fill it in place; the recurrent models, whose new state `forward` returns,
    take none). They are what Hugging Face's base model (`BertModel`, `GPT2Model`,
    `LlamaModel`, `MambaModel`, ...) returns as `last_hidden_state`: after the final norm where
    the model has one (GPT-2's ln_f, LLaMA's norm, Mamba's norm_f, RWKV's ln_out), the last
    block's output otherwise (BERT and RoBERTa: before the masked-LM head's transform). The
    encoder-decoder Transformer returns its decoder's states given the source and the target
    tokens, as Hugging Face's BART and T5 base models do (`encode` gives the encoder's);
  - `logits(hidden)`: the output head on those states, (B, T, V); `forward` is
    `logits(hidden_states(...))` plus the loss and the cache. A checkpoint without its head
    (a Hugging Face base model) is useful through `hidden_states` alone, e.g. mean-pooled
    sentence embeddings from an encoder;
  - `head_keys`: the state-dict key prefixes of the output head(s), the only weights that
    loading a headless checkpoint may leave newly initialised (zoo.convert);
  - `dummy_inputs(batch, seqlen, device, padded=False)`: keyword arguments for `forward`
    (random ids; with `padded`, models that take a padding mask get uneven padding);
  - `flops_per_token(seqlen)`: analytic forward FLOPs per token (multiply-add = 2 FLOPs).
Decoders also take `cache=` / `use_cache=` in `forward` and return the updated cache in
`Output.cache`, so that `decode` and `generate` (below) can decode one token at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Output:
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None
    cache: Any = None  # a KV cache or a recurrent state, for the next incremental call


class ZooModel(nn.Module):
    config: Any
    # The config field that sizes a learned position table, for models that have one.
    position_table: str | None = None
    # State-dict key prefixes of the output head(s): what a headless checkpoint lacks.
    head_keys: tuple[str, ...] = ("lm_head.",)

    @classmethod
    def config_for_length(cls, config: Any, seqlen: int) -> tuple[Any, str | None]:
        """A config whose model takes `seqlen` tokens, and a note when that needed a longer
        position table than the published one (benchmarks past the trained length)."""
        limit = getattr(config, "max_seq_len", None) if cls.position_table else None
        if limit is None or seqlen <= limit:
            return config, None
        rows = getattr(config, cls.position_table) + seqlen - limit
        note = (f"position table extended from {limit} to {seqlen} positions "
                "(beyond the published length; the extra rows are untrained)")
        return dataclasses.replace(config, **{cls.position_table: rows}), note

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameters counted once (tied weights are one tensor). With `exclude_embeddings`,
        the token and position embedding tables are left out (Kaplan et al.'s N)."""
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            for module in self.modules():
                if isinstance(module, nn.Embedding):
                    params.pop(id(module.weight), None)
        return sum(p.numel() for p in params.values())

    def hidden_states(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output head: logits (..., V) from final hidden states (..., d_model)."""
        return self.lm_head(hidden)

    def dummy_inputs(self, batch: int, seqlen: int, device: torch.device | str = "cpu",
                     padded: bool = False) -> dict:
        raise NotImplementedError

    def flops_per_token(self, seqlen: int) -> float:
        raise NotImplementedError


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy over the positions whose target is not `ignore_index`."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(),
                           ignore_index=ignore_index)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V): greedy when temperature == 0,
    otherwise sampled from softmax(logits / temperature), optionally restricted to the top k."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def decode(step: Callable[[torch.Tensor, Any], Output], input_ids: torch.Tensor,
           max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
           generator: torch.Generator | None = None,
           eos_id: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) after `input_ids` (B, T), one step at a time, at most
    `max_new_tokens` of them, with `step(tokens, cache) -> Output`, which the model implements
    with its KV cache or recurrent state (cache None = start). Each step's ids come out before
    the model computes the next one, so a caller can show text as it is decoded. Greedy by
    default; `temperature > 0` samples. A sequence that has produced `eos_id` goes on with
    `eos_id`; decoding stops once every sequence has."""
    out = step(input_ids, None)
    finished = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)
    for i in range(max_new_tokens):
        next_ids = sample_next(out.logits[:, -1], temperature, top_k, generator)
        if eos_id is not None:
            next_ids = next_ids.masked_fill(finished, eos_id)
            finished |= next_ids == eos_id
        yield next_ids
        if (eos_id is not None and bool(finished.all())) or i == max_new_tokens - 1:
            return
        out = step(next_ids[:, None], out.cache)


def generate(step: Callable[[torch.Tensor, Any], Output], input_ids: torch.Tensor,
             max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             generator: torch.Generator | None = None, eos_id: int | None = None) -> torch.Tensor:
    """Decode `max_new_tokens` after `input_ids` (B, T) with `step(tokens, cache) -> Output`
    (see `decode`, which yields them one step at a time). Returns (B, T + new). Greedy by
    default; `temperature > 0` samples. Stops early once every sequence has produced
    `eos_id`."""
    new = [ids[:, None] for ids in decode(step, input_ids, max_new_tokens, temperature, top_k,
                                          generator, eos_id)]
    return torch.cat([input_ids, *new], dim=1)
