"""zoo.fast, the CPU speed routes, against the plain path they replace.

`linear`: every route (split matrix-vector product, oneDNN, MKL's F.linear with the activation in
place) gives F.linear's numbers, with and without a bias and an activation, and autograd still
works; the kernel for many rows is oneDNN's with AVX-512, MKL's without, or the one
ZOO_LINEAR_KERNEL names. The routes on models:
every zoo model gives its plain logits with the routes applied, in a forward and when decoding
one token at a time, still trains (gradients as the plain model's), and keeps its keys, hooks
and modules; apply / remove / applied round-trip, describe() says which routes run.

Tolerances: the routes only reorder float32 additions. A linear layer is compared with a float64
F.linear at 1e-5; a tiny model's logits (2 to 3 layers, values of order 1 to 10) with the plain
model's at atol 2e-5, rtol 1e-5, and its gradients at atol 1e-5, rtol 1e-4.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import max_diff
from torch import nn

import zoo
import zoo.fast
from harness.models import build_variant
from zoo import rwkv6, rwkv7, t5
from zoo.fast import FEW_ROWS, KERNELS, FastLinear, linear, many_rows_kernel, onednn_available
from zoo.fast.kernels import (
    attention_cpu,
    dropout_cpu,
    loss_cpu,
    scan_cpu,
    wkv5_cpu,
    wkv7_cpu,
    wkv_cpu,
)
from zoo.layers import ACTIVATIONS, FeedForward, MultiHeadAttention

MODELS = sorted(zoo.REGISTRY)
CAUSAL = [n for n in MODELS if getattr(zoo.load_class(n), "causal_lm", False)]
# The routes each model has modules for.
EXPECTED = {"gpt": ("linear", "ffn", "dropout"), "bert": ("linear", "ffn", "dropout"),
            "mamba": ("linear", "scan"), "mamba2": ("linear", "scan"),
            "roberta": ("linear", "ffn", "dropout"), "transformer": ("linear", "ffn", "dropout"),
            "mosaic-bert": ("linear", "dropout"), "pangu-pi": ("linear",),
            "rwkv": ("linear", "ffn", "wkv"), "rwkv5": ("linear", "wkv5"),
            "rwkv6": ("linear", "wkv5"), "rwkv7": ("linear", "wkv7"),
            "llama": ("linear", "ffn"), "gpt-neox": ("linear", "ffn", "dropout"),
            "bloom": ("linear", "ffn", "alibi", "dropout"), "opt": ("linear", "ffn", "dropout"),
            "gpt-j": ("linear", "ffn", "dropout"), "gpt-neo": ("linear", "ffn", "dropout"),
            "t5": ("linear", "dropout"), "bart": ("linear", "ffn", "dropout"),
            "albert": ("linear", "ffn", "dropout"), "ctrl": ("linear", "ffn", "dropout")}
EXPECTED = {name: (*routes, "loss") for name, routes in EXPECTED.items()}  # every model's loss
LOGITS = dict(atol=2e-5, rtol=1e-5)


# ---- the routed linear function ---------------------------------------------------------------

def reference(x, weight, bias, activation):
    y = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    return y if activation is None else ACTIVATIONS[activation](y)


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    """Each kernel for many rows in turn (oneDNN where this torch has it)."""
    if request.param == "onednn" and not onednn_available():
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setattr(zoo.fast.dense, "many_rows_kernel", lambda: request.param)
    return request.param


@pytest.mark.parametrize("rows", [1, 2, FEW_ROWS, FEW_ROWS + 1, 64])
@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
@pytest.mark.parametrize("with_bias", [True, False])
def test_every_route_equals_f_linear(rows, activation, with_bias, kernel):
    torch.manual_seed(rows)
    weight = torch.randn(48, 40) / 40**0.5
    bias = torch.randn(48) if with_bias else None
    x = 2 * torch.randn(rows, 40)
    expected = reference(x, weight, bias, activation)
    with torch.no_grad():
        for shaped in (x, x.view(1, rows, 40)):  # 2-D and 3-D inputs
            out = linear(shaped, weight, bias, activation)
            assert out.shape == (*shaped.shape[:-1], 48) and out.dtype == torch.float32
            torch.testing.assert_close(out.double().view(rows, 48), expected,
                                       atol=1e-5, rtol=1e-5)


def test_odd_widths_transposed_weights_bf16_and_autocast_take_f_linear():
    torch.manual_seed(0)
    x = torch.randn(1, 33)
    with torch.no_grad():
        for weight in (torch.randn(31, 33), torch.randn(33, 32).t()):  # odd rows; not contiguous
            torch.testing.assert_close(linear(x, weight), F.linear(x, weight))
        w16, x16 = torch.randn(32, 33).bfloat16(), x.bfloat16()
        torch.testing.assert_close(linear(x16, w16, activation="relu"), F.relu(F.linear(x16, w16)))
        weight = torch.randn(32, 33)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own product, in bfloat16
            for rows in (1, 64):
                xs = torch.randn(rows, 33)
                out = linear(xs, weight, activation="relu")
                assert out.dtype == torch.bfloat16
                torch.testing.assert_close(out, F.relu(F.linear(xs, weight)))


def test_the_split_product_is_taken_for_few_rows(monkeypatch):
    calls = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm",
                        lambda *a: calls.append((a[0].shape, a[1].stride())) or real_bmm(*a))
    with torch.no_grad():
        linear(torch.randn(1, 16), torch.randn(8, 16))
        linear(torch.randn(FEW_ROWS + 1, 16), torch.randn(8, 16))
    # Two halves of 4 rows each, only for the one-row input; the columns a transposed view
    # (strides (0, 1, 16)): MKL's batched product is 3-5x slower on the same values laid out
    # with strides (0, 1, 1).
    assert calls == [((2, 4, 16), (0, 1, 16))]


@pytest.fixture
def onednn_calls(monkeypatch):
    """The post-op of every call to oneDNN's linear, in order, with oneDNN chosen for many
    rows."""
    if not onednn_available():
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setattr(zoo.fast.dense, "many_rows_kernel", lambda: "onednn")
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise",
                        lambda *a: calls.append(a[3]) or real(*a), raising=False)
    return calls


def test_onednn_runs_for_many_rows(onednn_calls):
    layer = FastLinear(16, 8)
    x = torch.randn(10, 16)
    with torch.no_grad():
        layer(x)
        linear(x, layer.weight, layer.bias, activation="gelu_tanh")
    assert onednn_calls == ["none", "gelu"]


def test_with_gradients_onednn_takes_the_three_products_unless_autocast_runs(onednn_calls):
    layer = FastLinear(16, 8)
    x = torch.randn(10, 16, requires_grad=True)
    layer(x).sum().backward()  # forward, then dy W and dy^T x
    assert onednn_calls == ["none"] * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own bf16 product
        assert layer(x).dtype == torch.bfloat16
    layer(x[:FEW_ROWS])  # few rows: F.linear
    assert len(onednn_calls) == 3


@pytest.mark.parametrize("needs", ["all", "weight only", "input only"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("out_features, in_features", [(48, 40), (200, 8)])
def test_training_products_give_float64_gradients(needs, with_bias, out_features, in_features,
                                                   kernel):
    """The forward and both gradients of a routed linear with gradients (oneDNN's training
    products, or F.linear) against float64 F.linear, for 2-D and 3-D inputs and for the
    expanded gradient a summed loss hands back; (200, 8) is shaped as an LM head (outputs
    many times the inputs), whose weight gradient oneDNN takes as (x^T dy)^T."""
    torch.manual_seed(3)
    for shape in ((37, in_features), (3, 13, in_features)):
        x = torch.randn(*shape, requires_grad=needs != "weight only")
        weight = (torch.randn(out_features, in_features) / in_features**0.5).requires_grad_(
            needs != "input only")
        bias = (torch.randn(out_features, requires_grad=needs != "input only") if with_bias
                else None)
        leaves = [t for t in (x, weight, bias) if t is not None and t.requires_grad]
        doubles = [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None
                   for t in (x, weight, bias)]
        for loss in (lambda y: y.sum(), lambda y: (y * y).sum()):
            got = torch.autograd.grad(loss(linear(x, weight, bias, "gelu")), leaves)
            y64 = reference(*doubles, "gelu")
            torch.testing.assert_close(linear(x, weight, bias, "gelu").double(), y64,
                                       atol=1e-5, rtol=1e-5)
            want = torch.autograd.grad(loss(y64), [d for d in doubles
                                                   if d is not None and d.requires_grad])
            for g, w in zip(got, want, strict=True):
                assert g.dtype == torch.float32
                torch.testing.assert_close(g.double(), w, atol=1e-4, rtol=1e-5)


def test_with_mkl_chosen_oneDNN_never_runs_and_activations_apply_in_place(monkeypatch):
    monkeypatch.setattr(zoo.fast.dense, "many_rows_kernel", lambda: "mkl")
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: pytest.fail("oneDNN"),
                        raising=False)
    relus = []
    real_relu_ = F.relu_
    monkeypatch.setitem(zoo.fast.dense._IN_PLACE, "relu",
                        lambda t: relus.append(t.shape) or real_relu_(t))
    x, w = torch.randn(10, 16), torch.randn(8, 16)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, activation="relu"), F.relu(F.linear(x, w)))
    assert relus == [(10, 8)]


@pytest.mark.parametrize("capability, auto", [("AVX512", "onednn"), ("AVX2", "mkl"),
                                               ("DEFAULT", "mkl")])
def test_the_kernel_is_onednn_with_avx512_unless_the_environment_names_one(monkeypatch,
                                                                           capability, auto):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    try:
        for value, expected in (("", auto), (" Auto ", auto), ("mkl", "mkl"),
                                (" OneDNN ", "onednn")):
            many_rows_kernel.cache_clear()
            monkeypatch.setenv("ZOO_LINEAR_KERNEL", value)
            assert many_rows_kernel() == (expected if onednn_available() else "mkl")
        many_rows_kernel.cache_clear()
        monkeypatch.delenv("ZOO_LINEAR_KERNEL")
        assert many_rows_kernel() == (auto if onednn_available() else "mkl")
        many_rows_kernel.cache_clear()
        monkeypatch.setenv("ZOO_LINEAR_KERNEL", "blas")
        with pytest.raises(ValueError, match="ZOO_LINEAR_KERNEL='blas': expected one of mkl, "
                                             "onednn or auto"):
            many_rows_kernel()
    finally:
        many_rows_kernel.cache_clear()


def test_gradients_flow_through_the_plain_route():
    torch.manual_seed(0)
    layer = FastLinear(16, 8)
    x = torch.randn(1, 16, requires_grad=True)  # one row: the split route would apply
    y = linear(x, layer.weight, layer.bias, activation="gelu")
    y.sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    F.gelu(F.linear(ref_x, layer.weight, layer.bias)).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ValueError, match="activation 'swish' is not one of relu, gelu"):
        linear(torch.randn(2, 4), torch.randn(3, 4), activation="swish")


def test_fast_linear_is_an_nn_linear_with_the_same_state_dict():
    layer = FastLinear(4, 3)
    assert isinstance(layer, torch.nn.Linear)
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_under_torch_compile_it_is_f_linear(monkeypatch):
    """Inductor picks its own kernels and cannot lower the oneDNN call."""
    calls = []
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append("bmm"))
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append("dnn"),
                        raising=False)
    x, w = torch.randn(10, 16), torch.randn(8, 16)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, activation="relu"), F.relu(F.linear(x, w)))
        torch.testing.assert_close(linear(x[:1], w), F.linear(x[:1], w))
    assert calls == []


# ---- the ffn route ----------------------------------------------------------------------------

def test_the_ffn_route_fuses_the_activation_and_keeps_hooks(onednn_calls):
    torch.manual_seed(0)
    ffn = FeedForward(16, 32, activation="gelu_tanh")
    x = torch.randn(1, 10, 16)
    with torch.no_grad():
        plain = ffn(x)
        zoo.fast.apply(ffn, ["ffn"])
        fused = ffn(x)
        assert onednn_calls == ["gelu"]  # fc_in with its activation; fc_out stays plain
        seen = []
        ffn.fc_in.register_forward_hook(lambda module, args, out: seen.append(out.shape))
        hooked = ffn(x)  # a hook on fc_in must see fc_in called: the fusion steps aside
    assert seen == [(1, 10, 32)]
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hooked, plain, atol=1e-5, rtol=1e-5)


def test_barts_feed_forward_fuses_only_where_its_dropout_is_idle(onednn_calls):
    from zoo.bart import FeedForward as BartFeedForward

    torch.manual_seed(0)
    ffn = BartFeedForward(16, 32, "gelu", act_dropout=0.5)
    x = torch.randn(1, 10, 16)
    with torch.no_grad():
        plain = ffn.eval()(x)
        zoo.fast.apply(ffn, ["ffn"])
        assert type(ffn).__name__ == "FusedBartFeedForward"
        fused = ffn(x)
        assert onednn_calls == ["gelu"]  # fc1 with its activation
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    onednn_calls.clear()
    torch.manual_seed(1)
    trained = ffn.train()(x)  # the dropout between the two products works: no fusion
    assert "gelu" not in onednn_calls and (trained != plain).any()


@pytest.mark.parametrize("rows", [1, FEW_ROWS + 1, 40])
def test_the_swiglu_route_equals_the_plain_one_with_either_kernel(rows, kernel, monkeypatch):
    from zoo.llama import SwiGLU

    torch.manual_seed(0)
    ffn = SwiGLU(16, 48)
    x = torch.randn(1, rows, 16)
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", real, raising=False)
    with torch.no_grad():
        plain = ffn(x)
        zoo.fast.apply(ffn, ["ffn"])
        assert type(ffn).__name__ == "FusedSwiGLU"
        monkeypatch.setattr(zoo.fast.dense, "swiglu", lambda *a: calls.append(1) or real_swiglu(*a))
        fused = ffn(x)
        seen = []
        ffn.up_proj.register_forward_hook(lambda module, args, out: seen.append(out.shape))
        hooked = ffn(x)
    assert calls == [1] and seen == [(1, rows, 48)]  # the hook made the fusion step aside
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hooked, plain, atol=1e-5, rtol=1e-5)
    x.requires_grad_()  # with gradients: `linear`'s products, checked below
    torch.testing.assert_close(zoo.fast.dense.swiglu(x, ffn.gate_proj.weight, ffn.up_proj.weight),
                               F.silu(x @ ffn.gate_proj.weight.t()) * (x @ ffn.up_proj.weight.t()))


real_swiglu = zoo.fast.dense.swiglu


def test_swiglu_with_gradients_takes_the_training_products_in_onednn(onednn_calls):
    """Training's gate and up products go through `linear` (oneDNN's three products where it
    is chosen), with float64's gradients."""
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16, requires_grad=True)
    gate, up = (torch.randn(48, 16, requires_grad=True) for _ in range(2))
    zoo.fast.dense.swiglu(x, gate, up).square().sum().backward()
    assert onednn_calls == ["none"] * 6  # two forward products, two gradients of each
    x64, gate64, up64 = (t.detach().double().requires_grad_() for t in (x, gate, up))
    (F.silu(x64 @ gate64.t()) * (x64 @ up64.t())).square().sum().backward()
    for ours, reference in ((x, x64), (gate, gate64), (up, up64)):
        assert max_diff(ours.grad, reference.grad) < 1e-4 * reference.grad.abs().max()


@pytest.mark.parametrize("name, down, up", [("rwkv7", "w1", "w2"), ("rwkv7", "a1", "a2"),
                                            ("rwkv6", "time_decay_w1", "time_decay_w2")])
def test_the_time_mixes_low_rank_projections_take_the_training_products(name, down, up,
                                                                          onednn_calls):
    """RWKV-6's and -7's LoRA projections (x down, then up: (d, rank) and (rank, d)
    parameters) go through `linear` on the route, with the plain `@`'s output and float64's
    gradients."""
    mix = next(m for m in tiny(name, fast=True).modules() if hasattr(m, "lora"))
    x = torch.randn(1, 2 * FEW_ROWS, mix.receptance.in_features, requires_grad=True)
    weights = getattr(mix, down), getattr(mix, up)
    out = mix.lora(x, *weights, torch.tanh)
    out.square().sum().backward()
    assert onednn_calls == ["none"] * 6  # two forward products, two gradients of each
    x64, down64, up64 = (t.detach().double().requires_grad_() for t in (x, *weights))
    plain = {"rwkv6": rwkv6.TimeMix, "rwkv7": rwkv7.TimeMix}[name].lora  # x @ down @ up
    want = plain(mix, x64, down64, up64, torch.tanh)
    want.square().sum().backward()
    assert max_diff(out, want) < 1e-5 * want.abs().max()
    for ours, reference in ((x, x64), (weights[0], down64), (weights[1], up64)):
        assert max_diff(ours.grad, reference.grad) < 1e-4 * reference.grad.abs().max()


# ---- the routes on every model -----------------------------------------------------------------

def without_dropout(model: nn.Module) -> nn.Module:
    """`model` with its dropout probabilities (modules' and attention's) set to 0."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, (MultiHeadAttention, t5.Attention)):
            m.dropout = 0.0
    return model


def training_notes(model: nn.Module, **kwargs) -> tuple[str, ...]:
    """describe(model, training=True, ...) less its last note, the loss's (checked on its own in
    test_describe_a_training_step)."""
    notes = zoo.fast.describe(model, training=True, **kwargs)
    assert notes[-1].startswith("loss: ")
    return notes[:-1]


def tiny(name: str, fast: bool) -> nn.Module:
    """The tiny variant with noise on every parameter, so that no matrix is zero (RWKV's init
    zeroes several) and both builds hold the same weights."""
    torch.manual_seed(0)
    model = build_variant(name, "tiny", fast=fast).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("name", MODELS)
def test_every_route_gives_the_plain_logits(name):
    fast, plain = tiny(name, fast=True), tiny(name, fast=False)
    assert zoo.fast.applied(fast) == EXPECTED[name] and zoo.fast.applied(plain) == ()
    # Every module a route covers was swapped: no plain nn.Linear is left behind (the LM heads,
    # tied to the embeddings, included).
    assert not [n for n, m in fast.named_modules() if type(m) is nn.Linear]
    inputs = plain.dummy_inputs(batch=2, seqlen=11, device="cpu", padded=True)
    with torch.no_grad():
        torch.testing.assert_close(fast(**inputs).logits, plain(**inputs).logits, **LOGITS)


@pytest.mark.parametrize("name", CAUSAL)
def test_decoding_with_the_routes_gives_the_plain_logits(name):
    fast, plain = tiny(name, fast=True), tiny(name, fast=False)
    ids = plain.dummy_inputs(batch=1, seqlen=9, device="cpu")["input_ids"]
    with torch.no_grad():
        expected = plain(ids).logits
        out = fast(ids[:, :3], use_cache=True)
        steps = [out.logits]
        for t in range(3, 9):  # one row per step: the split matrix-vector route
            out = fast(ids[:, t : t + 1], cache=out.cache)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, **LOGITS)


@pytest.mark.parametrize("name", MODELS)
def test_training_under_the_routes_gives_the_plain_gradients(name):
    """With gradients and no dropout, the routes give the plain loss and gradients."""
    grads = []
    for fast in (True, False):
        model = without_dropout(tiny(name, fast).train())  # both runs compute the same thing
        torch.manual_seed(1)
        inputs = model.dummy_inputs(batch=2, seqlen=7, device="cpu")
        logits = model(**inputs).logits
        targets = torch.randint(0, logits.size(-1), logits.shape[:2])
        model(**inputs, targets=targets).loss.backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    assert all(g is not None for g in grads[0].values())
    for key, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_under_bfloat16_autocast(name):
    """Mixed precision (`--dtype bfloat16`: autocast over float32 weights, what the trainer and
    the benchmark's bfloat16 cells run), with the routes: a float32 loss within 5% of float32's
    and a finite float32 gradient for every parameter. (RWKV-7's value residual mixed a
    bfloat16 value with a float32 gate in torch.lerp, which refuses mixed dtypes.)"""
    model = without_dropout(tiny(name, fast=True).train())
    torch.manual_seed(1)
    inputs = model.dummy_inputs(batch=2, seqlen=7, device="cpu")
    targets = torch.randint(0, model(**inputs).logits.size(-1), (2, 7))
    full = model(**inputs, targets=targets).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs, targets=targets).loss
    loss.backward()
    assert loss.dtype == torch.float32
    assert abs(loss.item() - full.item()) <= 0.05 * full.item()
    for key, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, key
        assert torch.isfinite(p.grad).all(), key


@pytest.mark.parametrize("name", MODELS)
def test_apply_remove_round_trip_keeps_modules_keys_and_hooks(name):
    model = tiny(name, fast=False)
    modules = dict(model.named_modules())
    keys = list(model.state_dict())
    seen = []
    first_linear = next(m for m in model.modules() if type(m) is nn.Linear)
    first_linear.register_forward_hook(lambda *args: seen.append(1))

    assert zoo.fast.apply(model) == EXPECTED[name]
    assert zoo.fast.apply(model) == EXPECTED[name]  # idempotent
    assert all(m is modules[n] for n, m in model.named_modules())  # the same objects
    assert list(model.state_dict()) == keys
    assert isinstance(first_linear, FastLinear)
    with torch.no_grad():
        model(**model.dummy_inputs(batch=1, seqlen=5, device="cpu"))
    assert seen  # the hook registered before the swap still runs

    zoo.fast.remove(model)
    assert zoo.fast.applied(model) == ()
    assert {n: type(m) for n, m in model.named_modules()} == \
        {n: type(m) for n, m in tiny(name, fast=False).named_modules()}
    assert zoo.fast.apply(model, ["linear"]) == ("linear",)
    assert zoo.fast.apply(model, "linear") == ("linear",)  # one name, not its letters
    assert zoo.fast.applied(model) == ("linear",)


def test_build_applies_the_routes_unless_told_not_to():
    fields = dict(n_layer=1, d_model=32, n_head=2, vocab_size=64)
    assert zoo.fast.applied(zoo.build("gpt", **fields)) == ("linear", "ffn", "dropout", "loss")
    assert zoo.fast.applied(zoo.build("gpt", fast=False, **fields)) == ()
    cls = zoo.load_class("gpt")
    assert zoo.fast.applied(cls(cls.config_class(**fields))) == ()  # the class itself: plain


def test_the_tied_heads_are_the_embeddings():
    gpt, bert = tiny("gpt", fast=True), tiny("bert", fast=True)
    assert gpt.lm_head.weight is gpt.wte.weight and isinstance(gpt.lm_head, FastLinear)
    decoder = bert.lm_head.decoder
    assert decoder.weight is bert.embeddings.word_embeddings.weight
    assert decoder.bias is bert.lm_head.bias and isinstance(decoder, FastLinear)


def test_unknown_route_is_a_value_error_naming_the_valid_ones():
    with pytest.raises(ValueError, match="unknown fast route 'flash'; valid: linear, ffn, wkv, "
                                         "wkv5, wkv7, scan, alibi, dropout, loss"):
        zoo.fast.apply(tiny("gpt", fast=False), ["linear", "flash"])
    assert set(zoo.fast.ROUTES) == {"linear", "ffn", "wkv", "wkv5", "wkv7", "scan", "alibi",
                                    "dropout", "loss"}
    assert all(isinstance(line, str) and line for line in zoo.fast.ROUTES.values())


@pytest.mark.parametrize("name", MODELS)
def test_describe_says_which_routes_run(name):
    fast, plain = tiny(name, fast=True), tiny(name, fast=False)
    notes, plain_notes = zoo.fast.describe(fast), zoo.fast.describe(plain)
    onednn = many_rows_kernel() == "onednn"
    assert notes[0] == (f"linears: {'oneDNN matmul' if onednn else 'MKL matmul (F.linear)'}, "
                        f"split matrix-vector products for <= {FEW_ROWS} rows (zoo.fast)")
    assert plain_notes[0] == "linears: F.linear"
    assert zoo.fast.describe(fast.to(torch.bfloat16))[0] == "linears: F.linear"  # not float32
    fast.float()
    has_ffn = "ffn" in EXPECTED[name]
    fused = ("feed-forward: activation in oneDNN's matmul pass (zoo.fast)" if onednn
             else "feed-forward: activation in place after the matmul (zoo.fast)")
    assert (fused in notes) == has_ffn
    assert ("feed-forward: activation as a separate op" in plain_notes) == has_ffn
    if name == "rwkv":
        pytorch = "WKV: PyTorch, chunks of 8 for prefill, the recurrence for decoding"
        compiled = "WKV: compiled C loop (zoo.fast.kernels.wkv_cpu)"
        assert notes[-1] == (compiled if wkv_cpu.available() else pytorch)
        assert plain_notes[-1] == pytorch
    elif name in ("rwkv5", "rwkv6"):
        pytorch = "matrix WKV: PyTorch, chunks of 16 for prefill, the recurrence for decoding"
        compiled = ("matrix WKV: compiled C loop with ln_x and the gate "
                    f"(zoo.fast.kernels.wkv5_cpu); <= {FEW_ROWS} rows: a block in one compiled "
                    "call (zoo.fast.kernels.wkv5_step_cpu), the head's product "
                    "zoo.fast.kernels.matvec_cpu's")
        assert notes[-1] == (compiled if wkv5_cpu.available() else pytorch)
        assert plain_notes[-1] == pytorch
        trained = "matrix WKV: compiled C loop and its backward (zoo.fast.kernels.wkv5_cpu)"
        assert training_notes(fast)[-1] == (trained if wkv5_cpu.available()
                                                               else pytorch)
        assert training_notes(fast, dtype=torch.bfloat16)[-1] == (
            trained if wkv5_cpu.available() else pytorch)  # the WKV's inputs are float32
        assert zoo.fast.describe(fast, dtype=torch.bfloat16)[-1] == (
            "matrix WKV: compiled C loop (zoo.fast.kernels.wkv5_cpu)" if wkv5_cpu.available()
            else pytorch)
        assert training_notes(fast, dtype=torch.float64)[-1] == pytorch
        assert training_notes(plain)[-1] == pytorch
    elif name == "rwkv7":
        pytorch = "WKV-7: PyTorch, chunks of 32 for prefill, the recurrence for decoding"
        compiled = ("WKV-7: compiled C loop (zoo.fast.kernels.wkv7_cpu); "
                    f"<= {FEW_ROWS} rows: a block in one compiled call "
                    "(zoo.fast.kernels.wkv7_step_cpu), the head's product "
                    "zoo.fast.kernels.matvec_cpu's")
        assert notes[-1] == (compiled if wkv7_cpu.available() else pytorch)
        assert plain_notes[-1] == pytorch
        trained = "WKV-7: compiled C loop and its backward (zoo.fast.kernels.wkv7_cpu)"
        assert training_notes(fast)[-1] == (trained if wkv7_cpu.available()
                                                               else pytorch)
        assert training_notes(fast, dtype=torch.bfloat16)[-1] == (
            trained if wkv7_cpu.available() else pytorch)
        assert training_notes(fast, dtype=torch.float64)[-1] == pytorch
        assert training_notes(plain)[-1] == pytorch
    else:
        assert not any(n.startswith(("WKV", "matrix WKV")) for n in notes + plain_notes)
    if name == "mamba":
        pytorch = "selective scan: PyTorch, chunks of 16 for prefill, the recurrence for decoding"
        compiled = ("selective scan with its softplus, skip and gate: compiled C loop "
                    "(zoo.fast.kernels.scan_cpu)")
        assert (compiled if scan_cpu.available() else pytorch) in notes
        assert pytorch in plain_notes
        assert (compiled if scan_cpu.available() else pytorch) in zoo.fast.describe(
            fast, training=True)
    else:
        assert not any(n.startswith("selective scan") for n in notes + plain_notes)
    dropout_kinds = (nn.Dropout, MultiHeadAttention)
    if any(isinstance(m, dropout_kinds) for m in plain.modules()):
        kernel = "dropout (training): masks from a C kernel (zoo.fast.kernels.dropout_cpu)"
        assert (kernel in notes) == dropout_cpu.available()
        assert "dropout (training): PyTorch's" in plain_notes
    else:
        assert not any(n.startswith("dropout") for n in notes + plain_notes)


@pytest.mark.parametrize("kernel_name", KERNELS)
def test_describe_a_training_step(kernel_name, monkeypatch):
    monkeypatch.setattr(zoo.fast.dense, "many_rows_kernel", lambda: kernel_name)
    model = tiny("gpt", fast=True)
    linears = ("linears: oneDNN matmul for the forward and both gradients (zoo.fast)"
               if kernel_name == "onednn" else "linears: F.linear")
    in_c = ("attention with dropout: softmax and dropout in C with their backward "
            "(zoo.fast.kernels.attention_cpu), batched products")
    per_head = ", from 1024 keys oneDNN's a head at a time" if kernel_name == "onednn" else ""
    attention = (in_c + per_head,) if attention_cpu.available() else ()
    attention_bf16 = (in_c,) if attention_cpu.available() else ()  # autocast's: batched
    loss = ("loss: cross-entropy in one C pass each way (zoo.fast.kernels.loss_cpu)"
            if loss_cpu.available() else "loss: F.cross_entropy")
    assert zoo.fast.describe(model, training=True) == (
        linears, "feed-forward: activation as a separate op",
        "dropout (training): masks from a C kernel (zoo.fast.kernels.dropout_cpu)"
        if dropout_cpu.available() else "dropout (training): PyTorch's", *attention, loss)
    autocast = zoo.fast.describe(model, training=True, dtype=torch.bfloat16)
    assert autocast[2:] == (
        "dropout (training): masks from a C kernel (zoo.fast.kernels.dropout_cpu)"
        if dropout_cpu.available() else "dropout (training): PyTorch's", *attention_bf16, loss)
    half = zoo.fast.describe(model, training=True, dtype=torch.float16)
    assert half[-2:] == ("dropout (training): PyTorch's", "loss: F.cross_entropy")
    assert "loss" not in " ".join(zoo.fast.describe(model))  # inference computes no loss
    assert autocast[0] == "linears: F.linear"  # autocast takes its own bfloat16 product
