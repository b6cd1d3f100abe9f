"""Every registered zoo model offers the same interface (zoo/model.py), built from the catalog."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import zoo
from harness.models import build_variant
from zoo.model import Output

MODELS = sorted(zoo.REGISTRY)
SMALL_RANGE = (26.5e6, 29.0e6)  # every `small` variant lands here, so they match within 10%


@pytest.fixture(params=MODELS)
def tiny(request):
    torch.manual_seed(0)
    return build_variant(request.param, "tiny").eval()


def test_config_is_a_frozen_dataclass(tiny):
    assert dataclasses.is_dataclass(tiny.config)
    field = dataclasses.fields(tiny.config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(tiny.config, field, getattr(tiny.config, field))
    assert type(tiny).config_class is type(tiny.config)


@pytest.mark.parametrize("name", MODELS)
def test_config_refuses_sizes_no_model_is_built_from(name):
    """Every config checks its numbers when made (zoo.model.check_config), naming the field."""
    config_class = zoo.load_class(name).config_class
    for field, value, says in [("n_layer", 0, "n_layer must be an integer >= 1, not 0"),
                               ("d_model", -8, "d_model must be an integer >= 1, not -8"),
                               ("vocab_size", 0, "vocab_size must be")]:
        with pytest.raises(ValueError, match=says):
            config_class(**{field: value})
    fields = {f.name for f in dataclasses.fields(config_class)}
    if "dropout" in fields:
        config_class(dropout=0)  # an integer zero is a probability too
        with pytest.raises(ValueError, match=r"dropout is a probability in \[0, 1\), not 1"):
            config_class(dropout=1.0)
    eps = next(f for f in sorted(fields) if f.endswith("eps"))
    with pytest.raises(ValueError, match=f"{eps} must be > 0"):
        config_class(**{eps: 0.0})


def test_forward_on_dummy_inputs(tiny):
    inputs = tiny.dummy_inputs(batch=2, seqlen=11, device="cpu")
    out = tiny(**inputs)
    assert isinstance(out, Output) and out.loss is None
    assert out.logits.shape[:2] == (2, 11) and torch.isfinite(out.logits).all()


def test_padded_dummy_inputs(tiny):
    inputs = tiny.dummy_inputs(batch=3, seqlen=9, device="cpu", padded=True)
    assert torch.isfinite(tiny(**inputs).logits).all()


@pytest.mark.parametrize("padded", [False, True])
def test_forward_is_the_head_on_the_hidden_states(tiny, padded):
    """`hidden_states` is the body and `logits` the head: forward's logits are the one on the
    other, padded batches included (models whose padding mask is not among their dummy inputs
    get a left-padded row)."""
    inputs = tiny.dummy_inputs(batch=3, seqlen=9, device="cpu", padded=padded)
    inputs.pop("next_sentence_label", None)  # a label for the loss, not an input
    takes_mask = "attention_mask" in inspect.signature(tiny.hidden_states).parameters
    if padded and takes_mask and "attention_mask" not in inputs:
        inputs["attention_mask"] = torch.ones(3, 9, dtype=torch.long)
        inputs["attention_mask"][1, :3] = 0
    with torch.no_grad():
        hidden = tiny.hidden_states(**inputs)
        logits = tiny(**inputs).logits
        head = tiny.logits(hidden)
    assert hidden.shape == (3, 9, tiny.config.d_model)
    real = inputs.get("attention_mask", torch.ones(3, 9)).bool()  # padded positions are free
    torch.testing.assert_close(logits[real], head[real], atol=1e-6, rtol=0)

def test_config_for_length_lengthens_a_learned_position_table(tiny):
    cls = type(tiny)
    limit = getattr(tiny.config, "max_seq_len", None)
    longer = (limit or 40) + 7
    config, note = cls.config_for_length(tiny.config, longer)
    assert (note is not None) == (cls.position_table is not None and limit is not None)
    model = cls(config).eval()
    out = model(**model.dummy_inputs(batch=1, seqlen=longer, device="cpu"))
    assert out.logits.shape[1] == longer and torch.isfinite(out.logits).all()
    assert cls.config_for_length(tiny.config, 8) == (tiny.config, None)


def test_targets_give_a_loss_that_trains(tiny):
    inputs = tiny.dummy_inputs(batch=2, seqlen=11, device="cpu")
    logits = tiny(**inputs).logits
    targets = torch.randint(0, logits.size(-1), logits.shape[:2])
    tiny.train()
    out = tiny(**inputs, targets=targets)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in tiny.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_flops_per_token_counts_at_least_the_matmuls(tiny):
    flops = tiny.flops_per_token(64)
    assert flops >= 2 * tiny.num_params(exclude_embeddings=True) * 0.9
    assert flops <= 2 * tiny.num_params() * 1.5 + 4 * 64 * 64 * 64 * 8


@pytest.mark.parametrize("name", MODELS)
def test_small_variants_are_parameter_matched(name):
    counts = {n: build_variant(n, "small", device="meta").num_params() for n in MODELS}
    assert SMALL_RANGE[0] <= counts[name] <= SMALL_RANGE[1], counts[name]
    assert max(counts.values()) / min(counts.values()) <= 1.10, counts


CAUSAL = [n for n in MODELS if getattr(zoo.load_class(n), "causal_lm", False)]


@pytest.mark.parametrize("name", CAUSAL)
def test_incremental_decoding_equals_the_full_forward(name):
    torch.manual_seed(0)
    model = build_variant(name, "tiny").eval()
    ids = model.dummy_inputs(batch=2, seqlen=13, device="cpu")["input_ids"]
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :5], use_cache=True)
        steps = [out.logits]
        for t in range(5, 13):
            out = model(ids[:, t : t + 1], cache=out.cache)
            steps.append(out.logits)
        # A chunk of several tokens on top of a cache works too.
        chunked = model(ids[:, 5:], cache=model(ids[:, :5], use_cache=True).cache).logits
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked, full[:, 5:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", CAUSAL)
def test_generate_greedy_and_sampled(name):
    torch.manual_seed(0)
    model = build_variant(name, "tiny").eval()
    prompt = model.dummy_inputs(batch=2, seqlen=4, device="cpu")["input_ids"]
    greedy = model.generate(prompt, max_new_tokens=6)
    assert greedy.shape == (2, 10) and torch.equal(greedy[:, :4], prompt)
    assert torch.equal(greedy, model.generate(prompt, max_new_tokens=6))
    # Greedy decoding picks the argmax of the full forward at every step.
    full = model(greedy[:, :-1]).logits
    assert torch.equal(full[:, 3:].argmax(-1), greedy[:, 4:])
    sample = lambda seed: model.generate(prompt, 6, temperature=1.0, top_k=5,  # noqa: E731
                                         generator=torch.Generator().manual_seed(seed))
    assert torch.equal(sample(1), sample(1))
