"""Mamba-2 (zoo.mamba2): the chunked SSD (equal to the recurrence and to the unrolled sum, at
several chunk sizes, with a carried state, same gradients, stable on long inputs), published
sizes and FLOPs, mamba_ssm's initialisation, the recurrent state across calls and its fixed
size, padding, checkpoint import (Hugging Face folders and mamba_ssm's original layout) with its
errors, and fp32 parity with Hugging Face `Mamba2ForCausalLM` (its chunked PyTorch SSD on the
CPU), all from tiny random weights."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import max_diff, one_line

import zoo
import zoo.mamba2 as mamba2
from harness.models import build_variant
from zoo.convert import CheckpointError, convert_mamba2
from zoo.mamba2 import Mamba2, Mamba2Config, Mamba2State, ssd_chunked, ssd_recurrent

TINY = dict(vocab_size=300, n_layer=3, d_model=32, d_state=8, head_dim=16, n_groups=2,
            chunk_size=16)
PUBLISHED = {  # variant: (n_layer, d_model, exact count of the released checkpoint)
    "130m": (24, 768, 128_989_632),
    "370m": (48, 1024, 368_346_624),
    "780m": (48, 1536, 780_161_280),
    "1.3b": (48, 2048, 1_343_757_312),
    "2.7b": (64, 2560, 2_702_599_680),
}


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights in the ranges trained models reach, on the zoo model or on Hugging Face's
    (same parameter names): A = -exp(A_log) from -0.4 to -20 and delta = softplus(...) from
    about 1e-3 (long memory) to 2 (forget within a few tokens)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(-1.0, 3.0, generator=g))
            elif name.endswith("dt_bias"):
                p.copy_(torch.empty(p.shape).uniform_(-7.0, 2.0, generator=g))
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif p.dim() >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:  # D, biases
                p.copy_(0.3 * noise)
    return model


def tiny_model(seed: int = 0, fast: bool = False, **overrides) -> Mamba2:
    torch.manual_seed(seed)
    model = zoo.build("mamba2", fast=fast, **{**TINY, **overrides})
    return randomize_(model, seed).eval()


def ssd_inputs(b, T, H, P, G, N, seed=0, dtype=torch.float64, dt_range=(-7.0, 2.0)):
    """x, dt, A, B, C for the scan: dt = softplus(uniform(dt_range))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, H, P, generator=g)
    dt = torch.nn.functional.softplus(torch.empty(b, T, H).uniform_(*dt_range, generator=g))
    A = -torch.exp(torch.empty(H).uniform_(-1.0, 3.0, generator=g))
    B, C = torch.randn(b, T, G, N, generator=g), torch.randn(b, T, G, N, generator=g)
    return [t.to(dtype) for t in (x, dt, A, B, C)]


# ---------------------------------------------------------------------------------------------
# The SSD


def ssd_by_definition(x, dt, A, B, C):
    """The unrolled recurrence from a zero state, literally (head k reads group k // (H/G)):
    y_t = sum_{s<=t} exp(A sum_{s<i<=t} dt_i) (C_t . B_s) dt_s x_s."""
    b, T, H, P = x.shape
    per_group = H // B.size(2)
    y = torch.zeros_like(x)
    for t in range(T):
        for s in range(t + 1):
            for k in range(H):
                decay = torch.exp(A[k] * dt[:, s + 1:t + 1, k].sum(1))  # (b,)
                score = (C[:, t, k // per_group] * B[:, s, k // per_group]).sum(-1)  # (b,)
                y[:, t, k] += (decay * score * dt[:, s, k])[:, None] * x[:, s, k]
    return y


def test_recurrence_is_the_unrolled_sum():
    x, dt, A, B, C = ssd_inputs(2, 11, 4, 3, 2, 5, dt_range=(-3.0, 1.0))
    y, _ = ssd_recurrent(x, dt, A, B, C, torch.zeros(2, 4, 3, 5, dtype=x.dtype))
    torch.testing.assert_close(y, ssd_by_definition(x, dt, A, B, C), atol=1e-12, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 32, 64, 256])
@pytest.mark.parametrize("groups", [1, 2])
def test_chunked_equals_recurrence_with_a_carried_state(chunk_size, groups):
    """147 tokens after a 29-token prefix: several chunks (not a multiple of most of them),
    the last one partial; 4 heads in one or two groups."""
    b, H, P, N = 2, 4, 3, 5
    x, dt, A, B, C = ssd_inputs(b, 176, H, P, groups, N, seed=chunk_size)
    zero = torch.zeros(b, H, P, N, dtype=torch.float64)
    _, state = ssd_recurrent(x[:, :29], dt[:, :29], A, B[:, :29], C[:, :29], zero)
    rest = (x[:, 29:], dt[:, 29:], A, B[:, 29:], C[:, 29:])
    ref, ref_state = ssd_recurrent(*rest, state)
    out, out_state = ssd_chunked(*rest, state, chunk_size)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(out_state, ref_state, atol=1e-12, rtol=0)
    # And in fp32, against the fp64 recurrence.
    out32, state32 = ssd_chunked(*(t.float() for t in rest), state.float(), chunk_size)
    assert out32.dtype == torch.float32
    assert max_diff(out32, ref) <= 1e-4 * ref.abs().max().item()
    assert max_diff(state32, ref_state) <= 1e-4 * ref_state.abs().max().item()


def test_chunked_gradients_equal_the_recurrence():
    x, dt, A, B, C = ssd_inputs(2, 37, 4, 3, 2, 5)
    h0 = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    grads = []
    for scan in (ssd_recurrent, lambda *a: ssd_chunked(*a, chunk_size=8)):
        inputs = [t.clone().requires_grad_() for t in (x, dt, A, B, C, h0)]
        y, h = scan(*inputs)
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        loss = (y * weights).sum() + h.square().sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-8)


def test_long_sequences_are_stable_in_fp32():
    """2048 tokens, steps dt*A from about -1e-4 (memory over the whole input) to -1e3 (the
    state forgets at once), chunks of 256: log-decays summed over a chunk pass -5e3, where
    fp32 has no digits left for a recent token's -1e-4 (a difference of cumulative sums would
    lose it); the fp32 SSD stays finite and equals the fp64 recurrence."""
    x, dt, A, B, C = ssd_inputs(1, 2048, 4, 8, 1, 16, seed=5, dtype=torch.float32,
                                dt_range=(-9.0, 4.0))
    A = torch.tensor([-0.4, -2.0, -8.0, -20.0])
    dt[:, ::101] = 60.0  # now and then a token that wipes the state
    dt[:, 1::256] = 500.0  # and early in every chunk, one whose log-decay is -1e4
    steps = dt * A
    assert steps.max() > -1e-3 and steps.min() < -1e3
    assert steps[:, :256].sum(1).min() < -5e3
    zero = torch.zeros(1, 4, 8, 16)
    out, h = ssd_chunked(x, dt, A, B, C, zero, chunk_size=256)
    assert torch.isfinite(out).all() and torch.isfinite(h).all()
    ref, ref_h = ssd_recurrent(*(t.double() for t in (x, dt, A, B, C)), zero.double())
    assert max_diff(out, ref) <= 1e-5 * ref.abs().max().item()  # measured: 1.1e-7
    assert max_diff(h, ref_h) <= 1e-5 * ref_h.abs().max().item()


# ---------------------------------------------------------------------------------------------
# Sizes, FLOPs, initialisation


@pytest.mark.parametrize("variant", PUBLISHED)
def test_published_parameter_counts_are_exact(variant):
    n_layer, d, count = PUBLISHED[variant]
    model = build_variant("mamba2", variant, device="meta")
    c = model.config
    assert (c.n_layer, c.d_model, c.vocab_size, c.d_state, c.head_dim, c.n_groups) == \
        (n_layer, d, 50288, 128, 64, 1)
    assert model.num_params() == count
    # Per layer: in_proj d·(2 di + 2N + H), conv (di + 2N)·(4 + 1), dt_bias, A_log and D H
    # each, the gated norm di, out_proj di·d, norm d; plus the (tied) embedding and final norm.
    di, N = 2 * d, 128
    H = di // 64
    layer = d * (2 * di + 2 * N + H) + (di + 2 * N) * 5 + 3 * H + di + di * d + d
    assert count == n_layer * layer + 50288 * d + d


def test_small_variant_is_parameter_matched_and_tiny():
    small = build_variant("mamba2", "small", device="meta")
    assert (small.config.vocab_size, small.config.d_model) == (8192, 512)
    assert abs(small.num_params() / 27_928_064 - 1) < 0.1  # Mamba's small
    tiny = build_variant("mamba2", "tiny", device="meta")
    assert (tiny.config.vocab_size, tiny.config.n_layer, tiny.config.d_model) == (512, 2, 64)


def test_flops_per_token_are_the_projections_head_conv_and_scan():
    model = build_variant("mamba2", "130m", device="meta")
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name != "lm_head")
    head = 50288 * 768
    di, conv_dim = 1536, 1536 + 2 * 128
    expected = 2 * (linear + head) + 24 * (2 * 4 * conv_dim
                                           + mamba2.SCAN_FLOPS_PER_STATE * di * 128)
    assert model.flops_per_token(1024) == expected
    assert model.flops_per_token(1) == model.flops_per_token(65536)  # constant per token


def test_initialisation_is_mamba_ssms():
    torch.manual_seed(0)
    model = Mamba2(Mamba2Config(vocab_size=300, n_layer=4, d_model=48, head_dim=8, d_state=16))
    c = model.config
    assert (c.d_inner, c.n_heads, c.conv_dim) == (96, 12, 128)
    for block in model.layers:
        m = block.mixer
        A = torch.exp(m.A_log)
        assert A.min() >= 1 and A.max() <= 16 and A.max() - A.min() > 3  # uniform in [1, 16]
        assert torch.equal(m.D, torch.ones(12))
        dt = torch.nn.functional.softplus(m.dt_bias)
        assert dt.min() >= c.dt_min * 0.999 and dt.max() <= c.dt_max * 1.001
        assert dt.max() / dt.min() > 10  # log-uniform over the range, not a constant
        assert m.in_proj.bias is None and m.out_proj.bias is None and m.conv1d.bias is not None
        assert m.in_proj.weight.shape == (96 + 128 + 12, 48)  # [z | xBC | dt]
        assert m.out_proj.weight.abs().max() <= 1 / math.sqrt(96) / 2
        assert torch.equal(m.norm.weight, torch.ones(96))
    assert abs(model.embedding.weight.std().item() - 0.02) < 0.002
    assert model.lm_head.weight is model.embedding.weight


# ---------------------------------------------------------------------------------------------
# The model: chunking, state across calls, padding, dtypes


def test_chunk_size_and_the_recurrence_give_the_same_logits(monkeypatch):
    ids = torch.randint(0, TINY["vocab_size"], (2, 75))
    with torch.no_grad():
        logits = [tiny_model(chunk_size=c)(ids).logits for c in (1, 5, 16, 64, 256, None)]
        monkeypatch.setattr(mamba2, "ssd_chunked",
                            lambda x, dt, A, B, C, h, _: ssd_recurrent(x, dt, A, B, C, h))
        recurrent = tiny_model()(ids).logits
    for other in logits:  # logits reach about 5
        torch.testing.assert_close(other, recurrent, atol=3e-5, rtol=0)


@pytest.mark.parametrize("limits", [{}, {"dt_limit_min": 0.01, "dt_limit_max": 1.5}])
def test_a_prompt_with_a_state_then_more_tokens_equals_the_full_forward(limits):
    """Also with delta clamped: the decode step clamps it like the chunked prefill (Hugging
    Face's and mamba_ssm's decode steps skip the clamp, so theirs drift from their forward)."""
    model = tiny_model(**limits)
    ids = torch.randint(0, TINY["vocab_size"], (3, 45))
    with torch.no_grad():
        full = model(ids).logits
        prompt = model(ids[:, :17], use_cache=True)
        assert isinstance(prompt.cache, Mamba2State)
        step = model(ids[:, 17:18], cache=prompt.cache)
        rest = model(ids[:, 18:], cache=step.cache)
        again = model(ids[:, 17:], cache=prompt.cache)  # the state is not modified in place
    # (fp32 rounding: the chunk boundaries fall elsewhere; logits reach about 5)
    torch.testing.assert_close(prompt.logits, full[:, :17], atol=3e-5, rtol=0)
    after = torch.cat([step.logits, rest.logits], 1)
    torch.testing.assert_close(after, full[:, 17:], atol=3e-5, rtol=0)
    torch.testing.assert_close(again.logits, full[:, 17:], atol=3e-5, rtol=0)
    assert model(ids[:, :5]).cache is None


def test_the_state_has_a_fixed_size_whatever_the_length():
    model = tiny_model()
    c = model.config
    sizes = []
    with torch.no_grad():
        for T in (1, 7, 300):
            cache = model(torch.randint(0, 300, (2, T)), use_cache=True).cache
            for _ in range(3):  # decoding keeps it too
                cache = model(torch.randint(0, 300, (2, 1)), cache=cache).cache
            sizes.append((tuple(cache.conv.shape), tuple(cache.ssm.shape),
                          cache.conv.nbytes + cache.ssm.nbytes))
    assert sizes[0] == sizes[1] == sizes[2]
    assert sizes[0][:2] == ((3, 2, c.conv_dim, c.d_conv - 1),
                            (3, 2, c.n_heads, c.head_dim, c.d_state))


def test_left_padding_does_not_reach_the_real_tokens():
    """Rows of 31, 27 and 20 real tokens, left-padded to 31 with random tokens: with the mask,
    each row's logits and state are those of its real tokens alone."""
    model = tiny_model()
    lengths = (31, 27, 20)
    padded = torch.randint(1, 300, (3, 31))  # the pads hold random tokens, not zeros
    mask = torch.zeros(3, 31, dtype=torch.long)
    for b, length in enumerate(lengths):
        mask[b, 31 - length:] = 1
    nxt = torch.randint(1, 300, (3, 1))
    with torch.no_grad():
        out = model(padded, attention_mask=mask, use_cache=True)
        out_next = model(nxt, cache=out.cache, attention_mask=torch.ones(3, 32)).logits
        unmasked = model(padded).logits
        for b, length in enumerate(lengths):
            ref = model(padded[b:b + 1, 31 - length:], use_cache=True)
            torch.testing.assert_close(out.logits[b:b + 1, 31 - length:], ref.logits,
                                       atol=1e-5, rtol=0)
            ref_next = model(nxt[b:b + 1], cache=ref.cache).logits
            torch.testing.assert_close(out_next[b:b + 1], ref_next, atol=1e-5, rtol=0)
            if length < 31:  # without the mask the pads are read as tokens
                assert (unmasked[b, 31 - length:] - ref.logits[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="attention_mask covers 1 positions"):
        model(padded, attention_mask=mask[:, :1])


def test_bf16_runs_with_an_fp32_state():
    """With mamba_ssm's initialisation: the random weights of `tiny_model` make so chaotic a
    model that rounding one weight tensor to bf16 already moves its logits by 1-2% (Hugging
    Face's too)."""
    torch.manual_seed(0)
    model = zoo.build("mamba2", fast=False, **TINY).eval()
    ids = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        ref = model(ids).logits
        out = model.to(torch.bfloat16)(ids, use_cache=True)
    assert out.logits.dtype == torch.bfloat16 and out.cache.ssm.dtype == torch.float32
    assert out.cache.conv.dtype == torch.bfloat16
    error = (out.logits.float() - ref).abs().max() / ref.abs().max()
    assert error < 0.05


def test_the_fast_routes_cover_every_linear_and_the_conv_and_keep_the_logits():
    fast, plain = tiny_model(fast=True), tiny_model(fast=False)
    assert zoo.fast.applied(fast) == ("linear", "scan", "loss") and zoo.fast.applied(plain) == ()
    assert not [n for n, m in fast.named_modules() if type(m) is torch.nn.Linear]
    ids = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids).logits, plain(ids).logits, atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Hugging Face Mamba2ForCausalLM (its chunked PyTorch SSD on the CPU) and checkpoint import

HF_BASE = {"vocab_size": 512, "hidden_size": 64, "state_size": 16, "num_hidden_layers": 2,
           "expand": 2, "head_dim": 16, "num_heads": 8, "n_groups": 1, "conv_kernel": 4,
           "chunk_size": 16, "use_bias": False, "use_conv_bias": True,
           "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True, "residual_in_fp32": True,
           "time_step_limit": (0.0, float("inf")), "hidden_act": "silu"}
HF_CONFIGS = {
    "one-group": {},
    "two-groups": {"n_groups": 2},
    "variants": {"n_groups": 4, "use_bias": True, "use_conv_bias": False, "conv_kernel": 3,
                 "layer_norm_epsilon": 1e-6, "chunk_size": 8, "time_step_limit": (0.01, 1.5)},
}


def hf_mamba2(**fields):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Mamba2Config(**{**HF_BASE, **fields})
    torch.manual_seed(0)
    return randomize_(transformers.Mamba2ForCausalLM(cfg), seed=1).eval()


@pytest.fixture(scope="module")
def hf_model():
    return hf_mamba2(n_groups=2)


@pytest.mark.parametrize("case", HF_CONFIGS)
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "routes"])
def test_matches_hf_through_from_pretrained(case, fast, tmp_path):
    hf = hf_mamba2(**HF_CONFIGS[case])
    hf.save_pretrained(tmp_path)
    model = zoo.from_pretrained("mamba2", tmp_path, fast=fast)
    c = model.config
    assert (c.n_layer, c.d_model, c.vocab_size, c.d_state, c.head_dim, c.n_heads) == \
        (2, 64, 512, 16, 16, 8)
    assert c.n_groups == hf.config.n_groups and c.chunk_size is None  # 64 on the CPU
    assert (c.dt_limit_min, c.dt_limit_max) == tuple(hf.config.time_step_limit)
    ids = torch.randint(0, 512, (3, 70))  # HF's chunks of 16 or 8, ours of 64: partial ones
    with torch.no_grad():
        ref = hf(ids).logits
        out = model(ids).logits
    assert max_diff(out, ref) <= 1e-4


def test_cached_decoding_matches_hf(hf_model, tmp_path):
    """A 37-token prompt then 5 single tokens, through both caches."""
    hf_model.save_pretrained(tmp_path)
    model = zoo.from_pretrained("mamba2", tmp_path)
    ids = torch.randint(0, 512, (2, 42))
    with torch.no_grad():
        ours = model(ids[:, :37], use_cache=True)
        theirs = hf_model(ids[:, :37], use_cache=True)
        steps_ours, steps_theirs = [ours.logits], [theirs.logits]
        for t in range(37, 42):
            ours = model(ids[:, t:t + 1], cache=ours.cache)
            theirs = hf_model(ids[:, t:t + 1], cache=theirs.cache, use_cache=True)
            steps_ours.append(ours.logits)
            steps_theirs.append(theirs.logits)
        full = model(ids).logits
    assert max_diff(torch.cat(steps_ours, 1), torch.cat(steps_theirs, 1)) <= 1e-4
    assert max_diff(torch.cat(steps_ours, 1), full) <= 3e-5


def test_left_padded_batch_matches_hf(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)
    model = zoo.from_pretrained("mamba2", tmp_path)
    ids = torch.randint(1, 512, (2, 30))
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :9] = 0
    with torch.no_grad():
        ref = hf_model(ids, attention_mask=mask).logits
        out = model(ids, attention_mask=mask).logits
    assert max_diff(out[0], ref[0]) <= 1e-4 and max_diff(out[1, 9:], ref[1, 9:]) <= 1e-4


def test_greedy_generation_matches_hf(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)
    model = zoo.from_pretrained("mamba2", tmp_path)
    prompt = torch.randint(1, 512, (2, 11))
    with torch.no_grad():
        ours = model.generate(prompt, max_new_tokens=8)
        # (an explicit mask: Mamba2Config's pad_token_id 1 would otherwise mask every 1)
        theirs = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                   max_new_tokens=8, min_new_tokens=8, do_sample=False)
        full = model(ours[:, :-1]).logits
    assert torch.equal(ours, theirs)
    assert torch.equal(full[:, 10:].argmax(-1), ours[:, 11:])  # the cache equals the forward


def original_state_dict(hf) -> dict[str, torch.Tensor]:
    """mamba_ssm's layout of a Hugging Face model's weights: `embedding.` (HF: `embeddings.`)
    and the tied head stored as its own key, as torch.save(model.state_dict()) writes it."""
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone()
             for k, v in hf.state_dict().items()}
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    return state


def test_the_original_layout_loads(hf_model, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "d_model": 64, "n_layer": 2, "vocab_size": 509, "pad_vocab_size_multiple": 16,
        "ssm_cfg": {"layer": "Mamba2", "d_state": 16, "headdim": 16, "ngroups": 2,
                    "chunk_size": 16},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "tie_embeddings": True}))
    torch.save(original_state_dict(hf_model), tmp_path / "pytorch_model.bin")
    ids = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        ref = hf_model(ids).logits
        model = zoo.from_pretrained("mamba2", tmp_path)
        assert model.config.vocab_size == 512  # 509 padded to a multiple of 16
        assert model.config.n_groups == 2
        assert max_diff(model(ids).logits, ref) <= 1e-4


# ---------------------------------------------------------------------------------------------
# Converter errors: one line, naming the file and the key or field


def saved(hf_model, folder, edit) -> None:
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    edit(state)
    hf_model.config.save_pretrained(folder)
    save_file(state, str(folder / "model.safetensors"))


@pytest.mark.parametrize("edit, pattern", [
    (lambda s: s.pop("backbone.layers.1.mixer.dt_bias"),
     r"missing weight 'backbone\.layers\.1\.mixer\.dt_bias'"),
    (lambda s: s.pop("backbone.embeddings.weight"), r"'backbone\.embeddings\.weight'"),
    (lambda s: s.update({"backbone.layers.0.mixer.A_log": torch.zeros(128, 16)}),
     r"weight 'backbone\.layers\.0\.mixer\.A_log' has shape \(128, 16\), expected \(8,\)"),
    (lambda s: s.update({"backbone.layers.0.mixer.x_proj.weight": torch.zeros(3)}),
     r"unexpected weight 'backbone\.layers\.0\.mixer\.x_proj\.weight'"),
    (lambda s: s.update({"lm_head.weight": torch.zeros(512, 64)}),
     r"'lm_head\.weight' differs from the token embedding"),
])
def test_a_bad_hf_folder_names_the_key(hf_model, tmp_path, edit, pattern):
    saved(hf_model, tmp_path, edit)
    with pytest.raises(CheckpointError) as excinfo:
        zoo.from_pretrained("mamba2", tmp_path)
    assert "model.safetensors" in one_line(excinfo)
    assert excinfo.match(pattern)


def test_a_mamba1_folder_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MambaConfig(vocab_size=50, hidden_size=16, state_size=4,
                                   num_hidden_layers=1)
    transformers.MambaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'mamba' is not a "
                       r"mamba2 checkpoint \(expected one of 'mamba2'\)") as excinfo:
        zoo.from_pretrained("mamba2", tmp_path)
    one_line(excinfo)


@pytest.mark.parametrize("config, pattern", [
    ({"model_type": "gpt2"}, "model_type 'gpt2', expected 'mamba2'"),
    ({}, "bare weights file"),
    ({**HF_BASE, "model_type": "mamba2", "hidden_act": "gelu"}, "'hidden_act'"),
    ({**HF_BASE, "model_type": "mamba2", "tie_word_embeddings": False},
     "'tie_word_embeddings'"),
    ({"model_type": "mamba2", "hidden_size": 64}, "'tie_word_embeddings'"),  # Codestral's
    ({**HF_BASE, "model_type": "mamba2", "num_heads": 6}, "'num_heads'"),
    ({"d_model": 32, "n_layer": 1, "vocab_size": 8, "ssm_cfg": {}}, "'ssm_cfg.layer' = 'Mamba1'"),
    ({"d_model": 32, "n_layer": 1, "vocab_size": 8,
      "ssm_cfg": {"layer": "Mamba2", "D_has_hdim": True}}, "'ssm_cfg.D_has_hdim'"),
    ({"d_model": 32, "n_layer": 1, "vocab_size": 8,
      "ssm_cfg": {"layer": "Mamba2", "norm_before_gate": True}}, "'ssm_cfg.norm_before_gate'"),
    ({"d_model": 32, "n_layer": 1, "vocab_size": 8,
      "ssm_cfg": {"layer": "Mamba2", "d_ssm": 32}}, "'ssm_cfg.d_ssm'"),
    ({"d_model": 32, "n_layer": 1, "vocab_size": 8, "ssm_cfg": {"layer": "Mamba2", "x": 1}},
     "'ssm_cfg.x'"),
    ({"d_model": 32, "n_layer": 1, "vocab_size": 8, "attn_layer_idx": [0],
      "ssm_cfg": {"layer": "Mamba2"}}, "'attn_layer_idx'"),
])
def test_configs_zoo_mamba2_cannot_express_are_refused(config, pattern):
    with pytest.raises(CheckpointError, match=pattern) as excinfo:
        convert_mamba2(config, {})
    one_line(excinfo)
