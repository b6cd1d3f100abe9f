"""Every model's flops_per_token, the numerator of each MFU the harness prints, checked against
an independent count: torch's FlopCounterMode over the model's plain forward.

The counter sees every matrix product the forward runs (mm, addmm, convolution) and none of
the work the formulas add by their own accounting: attention's scores (PyTorch's fused
attention is not counted on the CPU; the formulas take a causal query's average context,
(T + 1) / 2 keys) and the recurrences' elementwise steps (a constant per state element; the
plain paths run some of them chunked, as batched products, which is why bmm is left out).
So a model's formula less that term, stated here from the paper's shapes, must equal the
counter's sum exactly: a projection, adapter or head the formula forgets, or counts twice,
fails here."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo
from harness.models import build_variant

MATRIX_OPS = ("mm", "addmm", "convolution")


def counted_matrix_flops(model, seqlen: int) -> dict[str, int]:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**model.dummy_inputs(1, seqlen))
    return {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}


def term_not_counted(name: str, model, seqlen: int) -> float:
    """Per token: the formula's attention scores or recurrence steps, which the counter does
    not see, plus (RWKV-6) the matrix product the plain path runs batched."""
    c, T = model.config, seqlen
    d, layers = c.d_model, c.n_layer
    module = importlib.import_module(type(model).__module__)
    if name in ("gpt", "gpt-neox", "gpt-j", "gpt-neo", "bloom", "opt", "llama", "pangu-pi",
                "ctrl"):
        # causal QK^T and AV: (T + 1) / 2 keys on average (GPT-Neo's local layers too: the tiny
        # variant's window, 256, is past these lengths; tests/zoo/test_gpt_neo.py counts it)
        return 4 * layers * d * (T + 1) / 2
    if name in ("bert", "roberta", "mosaic-bert", "albert"):  # bidirectional: T keys
        return 4 * layers * d * T
    if name == "transformer":  # decoder causal self, cross over T source keys, encoder self
        return 4 * layers * d * ((T + 1) / 2 + T) + 4 * layers * d * T
    if name == "bart":  # as the Transformer's, with E encoder and D decoder layers
        E, D = c.n_layer, c.decoder_layers
        return 4 * D * d * ((T + 1) / 2 + T) + 4 * E * d * T
    if name == "t5":  # as the Transformer's, over heads of d_kv: n_head d_kv wide
        width, E, D = c.n_head * c.d_kv, c.n_layer, c.decoder_layers
        return 4 * D * width * ((T + 1) / 2 + T) + 4 * E * width * T
    if name == "rwkv":
        return module.WKV_FLOPS_PER_CHANNEL * d * layers
    if name in ("rwkv5", "rwkv6", "rwkv7"):  # per state element: H heads of N x N = d N
        head = d // c.n_head if hasattr(c, "n_head") else c.head_size
        recurrence = module.WKV_FLOPS_PER_STATE * d * head * layers
        if name == "rwkv6":  # time_maa_w2's product over the five mixes runs as one bmm
            recurrence += 2 * len(module.MIXES) * c.mix_width * d * layers
        return recurrence
    if name in ("mamba", "mamba2"):
        return module.SCAN_FLOPS_PER_STATE * c.d_inner * c.d_state * layers
    raise AssertionError(f"no accounting for {name}: add it to this test")


@pytest.mark.parametrize("name", sorted(zoo.REGISTRY))
@pytest.mark.parametrize("seqlen", [32, 64])
def test_flops_per_token_is_what_the_forward_multiplies(name, seqlen):
    torch.manual_seed(0)
    model = build_variant(name, "tiny", fast=False).eval()
    counts = counted_matrix_flops(model, seqlen)
    matrices = sum(n for op, n in counts.items() if op in MATRIX_OPS) / seqlen
    assert matrices > 0, counts
    expected = model.flops_per_token(seqlen) - term_not_counted(name, model, seqlen)
    assert matrices == pytest.approx(expected, rel=1e-9), counts


def test_a_decoded_token_attends_to_the_keys_before_it_or_the_window():
    """Generate mode's MFU: the token at position p sees p + 1 keys (itself included), at most
    the window's; a recurrent model's token costs the same at every position."""
    from harness.bench.workload import accounting, decoded_token_flops

    model = build_variant("llama", "tiny", window=16)
    c = model.config
    weights = model.flops_per_token(1) - 4 * c.n_layer * c.d_model  # a lone token: one key
    for position, keys in [(0, 1), (7, 8), (15, 16), (16, 16), (500, 16)]:
        expected = weights + 4 * c.n_layer * c.d_model * keys
        assert decoded_token_flops(model, position) == pytest.approx(expected, rel=1e-12)
    assert accounting(model, "generate", 3, 500) == (3, pytest.approx(3 * expected))
    rwkv = build_variant("rwkv", "tiny")
    assert decoded_token_flops(rwkv, 4096) == rwkv.flops_per_token(1)
