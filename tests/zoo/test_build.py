"""zoo.build and zoo.from_pretrained (plain fields), and the harness's builder of catalog
variants."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch

import zoo
from harness.catalog import CatalogError
from harness.models import build, build_variant
from zoo.convert import CheckpointError
from zoo.convert.common import read_state_dict
from zoo.convert.detect import read_file_shapes


def test_every_registered_model_builds_from_its_small_variant_on_meta():
    for name in zoo.REGISTRY:
        model = build_variant(name, "small", device="meta")
        assert model.config.vocab_size == 8192
        assert next(model.parameters()).device.type == "meta"


def test_overrides_win_over_the_variant():
    model = build_variant("gpt", "tiny", n_layer=1)
    assert model.config.n_layer == 1


def test_zoo_build_takes_plain_fields_only():
    model = zoo.build("gpt", n_layer=2, d_model=32, n_head=2, vocab_size=64, device="meta")
    assert (model.config.n_layer, model.config.d_model) == (2, 32)
    with pytest.raises(TypeError, match="variant"):
        zoo.build("gpt", variant="tiny")


def test_zoo_build_honours_an_enclosing_device_block():
    with torch.device("meta"):
        model = zoo.build("gpt", n_layer=1)
        built = build("gpt", "tiny").model
    assert next(model.parameters()).device.type == "meta"
    assert next(built.parameters()).device.type == "meta"


def test_the_zoo_imports_without_the_harness_or_yaml():
    code = ("import sys; sys.modules['harness'] = None; sys.modules['yaml'] = None; "
            "import zoo; m = zoo.build('gpt', n_layer=2); print(m.config.n_layer)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"


def test_unknown_model_or_variant():
    with pytest.raises(KeyError, match="unknown zoo model 'gtp'"):
        zoo.build("gtp")
    with pytest.raises(CatalogError, match="no variant 'smal'.*'small'"):
        build_variant("rwkv", "smal")


def test_the_builder_seeds_fits_the_length_and_casts():
    a = build("gpt", "tiny", seed=3, seqlen=10_000, dtype=torch.bfloat16)
    b, c = build("gpt", "tiny", seed=3), build("gpt", "tiny", seed=3, seqlen=1024)
    assert a.model.config.max_seq_len == 10_000 and "position table extended" in a.notes[0]
    assert b.notes == c.notes == () and next(a.model.parameters()).dtype == torch.bfloat16
    assert torch.equal(b.model.wte.weight, c.model.wte.weight)


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


@pytest.mark.parametrize("content", [b"not a pickle\n", pickle.dumps({"w": object})])
def test_a_foreign_pickle_is_refused_without_advice_to_run_its_code(tmp_path, content):
    """torch.load's refusal starts by advising weights_only=False; the error keeps only the
    line the safe unpickler stopped at, in one line, and names the file."""
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(content)
    for read in (read_state_dict, read_file_shapes):
        with pytest.raises(CheckpointError) as caught:
            read(weights)
        message = str(caught.value)
        assert message.startswith(f"{weights}: cannot read weights (not a file of tensors")
        assert "stopped at: Unsupported operand" in message
        assert "weights_only" not in message and "\n" not in message
