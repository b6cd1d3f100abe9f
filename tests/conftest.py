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
