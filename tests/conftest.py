"""Shared fixtures and helpers: small catalogs written to a temporary folder, a corpus, random
weights, and imports that skip only the tests that need them."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml


def valid_entry(entry_id: str, **fields) -> dict:
    """A minimal entry that passes the schema; keyword arguments replace or add fields."""
    entry = {
        "id": entry_id,
        "name": entry_id.upper(),
        "family": "Transformer",
        "architecture": "decoder",
        "pretraining_task": ["LM"],
        "extension": "An extension.",
        "application": "An application.",
        "corpus": "A corpus.",
        "date": "2020-01",
        "params": [{"label": "base", "count": "100M"}],
        "license": "Open, MIT",
        "lab": "A lab",
        "paper": {"title": "A paper", "url": "https://example.org/paper"},
    }
    entry.update(fields)
    return entry


@pytest.fixture
def write_catalog(tmp_path: Path):
    """Write entries (dicts, or raw text for malformed files) as `<id>.yaml` under a temp folder.
    The folder always holds a valid `transformer` root entry unless one is given."""

    def write(**files: dict | str) -> Path:
        folder = tmp_path / "catalog"
        folder.mkdir(exist_ok=True)
        files.setdefault("transformer", valid_entry(
            "transformer", name="Transformer", architecture="encoder-decoder", date="2017-06"))
        for stem, content in files.items():
            text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
            (folder / f"{stem}.yaml").write_text(text, encoding="utf-8")
        return folder

    return write


def write_corpus(folder: Path) -> Path:
    """A ~40 KB text file of varied sentences for quick quality runs (split 90/5/5 by
    position, as a user's single-file corpus is)."""
    words = ("the model reads a sequence of tokens and predicts the next one while attention "
             "mixes positions and the recurrence keeps a state of fixed size").split()
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(5 + i % 9)) + "."
             for i in range(800)]
    path = folder / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class _LazyModule:
    """A module imported on first use; a test that uses it is skipped (only that test) where
    the package is not installed. Module-level `pytest.importorskip` would skip every test of
    the file, also those that never touch the package."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):  # pytest's own probing of module globals must not import
            raise AttributeError(attr)
        return getattr(pytest.importorskip(self._name), attr)


def lazy_import(name: str) -> _LazyModule:
    return _LazyModule(name)


def installed(name: str) -> bool:
    """Whether `name` imports here."""
    import importlib

    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference of two tensors of one shape, taken in fp64."""
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.double() - b.double()).abs().max().item()


def tiny_state_space(name: str) -> torch.nn.Module:
    """A 2-layer Mamba or Mamba-2 (vocabulary 100, width 32; Mamba-2: heads of 16, d_state 16,
    chunks of 8) without the routes, noise on every parameter so that none is zero."""
    import zoo

    torch.manual_seed(0)
    fields = dict(vocab_size=100, n_layer=2, d_model=32)
    if name == "mamba2":
        fields.update(head_dim=16, d_state=16, chunk_size=8)
    model = zoo.build(name, fast=False, **fields)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def train_and_decode(model: torch.nn.Module, ids: torch.Tensor):
    """A training step's loss and every parameter's gradient (cleared after), then prefill of
    `ids` with the cache and one decoding step after it: (loss, grads, prefill output, the
    step's logits)."""
    loss = model(ids, targets=ids).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        prefill = model(ids, use_cache=True)
        step = model(ids[:, :1], cache=prefill.cache).logits
    return loss, grads, prefill, step


def one_line(excinfo) -> str:
    """The message of an error caught by pytest.raises, checked to be a single line."""
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def with_noise(model: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """`model` with N(0, scale^2) noise added to every parameter, in place: the official inits
    zero several of RWKV's matrices and set others to constants, on which a wrong kernel could
    still agree with the plain path."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def randomized(model: torch.nn.Module, seed: int = 7) -> torch.nn.Module:
    """Random weights everywhere, so that a mis-mapped tensor shows (official inits leave
    biases, LayerNorms and several RWKV matrices at constants); RWKV's time_* vectors in their
    working ranges."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("time_decay"):
                p.copy_(torch.rand(p.shape, generator=g) * 8 - 5)
            elif name.endswith("time_first"):
                p.copy_(math.log(0.3) + 0.5 * noise)
            elif "time_mix" in name:
                p.copy_(torch.rand(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(noise / math.sqrt(p.shape[1]))
            else:
                p.add_(0.1 * noise)
    return model


# The official `rwkv` package (0.8.x) run in a subprocess: RWKV_V7_ON switches the whole module
# to RWKV-7 at import (and forces TorchScript), so it must be set, or not, before the import.
RWKV_PIP_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ.pop("RWKV_V7_ON", None)
    v7 = sys.argv[4] == "7"
    os.environ.update(RWKV_JIT_ON="1" if v7 else "0", RWKV_CUDA_ON="0")
    if v7:
        os.environ["RWKV_V7_ON"] = "1"
    import torch
    from rwkv.model import RWKV
    model = RWKV(model=sys.argv[1], strategy="cpu fp32")  # the path without .pth
    out = {"version": str(float(getattr(model, "version", 7)))}  # "5.2", "6.0", "7.0"
    for i, ids in enumerate(eval(sys.argv[2])):
        logits, state = model.forward(ids, None, full_output=True)
        out[f"logits{i}"] = logits.reshape(len(ids), -1).clone()
        out[f"state{i}"] = [s.clone() for s in state]
    torch.save(out, sys.argv[3])
""")


def run_rwkv_pip(path: Path, sequences: list[list[int]], out_dir: Path, v7: bool = False) -> dict:
    """The official package's fp32 CPU logits and states for each token list, from an official
    .pth file: {"version", "logits{i}": (T, V), "state{i}": the package's state list}."""
    pytest.importorskip("rwkv")
    out = out_dir / "rwkv-pip.pt"
    subprocess.run([sys.executable, "-c", RWKV_PIP_SCRIPT, str(path.with_suffix("")),
                    repr(sequences), str(out), "7" if v7 else "5-6"],
                   check=True, capture_output=True, timeout=120)
    return torch.load(out, weights_only=True)


def assert_rwkv_state_matches(cache, official_state: list[torch.Tensor], n_layer: int) -> None:
    """RWKV-5/6/7: the package keeps three tensors per layer, att_x, the (H, N, N) WKV state and
    ffn_x (the zoo's cache.att_x / wkv / ffn_x of batch row 0, in the same orientation): the
    token-shift vectors within 1e-5, the WKV state within 1e-4 of its largest entry."""
    for i in range(n_layer):
        att_x, wkv, ffn_x = official_state[3 * i:3 * i + 3]
        assert (cache.att_x[i, 0] - att_x).abs().max() <= 1e-5, f"layer {i} att_x"
        assert (cache.wkv[i, 0] - wkv).abs().max() <= 1e-4 * wkv.abs().max(), f"layer {i} wkv"
        assert (cache.ffn_x[i, 0] - ffn_x).abs().max() <= 1e-5, f"layer {i} ffn_x"


# Checks shared by the RWKV versions with a matrix state (tests/zoo/test_rwkv5.py and
# test_rwkv6.py), on a tiny random model read from an official-layout file (vocabulary 100,
# two heads of 16): each test there states what it checks and calls one of these.



def check_official_round_trip(model, official_file: Path, to_official) -> None:
    """The zoo weights written back in the official layout equal the file, key for key."""
    written = to_official(model.state_dict())
    original = torch.load(official_file, weights_only=True)
    assert written.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(written[key], tensor), key


def check_chunk_size_invariance(name: str, official_file: Path) -> None:
    """Chunks of 1, 7, 16 and 64 over 45 tokens: the same logits within 1e-5 (fp32)."""
    import zoo

    ids = torch.randint(0, 100, (2, 45), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [zoo.from_pretrained(name, official_file, fast=False, chunk_size=c)(ids).logits
                  for c in (1, 7, 16, 64)]
    for other in logits[1:]:
        assert max_diff(other, logits[0]) <= 1e-5


def check_cached_decoding(model, state_class) -> None:
    """A prompt, then one token at a time, then a chunk, from the carried state, equal to the
    full forward within 1e-5 (fp32); the state is never modified in place."""
    ids = torch.randint(0, 100, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits
        prompt = model(ids[:, :17], use_cache=True)
        assert isinstance(prompt.cache, state_class)
        assert prompt.cache.wkv.shape == (model.config.n_layer, 3, 2, 16, 16)
        out, cache = [prompt.logits], prompt.cache
        for t in range(17, 22):
            step = model(ids[:, t:t + 1], cache=cache)
            out.append(step.logits)
            cache = step.cache
        out.append(model(ids[:, 22:], cache=cache).logits)
        again = model(ids[:, 17:], cache=prompt.cache)
    assert max_diff(torch.cat(out, 1), full) <= 1e-5
    assert max_diff(again.logits, full[:, 17:]) <= 1e-5
    assert model(ids[:, :5]).cache is None


def check_fp64_chunked_equals_recurrence(name: str, official_file: Path, monkeypatch) -> None:
    """The whole model in fp64, prefill through the chunked WKV (chunks of 16, 45 tokens),
    against the same model with the per-token recurrence in its place: logits, and the gradient
    of every weight, to 1e-10 (relative to that gradient's largest entry, at least 1e-3)."""
    import importlib

    import zoo
    from zoo.layers import matrix_wkv_recurrent

    model = zoo.from_pretrained(name, official_file, fast=False).double()
    ids = torch.randint(0, 100, (2, 45), generator=torch.Generator().manual_seed(3))
    names, params = zip(*model.named_parameters(), strict=True)
    results = []
    for recurrent in (False, True):
        if recurrent:
            monkeypatch.setattr(importlib.import_module("zoo.layers.matrix_wkv"),
                                "matrix_wkv_chunked",
                                lambda r, log_w, k, v, u, S, L: matrix_wkv_recurrent(
                                    r, log_w, k, v, u, S))
        out = model(ids, targets=ids)
        results.append((out.logits, torch.autograd.grad(out.loss, params)))
    (logits, grads), (ref_logits, ref_grads) = results
    assert max_diff(logits, ref_logits) <= 1e-10
    for weight, grad, ref in zip(names, grads, ref_grads, strict=True):
        assert max_diff(grad, ref) <= 1e-10 * max(ref.abs().max().item(), 1e-3), weight


def check_bf16_with_an_fp32_state(name: str, official_file: Path) -> None:
    """bf16 weights and activations with the WKV, ln_x and the state in fp32 (as the pip
    package keeps them): the logits within 0.05 of fp32's on average and 15% of the largest
    logit everywhere (RWKV-7's bf16 bounds)."""
    import zoo

    model = zoo.from_pretrained(name, official_file, fast=False)
    ids = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
        out = model.to(torch.bfloat16)(ids, use_cache=True)
    assert out.logits.dtype == torch.bfloat16 and out.cache.wkv.dtype == torch.float32
    assert out.cache.att_x.dtype == torch.bfloat16
    assert (out.logits.float() - ref).abs().mean() <= 0.05
    assert max_diff(out.logits, ref) <= 0.15 * ref.abs().max().item()


def check_generate_is_greedy(model) -> None:
    """generate's tokens are the argmax of the full forward over them."""
    prompt = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens = model.generate(prompt, max_new_tokens=7)
        full = model(tokens[:, :-1]).logits
    assert tokens.shape == (2, 13)
    assert torch.equal(full[:, 5:].argmax(-1), tokens[:, 6:])


def check_blocks_start_as_the_identity(name: str) -> None:
    """From scratch (the `tiny` variant) the official init zeroes att.output and ffn.value:
    every block adds nothing, so the logits are head(ln_out(ln0(emb))) within 1e-5; the
    gradients reach those two matrices."""
    from harness.models import build_variant

    torch.manual_seed(0)
    model = build_variant(name, "tiny")
    ids = torch.randint(0, model.config.vocab_size, (2, 20))
    out = model(ids[:, :-1], targets=ids[:, 1:])
    expected = model.head(model.ln_out(model.blocks[0].ln0(model.emb(ids[:, :-1]))))
    assert max_diff(out.logits, expected) <= 1e-5
    out.loss.backward()
    for block in model.blocks:
        for grad in (block.att.output.weight.grad, block.ffn.value.weight.grad):
            assert torch.isfinite(grad).all() and grad.abs().max() > 0


@pytest.fixture(params=["openmp-team", "own-threads"])
def kernel_split(request, monkeypatch):
    """How the C kernels' training forms split their work: in one OpenMP region of PyTorch's runtime
    (where the kernels were built with OpenMP, the default), or between the kernels' own threads
    (zoo.fast.kernels.ckernel.run_ranges: the way without OpenMP); both must give the same
    numbers."""
    from zoo.fast.kernels import ckernel

    if request.param == "own-threads":  # every kernel splits its work by ckernel.split
        monkeypatch.setattr(ckernel, "team", lambda library, name: None)
    return request.param


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n}-threads")
def kernel_threads(request, monkeypatch):
    """PyTorch's thread count, 1 to 3, with the C kernels' work split between the threads at
    any size (zoo.fast.kernels.ckernel.SPLIT_MIN_WORK set to 0)."""
    from zoo.fast.kernels import ckernel

    monkeypatch.setattr(ckernel, "SPLIT_MIN_WORK", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)
