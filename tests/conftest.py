"""Shared fixtures and helpers: small catalogs written to a temporary folder, a corpus, random
weights, and imports that skip only the tests that need them."""

from __future__ import annotations

import math
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
