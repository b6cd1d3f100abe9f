"""RWKV-4 (zoo.rwkv): published sizes and FLOPs, the official initialisation, the WKV operator
(chunked == recurrence == the paper's sum, stable on long inputs), recurrent state across calls,
checkpoint conversion, and fp32 parity with Hugging Face `RwkvForCausalLM` and the official
`rwkv` pip package (ChatRWKV), all from tiny random weights."""

from __future__ import annotations

import functools
import importlib
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

import zoo
import zoo.fast
import zoo.rwkv as rwkv
from harness.models import build_variant
from zoo.convert import CheckpointError
from zoo.fast.kernels import ckernel, wkv_cpu
from zoo.rwkv import (
    EMPTY_PP,
    RWKV,
    RWKVConfig,
    RWKVState,
    wkv_chunked,
    wkv_recurrent,
)

TINY = dict(vocab_size=300, n_layer=3, d_model=32)

# Paper Table 2. Exact counts = 2VD + 13D²L + D(11L + 4), V = 50277: embedding + untied head +
# all matrices and vectors, which is exactly what the zoo model holds (no adjustment needed).
PUBLISHED = {  # variant: (n_layer, d_model, exact count, FLOP/token in the paper's table)
    "169m": (12, 768, 169_342_464, 2.613e8),
    "430m": (24, 1024, 430_397_440, 7.573e8),
    "1b5": (24, 2048, 1_515_106_304, 2.823e9),
    "3b": (32, 2560, 2_984_627_200, 5.710e9),
    "7b": (32, 4096, 7_392_649_216, 1.437e10),
    "14b": (40, 5120, 14_148_597_760, 2.778e10),
}


def randomize_(model: torch.nn.Module, seed: int = 0, decay=(-5.0, 3.0)) -> torch.nn.Module:
    """Random weights everywhere (the official init zeroes many matrices), with time_decay
    uniform in `decay` (the init spans [-5, 3]; trained models reach further). Works on the zoo
    model and on HF's, whose parameter names contain the same words."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("time_decay"):
                p.copy_(torch.empty(p.shape).uniform_(*decay, generator=g))
            elif name.endswith("time_first"):
                p.copy_(math.log(0.3) + 0.5 * noise)
            elif "time_mix" in name:
                p.copy_(torch.rand(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(noise / math.sqrt(p.shape[1]))
            else:  # LayerNorm weight / bias
                p.copy_((0.0 if name.endswith("bias") else 1.0) + 0.2 * noise)
    return model


def tiny_model(seed: int = 0, **overrides) -> RWKV:
    torch.manual_seed(seed)
    return randomize_(RWKV(RWKVConfig(**{**TINY, **overrides})), seed).eval()


def empty_wkv(B: int, D: int, dtype=torch.float32):
    zeros = torch.zeros(B, D, dtype=dtype)
    return zeros, zeros.clone(), torch.full((B, D), EMPTY_PP, dtype=dtype)


def random_wkv_inputs(B, T, D, seed=0, decay=(-8.0, 6.0), k_scale=5.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = -torch.exp(torch.empty(D).uniform_(*decay, generator=g))
    u = math.log(0.3) + torch.randn(D, generator=g)
    k = k_scale * torch.randn(B, T, D, generator=g)
    v = torch.randn(B, T, D, generator=g)
    return [x.to(dtype) for x in (w, u, k, v)]


# ---------------------------------------------------------------------------------------------
# Sizes and FLOPs


@pytest.mark.parametrize("variant", PUBLISHED)
def test_published_parameter_counts_are_exact(variant):
    n_layer, d, count, _ = PUBLISHED[variant]
    model = build_variant("rwkv", variant, device="meta")
    c = model.config
    assert (c.n_layer, c.d_model, c.vocab_size) == (n_layer, d, 50277)
    assert model.num_params() == count
    V, D, L = c.vocab_size, d, n_layer
    assert count == 2 * V * D + 13 * D * D * L + D * (11 * L + 4)  # the paper's formula


def test_small_variant_count():
    model = build_variant("rwkv", "small", device="meta")
    assert model.config.vocab_size == 8192
    assert model.num_params() == 28_871_680  # = 8,388,608 + 20,447,232 + 35,840


@pytest.mark.parametrize("variant", PUBLISHED)
def test_flops_per_token_is_the_papers_table_plus_wkv(variant):
    n_layer, d, _, table = PUBLISHED[variant]
    model = build_variant("rwkv", variant, device="meta")
    matmul = 2 * (50277 * d + 13 * d * d * n_layer)  # the table's values (embedding not counted)
    assert float(f"{matmul:.3e}") == table
    assert model.flops_per_token(1024) == matmul + rwkv.WKV_FLOPS_PER_CHANNEL * d * n_layer
    assert model.flops_per_token(1) == model.flops_per_token(8192)  # constant per token


# ---------------------------------------------------------------------------------------------
# Official initialisation (RWKV-LM v4neo)


def test_initialisation_formulas():
    V, L, D = 300, 4, 48
    torch.manual_seed(0)
    model = RWKV(RWKVConfig(vocab_size=V, n_layer=L, d_model=D))
    for layer, block in enumerate(model.blocks):
        r01, r10 = layer / (L - 1), 1 - layer / L
        att, ffn = block.att, block.ffn
        for i in (0, 1, 2, 17, D - 1):
            s = i / D
            assert att.time_mix_k[i].item() == pytest.approx(s**r10, abs=1e-6)
            assert att.time_mix_v[i].item() == pytest.approx(s**r10 + 0.3 * r01, abs=1e-6)
            assert att.time_mix_r[i].item() == pytest.approx(s ** (0.5 * r10), abs=1e-6)
            assert ffn.time_mix_k[i].item() == pytest.approx(s**r10, abs=1e-6)
            assert ffn.time_mix_r[i].item() == pytest.approx(s**r10, abs=1e-6)
            decay = -5 + 8 * (i / (D - 1)) ** (0.7 + 1.3 * r01)
            assert att.time_decay[i].item() == pytest.approx(decay, abs=1e-5)
        # time_first zigzag: log(0.3) + 0.5 * ((i + 1) % 3 - 1) = log 0.3 + (0, +0.5, -0.5, ...)
        zig = att.time_first - math.log(0.3)
        torch.testing.assert_close(zig[:6], torch.tensor([0.0, 0.5, -0.5, 0.0, 0.5, -0.5]))
        for lin in (att.key, att.receptance, att.output, ffn.receptance, ffn.value):
            assert torch.count_nonzero(lin.weight) == 0
        value, key = att.value.weight, ffn.key.weight
        torch.testing.assert_close(value @ value.T, torch.eye(D), atol=1e-5, rtol=0)
        # (4D, D): orthonormal columns scaled by sqrt(4D / D) = 2
        torch.testing.assert_close(key.T @ key, 4 * torch.eye(D), atol=1e-4, rtol=0)
        for ln in (block.ln1, block.ln2):
            assert torch.equal(ln.weight, torch.ones(D)) and torch.equal(ln.bias, torch.zeros(D))
    assert model.blocks[0].ln0 is not None and all(b.ln0 is None for b in model.blocks[1:])
    head = model.head.weight  # (V, D), gain 0.5 * sqrt(V / D)
    torch.testing.assert_close(head.T @ head, 0.25 * V / D * torch.eye(D), atol=1e-4, rtol=0)
    emb = model.emb.weight
    assert emb.abs().max() <= 1e-4 and emb.abs().max() > 0  # small-init embedding U(±1e-4)


def test_time_curves_match_hf_init():
    """HF's _init_weights uses the same time_mix / time_decay curves (its time_first is all
    ones, a known deviation from the official zigzag, so it is not compared)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.RwkvConfig(vocab_size=300, hidden_size=48, num_hidden_layers=4)
    torch.manual_seed(0)
    hf = transformers.RwkvForCausalLM(cfg)
    model = RWKV(RWKVConfig(vocab_size=300, n_layer=4, d_model=48))
    for ours, theirs in zip(model.blocks, hf.rwkv.blocks, strict=True):
        a, b = ours.att, theirs.attention
        torch.testing.assert_close(a.time_decay, b.time_decay)
        for x, y in ((a.time_mix_k, b.time_mix_key), (a.time_mix_v, b.time_mix_value),
                     (a.time_mix_r, b.time_mix_receptance),
                     (ours.ffn.time_mix_k, theirs.feed_forward.time_mix_key),
                     (ours.ffn.time_mix_r, theirs.feed_forward.time_mix_receptance)):
            torch.testing.assert_close(x, y.flatten())


# ---------------------------------------------------------------------------------------------
# WKV operator


def wkv_by_definition(w, u, k, v):
    """The paper's sum, literally (no stabilisation): with w = -exp(time_decay),
    wkv_t = (Σ_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (same weights, without v)."""
    out = []
    for t in range(k.size(1)):
        i = torch.arange(t, dtype=k.dtype)
        past = torch.exp((t - 1 - i)[:, None] * w + k[:, :t])  # (B, t, D)
        now = torch.exp(u + k[:, t])
        out.append(((past * v[:, :t]).sum(1) + now * v[:, t]) / (past.sum(1) + now))
    return torch.stack(out, dim=1)


def test_recurrence_is_the_papers_sum():
    w, u, k, v = random_wkv_inputs(2, 19, 8, k_scale=1.0, decay=(-4, 1), dtype=torch.float64)
    y, _ = wkv_recurrent(w, u, k, v, empty_wkv(2, 8, torch.float64))
    torch.testing.assert_close(y, wkv_by_definition(w, u, k, v), atol=1e-12, rtol=0)


@pytest.mark.parametrize("chunk_len", [1, 3, 8, 16, 32, 100])
def test_chunked_equals_recurrence_with_a_carried_state(chunk_len):
    B, D = 3, 24
    w, u, k, v = random_wkv_inputs(B, 83, D, seed=chunk_len, dtype=torch.float64)
    _, state = wkv_recurrent(w, u, k[:, :29], v[:, :29], empty_wkv(B, D, torch.float64))
    ref, ref_state = wkv_recurrent(w, u, k[:, 29:], v[:, 29:], state)
    out, out_state = wkv_chunked(w, u, k[:, 29:], v[:, 29:], state, chunk_len)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    # Same state: pp is the exact max log-weight in both, so aa, bb, pp agree one by one.
    for x, y in zip(out_state, ref_state, strict=True):
        torch.testing.assert_close(x, y, atol=1e-9, rtol=1e-12)
    # And in fp32.
    out32, _ = wkv_chunked(*(x.float() for x in (w, u, k[:, 29:], v[:, 29:])),
                           tuple(s.float() for s in state), chunk_len)
    torch.testing.assert_close(out32.double(), ref, atol=1e-5, rtol=0)


def test_chunked_gradients_equal_the_recurrence():
    w, u, k, v = random_wkv_inputs(2, 21, 6, dtype=torch.float64)
    grads = []
    for fn in (wkv_recurrent, lambda *a: wkv_chunked(*a, chunk_len=4)):
        inputs = [x.clone().requires_grad_() for x in (w, u, k, v)]
        y, (aa, bb, pp) = fn(*inputs, empty_wkv(2, 6, torch.float64))
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        loss = (y * weights).sum() + (aa / bb).sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_long_sequences_are_stable_and_equal_the_recurrence():
    """T = 4096 with decays from e^-8 (long memory) to e^6 (forget at once) and keys up to
    ±100, where the unstabilised e^k overflows fp32."""
    B, T, D = 2, 4096, 32
    w, u, k, v = random_wkv_inputs(B, T, D, seed=1, decay=(-8.0, 6.0), k_scale=8.0)
    k[:, ::97] = 100.0 * torch.sign(k[:, ::97])
    assert torch.isinf(torch.exp(k)).any()
    out, (aa, bb, pp) = wkv_chunked(w, u, k, v, empty_wkv(B, D), chunk_len=32)
    assert torch.isfinite(out).all() and all(torch.isfinite(s).all() for s in (aa, bb, pp))
    assert out.abs().max() <= v.abs().max() + 1e-5  # a weighted average of the values
    ref, _ = wkv_recurrent(*(x.double() for x in (w, u, k, v)), empty_wkv(B, D, torch.float64))
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# The model: chunk length, state across calls, long inputs, dtypes


def test_chunk_length_does_not_change_the_logits():
    ids = torch.randint(0, TINY["vocab_size"], (3, 45))
    with torch.no_grad():
        logits = [tiny_model(wkv_chunk_len=c)(ids).logits for c in (1, 5, 16, None)]
    for other in logits[1:]:
        torch.testing.assert_close(other, logits[0], atol=1e-5, rtol=0)


def test_a_prompt_with_a_state_then_more_tokens_equals_the_full_forward():
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (3, 45))
    with torch.no_grad():
        full = model(ids).logits
        prompt = model(ids[:, :17], use_cache=True)
        assert isinstance(prompt.cache, RWKVState) and prompt.cache.aa.shape == (3, 3, 32)
        step = model(ids[:, 17:18], cache=prompt.cache)
        rest = model(ids[:, 18:], cache=step.cache)
        again = model(ids[:, 17:], cache=prompt.cache)  # the state is not modified in place
    torch.testing.assert_close(prompt.logits, full[:, :17], atol=1e-5, rtol=0)
    after = torch.cat([step.logits, rest.logits], 1)
    torch.testing.assert_close(after, full[:, 17:], atol=1e-5, rtol=0)
    torch.testing.assert_close(again.logits, full[:, 17:], atol=1e-5, rtol=0)
    assert model(ids[:, :5]).cache is None


def test_model_long_input_chunked_and_compiled_equal_the_recurrence(monkeypatch):
    model = tiny_model(seed=2, vocab_size=128, n_layer=2)  # plain: the PyTorch WKV paths
    randomize_(model, seed=2, decay=(-8.0, 6.0))
    ids = torch.randint(0, 128, (2, 2050))
    with torch.no_grad():
        chunked = model(ids).logits
        monkeypatch.setattr(rwkv, "wkv_chunked",
                            lambda w, u, k, v, state, _: wkv_recurrent(w, u, k, v, state))
        recurrent = model(ids).logits
        if wkv_cpu.available():
            zoo.fast.apply(model, ["wkv"])  # zoo.fast.kernels.wkv_cpu's C loop
            compiled = model(ids).logits
            torch.testing.assert_close(compiled, recurrent, atol=1e-4, rtol=0)
    assert torch.isfinite(chunked).all()
    torch.testing.assert_close(chunked, recurrent, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# The compiled WKV kernel (zoo.fast.kernels.wkv_cpu), CPU inference

needs_kernel = pytest.mark.skipif(
    not wkv_cpu.available() and shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="no C compiler: the model uses its PyTorch WKV paths")


@needs_kernel
def test_the_kernel_builds_and_the_wkv_route_runs_it_for_inference_only(monkeypatch):
    assert wkv_cpu.available()
    model = tiny_model()
    assert zoo.fast.apply(model, ["wkv"]) == ("wkv",)
    calls = []
    real = wkv_cpu.wkv
    monkeypatch.setattr(wkv_cpu, "wkv", lambda *args: calls.append(1) or real(*args))
    ids = torch.randint(0, TINY["vocab_size"], (2, 7))
    with torch.no_grad():
        model(ids)
    assert len(calls) == TINY["n_layer"]  # once per layer
    model(ids).logits.sum().backward()  # training: wkv_cpu.wkv_with_grad (test_wkv_backward.py)
    assert len(calls) == TINY["n_layer"]
    assert model.blocks[0].att.time_decay.grad is not None


@needs_kernel
@pytest.mark.parametrize("T", [1, 2, 37, 1000])
def test_the_kernel_equals_the_recurrence_with_a_carried_state(T):
    """Decays from e^-8 to e^6 and keys of scale 5 (e^k overflows fp32 without the max
    shift); compared with the recurrence in float64, state included."""
    B, D = 3, 40
    w, u, k, v = random_wkv_inputs(B, T + 11, D, seed=T)
    k[:, ::7] = 100.0 * torch.sign(k[:, ::7])
    f64 = lambda *xs: [x.double() for x in xs]  # noqa: E731
    _, state = wkv_recurrent(*f64(w, u, k[:, :11], v[:, :11]), empty_wkv(B, D, torch.float64))
    ref, ref_state = wkv_recurrent(*f64(w, u, k[:, 11:], v[:, 11:]), state)
    state32 = tuple(s.float() for s in state)
    out, out_state = wkv_cpu.wkv(w, u, k[:, 11:].contiguous(), v[:, 11:], state32)
    assert out.dtype == torch.float32 and out.shape == (B, T, D)
    # As accurate as the same recurrence run in float32 by PyTorch (rounding accumulates
    # over the tokens in the long-memory channels: ~2e-4 after 1000 tokens, ~1e-6 after 2).
    fp32, fp32_state = wkv_recurrent(w, u, k[:, 11:], v[:, 11:], state32)

    def no_worse_than_pytorch_fp32(ours, theirs, exact):
        error = (ours.double() - exact).abs().max().item()
        assert error <= 2 * (theirs.double() - exact).abs().max().item() + 1e-6 and error < 1e-3

    no_worse_than_pytorch_fp32(out, fp32, ref)
    aa, bb, pp = out_state
    torch.testing.assert_close(pp.double(), ref_state[2], atol=1e-3, rtol=1e-5)
    # The state's values, a / b: bounded by the values, compared after the shared e^pp.
    no_worse_than_pytorch_fp32(aa / bb, fp32_state[0] / fp32_state[1],
                               ref_state[0] / ref_state[1])
    for given, kept in zip(state32, (s.float() for s in state), strict=True):
        assert torch.equal(given, kept)  # the caller's state is not changed


@needs_kernel
def test_loading_the_kernel_keeps_denormals():
    """A library linked with -ffast-math would set flush-to-zero for the whole process."""
    torch.set_flush_denormal(False)
    assert wkv_cpu.available()
    assert (torch.tensor([1e-40]) * 1.0).item() != 0.0


def test_without_a_compiler_the_wkv_route_runs_the_pytorch_paths(monkeypatch):
    model = tiny_model()
    zoo.fast.apply(model, ["wkv"])
    ids = torch.randint(0, TINY["vocab_size"], (2, 30))
    with torch.no_grad():
        before = model(ids).logits
        monkeypatch.setattr(ckernel.shutil, "which", lambda name: None)
        monkeypatch.setattr(ckernel, "load", functools.cache(ckernel.load.__wrapped__))
        monkeypatch.setattr(ckernel.Path, "home", lambda: Path("/nonexistent-home"))
        assert not wkv_cpu.available()
        assert "WKV: PyTorch, chunks of 8 for prefill, the recurrence for decoding" in \
            zoo.fast.describe(model)
        after = model(ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_bf16_runs_with_an_fp32_wkv():
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (2, 20))
    with torch.no_grad():
        ref = model(ids).logits
        out = model.to(torch.bfloat16)(ids, use_cache=True)
    assert out.logits.dtype == torch.bfloat16 and out.cache.aa.dtype == torch.float32
    assert out.cache.att_x.dtype == torch.bfloat16
    torch.testing.assert_close(out.logits.float(), ref, atol=0.15, rtol=0.05)


# ---------------------------------------------------------------------------------------------
# Hugging Face RwkvForCausalLM (CPU path)


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.RwkvConfig(vocab_size=300, hidden_size=32, num_hidden_layers=3,
                                  context_length=256, rescale_every=0)
    torch.manual_seed(0)
    return randomize_(transformers.RwkvForCausalLM(cfg), seed=1).eval()


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_matches_hf_through_from_pretrained(hf_model, tmp_path, safe):
    if safe:
        hf_model.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").exists()
    else:  # transformers 5 writes safetensors only; write the older .bin layout by hand
        hf_model.config.save_pretrained(tmp_path)
        torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    model = zoo.from_pretrained("rwkv", tmp_path)
    assert (model.config.n_layer, model.config.d_model, model.config.vocab_size) == (3, 32, 300)
    ids = torch.randint(0, 300, (3, 37))
    with torch.no_grad():
        ref = hf_model(ids).logits
        out = model(ids).logits
    assert (out - ref).abs().max() <= 1e-4


def hf_state_from_ours(state: RWKVState) -> list[torch.Tensor]:
    """HF keeps 5 tensors (B, d, L): 0 = ffn shift, 1 = att shift, 2 = aa, 3 = bb, 4 = pp."""
    fields = (state.ffn_x, state.att_x, state.aa, state.bb, state.pp)
    return [f.permute(1, 2, 0).contiguous() for f in fields]


def test_state_matches_hf_and_carries_over(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)
    model = zoo.from_pretrained("rwkv", tmp_path)
    ids = torch.randint(0, 300, (2, 23))
    with torch.no_grad():
        ours = model(ids[:, :15], use_cache=True)
        theirs = hf_model(ids[:, :15], use_cache=True)
        for mine, hf_s in zip(hf_state_from_ours(ours.cache), theirs.state, strict=True):
            torch.testing.assert_close(mine, hf_s, atol=1e-4, rtol=1e-4)
        step = model(ids[:, 15:16], cache=ours.cache)
        rest = model(ids[:, 16:], cache=step.cache)
        # HF continues from our state (mapped to its layout): several tokens at once...
        hf_rest = hf_model(ids[:, 15:], state=hf_state_from_ours(ours.cache), use_cache=True)
        # ...and one token per batch row: HF's single-token path with a state broadcasts
        # (B, d) against (B, 1, d) into (B, B, d) when B > 1 (transformers 5.23).
        for b in range(ids.size(0)):
            c = ours.cache
            row = RWKVState(*(f[:, b:b + 1] for f in (c.att_x, c.aa, c.bb, c.pp, c.ffn_x)))
            hf_step = hf_model(ids[b:b + 1, 15:16], state=hf_state_from_ours(row), use_cache=True)
            assert (step.logits[b] - hf_step.logits[0]).abs().max() <= 1e-4
    assert (torch.cat([step.logits, rest.logits], 1) - hf_rest.logits).abs().max() <= 1e-4


# ---------------------------------------------------------------------------------------------
# The official rwkv pip package (ChatRWKV) on an official-layout .pth


def official_state_dict(model: RWKV) -> dict[str, torch.Tensor]:
    """The zoo's weights under the official names and shapes (time_mix_* are (1, 1, d))."""
    return {k: (v.reshape(1, 1, -1) if "time_mix" in k else v).clone()
            for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def rwkv_pip():
    pytest.importorskip("rwkv")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RWKV_JIT_ON", "0")  # plain nn.Module, no TorchScript
        mp.setenv("RWKV_CUDA_ON", "0")  # no kernel compilation
        mp.delenv("RWKV_V7_ON", raising=False)
        mp.delenv("RWKV_RESCALE_LAYER", raising=False)
        sys.modules.pop("rwkv.model", None)  # its flags are read at import
        yield importlib.import_module("rwkv.model")
        sys.modules.pop("rwkv.model", None)


@pytest.fixture(params=[None, 48], ids=["d_ff 4d", "d_ff 48"])
def pth_file(tmp_path, request):
    """An official .pth of the paper's channel mix (4 d wide), and of a narrower one."""
    model = tiny_model(seed=3, d_ff=request.param)
    path = tmp_path / "RWKV-4-tiny.pth"
    torch.save(official_state_dict(model), path)
    return model, path


def pip_state_from_ours(state: RWKVState, b: int) -> list[torch.Tensor]:
    """The pip package's v4 state for batch row b: state[5i + 0..4] = att_x, aa, bb, pp, ffn_x."""
    return [f[i, b].clone() for i in range(state.aa.size(0))
            for f in (state.att_x, state.aa, state.bb, state.pp, state.ffn_x)]


def test_matches_the_official_pip_package(rwkv_pip, pth_file):
    model, path = pth_file
    pip_model = rwkv_pip.RWKV(model=str(path), strategy="cpu fp32")
    ids = torch.randint(0, TINY["vocab_size"], (3, 29))
    with torch.no_grad():
        ours = model(ids[:, :20], use_cache=True)
        rest = model(ids[:, 20:], cache=ours.cache).logits
    for b in range(ids.size(0)):
        # full_output: logits of every position (the default is the last one only)
        logits, state = pip_model.forward(ids[b].tolist(), None, full_output=True)
        assert (logits - torch.cat([ours.logits[b], rest[b]])).abs().max() <= 1e-4
        # The pip package continues from our state (mapped explicitly to its layout).
        logits, _ = pip_model.forward(ids[b, 20:].tolist(), pip_state_from_ours(ours.cache, b),
                                      full_output=True)
        assert (logits - rest[b]).abs().max() <= 1e-4
        last, _ = pip_model.forward(ids[b, 20:].tolist(), pip_state_from_ours(ours.cache, b))
        assert (last - rest[b, -1]).abs().max() <= 1e-4


def test_from_pretrained_reads_the_official_pth(pth_file):
    model, path = pth_file
    loaded = zoo.from_pretrained("rwkv", path)
    assert (loaded.config.n_layer, loaded.config.d_model, loaded.config.vocab_size) == (3, 32, 300)
    assert loaded.config.d_ff == model.config.d_ff
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


# ---------------------------------------------------------------------------------------------
# Converter errors


def test_missing_weight_in_a_pth_is_named(pth_file, tmp_path):
    model, _ = pth_file
    state = official_state_dict(model)
    del state["blocks.1.att.key.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.1\.att\.key\.weight"):
        zoo.from_pretrained("rwkv", tmp_path / "broken.pth")


@pytest.mark.parametrize("key, shape", [("blocks.0.ffn.value.weight", (32, 64)),
                                        ("blocks.2.att.time_mix_v", (1, 1, 31))])
def test_misshaped_weight_in_a_pth_is_named(pth_file, tmp_path, key, shape):
    model, _ = pth_file
    state = official_state_dict(model)
    state[key] = torch.zeros(shape)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        zoo.from_pretrained("rwkv", tmp_path / "broken.pth")


def test_unexpected_weight_in_a_pth_is_named(pth_file, tmp_path):
    model, _ = pth_file
    torch.save({**official_state_dict(model), "blocks.0.att.time_state": torch.zeros(32)},
               tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected weight 'blocks\.0\.att\.time_state'"):
        zoo.from_pretrained("rwkv", tmp_path / "extra.pth")


def test_hf_folder_errors_name_the_hf_key(hf_model, tmp_path):
    from safetensors.torch import load_file, save_file

    hf_model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    missing = {k: v for k, v in state.items() if k != "rwkv.blocks.1.attention.time_first"}
    save_file(missing, str(weights))
    with pytest.raises(CheckpointError, match=r"rwkv\.blocks\.1\.attention\.time_first"):
        zoo.from_pretrained("rwkv", tmp_path)
    state["rwkv.blocks.2.feed_forward.key.weight"] = torch.zeros(100, 32)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"rwkv\.blocks\.2\.feed_forward\.key\.weight"):
        zoo.from_pretrained("rwkv", tmp_path)


def test_foreign_config_is_rejected():
    from zoo.convert import convert_rwkv

    with pytest.raises(CheckpointError, match="model_type"):
        convert_rwkv({"model_type": "gpt2"}, {})
    with pytest.raises(CheckpointError, match="'intermediate_size' = 0: expected a positive"):
        convert_rwkv({"model_type": "rwkv", "hidden_size": 32, "intermediate_size": 0,
                      "vocab_size": 10, "num_hidden_layers": 1}, {})
    with pytest.raises(CheckpointError, match="'attention_hidden_size' = 100 is not supported"):
        convert_rwkv({"model_type": "rwkv", "hidden_size": 32, "attention_hidden_size": 100,
                      "vocab_size": 10, "num_hidden_layers": 1}, {})
