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
Every model also holds `lm_loss`, an LMLoss module (no weights; ZooModel's __init__ makes it),
which `forward` computes its loss with: the one place zoo.fast's "loss" route swaps.
Decoders also take `cache=` / `use_cache=` in `forward` and return the updated cache in
`Output.cache`, so that `decode` and `generate` (below) can decode one token at a time; the
recurrent ones subclass `RecurrentLM`, and most of those with a KV cache `CachedLM`, which hold
what they share; the encoder-decoders subclass `EncoderDecoderLM`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers.attention import KVCache


@dataclass
class Output:
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None
    cache: Any = None  # a KV cache or a recurrent state, for the next incremental call


# Integer config fields that may be zero (a padding id, an ablation's empty part); every other
# integer field, and every optional one that is set, is a size or a count of at least 1.
MAY_BE_ZERO = frozenset({"pad_token_id", "n_shortcuts", "d_ff", "decoder_start_id",
                         "type_vocab_size"})


def check_config(config: Any) -> None:
    """A ValueError naming the field when a config holds a number no model is built from: a
    size or count below 1 (below 0 for MAY_BE_ZERO), a dropout probability outside [0, 1), a
    norm epsilon that is not positive, a padding id outside the vocabulary. Each config's own
    `__post_init__` checks what only it knows (head sizes that must divide, ...)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kind = type(field.default) if field.default is not None else type(value)
        if value is None or isinstance(value, bool) or kind is bool:
            continue
        if kind is int and value < (least := 0 if field.name in MAY_BE_ZERO else 1):
            raise ValueError(f"{field.name} must be an integer >= {least}, not {value}")
        if kind is float and "dropout" in field.name and not 0 <= value < 1:
            raise ValueError(f"{field.name} is a probability in [0, 1), not {value}")
        if kind is float and field.name.endswith("eps") and not value > 0:
            raise ValueError(f"{field.name} must be > 0, not {value}")
    pad, vocab = getattr(config, "pad_token_id", None), getattr(config, "vocab_size", None)
    if pad is not None and vocab is not None and pad >= vocab:
        raise ValueError(f"pad_token_id {pad} is outside the vocabulary (vocab_size {vocab})")


class ZooModel(nn.Module):
    config: Any
    # The config field that sizes a learned position table, for models that have one.
    position_table: str | None = None
    # State-dict key prefixes of the output head(s): what a headless checkpoint lacks.
    head_keys: tuple[str, ...] = ("lm_head.",)

    def __init__(self) -> None:
        super().__init__()
        self.lm_loss = LMLoss()  # the loss `forward` returns given targets (no weights)

    @classmethod
    def config_for_length(cls, config: Any, seqlen: int) -> tuple[Any, str | None]:
        """A config whose model takes `seqlen` tokens, and a note when that needed a longer
        position table than the published one (benchmarks past the trained length)."""
        limit = getattr(config, "max_seq_len", None) if cls.position_table else None
        if limit is None or seqlen <= limit:
            return config, None
        rows = getattr(config, cls.position_table) + seqlen - limit
        extra = ("the extra rows are untrained" if cls.learned_positions(config)
                 else "the extra rows are the same formula's")
        note = (f"position table extended from {limit} to {seqlen} positions "
                f"(beyond the published length; {extra})")
        return dataclasses.replace(config, **{cls.position_table: rows}), note

    @classmethod
    def learned_positions(cls, config: Any) -> bool:
        """Whether the position table is trained (its extra rows would be untrained) rather
        than computed (fixed sinusoids)."""
        return True

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



class RecurrentLM(ZooModel):
    """A language model whose past is a state of fixed size carried from one call to the next
    (RWKV-4 to RWKV-7, Mamba, Mamba-2). A subclass gives `_hidden_and_state(input_ids, cache,
    keep_state, **inputs)`: the final hidden states (B, T, d) of `input_ids` (B, T) continuing
    from the state `cache` (None: the empty state; never modified in place) and, with
    `keep_state`, the state after these tokens (else None); and `logits`. The rest, the same for
    every such model, is here."""

    def _hidden_and_state(self, input_ids: torch.Tensor, cache: Any, keep_state: bool,
                          **inputs: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def hidden_states(self, input_ids: torch.Tensor, **inputs: Any) -> torch.Tensor:
        """Final hidden states (B, T, d) of `input_ids` (B, T), after the last norm: what the
        head reads (Hugging Face's base model's last_hidden_state)."""
        return self._hidden_and_state(input_ids, None, keep_state=False, **inputs)[0]

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                cache: Any = None, use_cache: bool = False, **inputs: Any) -> Output:
        """Logits (B, T, vocab): the head on `hidden_states`; the loss for `targets` (-100 =
        ignored); `cache` the previous call's `Output.cache`, never modified in place; with it
        or `use_cache`, the state after these tokens in `Output.cache`. `inputs`: the model's
        other inputs of hidden_states (Mamba's attention_mask)."""
        hidden, state = self._hidden_and_state(input_ids, cache,
                                               keep_state=use_cache or cache is not None,
                                               **inputs)
        logits = self.logits(hidden)  # (B, T, V)
        loss = self.lm_loss(logits, targets) if targets is not None else None
        return Output(logits=logits, loss=loss, cache=state)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 eos_id: int | None = None) -> torch.Tensor:
        """(B, T + new) tokens: greedy by default, sampled when temperature > 0 (see
        `generate`); each step feeds one token on top of the recurrent state."""
        def step(ids: torch.Tensor, cache: Any) -> Output:
            return self(ids, cache=cache, use_cache=True)

        return generate(step, input_ids, max_new_tokens, temperature, top_k, generator, eos_id)

    def dummy_inputs(self, batch: int, seqlen: int, device: torch.device | str = "cpu",
                     padded: bool = False) -> dict:
        """Random token ids, never padded (`padded` is ignored): benchmarks time the plain path
        that pretraining and generation use."""
        ids = torch.randint(0, self.config.vocab_size, (batch, seqlen), device=device)
        return {"input_ids": ids}

class CachedLM(ZooModel):
    """A decoder-only language model whose past is a cache of keys and values per layer, filled
    in place (LLaMA, GPT-NeoX, BLOOM). A subclass gives `hidden_states(input_ids,
    attention_mask=None, cache=None)` and, where its cache is not one KVCache per block,
    `new_cache()`. The rest, the same for every such model, is here."""

    blocks: nn.ModuleList

    def new_cache(self) -> list[Any]:
        """One empty KVCache per layer."""
        return [KVCache() for _ in self.blocks]

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cache: list[Any] | None = None,
                use_cache: bool = False) -> Output:
        """Logits (B, T, vocab) for `input_ids` (B, T): the head on `hidden_states`, which
        describes `attention_mask` and `cache`. `targets` (B, T) are the next tokens, aligned
        with the positions (-100 = ignored). With `use_cache` and no `cache`, a new one is
        started; it is returned in `Output.cache`."""
        if cache is None and use_cache:
            cache = self.new_cache()
        hidden = self.hidden_states(input_ids, attention_mask=attention_mask, cache=cache)
        logits = self.logits(hidden)  # (B, T, V)
        loss = self.lm_loss(logits, targets) if targets is not None else None
        return Output(logits=logits, loss=loss, cache=cache)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 eos_id: int | None = None) -> torch.Tensor:
        """(B, T + new) tokens: greedy by default, sampled when temperature > 0 (see
        `generate`); each step feeds one token on top of the cache."""
        def step(ids: torch.Tensor, cache: Any) -> Output:
            return self(ids, cache=cache, use_cache=True)

        return generate(step, input_ids, max_new_tokens, temperature, top_k, generator, eos_id)

    def dummy_inputs(self, batch: int, seqlen: int, device: torch.device | str = "cpu",
                     padded: bool = False) -> dict:
        """Random token ids, never padded (`padded` is ignored): a causal LM reads a
        right-padded batch correctly without a mask (no real token sees a later pad), and
        benchmarks time the plain causal path that pretraining and generation use."""
        ids = torch.randint(0, self.config.vocab_size, (batch, seqlen), device=device)
        return {"input_ids": ids}


@dataclasses.dataclass
class DecoderCache:
    """What an encoder-decoder's incremental decoding carries between calls: the encoder's
    output (and its padding mask), each decoder layer's self-attention keys and values (one
    entry more per token), each layer's cross-attention keys and values (projected from the
    memory once), and the number of target positions decoded so far."""

    memory: torch.Tensor  # (B, S, C)
    src_mask: torch.Tensor | None  # (B, S), 1 = token
    self_attn: list[KVCache] = dataclasses.field(default_factory=list)
    cross_attn: list[KVCache] = dataclasses.field(default_factory=list)
    length: int = 0


class EncoderDecoderLM(ZooModel):
    """An encoder-decoder (the Transformer, T5). A subclass gives `encode(src_ids, src_mask)`:
    the encoder's output (B, S, C), and `decode(tgt_ids, memory, src_mask, tgt_mask, cache)`:
    the decoder's final states (B, T, C), continuing `cache` (filled in place) when given. The
    rest, the same for every such model, is here. `decoder` is its ModuleList of decoder
    layers, each with a self- and a cross-attention cache."""

    decoder: nn.ModuleList

    def new_cache(self, memory: torch.Tensor, src_mask: torch.Tensor | None = None
                  ) -> DecoderCache:
        """An empty decoding cache over the encoder output `memory`."""
        return DecoderCache(memory, src_mask, [KVCache() for _ in self.decoder],
                            [KVCache() for _ in self.decoder])

    def hidden_states(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor,
                      src_mask: torch.Tensor | None = None, tgt_mask: torch.Tensor | None = None,
                      cache: DecoderCache | None = None) -> torch.Tensor:
        """The decoder's final states (B, T, C) over the target positions of `tgt_ids` (B, T)
        given `src_ids` (B, S): what the output layer reads, and what Hugging Face's
        encoder-decoder base models (BartModel, T5Model) return as `last_hidden_state`; `encode`
        gives the encoder's. Masks are 1 = token, 0 = padding: `src_mask` (B, S), `tgt_mask`
        (B, cached + T). Given a `cache` (filled in place), the source is not encoded again (the
        cache holds its memory) and `tgt_ids` continue the cached positions."""
        if cache is not None:
            return self.decode(tgt_ids, cache.memory, cache.src_mask, tgt_mask, cache)
        return self.decode(tgt_ids, self.encode(src_ids, src_mask), src_mask, tgt_mask)

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor,
                src_mask: torch.Tensor | None = None, tgt_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, cache: DecoderCache | None = None,
                use_cache: bool = False) -> Output:
        """Logits (B, T, V) over the target positions of `tgt_ids` (B, T) given `src_ids`
        (B, S): the output layer on `hidden_states` (which describes the masks and `cache`).
        `targets` (B, T) are the labels of the target positions (the caller shifts: tgt_ids
        starts with the start token, targets end with EOS; -100 = ignored). With `use_cache`
        and no `cache`, the source is encoded into a new DecoderCache, returned in
        `Output.cache`."""
        if cache is None and use_cache:
            cache = self.new_cache(self.encode(src_ids, src_mask), src_mask)
        logits = self.logits(self.hidden_states(src_ids, tgt_ids, src_mask, tgt_mask, cache))
        loss = self.lm_loss(logits, targets) if targets is not None else None
        return Output(logits=logits, loss=loss, cache=cache)

    @torch.no_grad()
    def generate(self, src_ids: torch.Tensor, max_new_tokens: int, bos_id: int | None = None,
                 src_mask: torch.Tensor | None = None, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 eos_id: int | None = None) -> torch.Tensor:
        """Target tokens (B, 1 + new) starting with `bos_id` (default: the config's
        `decoder_start_id`, for a model that has one): the source is encoded once, then the
        decoder runs a token at a time on its cache (greedy by default, sampled when
        temperature > 0; see `generate`)."""
        start = getattr(self.config, "decoder_start_id", None) if bos_id is None else bos_id
        if start is None:
            raise ValueError("give bos_id: the token the targets start from")
        first = torch.full((src_ids.size(0), 1), start, dtype=torch.long, device=src_ids.device)
        return generate(self.decoding_step(src_ids, src_mask), first, max_new_tokens,
                        temperature, top_k, generator, eos_id)

    def decoding_step(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None
                      ) -> Callable[[torch.Tensor, DecoderCache | None], Output]:
        """`step(tokens, cache) -> Output` for `decode` and `generate`: the source encoded
        once, here, and the decoder run on the target tokens given, continuing its cache (None:
        a new one)."""
        memory = self.encode(src_ids, src_mask)

        def step(tokens: torch.Tensor, cache: DecoderCache | None) -> Output:
            cache = cache if cache is not None else self.new_cache(memory, src_mask)
            states = self.decode(tokens, memory, src_mask, cache=cache)  # (B, T, C)
            return Output(logits=self.logits(states), cache=cache)

        return step

    def dummy_inputs(self, batch: int, seqlen: int, device: torch.device | str = "cpu",
                     padded: bool = False) -> dict:
        """Random source and target ids of `seqlen` tokens each; with `padded`, every other
        source row has its last quarter padded (src_mask 0), so the padding path is exercised."""
        V = self.config.vocab_size
        inputs = {"src_ids": torch.randint(0, V, (batch, seqlen), device=device),
                  "tgt_ids": torch.randint(0, V, (batch, seqlen), device=device)}
        if padded:
            src_mask = torch.ones(batch, seqlen, dtype=torch.bool, device=device)
            src_mask[1::2, seqlen - seqlen // 4:] = False
            inputs["src_mask"] = src_mask
        return inputs


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy over the positions whose target is not `ignore_index`."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(),
                           ignore_index=ignore_index)


class LMLoss(nn.Module):
    """`lm_loss` as a module of every model (ZooModel.lm_loss), with no weights: the one place
    a model computes its training loss, which zoo.fast's "loss" route computes faster."""

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return lm_loss(logits, targets, self.ignore_index)


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
