"""zoo.fast.kernels.wkv7_step_cpu, an RWKV-7 block's decoding step as one compiled call (the "wkv7"
route of zoo.fast, CPU float32 inference), against the plain block it replaces.

The step: block 0 (with ln0, returning its v as v_first) and block 1 (its v moved toward a given
v_first), one row and a few (batch, tokens), heads of 64 and of 16, with and without a channel
mix, from a random cached state carried over three steps, one and two threads: x, v_first and
the new state within 1e-5 of the plain block's largest entry (float32 additions reordered, the
state carried). Weights carry N(0, 0.1^2) noise (the init zeroes several matrices). The models:
cached decoding with every route applied equals the plain full forward within 1e-4, with the
C step counted at every block; apply / remove / applied round-trip the route with the head;
blocks with hooks, gradients or other dtypes take the plain forward.
"""

from __future__ import annotations

import pytest
import torch
from conftest import max_diff, with_noise

import zoo
import zoo.fast
from harness.models import build_variant
from zoo import rwkv5, rwkv7
from zoo.fast import FEW_ROWS
from zoo.fast.kernels import matvec_cpu, wkv7_step_cpu

pytestmark = pytest.mark.skipif(not wkv7_step_cpu.available(),
                                reason="no C compiler: RWKV-7 keeps its PyTorch paths")
TOLERANCE = 1e-5  # of the largest entry of the plain block's output or state


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return with_noise(build_variant("rwkv7", "tiny", fast=False).eval())


@pytest.fixture
def c_calls(monkeypatch):
    """The C step's calls (a call that returned None or fell back is not one)."""
    calls = []
    real = wkv7_step_cpu.run_step
    monkeypatch.setattr(wkv7_step_cpu, "run_step",
                        lambda function, *args: calls.append(function) or real(function, *args))
    return calls


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}-threads")
def threads(request):
    """PyTorch's thread count: with two, the products are shared with matvec_cpu's helper."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


STEP_MODELS = {  # heads of 64 and of 16; with and without a channel mix
    "64": dict(vocab_size=64, n_layer=2, d_model=128, head_size=64, decay_lora=32,
               iclr_lora=16, value_lora=8, gate_lora=24),
    "16-mixer-only": dict(vocab_size=64, n_layer=2, d_model=32, head_size=16, d_ff=0,
                          decay_lora=8, iclr_lora=8, value_lora=8, gate_lora=16),
}


@pytest.mark.parametrize("B, T", [(1, 1), (2, 2), (4, 1)])
@pytest.mark.parametrize("shape", STEP_MODELS)
def test_the_step_equals_the_blocks_forward(shape, B, T, threads, c_calls):
    """Each block over three steps, the step's state and the plain block's each carried: x,
    v_first and the new att_x, WKV state and ffn_x as the plain block's; the given tensors
    unchanged."""
    torch.manual_seed(0)
    model = with_noise(zoo.build("rwkv7", fast=False, **STEP_MODELS[shape]).eval())
    c = model.config
    g = torch.Generator().manual_seed(B * 10 + T)
    for layer, block in enumerate(model.blocks):
        state = (torch.randn(B, c.d_model, generator=g),
                 torch.randn(B, c.n_head, c.head_size, c.head_size, generator=g),
                 torch.randn(B, c.d_model, generator=g))
        plain_state = ours_state = state
        for _ in range(3):
            x = torch.randn(B, T, c.d_model, generator=g)
            v_first = torch.randn(B, T, c.d_model, generator=g) if layer else None
            given = [t.clone() for t in (x, *ours_state)]
            with torch.no_grad():
                plain_x, plain_v, plain_state = block(x, v_first, *plain_state)
                ours_x, ours_v, new_state = wkv7_step_cpu.step(block, x, v_first, *ours_state)
            assert all(torch.equal(a, b) for a, b in zip((x, *ours_state), given, strict=True))
            ours_state = new_state
            for ours, plain in zip((ours_x, ours_v, *ours_state), (plain_x, plain_v, *plain_state),
                                   strict=True):
                assert ours.shape == plain.shape
                assert max_diff(ours, plain) <= TOLERANCE * plain.abs().max().item()
    assert len(c_calls) == 3 * c.n_layer


def test_a_v_first_for_the_first_block_is_refused():
    """Block 0 has no value residual: the step declines (None), as the plain forward fails."""
    c = tiny().config
    block = tiny().blocks[0]
    x = torch.randn(1, 1, c.d_model)
    state = (torch.zeros(1, c.d_model), torch.zeros(1, c.n_head, c.head_size, c.head_size),
             torch.zeros(1, c.d_model))
    with torch.no_grad():
        assert wkv7_step_cpu.step(block, x, torch.randn_like(x), *state) is None


def test_cached_decoding_with_every_route_equals_the_full_forward(c_calls):
    """Two sequences: a 7-token prompt (14 rows: the block's forward), then one token at a time
    (2 rows: the step in every block), against the plain model's full forward."""
    model = tiny()
    ids = torch.randint(0, model.config.vocab_size, (2, 12),
                        generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids).logits
        zoo.fast.apply(model)
        assert zoo.fast.applied(model) == ("linear", "wkv7", "loss")
        out = model(ids[:, :7], use_cache=True)
        assert c_calls == []
        steps = [out.logits]
        for t in range(7, ids.size(1)):
            out = model(ids[:, t:t + 1], cache=out.cache)
            steps.append(out.logits)
    assert len(c_calls) == 5 * model.config.n_layer
    assert max_diff(torch.cat(steps, 1), full) <= 1e-4


def test_apply_remove_applied_round_trip_with_the_head():
    """The route swaps the blocks, the time mixes and the head (by its place, as MatvecHead, over
    an nn.Linear or the linear route's FastLinear); applied() names wkv7 for RWKV-7's head and
    wkv5 for RWKV-5's; remove restores the plain classes, nn.Linear for the head."""
    model = tiny()
    plain_types = {n: type(m) for n, m in model.named_modules()}
    assert zoo.fast.apply(model, ["wkv5"]) == ()  # not RWKV-7's route: nothing, head included
    assert type(model.head) is torch.nn.Linear
    assert zoo.fast.apply(model, ["wkv7"]) == ("wkv7",)
    assert type(model.head) is zoo.fast.rwkv.MatvecHead
    assert all(type(b) is zoo.fast.rwkv.CompiledWKV7Block for b in model.blocks)
    assert all(type(b.att) is zoo.fast.rwkv.CompiledWKV7TimeMix for b in model.blocks)
    zoo.fast.remove(model)
    assert zoo.fast.applied(model) == ()
    assert {n: type(m) for n, m in model.named_modules()} == plain_types
    assert zoo.fast.apply(model, ["linear"]) == ("linear",)
    assert type(model.head) is zoo.fast.FastLinear
    assert zoo.fast.apply(model) == ("linear", "wkv7", "loss")
    assert type(model.head) is zoo.fast.rwkv.MatvecHead
    zoo.fast.remove(model)
    assert type(model.head) is torch.nn.Linear and type(model.blocks[0]) is rwkv7.Block
    rwkv5_model = build_variant("rwkv5", "tiny", fast=True)
    assert type(rwkv5_model.head) is zoo.fast.rwkv.MatvecHead and type(rwkv5_model) is rwkv5.RWKV5
    assert zoo.fast.applied(rwkv5_model) == ("linear", "wkv5", "loss")


def test_the_head_decodes_with_the_compiled_product(monkeypatch):
    """RWKV-7's head under wkv7: a decoding step's product is zoo.fast.kernels.matvec_cpu's,
    prefill's not."""
    model = tiny()
    zoo.fast.apply(model)
    calls = []
    real = matvec_cpu.matvec
    monkeypatch.setattr(matvec_cpu, "matvec", lambda x, *a: calls.append(x.shape) or real(x, *a))
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    with torch.no_grad():
        step = model(ids[:, :1], cache=model(ids, use_cache=True).cache).logits
        zoo.fast.remove(model)
        plain = model(ids[:, :1], cache=model(ids, use_cache=True).cache).logits
    assert calls == [(1, 1, model.config.d_model)]
    assert max_diff(step, plain) <= 1e-5


def test_blocks_with_hooks_take_their_forward(c_calls):
    """A hook inside block 1: that block runs its own forward (3 prompt tokens, then one), the
    hook sees both calls; block 0 still takes the step (3 rows are few enough)."""
    model = tiny()
    zoo.fast.apply(model)
    seen = []
    model.blocks[1].att.receptance.register_forward_hook(lambda *args: seen.append(1))
    with torch.no_grad():
        out = model(torch.randint(0, 100, (1, 3)), use_cache=True)
        model(torch.randint(0, 100, (1, 1)), cache=out.cache)
    assert seen == [1, 1]
    assert len(c_calls) == 2 * (model.config.n_layer - 1)


def test_gradients_and_other_dtypes_take_the_plain_forward(c_calls):
    model = tiny()
    zoo.fast.apply(model)
    ids = torch.randint(0, model.config.vocab_size, (1, FEW_ROWS))
    model(ids, targets=ids).loss.backward()  # training: autograd through the plain forward
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        model.double()(ids)
    assert c_calls == []
