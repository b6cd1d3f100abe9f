"""zoo.build and zoo.from_pretrained: the registry and the catalog's variants."""

from __future__ import annotations

import pytest

import zoo
from harness.catalog import CatalogError
from zoo.convert import CheckpointError


def test_every_registered_model_builds_from_its_small_variant_on_meta():
    for name in zoo.REGISTRY:
        model = zoo.build(name, "small", device="meta")
        assert model.config.vocab_size == 8192
        assert next(model.parameters()).device.type == "meta"


def test_overrides_win_over_the_variant():
    model = zoo.build("gpt", "tiny", n_layer=1)
    assert model.config.n_layer == 1


def test_unknown_model_or_variant():
    with pytest.raises(KeyError, match="unknown zoo model 'gtp'"):
        zoo.build("gtp")
    with pytest.raises(CatalogError, match="no variant 'smal'.*'small'"):
        zoo.build("rwkv", "smal")


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        zoo.from_pretrained("gpt", tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no config.json"):
        zoo.from_pretrained("gpt", tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        zoo.from_pretrained("gpt", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)  # truncated
    with pytest.raises(CheckpointError, match="cannot read weights"):
        zoo.from_pretrained("gpt", tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint converter for zoo model 'pangu-pi'"):
        zoo.from_pretrained("pangu-pi", tmp_path)
