"""Mamba (zoo.mamba): the selective scan (chunked == recurrence == the paper's sum, stable on
long inputs, same gradients), published sizes and FLOPs, mamba_ssm's initialisation, the
recurrent state across calls and its fixed size, padding, checkpoint import (Hugging Face
folders and mamba_ssm's original layout) with its errors, and fp32 parity with Hugging Face
`MambaForCausalLM` (its sequential PyTorch scan on the CPU), all from tiny random weights."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import max_diff, one_line

import zoo
import zoo.mamba as mamba
from harness.models import build_variant
from zoo.convert import CheckpointError, convert_mamba
from zoo.fast.kernels import scan_cpu
from zoo.mamba import (
    Mamba,
    MambaConfig,
    MambaState,
    selective_scan_chunked,
    selective_scan_recurrent,
)

TINY = dict(vocab_size=300, n_layer=3, d_model=32, d_state=8)
PUBLISHED = {  # variant: (n_layer, d_model, exact count of the released checkpoint)
    "130m": (24, 768, 129_135_360),
    "370m": (48, 1024, 371_516_416),
    "790m": (48, 1536, 793_204_224),
    "1.4b": (48, 2048, 1_372_178_432),
    "2.8b": (64, 2560, 2_768_345_600),
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
            elif name.endswith("dt_proj.bias"):
                p.copy_(torch.empty(p.shape).uniform_(-7.0, 2.0, generator=g))
            elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif p.dim() >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:  # D, biases
                p.copy_(0.3 * noise)
    return model


def tiny_model(seed: int = 0, fast: bool = False, **overrides) -> Mamba:
    torch.manual_seed(seed)
    model = zoo.build("mamba", fast=fast, **{**TINY, **overrides})
    return randomize_(model, seed).eval()


def scan_inputs(b, T, d, n, seed=0, dtype=torch.float64, delta_range=(-7.0, 2.0)):
    """x, delta, A, B, C for the scan: delta = softplus(uniform(delta_range) + noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, d, generator=g)
    raw = torch.empty(b, T, d).uniform_(*delta_range, generator=g)
    delta = torch.nn.functional.softplus(raw)
    A = -torch.exp(torch.empty(d, n).uniform_(-1.0, 3.0, generator=g))
    B, C = torch.randn(b, T, n, generator=g), torch.randn(b, T, n, generator=g)
    return [t.to(dtype) for t in (x, delta, A, B, C)]


# ---------------------------------------------------------------------------------------------
# The selective scan


def scan_by_definition(x, delta, A, B, C):
    """The unrolled recurrence from a zero state, literally:
    y_t = sum_{s<=t} C_t . (exp(sum_{s<i<=t} delta_i A) * delta_s B_s x_s)."""
    b, T, d = x.shape
    ys = []
    for t in range(T):
        y = torch.zeros(b, d, dtype=x.dtype)
        for s in range(t + 1):
            decay = torch.exp(delta[:, s + 1:t + 1, :, None].sum(1) * A)  # (b, d, N)
            u = (delta[:, s] * x[:, s])[:, :, None] * B[:, s, None, :]
            y = y + (decay * u * C[:, t, None, :]).sum(-1)
        ys.append(y)
    return torch.stack(ys, dim=1)


def test_recurrence_is_the_papers_sum():
    x, delta, A, B, C = scan_inputs(2, 13, 6, 4, delta_range=(-3.0, 1.0))
    y, _ = selective_scan_recurrent(x, delta, A, B, C, torch.zeros(2, 6, 4, dtype=x.dtype))
    torch.testing.assert_close(y, scan_by_definition(x, delta, A, B, C), atol=1e-12, rtol=0)


@pytest.mark.parametrize("chunk_len", [1, 3, 8, 16, 32, 100])
def test_chunked_equals_recurrence_with_a_carried_state(chunk_len):
    """83 tokens after a 29-token prefix: several chunks, the last one partial."""
    b, d, n = 3, 12, 5
    x, delta, A, B, C = scan_inputs(b, 112, d, n, seed=chunk_len)
    zero = torch.zeros(b, d, n, dtype=torch.float64)
    _, state = selective_scan_recurrent(x[:, :29], delta[:, :29], A, B[:, :29], C[:, :29], zero)
    rest = (x[:, 29:], delta[:, 29:], A, B[:, 29:], C[:, 29:])
    ref, ref_state = selective_scan_recurrent(*rest, state)
    out, out_state = selective_scan_chunked(*rest, state, chunk_len)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(out_state, ref_state, atol=1e-12, rtol=0)
    # And in fp32, against the fp64 recurrence.
    out32, state32 = selective_scan_chunked(*(t.float() for t in rest), state.float(), chunk_len)
    assert out32.dtype == torch.float32
    assert max_diff(out32, ref) <= 1e-5 * ref.abs().max().item()
    assert max_diff(state32, ref_state) <= 1e-5 * ref_state.abs().max().item()


def test_chunked_gradients_equal_the_recurrence():
    x, delta, A, B, C = scan_inputs(2, 21, 5, 3)
    h0 = torch.randn(2, 5, 3, dtype=torch.float64)
    grads = []
    for scan in (selective_scan_recurrent, lambda *a: selective_scan_chunked(*a, chunk_len=4)):
        inputs = [t.clone().requires_grad_() for t in (x, delta, A, B, C, h0)]
        y, h = scan(*inputs)
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        loss = (y * weights).sum() + h.square().sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-8)


def test_long_sequences_are_stable_in_fp32():
    """4096 tokens, steps delta*A from about -1e-4 (memory over the whole input) to -1e3 (the
    state forgets at once): cumulative decays that no fp32 number can hold, and whose inverse
    (a division by the product) would overflow; the chunked fp32 scan stays finite and equals
    the fp64 recurrence."""
    x, delta, A, B, C = scan_inputs(1, 4096, 16, 4, seed=5, dtype=torch.float32,
                                    delta_range=(-9.0, 4.0))
    delta[:, ::101] = 60.0  # now and then a token that wipes the state
    steps = delta[..., None] * A
    assert steps.max() > -1e-3 and steps.min() < -1e3
    assert torch.isinf(torch.exp(-steps[:, :256].sum(1))).any()  # 1 / (product of decays)
    zero = torch.zeros(1, 16, 4)
    out, h = selective_scan_chunked(x, delta, A, B, C, zero)
    assert torch.isfinite(out).all() and torch.isfinite(h).all()
    ref, ref_h = selective_scan_recurrent(*(t.double() for t in (x, delta, A, B, C)),
                                          zero.double())
    assert max_diff(out, ref) <= 1e-5 * ref.abs().max().item()
    assert max_diff(h, ref_h) <= 1e-5 * ref_h.abs().max().item()


# ---------------------------------------------------------------------------------------------
# Sizes, FLOPs, initialisation


@pytest.mark.parametrize("variant", PUBLISHED)
def test_published_parameter_counts_are_exact(variant):
    n_layer, d, count = PUBLISHED[variant]
    model = build_variant("mamba", variant, device="meta")
    c = model.config
    assert (c.n_layer, c.d_model, c.vocab_size, c.d_state, c.dt_rank) == \
        (n_layer, d, 50280, 16, math.ceil(d / 16))
    assert model.num_params() == count
    # Per layer: in_proj 2·d·di, conv di·(4 + 1), x_proj di·(R + 2N), dt_proj (R + 1)·di,
    # A_log di·N, D di, out_proj di·d, norm d; plus the (tied) embedding and the final norm.
    di, R, N = 2 * d, math.ceil(d / 16), 16
    layer = 2 * d * di + 5 * di + di * (R + 2 * N) + (R + 1) * di + di * N + di + di * d + d
    assert count == n_layer * layer + 50280 * d + d


def test_small_variant_count_and_tiny():
    small = build_variant("mamba", "small", device="meta")
    assert (small.config.vocab_size, small.config.n_layer, small.config.d_model) == \
        (8192, 14, 512)
    assert small.num_params() == 27_928_064
    tiny = build_variant("mamba", "tiny", device="meta")
    assert (tiny.config.vocab_size, tiny.config.n_layer, tiny.config.d_model) == (512, 2, 64)


def test_flops_per_token_are_the_projections_head_conv_and_scan():
    model = build_variant("mamba", "130m", device="meta")
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name != "lm_head")
    head = 50280 * 768
    di = 1536
    expected = 2 * (linear + head) + 24 * (2 * 4 * di + mamba.SCAN_FLOPS_PER_STATE * di * 16)
    assert model.flops_per_token(1024) == expected
    assert model.flops_per_token(1) == model.flops_per_token(65536)  # constant per token


def test_initialisation_is_mamba_ssms():
    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=300, n_layer=4, d_model=48))
    c = model.config
    assert c.dt_rank == 3 and c.d_inner == 96
    for block in model.layers:
        m = block.mixer
        torch.testing.assert_close(-torch.exp(m.A_log), -torch.arange(1.0, 17).expand(96, 16))
        assert torch.equal(m.D, torch.ones(96))
        dt = torch.nn.functional.softplus(m.dt_proj.bias)
        assert dt.min() >= c.dt_min * 0.999 and dt.max() <= c.dt_max * 1.001
        assert dt.max() / dt.min() > 10  # log-uniform over the range, not a constant
        assert m.dt_proj.weight.abs().max() <= c.dt_rank**-0.5
        assert m.in_proj.bias is None and m.out_proj.bias is None and m.conv1d.bias is not None
        # Kaiming-uniform bound 1/sqrt(fan_in), divided by sqrt(n_layer) = 2 for out_proj
        assert m.out_proj.weight.abs().max() <= 1 / math.sqrt(96) / 2
        assert m.in_proj.weight.abs().max() > 1 / math.sqrt(48) / 2
        assert torch.equal(block.norm.weight, torch.ones(48))
    assert abs(model.embedding.weight.std().item() - 0.02) < 0.002
    assert model.lm_head.weight is model.embedding.weight


# ---------------------------------------------------------------------------------------------
# The model: chunking, state across calls, padding, dtypes


def test_chunk_length_and_the_recurrence_give_the_same_logits(monkeypatch):
    ids = torch.randint(0, TINY["vocab_size"], (2, 75))
    with torch.no_grad():
        logits = [tiny_model(scan_chunk_len=c)(ids).logits for c in (1, 5, 16, 64, None)]
        monkeypatch.setattr(mamba, "selective_scan_chunked",
                            lambda x, d, A, B, C, h, _: selective_scan_recurrent(x, d, A, B, C, h))
        recurrent = tiny_model()(ids).logits
    for other in logits:
        torch.testing.assert_close(other, recurrent, atol=1e-5, rtol=0)


def test_a_prompt_with_a_state_then_more_tokens_equals_the_full_forward():
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (3, 45))
    with torch.no_grad():
        full = model(ids).logits
        prompt = model(ids[:, :17], use_cache=True)
        assert isinstance(prompt.cache, MambaState)
        step = model(ids[:, 17:18], cache=prompt.cache)
        rest = model(ids[:, 18:], cache=step.cache)
        again = model(ids[:, 17:], cache=prompt.cache)  # the state is not modified in place
    torch.testing.assert_close(prompt.logits, full[:, :17], atol=1e-5, rtol=0)
    after = torch.cat([step.logits, rest.logits], 1)
    torch.testing.assert_close(after, full[:, 17:], atol=1e-5, rtol=0)
    torch.testing.assert_close(again.logits, full[:, 17:], atol=1e-5, rtol=0)
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
    assert sizes[0][:2] == ((3, 2, c.d_inner, c.d_conv - 1), (3, 2, c.d_inner, c.d_state))


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
            # the state after the padded prompt continues like the unpadded one's
            ref_next = model(nxt[b:b + 1], cache=ref.cache).logits
            torch.testing.assert_close(out_next[b:b + 1], ref_next, atol=1e-5, rtol=0)
            if length < 31:  # without the mask the pads are read as tokens
                assert (unmasked[b, 31 - length:] - ref.logits[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="attention_mask covers 1 positions"):
        model(padded, attention_mask=mask[:, :1])


def test_bf16_runs_with_an_fp32_state():
    model = tiny_model()
    ids = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        ref = model(ids).logits
        out = model.to(torch.bfloat16)(ids, use_cache=True)
    assert out.logits.dtype == torch.bfloat16 and out.cache.ssm.dtype == torch.float32
    assert out.cache.conv.dtype == torch.bfloat16
    error = (out.logits.float() - ref).abs().max() / ref.abs().max()
    assert error < 0.05


def test_the_fast_routes_cover_every_linear_and_the_scan_and_keep_the_logits():
    """The linear and scan routes against the plain model: a padded prefill, then decoding on
    the state (the compiled scan for one token too)."""
    fast, plain = tiny_model(fast=True), tiny_model(fast=False)
    assert zoo.fast.applied(fast) == ("linear", "scan", "loss") and zoo.fast.applied(plain) == ()
    assert not [n for n, m in fast.named_modules() if type(m) is torch.nn.Linear]
    ids = torch.randint(0, 300, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :7] = 0
    with torch.no_grad():
        torch.testing.assert_close(fast(ids).logits, plain(ids).logits, atol=2e-5, rtol=1e-5)
        got = fast(ids[:, :30], attention_mask=mask[:, :30], use_cache=True)
        want = plain(ids[:, :30], attention_mask=mask[:, :30], use_cache=True)
        torch.testing.assert_close(got.logits, want.logits, atol=2e-5, rtol=1e-5)
        for t in range(30, 40):
            got = fast(ids[:, t:t + 1], cache=got.cache, attention_mask=mask[:, :t + 1])
            want = plain(ids[:, t:t + 1], cache=want.cache, attention_mask=mask[:, :t + 1])
            torch.testing.assert_close(got.logits, want.logits, atol=2e-5, rtol=1e-5)



@pytest.mark.skipif(not scan_cpu.available(), reason="no C compiler for the kernel")
def test_the_scan_route_runs_skip_and_gate_in_the_kernel_and_keeps_the_plain_gradients(
        monkeypatch):
    """Every layer's skip and gate go through scan_cpu's gated kernel, with gradients (float32
    and under bfloat16 autocast) and without (a prefill, a decoding token); in float32 the
    routed step's loss and gradients are the plain model's (its gate in PyTorch)."""
    calls = []
    for name in ("gated_scan", "gated_scan_with_grad"):
        kernel = getattr(scan_cpu, name)
        monkeypatch.setattr(scan_cpu, name, lambda *a, _k=kernel, _n=name: calls.append(_n)
                            or _k(*a))
    fast, plain = tiny_model(fast=True).train(), tiny_model(fast=False).train()
    ids = torch.randint(0, 300, (2, 40))
    layers = fast.config.n_layer
    losses, grads = [], []
    for model in (fast, plain):
        loss = model(ids, targets=ids).loss
        loss.backward()
        losses.append(loss)
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert calls == ["gated_scan_with_grad"] * layers
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    for key, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][key], atol=1e-5, rtol=1e-4, msg=key)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fast(ids, targets=ids).loss
    loss.backward()
    assert calls == ["gated_scan_with_grad"] * layers and torch.isfinite(loss)
    calls.clear()
    with torch.no_grad():
        out = fast.eval()(ids[:, :30], use_cache=True)
        fast(ids[:, 30:31], cache=out.cache)
    assert calls == ["gated_scan"] * (2 * layers)



@pytest.mark.skipif(not scan_cpu.available(), reason="no C compiler for the kernel")
def test_under_autocast_the_gated_kernel_is_as_close_to_float32_as_the_plain_form():
    """Under bfloat16 autocast the route takes dt and z to float32 and computes the softplus,
    skip and gate there, where the plain form computes softplus and SiLU in bfloat16: its loss
    within 1% of the float32 model's, and its gradients no farther from float32's than the plain
    form's under autocast (the median over parameters of each one's largest error relative to
    its largest entry; 0.028 against 0.048 when written)."""
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))

    def loss_and_grads(fast: bool, autocast: bool):
        model = tiny_model(fast=fast).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(ids, targets=ids).loss
        loss.backward()
        return loss.item(), {k: p.grad for k, p in model.named_parameters()}

    want_loss, want = loss_and_grads(False, False)

    def median_error(grads):
        errors = sorted(((g - want[k]).abs().max() / want[k].abs().max()).item()
                        for k, g in grads.items())
        return errors[len(errors) // 2]

    loss, routed = loss_and_grads(True, True)
    _, plain = loss_and_grads(False, True)
    assert abs(loss - want_loss) <= 0.01 * want_loss
    assert median_error(routed) <= 1.25 * median_error(plain)

# ---------------------------------------------------------------------------------------------
# Hugging Face MambaForCausalLM (its sequential scan on the CPU) and checkpoint import

HF_CONFIGS = {
    "default": {},
    "biases": {"use_bias": True, "use_conv_bias": False, "time_step_rank": 5, "conv_kernel": 3,
               "layer_norm_epsilon": 1e-6},
}


def hf_mamba(**fields):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MambaConfig(**{
        "vocab_size": 300, "hidden_size": 32, "state_size": 8, "num_hidden_layers": 3,
        "expand": 2, "conv_kernel": 4, **fields})
    torch.manual_seed(0)
    return randomize_(transformers.MambaForCausalLM(cfg), seed=1).eval()


@pytest.fixture(scope="module")
def hf_model():
    return hf_mamba()


@pytest.mark.parametrize("case", HF_CONFIGS)
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "routes"])
def test_matches_hf_through_from_pretrained(case, fast, tmp_path):
    hf = hf_mamba(**HF_CONFIGS[case])
    hf.save_pretrained(tmp_path)
    model = zoo.from_pretrained("mamba", tmp_path, fast=fast)
    c = model.config
    assert (c.n_layer, c.d_model, c.vocab_size, c.d_state) == (3, 32, 300, 8)
    assert (c.bias, c.conv_bias, c.dt_rank) == \
        ((True, False, 5) if case == "biases" else (False, True, 2))
    ids = torch.randint(0, 300, (3, 70))  # chunks of 16: four whole ones and a partial one
    with torch.no_grad():
        ref = hf(ids).logits
        out = model(ids).logits
    assert max_diff(out, ref) <= 1e-4


def test_left_padded_batch_matches_hf(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)
    model = zoo.from_pretrained("mamba", tmp_path)
    ids = torch.randint(1, 300, (2, 30))
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, :9] = 0
    with torch.no_grad():
        ref = hf_model(ids, attention_mask=mask).logits
        out = model(ids, attention_mask=mask).logits
    assert max_diff(out[0], ref[0]) <= 1e-4 and max_diff(out[1, 9:], ref[1, 9:]) <= 1e-4


def test_greedy_generation_matches_hf(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)
    model = zoo.from_pretrained("mamba", tmp_path)
    prompt = torch.randint(1, 300, (2, 11))
    with torch.no_grad():
        ours = model.generate(prompt, max_new_tokens=8)
        theirs = hf_model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
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
        "d_model": 32, "n_layer": 3, "vocab_size": 297, "pad_vocab_size_multiple": 4,
        "ssm_cfg": {"d_state": 8, "dt_rank": "auto", "layer": "Mamba1"}, "rms_norm": True,
        "residual_in_fp32": True, "fused_add_norm": True}))
    torch.save(original_state_dict(hf_model), tmp_path / "pytorch_model.bin")
    bare = tmp_path / "bare" / "mamba.pth"  # and a weights file alone: sizes from its tensors
    bare.parent.mkdir()
    torch.save(original_state_dict(hf_model), bare)
    ids = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        ref = hf_model(ids).logits
        for source in (tmp_path, bare):
            model = zoo.from_pretrained("mamba", source)
            assert model.config.vocab_size == 300  # 297 padded to a multiple of 4
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
    (lambda s: s.pop("backbone.layers.1.mixer.x_proj.weight"),
     r"missing weight 'backbone\.layers\.1\.mixer\.x_proj\.weight'"),
    (lambda s: s.pop("backbone.embeddings.weight"), r"'backbone\.embeddings\.weight'"),
    (lambda s: s.update({"backbone.layers.2.mixer.A_log": torch.zeros(64, 7)}),
     r"weight 'backbone\.layers\.2\.mixer\.A_log' has shape \(64, 7\), expected \(64, 8\)"),
    (lambda s: s.update({"backbone.layers.0.mixer.extra": torch.zeros(3)}),
     r"unexpected weight 'backbone\.layers\.0\.mixer\.extra'"),
    (lambda s: s.update({"lm_head.weight": torch.zeros(300, 32)}),
     r"'lm_head\.weight' differs from the token embedding"),
])
def test_a_bad_hf_folder_names_the_key(hf_model, tmp_path, edit, pattern):
    saved(hf_model, tmp_path, edit)
    with pytest.raises(CheckpointError) as excinfo:
        zoo.from_pretrained("mamba", tmp_path)
    assert "model.safetensors" in one_line(excinfo)
    assert excinfo.match(pattern)


def test_a_folder_of_another_model_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'gpt2' is not a mamba "
                       r"checkpoint \(expected one of 'mamba'\)") as excinfo:
        zoo.from_pretrained("mamba", tmp_path)
    one_line(excinfo)


@pytest.mark.parametrize("config, pattern", [
    ({"model_type": "mamba", "hidden_size": 32, "hidden_act": "gelu"}, "'hidden_act'"),
    ({"model_type": "mamba", "hidden_size": 32, "tie_word_embeddings": False},
     "'tie_word_embeddings'"),
    ({"model_type": "mamba", "hidden_size": 32, "expand": 2, "intermediate_size": 100},
     "'intermediate_size'"),
    ({"d_model": 32, "n_layer": 1, "vocab_size": 8, "ssm_cfg": {"layer": "Mamba2"}},
     "'ssm_cfg.layer' = 'Mamba2'"),
    ({"d_model": 32, "n_layer": 1, "vocab_size": 8, "ssm_cfg": {"headdim": 64}},
     "'ssm_cfg.headdim'"),
    ({"d_model": 32, "n_layer": 1, "vocab_size": 8, "d_intermediate": 128}, "'d_intermediate'"),
    ({"d_model": 32, "n_layer": 1, "vocab_size": 8, "attn_layer_idx": [0]}, "'attn_layer_idx'"),
    ({"d_model": 32, "n_layer": 1, "vocab_size": 8, "rms_norm": False}, "'rms_norm'"),
])
def test_configs_zoo_mamba_cannot_express_are_refused(config, pattern):
    with pytest.raises(CheckpointError, match=pattern) as excinfo:
        convert_mamba(config, {})
    one_line(excinfo)
