"""RWKV-7 (zoo.rwkv7): the WKV of the generalised delta rule (chunked == recurrence == the
explicit matrix product, with a carried state, same gradients, stable on long inputs), the
recurrent state across calls, published sizes and FLOPs, the official initialisation, the
official .pth import with its version detection, and fp32 parity with the official `rwkv` pip
package (RWKV_V7_ON=1, "cpu fp32", run in a subprocess), all from tiny random weights."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    assert_rwkv_state_matches,
    check_cached_decoding,
    check_generate_is_greedy,
    max_diff,
    run_rwkv_pip,
)

import zoo
import zoo.fast
from harness.models import build_variant
from zoo.convert import (
    CheckpointError,
    convert_rwkv7,
    official_version,
    rwkv7_to_official,
    rwkv_to_official,
)
from zoo.fast.kernels import ckernel, wkv7_cpu, wkv7_step_cpu
from zoo.rwkv7 import (
    LOG_DECAY_FLOOR,
    RWKV7,
    RWKV7Config,
    RWKV7State,
    wkv7_chunked,
    wkv7_recurrent,
)

# Three layers, two heads of 16 channels, small adapters: every code path, in milliseconds.
TINY = dict(vocab_size=100, n_layer=3, d_model=32, head_size=16, decay_lora=8, iclr_lora=8,
            value_lora=8, gate_lora=16)
PUBLISHED = {  # variant: (n_layer, d_model, (decay, iclr, value, gate) widths, exact count)
    "0.1b": (12, 768, (64, 64, 32, 128), 191_034_624),
    "0.4b": (24, 1024, (64, 64, 64, 160), 453_848_064),
    "1.5b": (24, 2048, (128, 128, 64, 224), 1_530_550_272),
    "2.9b": (32, 2560, (128, 128, 96, 256), 2_952_814_080),
}


def wkv_inputs(B, T, H, N, seed=0, dtype=torch.float64, floor=False):
    """r, log_w, k, v, kk, a as the model makes them: log_w in (-e^-0.5, 0) (with `floor`, at
    the strongest decay for every token), unit kk, a in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, H, N)
    r, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    log_w = LOG_DECAY_FLOOR * torch.sigmoid(3 * torch.randn(shape, generator=g))
    if floor:
        log_w = torch.full(shape, LOG_DECAY_FLOOR * 0.9999)
    kk = torch.nn.functional.normalize(torch.randn(shape, generator=g), dim=-1)
    a = torch.sigmoid(2 * torch.randn(shape, generator=g))
    return [x.to(dtype) for x in (r, log_w, k, v, kk, a)]


# ---------------------------------------------------------------------------------------------
# The WKV


def test_recurrence_is_the_matrix_product():
    """S_t = S_{t-1} (diag(w_t) - kk_t^T (a_t kk_t)) + v_t^T k_t, y_t = S_t r_t, with the
    transition written out as an (N, N) matrix per head."""
    B, T, H, N = 2, 9, 3, 4
    r, log_w, k, v, kk, a = wkv_inputs(B, T, H, N)
    S0 = torch.randn(B, H, N, N, dtype=torch.float64)
    y, S_T = wkv7_recurrent(r, log_w, k, v, kk, a, S0)
    S = S0
    for t in range(T):
        transition = (torch.diag_embed(torch.exp(log_w[:, t]))
                      - kk[:, t, :, :, None] * (a[:, t] * kk[:, t])[:, :, None, :])
        S = S @ transition + v[:, t, :, :, None] * k[:, t, :, None, :]
        torch.testing.assert_close(y[:, t], (S @ r[:, t, :, :, None])[..., 0], atol=1e-12,
                                   rtol=0)
    torch.testing.assert_close(S_T, S, atol=1e-12, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_chunked_equals_recurrence_with_a_carried_state(chunk_size):
    """83 tokens after a 29-token prefix: several chunks, the last one partial."""
    B, H, N = 2, 3, 8
    x = wkv_inputs(B, 112, H, N, seed=chunk_size)
    S0 = torch.zeros(B, H, N, N, dtype=torch.float64)
    _, state = wkv7_recurrent(*(t[:, :29] for t in x), S0)
    rest = [t[:, 29:] for t in x]
    ref, ref_state = wkv7_recurrent(*rest, state)
    out, out_state = wkv7_chunked(*rest, state, chunk_size)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(out_state, ref_state, atol=1e-10, rtol=0)
    # And in fp32, against the fp64 recurrence.
    out32, state32 = wkv7_chunked(*(t.float() for t in rest), state.float(), chunk_size)
    assert out32.dtype == torch.float32  # measured: relative 1e-7 to 7e-7
    assert max_diff(out32, ref) <= 1e-5 * ref.abs().max().item()
    assert max_diff(state32, ref_state) <= 1e-5 * ref_state.abs().max().item()


def test_chunked_gradients_equal_the_recurrence():
    x = wkv_inputs(2, 37, 2, 6, seed=3)
    S0 = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    grads = []
    for wkv in (wkv7_recurrent, lambda *args: wkv7_chunked(*args, chunk_size=8)):
        inputs = [t.clone().requires_grad_() for t in (*x, S0)]
        y, S = wkv(*inputs)
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        loss = (y * weights).sum() + S.square().sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("chunk_size", [RWKV7Config.chunk_size, 64])
@pytest.mark.parametrize("floor", [False, True], ids=["random-decays", "strongest-decay"])
def test_fp32_gradients_of_the_chunked_form_are_fp64_recurrence_ones(floor, chunk_size):
    """Training runs the chunked form in fp32: its gradients (inputs and start state) against
    the fp64 recurrence's, 256 tokens. Measured: worst relative 4e-7 to 9e-7 at 32, 3e-6 to
    4e-6 at 64."""
    x = wkv_inputs(1, 256, 2, 16, seed=7, dtype=torch.float32, floor=floor)
    S0 = torch.randn(1, 2, 16, 16) * 0.1
    grads = []
    for dtype, wkv in ((torch.float64, wkv7_recurrent),
                       (torch.float32, lambda *a: wkv7_chunked(*a, chunk_size=chunk_size))):
        inputs = [t.to(dtype).clone().requires_grad_() for t in (*x, S0)]
        y, S = wkv(*inputs)
        weights = torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)
        grads.append(torch.autograd.grad((y * weights).sum() + S.square().sum(), inputs))
    for ref, ours in zip(*grads, strict=True):
        assert ours.dtype == torch.float32
        assert max_diff(ours, ref) <= 2e-5 * ref.abs().max().item()


@pytest.mark.parametrize("floor", [False, True], ids=["random-decays", "strongest-decay"])
def test_long_inputs_are_stable_in_fp32(floor):
    """1024 tokens in chunks of 64, the largest allowed: at the strongest decay every token,
    the factors 1 / g inside a chunk reach e^(0.61 * 64) ~ 1e17; still finite, and equal to the
    fp64 recurrence."""
    x = wkv_inputs(1, 1024, 2, 16, seed=7, dtype=torch.float32, floor=floor)
    S0 = torch.zeros(1, 2, 16, 16)
    out, S = wkv7_chunked(*x, S0, chunk_size=64)
    assert torch.isfinite(out).all() and torch.isfinite(S).all()
    ref, ref_S = wkv7_recurrent(*(t.double() for t in x), S0.double())
    assert max_diff(out, ref) <= 1e-5 * ref.abs().max().item()  # measured: 6e-7, 9e-7
    assert max_diff(S, ref_S) <= 1e-5 * ref_S.abs().max().item()  # measured: 6e-7, 1.3e-6


# ---------------------------------------------------------------------------------------------
# Random weights: the official layout, written independently of the zoo model


def random_official(seed: int = 0, n_layer: int = 3, d: int = 32, head_size: int = 16,
                    vocab: int = 100, lora=(8, 8, 8, 16)) -> dict[str, torch.Tensor]:
    """An RWKV-7 state dict in the official .pth layout (keys and shapes as the released
    checkpoints), with random weights in the ranges trained models reach."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(shape, generator=g)  # noqa: E731
    rand = lambda *shape: torch.rand(shape, generator=g)  # noqa: E731
    H = d // head_size
    decay, iclr, value, gate = lora
    state = {"emb.weight": randn(vocab, d), "blocks.0.ln0.weight": 1 + 0.2 * randn(d),
             "blocks.0.ln0.bias": 0.2 * randn(d)}
    for i in range(n_layer):
        b = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            state[b + ln + ".weight"], state[b + ln + ".bias"] = 1 + 0.2 * randn(d), 0.2 * randn(d)
        for mix in "rwkvag":
            state[b + f"att.x_{mix}"] = rand(1, 1, d)
        state[b + "att.w0"] = -2 + 2 * randn(1, 1, d)
        state[b + "att.w1"], state[b + "att.w2"] = 0.3 * randn(d, decay), 0.3 * randn(decay, d)
        state[b + "att.a0"] = randn(1, 1, d)
        state[b + "att.a1"], state[b + "att.a2"] = 0.3 * randn(d, iclr), 0.3 * randn(iclr, d)
        if i > 0:
            state[b + "att.v0"] = randn(1, 1, d)
            state[b + "att.v1"] = 0.3 * randn(d, value)
            state[b + "att.v2"] = 0.3 * randn(value, d)
        state[b + "att.g1"], state[b + "att.g2"] = 0.3 * randn(d, gate), 0.3 * randn(gate, d)
        state[b + "att.k_k"] = 0.8 + 0.3 * randn(1, 1, d)
        state[b + "att.k_a"] = 1 + 0.3 * randn(1, 1, d)
        state[b + "att.r_k"] = 0.5 * randn(H, head_size)
        for name in ("receptance", "key", "value", "output"):
            state[b + f"att.{name}.weight"] = randn(d, d) / math.sqrt(d)
        state[b + "att.ln_x.weight"], state[b + "att.ln_x.bias"] = 1 + 0.2 * randn(d), \
            0.2 * randn(d)
        state[b + "ffn.x_k"] = rand(1, 1, d)
        state[b + "ffn.key.weight"] = randn(4 * d, d) / math.sqrt(d)
        state[b + "ffn.value.weight"] = randn(d, 4 * d) / math.sqrt(4 * d)
    state["ln_out.weight"], state["ln_out.bias"] = 1 + 0.2 * randn(d), 0.2 * randn(d)
    state["head.weight"] = randn(vocab, d) / math.sqrt(d)
    return state


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rwkv7") / "rwkv7-tiny.pth"
    torch.save(random_official(), path)
    return path


@pytest.fixture(scope="module")
def model(official_file):
    return zoo.from_pretrained("rwkv7", official_file, fast=False)


def test_from_pretrained_reads_the_sizes_off_the_tensors(model):
    c = model.config
    assert (c.vocab_size, c.n_layer, c.d_model, c.n_head, c.head_size, c.d_ff) == \
        (100, 3, 32, 2, 16, 128)
    assert [c.lora(name) for name in ("decay", "iclr", "value", "gate")] == [8, 8, 8, 16]
    assert not hasattr(model.blocks[0].att, "v0") and model.blocks[1].att.v0.shape == (32,)


def test_the_official_layout_round_trips(model, official_file):
    written = rwkv7_to_official(model.state_dict())
    original = torch.load(official_file, weights_only=True)
    assert written.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(written[key], tensor), key


def test_layer_0s_unused_value_residual_from_training_code_is_dropped(official_file, tmp_path):
    """RWKV-LM's training code gives layer 0 v0/v1/v2 too (unused); the package ignores them."""
    state = torch.load(official_file, weights_only=True)
    state.update({"blocks.0.att.v0": torch.ones(1, 1, 32), "blocks.0.att.v1": torch.ones(32, 8),
                  "blocks.0.att.v2": torch.ones(8, 32)})
    torch.save(state, tmp_path / "trained.pth")
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        logits = [zoo.from_pretrained("rwkv7", path, fast=False)(ids).logits
                  for path in (official_file, tmp_path / "trained.pth")]
    assert torch.equal(*logits)


# ---------------------------------------------------------------------------------------------
# The model: state across calls, chunk size


def test_chunk_size_does_not_change_the_logits(official_file):
    ids = torch.randint(0, 100, (2, 45))
    with torch.no_grad():
        logits = [zoo.from_pretrained("rwkv7", official_file, chunk_size=c)(ids).logits
                  for c in (1, 7, 16, 64)]
    for other in logits[1:]:
        assert max_diff(other, logits[0]) <= 1e-5


def test_cached_decoding_equals_the_full_forward(model):
    check_cached_decoding(model, RWKV7State)  # shared with RWKV-5 and -6 (tests/conftest.py)


def test_generate_is_greedy_on_the_full_forward(model):
    check_generate_is_greedy(model)


def test_bf16_runs_with_an_fp32_state(official_file):
    """bf16 weights and activations, the WKV and its state in fp32. Over 20 seeds of these
    random weights the bf16 logits were within 0.031 on average and 10% of the largest logit
    everywhere; this seed is checked with some margin."""
    model = zoo.from_pretrained("rwkv7", official_file, fast=False)
    ids = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        out = model.to(torch.bfloat16)(ids, use_cache=True)
    assert out.logits.dtype == torch.bfloat16 and out.cache.wkv.dtype == torch.float32
    assert out.cache.att_x.dtype == torch.bfloat16
    assert (out.logits.float() - ref).abs().mean() <= 0.05
    assert max_diff(out.logits, ref) <= 0.15 * ref.abs().max().item()


def test_from_scratch_the_blocks_start_as_the_identity_and_train():
    """The official init zeroes att.output and ffn.value: every block adds nothing at first, so
    the logits are head(ln_out(ln0(emb))); the gradients reach those two matrices."""
    torch.manual_seed(0)
    model = zoo.build("rwkv7", fast=False, **TINY)
    ids = torch.randint(0, 100, (2, 20))
    out = model(ids[:, :-1], targets=ids[:, 1:])
    x = model.emb(ids[:, :-1])
    expected = model.head(model.ln_out(model.blocks[0].ln0(x)))
    assert max_diff(out.logits, expected) <= 1e-5
    out.loss.backward()
    for block in model.blocks:
        for grad in (block.att.output.weight.grad, block.ffn.value.weight.grad):
            assert torch.isfinite(grad).all() and grad.abs().max() > 0


def test_without_a_channel_mix_the_blocks_are_time_mix_alone():
    """d_ff = 0: mixer-only blocks (the recall task's setting); the state keeps its shape."""
    model = zoo.build("rwkv7", fast=False, **{**TINY, "d_ff": 0})
    assert all(block.ffn is None for block in model.blocks)
    assert not any(".ffn." in name for name, _ in model.named_parameters())
    out = model(torch.randint(0, 100, (2, 9)), use_cache=True)
    assert out.cache.ffn_x.shape == (3, 2, 32) and torch.isfinite(out.logits).all()


# ---------------------------------------------------------------------------------------------
# Sizes, FLOPs, initialisation


@pytest.mark.parametrize("variant", PUBLISHED)
def test_published_parameter_counts_are_exact(variant):
    n_layer, d, widths, count = PUBLISHED[variant]
    model = build_variant("rwkv7", variant, device="meta")
    c = model.config
    assert (c.n_layer, c.d_model, c.vocab_size, c.head_size) == (n_layer, d, 65536, 64)
    assert tuple(c.lora(name) for name in ("decay", "iclr", "value", "gate")) == widths
    assert model.num_params() == count
    # 2Vd + 4d (ln0, ln_out) + L (12 d^2 + 19 d + 2d (decay + iclr + value + gate)), less
    # layer 0's value residual (d + 2 d value).
    decay, iclr, value, gate = widths
    per_layer = 12 * d * d + 19 * d + 2 * d * (decay + iclr + value + gate)
    assert count == 2 * 65536 * d + 4 * d + n_layer * per_layer - (d + 2 * d * value)


def test_small_variant_is_parameter_matched_and_tiny_is_tiny():
    small = build_variant("rwkv7", "small", device="meta")
    assert (small.config.vocab_size, small.config.d_model) == (8192, 512)
    assert small.num_params() == 28_862_976  # RWKV-4's small: 28,871,680
    tiny = build_variant("rwkv7", "tiny", device="meta")
    assert tiny.num_params() < 200_000


def test_flops_per_token_are_the_matrices_head_and_recurrence():
    model = build_variant("rwkv7", "0.1b", device="meta")
    matrices = sum(p.numel() for name, p in model.named_parameters()
                   if p.dim() == 2 and not name.startswith(("emb", "blocks.0.att.r_k"))
                   and not name.endswith("r_k"))
    expected = 2 * matrices + 9 * 768 * 64 * 12
    assert model.flops_per_token(1024) == expected
    assert model.flops_per_token(1) == model.flops_per_token(65536)


def test_initialisation_formulas():
    L, d = 4, 64
    torch.manual_seed(0)
    model = RWKV7(RWKV7Config(vocab_size=300, n_layer=L, d_model=d, head_size=16))
    for layer, block in enumerate(model.blocks):
        att, ffn = block.att, block.ffn
        r10 = 1 - layer / L
        for i in (0, 5, 63):
            assert att.x_r[i].item() == pytest.approx(1 - (i / d) ** (0.2 * r10), abs=1e-6)
            assert ffn.x_k[i].item() == pytest.approx(1 - (i / d) ** (r10**4), abs=1e-6)
        assert torch.count_nonzero(att.output.weight) == 0
        assert torch.count_nonzero(ffn.value.weight) == 0
        assert torch.count_nonzero(att.w1) == 0 and torch.count_nonzero(att.g1) == 0
        torch.testing.assert_close(att.w2 @ att.w2.T, 0.01 * torch.eye(att.w2.shape[0]),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(att.ln_x.weight, torch.full((d,), ((layer + 1) / L) ** 0.7))
        assert torch.all(att.r_k == -0.04) and torch.all(att.k_a == 1.02)
    assert model.emb.weight.abs().max() <= 1e-4


# ---------------------------------------------------------------------------------------------
# Version detection


def test_official_version_is_read_off_the_keys(official_file):
    d = 8
    v4 = {"emb.weight": torch.zeros(10, d), "blocks.0.att.time_decay": torch.zeros(d),
          "blocks.0.att.time_first": torch.zeros(d)}
    v5 = {**v4, "blocks.0.att.ln_x.weight": torch.zeros(d)}
    v51 = {**v5, "blocks.0.att.gate.weight": torch.zeros(d, d)}
    v52 = {**v51, "blocks.0.att.time_decay": torch.zeros(2, 4)}
    v6 = {**v52, "blocks.0.att.time_maa_x": torch.zeros(1, 1, d)}
    for state, version in ((v4, "4"), (v5, "5"), (v51, "5.1"), (v52, "5.2"), (v6, "6")):
        assert official_version(state) == version
    assert official_version(torch.load(official_file, weights_only=True)) == "7"


def test_a_file_of_another_version_is_a_one_line_error(official_file, tmp_path):
    rwkv4 = tmp_path / "rwkv4.pth"
    rwkv4_model = zoo.build("rwkv", fast=False, vocab_size=50, n_layer=1, d_model=16)
    torch.save(rwkv_to_official(rwkv4_model.state_dict()), rwkv4)
    with pytest.raises(CheckpointError, match=r"an RWKV-4 checkpoint; zoo model 'rwkv7' reads "
                       r"RWKV-7 .*load it as 'rwkv'") as error:
        zoo.from_pretrained("rwkv7", rwkv4)
    assert "\n" not in str(error.value) and str(rwkv4) in str(error.value)
    with pytest.raises(CheckpointError, match=r"an RWKV-7 checkpoint; zoo model 'rwkv' reads "
                       r"RWKV-4 .*; load it as 'rwkv7'"):
        zoo.from_pretrained("rwkv", official_file)
    v6 = torch.load(official_file, weights_only=True)
    v6 = {k: v for k, v in v6.items() if not k.endswith(("r_k", "w0", "k_k"))}
    v6["blocks.0.att.time_maa_x"] = torch.zeros(1, 1, 32)
    torch.save(v6, tmp_path / "v6.pth")
    with pytest.raises(CheckpointError, match=r"an RWKV-6 checkpoint"):
        zoo.from_pretrained("rwkv7", tmp_path / "v6.pth")
    with pytest.raises(CheckpointError, match=r"a Hugging Face folder; .* official RWKV-7 .pth"):
        convert_rwkv7({"model_type": "rwkv7"}, {})


# ---------------------------------------------------------------------------------------------
# The official package (rwkv 0.8.x, RWKV_x070), in a subprocess: RWKV_V7_ON must be set before
# it is imported, and it compiles TorchScript.

LENGTHS = (1, 4, 70)


@pytest.fixture(scope="module")
def official_run(official_file, tmp_path_factory):
    g = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, 100, (T,), generator=g).tolist() for T in LENGTHS]
    official = run_rwkv_pip(official_file, sequences, tmp_path_factory.mktemp("official"),
                            v7=True)
    return sequences, official


@pytest.mark.parametrize("index", range(len(LENGTHS)), ids=[f"T={T}" for T in LENGTHS])
def test_logits_match_the_official_package(model, official_run, index):
    sequences, official = official_run
    ids = torch.tensor([sequences[index]])
    with torch.no_grad():
        ours = model(ids).logits[0]
    assert ours.shape == official[f"logits{index}"].shape
    assert max_diff(ours, official[f"logits{index}"]) <= 1e-4


def test_the_state_matches_the_official_package(model, official_run):
    """After 70 tokens: per layer the official state list holds att_x, the (H, N, N) WKV state
    (value channel by key channel, as the zoo's) and ffn_x."""
    sequences, official = official_run
    with torch.no_grad():
        cache = model(torch.tensor([sequences[-1]]), use_cache=True).cache
    assert_rwkv_state_matches(cache, official[f"state{len(LENGTHS) - 1}"], model.config.n_layer)


# ---------------------------------------------------------------------------------------------
# The compiled recurrence and its backward (zoo.fast.kernels.wkv7_cpu, the "wkv7" route of zoo.fast)

needs_kernel = pytest.mark.skipif(not wkv7_cpu.available(),
                                  reason="no C compiler: the model uses its PyTorch WKV paths")


@needs_kernel
@pytest.mark.parametrize("T", [1, 3, 200])
def test_the_kernel_equals_the_recurrence_with_a_carried_state(T):
    """Against the fp64 recurrence, after an 11-token prefix; no worse than PyTorch's fp32."""
    x = wkv_inputs(2, T + 11, 3, 16, seed=T)
    _, state = wkv7_recurrent(*(t[:, :11] for t in x), torch.zeros(2, 3, 16, 16,
                                                                  dtype=torch.float64))
    rest = [t[:, 11:] for t in x]
    ref, ref_state = wkv7_recurrent(*rest, state)
    given = state.float()
    out, out_state = wkv7_cpu.wkv(*(t.float() for t in rest), given)
    fp32, fp32_state = wkv7_recurrent(*(t.float() for t in rest), given)
    assert out.dtype == torch.float32 and out.shape == (2, T, 3, 16)
    assert max_diff(out, ref) <= 2 * max_diff(fp32, ref) + 1e-6
    assert max_diff(out_state, ref_state) <= 2 * max_diff(fp32_state, ref_state) + 1e-6
    assert torch.equal(given, state.float())  # the caller's state is not changed


@needs_kernel
@pytest.mark.parametrize("final_state_used", [True, False], ids=["gS", "no-gS"])
@pytest.mark.parametrize("B, T, N, chunk, threads", [(1, 1, 64, 32, 1), (2, 45, 64, 8, 2),
                                                      (3, 37, 16, 5, 3), (1, 70, 16, 32, 2)])
def test_the_backward_equals_autograd_through_the_fp64_recurrence(B, T, N, chunk, threads,
                                                                  final_state_used,
                                                                  monkeypatch, kernel_split):
    """wkv7_cpu.wkv_with_grad: the gradients of r, log w, k, v, kk, a and a carried state
    within 2e-5 of the largest entry of each (measured <= 7e-7), over chunks of the
    recomputation that do not divide the length, heads split between threads."""
    monkeypatch.setattr(ckernel, "SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(wkv7_cpu, "BACKWARD_CHUNK", chunk)
    x = wkv_inputs(B, T, 3, N, seed=T + N)
    g = torch.Generator().manual_seed(4)
    state = torch.randn(B, 3, N, N, generator=g, dtype=torch.float64)
    gy, gS = torch.randn(x[0].shape, generator=g), torch.randn(state.shape, generator=g)

    def gradients(function, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (*x, state)]
        y, S = function(*leaves)
        loss = (y * gy.to(dtype)).sum() + ((S * gS.to(dtype)).sum() if final_state_used else 0)
        loss.backward()
        return [y, S] + [t.grad for t in leaves]

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = gradients(wkv7_cpu.wkv_with_grad, torch.float32)
    finally:
        torch.set_num_threads(previous)
    reference = gradients(wkv7_recurrent, torch.float64)
    for name, got, want in zip("y S r log_w k v kk a state".split(), ours, reference,
                               strict=True):
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        scale = want.abs().max().item()
        assert max_diff(got, want) <= 2e-5 * scale + 1e-7, (name, max_diff(got, want), scale)


@needs_kernel
def test_the_kernel_refuses_other_dtypes_and_shapes():
    x = [t.float() for t in wkv_inputs(1, 4, 2, 16)]
    state = torch.zeros(1, 2, 16, 16)
    with pytest.raises(ValueError, match="float32 CPU"):
        wkv7_cpu.wkv_with_grad(*(t.double() for t in x), state.double())
    with pytest.raises(ValueError, match=r"shapes: .* expected \(B, T, H, N\) each"):
        wkv7_cpu.wkv(*x[:5], x[5][:, :3], state)


@needs_kernel
def test_the_wkv7_route_runs_the_kernel_for_prefill_decoding_and_training(model, monkeypatch):
    """The routed model's logits, decoding step, loss and every parameter's gradient (the
    training step through the kernel's backward) as the plain model's (chunked PyTorch form)
    within 1e-5 of the largest entry."""
    calls = []
    for module, function in ((wkv7_cpu, "wkv"), (wkv7_cpu, "wkv_with_grad"),
                             (wkv7_step_cpu, "run_step")):
        real = getattr(module, function)
        monkeypatch.setattr(module, function, lambda *args, real=real, function=function:
                            calls.append(function) or real(*args))
    ids = torch.randint(0, 100, (2, 70))
    n_layer = model.config.n_layer
    plain_loss = model(ids, targets=ids).loss
    plain_loss.backward()
    plain_grads = {n: p.grad for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        plain = model(ids).logits
        assert zoo.fast.apply(model, ["wkv7"]) == ("wkv7",)
        try:
            assert zoo.fast.describe(model)[-1].startswith(
                "WKV-7: compiled C loop (zoo.fast.kernels.wkv7_cpu)")
            routed = model(ids, use_cache=True)
            step = model(ids[:, :1], cache=routed.cache)
            # prefill: the time mix's WKV; a decoding step: each block in one compiled call
            assert calls == ["wkv"] * n_layer + ["run_step"] * n_layer
            with torch.enable_grad():
                loss = model(ids, targets=ids).loss
                loss.backward()
            assert calls[2 * n_layer:] == ["wkv_with_grad"] * n_layer
            grads = {n: p.grad for n, p in model.named_parameters()}
        finally:
            zoo.fast.remove(model)
            model.zero_grad(set_to_none=True)
        reference = model(ids[:, :1], cache=model(ids, use_cache=True).cache).logits
    assert max_diff(routed.logits, plain) <= 1e-5
    assert max_diff(step.logits, reference) <= 1e-5
    assert abs(loss.item() - plain_loss.item()) <= 1e-5
    for n, grad in plain_grads.items():
        assert max_diff(grads[n], grad) <= 1e-5 * grad.abs().max().item() + 1e-8, n
