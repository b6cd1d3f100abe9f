"""zoo.fast.kernels.wkv5_cpu, RWKV-5's and RWKV-6's matrix WKV as a compiled C loop (the "wkv5"
route of zoo.fast, CPU float32 inference), against the PyTorch recurrence it replaces.

The kernel: against `matrix_wkv_recurrent` in float64 (and, with the GroupNorm of its heads and
the gate, against head_group_norm of it times the gate), after a carried state, for RWKV-6's decay
per token and RWKV-5's one row for every token and sequence (a stride-0 view, or expanded in
memory), strong decays (w underflows to 0) beside weak ones, one and several sequences, one
token (decoding) and many, heads of 64 (the unrolled path) and of 16, split between 1 to 3
threads. Tolerance: within 2e-5 of the largest output (or state) entry, the loop only
reordering float32 additions (measured <= 7e-7 up to 40 tokens, <= 3e-6 over 256 tokens with
extreme decays, as PyTorch's own float32 recurrence); over 256 tokens, also no worse than twice
that recurrence's error plus 1e-6 of the largest entry. The backward (`wkv_with_grad`, for
training): every input's gradient, the carried state's included, against autograd through the
float64 recurrence, within 2e-5 of the largest gradient entry (measured <= 1e-6), for the same
decays, with and without a gradient on the new state, over chunks of the recomputation that do
not divide the length, split between threads. The models: routed logits equal the plain ones over
several chunks, cached decoding equals the full forward, generate gives the same tokens, and a
training step through the kernel's backward gives the plain model's loss and gradients.
"""

from __future__ import annotations

import pytest
import torch
from conftest import max_diff, train_and_decode

import zoo
import zoo.fast
from harness.models import build_variant
from zoo.fast import FEW_ROWS
from zoo.fast.kernels import matvec_cpu, wkv5_cpu, wkv5_step_cpu
from zoo.layers import head_group_norm, matrix_wkv_recurrent

pytestmark = pytest.mark.skipif(not wkv5_cpu.available(),
                                reason="no C compiler: the models use their PyTorch WKV paths")


def inputs(B, T, H, N, decay: str, seed=0, spread=2.0):
    """r, log_w, k, v, u in float64 as the models make them: log w = -exp(z), z ~ N(0, spread^2)
    (some w ~ 1, some underflowing to 0). decay "per-token": (B, T, H, N) (RWKV-6); "shared":
    one (H, N) row viewed as (1, T, H, N) with stride 0 (RWKV-5); "expanded": that row copied
    to every token and sequence."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g, dtype=torch.float64) for _ in range(3))
    u = torch.randn(H, N, generator=g, dtype=torch.float64)
    if decay == "per-token":
        log_w = -torch.exp(spread * torch.randn(B, T, H, N, generator=g, dtype=torch.float64))
    else:
        row = -torch.exp(spread * torch.randn(H, N, generator=g, dtype=torch.float64))
        log_w = row.expand(1, T, H, N)
        if decay == "expanded":
            log_w = log_w.expand(B, T, H, N).contiguous()
    return r, log_w, k, v, u


def check_against_fp64(B, T, H, N, decay, seed=0, spread=2.0):
    x = inputs(B, T + 9, H, N, decay, seed, spread)
    S0 = torch.zeros(B, H, N, N, dtype=torch.float64)
    _, state = matrix_wkv_recurrent(*(t[:, :9] for t in x[:4]), x[4], S0)  # a carried state
    rest = [t[:, 9:] for t in x[:4]] + [x[4]]
    ref, ref_state = matrix_wkv_recurrent(*rest, state)
    given = state.float()
    out, out_state = wkv5_cpu.wkv(*(t.float() for t in rest), given)
    fp32, fp32_state = matrix_wkv_recurrent(*(t.float() for t in rest), given)
    assert out.dtype == out_state.dtype == torch.float32
    assert out.shape == (B, T, H, N) and out_state.shape == (B, H, N, N)
    for ours, plain, exact in ((out, fp32, ref), (out_state, fp32_state, ref_state)):
        assert torch.isfinite(ours).all()
        scale = exact.abs().max().item()
        assert max_diff(ours, exact) <= 2e-5 * scale
        if T > 100:
            assert max_diff(ours, exact) <= 2 * max_diff(plain, exact) + 1e-6 * scale
    assert torch.equal(given, state.float())  # the caller's state is not changed


@pytest.mark.parametrize("decay", ["per-token", "shared", "expanded"])
@pytest.mark.parametrize("B, T", [(1, 1), (3, 1), (1, 7), (3, 40)])
@pytest.mark.parametrize("N", [64, 16])
def test_the_kernel_equals_the_fp64_recurrence(B, T, N, decay, kernel_threads):
    check_against_fp64(B, T, 3, N, decay, seed=T + N)


@pytest.mark.parametrize("decay", ["per-token", "shared"])
def test_long_inputs_with_extreme_decays(decay):
    """256 tokens; log-decays from -e^16 (w = 0 in float32) to ~0 (w ~ 1)."""
    check_against_fp64(1, 256, 2, 64, decay, seed=5, spread=4.0)


@pytest.mark.parametrize("decay", ["per-token", "shared"])
@pytest.mark.parametrize("B, T", [(1, 1), (3, 40)])
def test_with_the_group_norm_and_the_gate(B, T, decay, kernel_threads):
    """wkv_group_norm_gate: the models' head_group_norm of the fp64 recurrence's output, times
    the gate, within 2e-5 of the largest value."""
    r, log_w, k, v, u = inputs(B, T, 3, 64, decay, seed=T)
    g = torch.Generator().manual_seed(1)
    state = torch.randn(B, 3, 64, 64, generator=g, dtype=torch.float64)
    ln = torch.nn.GroupNorm(3, 192, eps=64e-5).double()
    with torch.no_grad():
        ln.weight.normal_(generator=g)
        ln.bias.normal_(generator=g)
    gate = torch.randn(B, T, 192, generator=g, dtype=torch.float64)
    y, ref_state = matrix_wkv_recurrent(r, log_w, k, v, u, state)
    ref = head_group_norm(y, ln) * gate
    out, out_state = wkv5_cpu.wkv_group_norm_gate(
        *(t.float() for t in (r, log_w, k, v, u, state)), ln.weight.float(), ln.bias.float(),
        ln.eps, gate.float())
    assert out.shape == (B, T, 3, 64)
    assert max_diff(out.view(B, T, -1), ref) <= 2e-5 * ref.abs().max().item()
    assert max_diff(out_state, ref_state) <= 2e-5 * ref_state.abs().max().item()


def test_any_strides_and_a_clear_error_for_other_dtypes():
    r, log_w, k, v, u = (t.float() for t in inputs(2, 6, 2, 16, "per-token"))
    state = torch.randn(2, 2, 16, 16)
    expected = wkv5_cpu.wkv(r, log_w, k, v, u, state)
    # the same values, laid out otherwise: channels-first decay, a transposed state
    odd_log_w = log_w.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)
    odd_state = state.transpose(-1, -2).contiguous().transpose(-1, -2)
    for got, want in zip(wkv5_cpu.wkv(r, odd_log_w, k, v, u, odd_state), expected, strict=True):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="float32 CPU"):
        wkv5_cpu.wkv(r.double(), log_w, k, v, u, state)
    with pytest.raises(ValueError, match="shapes"):
        wkv5_cpu.wkv(r, log_w[:, :3], k, v, u, state)


@pytest.mark.parametrize("final_state_used", [True, False], ids=["gS", "no-gS"])
@pytest.mark.parametrize("decay", ["per-token", "shared", "expanded"])
@pytest.mark.parametrize("B, T, N, chunk", [(1, 1, 64, 32), (3, 40, 64, 8), (2, 37, 16, 5)])
def test_the_backward_equals_autograd_through_the_fp64_recurrence(B, T, N, chunk, decay,
                                                                  final_state_used, kernel_threads,
                                                                  monkeypatch, kernel_split):
    """Gradients of r, log_w, k, v, u and the carried state. RWKV-5's shared decay row gets its
    gradient through the expansion (summed over tokens and sequences), as in the model."""
    monkeypatch.setattr(wkv5_cpu, "BACKWARD_CHUNK", chunk)
    r, log_w, k, v, u = inputs(B, T, 3, N, decay, seed=T + N)
    g = torch.Generator().manual_seed(3)
    state = torch.randn(B, 3, N, N, generator=g, dtype=torch.float64)
    gy, gS = torch.randn(r.shape, generator=g), torch.randn(state.shape, generator=g)
    decay_leaf = log_w[:, :1].squeeze(1) if decay == "shared" else log_w  # (1, H, N) row

    def gradients(function, dtype):
        leaves = [t.detach().to(dtype).requires_grad_()
                  for t in (r, decay_leaf, k, v, u, state)]
        lw = leaves[1][:, None].expand(1, T, 3, N) if decay == "shared" else leaves[1]
        y, S = function(leaves[0], lw, *leaves[2:])
        loss = (y * gy.to(dtype)).sum() + ((S * gS.to(dtype)).sum() if final_state_used else 0)
        loss.backward()
        # None: not reached (the decay of the last token, when the new state is not used)
        return [y, S] + [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves]

    ours = gradients(wkv5_cpu.wkv_with_grad, torch.float32)
    reference = gradients(matrix_wkv_recurrent, torch.float64)
    for name, got, want in zip("y S r log_w k v u state".split(), ours, reference, strict=True):
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        scale = want.abs().max().item()
        assert max_diff(got, want) <= 2e-5 * scale + 1e-7, (name, max_diff(got, want), scale)


@pytest.mark.parametrize("decay", ["per-token", "shared"])
def test_the_backward_over_long_inputs_with_extreme_decays(decay):
    """256 tokens, log-decays from -e^16 (w = 0 in float32) to ~0 (w ~ 1): finite gradients
    within 2e-5 of the largest, as the forward."""
    r, log_w, k, v, u = inputs(1, 256, 2, 64, decay, seed=5, spread=4.0)
    state = torch.zeros(1, 2, 64, 64, dtype=torch.float64)
    gy = torch.randn(r.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ours = [t.float().requires_grad_() for t in (r, log_w, k, v, u)]
    (wkv5_cpu.wkv_with_grad(*ours, state.float())[0] * gy.float()).sum().backward()
    reference = [t.clone().requires_grad_() for t in (r, log_w, k, v, u)]
    (matrix_wkv_recurrent(*reference, state)[0] * gy).sum().backward()
    for name, got, want in zip("r log_w k v u".split(), ours, reference, strict=True):
        assert torch.isfinite(got.grad).all(), name
        assert max_diff(got.grad, want.grad) <= 2e-5 * want.grad.abs().max().item(), name


# ---------------------------------------------------------------------------------------------
# The route on the models


def tiny(name: str) -> torch.nn.Module:
    """The tiny variant, plain, with noise on every parameter (the init zeroes several)."""
    torch.manual_seed(0)
    model = build_variant(name, "tiny", fast=False).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def kernel_calls(monkeypatch):
    """The names of the kernel's functions, as the models call them."""
    calls = []
    for module, function in ((wkv5_cpu, "wkv"), (wkv5_cpu, "wkv_group_norm_gate"),
                             (wkv5_cpu, "wkv_with_grad"), (wkv5_step_cpu, "step")):
        real = getattr(module, function)
        monkeypatch.setattr(module, function, lambda *args, real=real, function=function:
                            calls.append(function) or real(*args))
    return calls


COMPILED = ("matrix WKV: compiled C loop with ln_x and the gate (zoo.fast.kernels.wkv5_cpu); "
            f"<= {FEW_ROWS} rows: a block in one compiled call (zoo.fast.kernels.wkv5_step_cpu), "
            "the head's product zoo.fast.kernels.matvec_cpu's")


@pytest.mark.parametrize("name", ["rwkv5", "rwkv6"])
def test_the_route_runs_the_kernel_for_prefill_decoding_and_training(name, kernel_calls):
    """Prefill over several chunks (70 tokens, chunks of 16), one decoding step, then a
    training step, whose WKV takes the kernel with its backward; the logits and the state as
    the plain model's, the loss and every parameter's gradient as the plain model's (chunked
    PyTorch form) within 1e-5 of the largest entry."""
    model = tiny(name)
    n_layer = model.config.n_layer
    ids = torch.randint(0, model.config.vocab_size, (2, 70))
    plain_loss, plain_grads, plain, plain_step = train_and_decode(model, ids)
    with torch.no_grad():
        assert zoo.fast.apply(model, ["wkv5"]) == ("wkv5",)
        try:
            assert COMPILED in zoo.fast.describe(model)
            routed = model(ids, use_cache=True)
            step = model(ids[:, :1], cache=routed.cache).logits
            # prefill: the time mix's WKV, GroupNorm and gate; a step: each block in one call
            assert kernel_calls == ["wkv_group_norm_gate"] * n_layer + ["step"] * n_layer
            with torch.enable_grad():
                loss = model(ids, targets=ids).loss
                loss.backward()
            assert kernel_calls[2 * n_layer:] == ["wkv_with_grad"] * n_layer
            grads = {n: p.grad for n, p in model.named_parameters()}
        finally:
            zoo.fast.remove(model)
            model.zero_grad(set_to_none=True)
    assert abs(loss.item() - plain_loss.item()) <= 1e-5
    for n, grad in plain_grads.items():
        assert max_diff(grads[n], grad) <= 1e-5 * grad.abs().max().item() + 1e-8, n
    assert max_diff(routed.logits, plain.logits) <= 1e-5
    assert max_diff(routed.cache.wkv, plain.cache.wkv) <= 1e-5 * plain.cache.wkv.abs().max()
    assert max_diff(step, plain_step) <= 1e-5


@pytest.mark.parametrize("name", ["rwkv5", "rwkv6"])
def test_other_dtypes_take_the_plain_forward(name, kernel_calls):
    """float64: the plain path throughout; bfloat16: the plain forward, whose WKV runs in
    float32 (as the state is kept), there compiled; a mixed-precision training step (bfloat16
    autocast over float32 weights) likewise, with the kernel's backward. The bench's notes say
    so."""
    model = tiny(name)
    zoo.fast.apply(model, ["wkv5"])
    ids = torch.randint(0, model.config.vocab_size, (1, 20))
    n_layer = model.config.n_layer
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids, targets=ids).loss.backward()
    assert kernel_calls == ["wkv_with_grad"] * n_layer
    assert all(p.grad is not None for p in model.parameters())
    assert ("matrix WKV: compiled C loop and its backward (zoo.fast.kernels.wkv5_cpu)"
            in zoo.fast.describe(model, training=True, dtype=torch.bfloat16))
    with torch.no_grad():
        model.double()(ids)
        assert kernel_calls == ["wkv_with_grad"] * n_layer
        model.to(torch.bfloat16)(ids)
    assert kernel_calls == ["wkv_with_grad"] * n_layer + ["wkv"] * n_layer


@pytest.mark.parametrize("name", ["rwkv5", "rwkv6"])
def test_routed_decoding_equals_the_full_forward_and_generate_the_plain_tokens(name):
    model = tiny(name)
    prompt = torch.randint(0, model.config.vocab_size, (2, 6),
                           generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain_tokens = model.generate(prompt, max_new_tokens=8)
        zoo.fast.apply(model)
        assert "wkv5" in zoo.fast.applied(model)
        tokens = model.generate(prompt, max_new_tokens=8)
        full = model(tokens).logits
        out = model(tokens[:, :5], use_cache=True)
        steps = [out.logits]
        for t in range(5, tokens.size(1)):
            out = model(tokens[:, t:t + 1], cache=out.cache)
            steps.append(out.logits)
    assert torch.equal(tokens, plain_tokens)
    assert max_diff(torch.cat(steps, 1), full) <= 1e-5


# ---------------------------------------------------------------------------------------------
# A decoding step of a whole block as one call (zoo.fast.kernels.wkv5_step_cpu)


def noisy(name: str, **fields) -> torch.nn.Module:
    torch.manual_seed(0)
    model = zoo.build(name, fast=False, **fields).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


STEP_MODELS = {  # heads of 64 (the unrolled WKV) and of 16; with and without a channel mix
    "64": dict(vocab_size=64, n_layer=2, d_model=128, head_size=64),
    "16-mixer-only": dict(vocab_size=64, n_layer=2, d_model=32, head_size=16, d_ff=0),
}


@pytest.mark.parametrize("B, T", [(1, 1), (2, 2), (4, 1)])
@pytest.mark.parametrize("shape", STEP_MODELS)
@pytest.mark.parametrize("name", ["rwkv5", "rwkv6"])
def test_the_step_equals_the_blocks_forward(name, shape, B, T, kernel_threads):
    """Block 0 (with ln0) and block 1, from a random cached state: x and the new att_x, WKV
    state and ffn_x as the plain block's within 1e-5 of their largest entry; the given state
    unchanged."""
    model = noisy(name, **STEP_MODELS[shape], **({"mix_lora": 8, "decay_lora": 16}
                                                  if name == "rwkv6" else {}))
    c = model.config
    g = torch.Generator().manual_seed(B * 10 + T)
    for block in model.blocks:
        x = torch.randn(B, T, c.d_model, generator=g)
        state = (torch.randn(B, c.d_model, generator=g),
                 torch.randn(B, c.n_head, c.head_size, c.head_size, generator=g),
                 torch.randn(B, c.d_model, generator=g))
        given = [t.clone() for t in state]
        with torch.no_grad():
            expected_x, expected_state = block(x, *state)
            out_x, out_state = wkv5_step_cpu.step(block, int(name[-1]), x, *state)
        for ours, plain in zip((out_x, *out_state), (expected_x, *expected_state), strict=True):
            assert ours.shape == plain.shape
            assert max_diff(ours, plain) <= 1e-5 * plain.abs().max().item()
        assert all(torch.equal(a, b) for a, b in zip(state, given, strict=True))


@pytest.mark.parametrize("name", ["rwkv5", "rwkv6"])
def test_blocks_with_hooks_take_their_forward(name, kernel_calls):
    """A hook inside block 1: that block runs its own forward (3 prompt tokens, then one), the
    hook sees both calls; block 0 still takes the step."""
    model = tiny(name)
    zoo.fast.apply(model, ["wkv5"])
    seen = []
    model.blocks[1].att.receptance.register_forward_hook(lambda *args: seen.append(1))
    with torch.no_grad():
        out = model(torch.randint(0, 100, (1, 3)), use_cache=True)
        model(torch.randint(0, 100, (1, 1)), cache=out.cache)
    assert seen == [1, 1]  # prefill and the step
    assert kernel_calls.count("step") == 2 * (model.config.n_layer - 1)


@pytest.mark.parametrize("name", ["rwkv5", "rwkv6"])
def test_the_head_decodes_with_the_compiled_product(name, monkeypatch):
    """The route swaps the output head (by its place: it is an nn.Linear) for MatvecHead, whose
    few-row products are zoo.fast.kernels.matvec_cpu's, and `remove` restores it; prefill takes
    `linear`."""
    model = tiny(name)
    zoo.fast.apply(model, ["linear"])
    assert type(model.head) is zoo.fast.FastLinear
    zoo.fast.apply(model)
    assert type(model.head) is zoo.fast.rwkv.MatvecHead and "wkv5" in zoo.fast.applied(model)
    calls = []
    real = matvec_cpu.matvec
    monkeypatch.setattr(matvec_cpu, "matvec", lambda x, *a: calls.append(x.shape) or real(x, *a))
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        step = model(ids[:, :1], cache=out.cache).logits
        zoo.fast.remove(model)
        assert type(model.head) is torch.nn.Linear
        plain = model(ids[:, :1], cache=model(ids, use_cache=True).cache).logits
    assert calls == [(1, 1, model.config.d_model)]  # the decoding step only
    assert max_diff(step, plain) <= 1e-5
