"""GGUF files (llama.cpp's format) read by zoo.from_pretrained: a tiny Llama written as llama.cpp
writes it (interleaved RoPE rows, quantized matrices) gives the logits transformers' own GGUF
loader gives (fp32, within 1e-4), and, unquantized, the original model's; its sizes come from
the header alone; what the zoo cannot read is one line naming the file."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import llama_gguf

import zoo
from zoo.convert import CheckpointError, detect_model
from zoo.convert.detect import read_shapes
from zoo.convert.gguf import read_gguf

transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")


def transformers_logits(path, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent),
                                                              gguf_file=path.name).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("qtype, tied", [("F32", False), ("F16", False), ("Q8_0", False),
                                         ("Q4_0", False), ("F32", True)])
def test_the_zoo_reads_a_gguf_as_transformers_does(qtype, tied, tmp_path):
    """Without output.weight, the head is the embedding (Llama 3.2 1B and 3B)."""
    path, original = llama_gguf(tmp_path / f"tiny-{qtype}.gguf", qtype, tied=tied)
    ids = torch.randint(0, original.config.vocab_size, (2, 24), generator=torch.Generator()
                        .manual_seed(0))
    model = zoo.from_pretrained("llama", path)
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    torch.testing.assert_close(ours, transformers_logits(path, ids), rtol=0, atol=1e-4)
    if qtype == "F32":  # and the file is the original model (the writer's RoPE order is right)
        with torch.no_grad():
            torch.testing.assert_close(ours, original(ids).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("factor, original", [(8.0, 16), (32.0, 8192)])
def test_llama3_rope_scaling_stored_as_rope_freqs_is_read_back(factor, original, tmp_path):
    """Llama 3.1 and 3.2 files hold their RoPE scaling as llama.cpp's per-frequency divisors:
    read back as the scaling, the original model's logits past the original context (16
    tokens: every kind of frequency; 8192: all kept or divided at this head size)."""
    path, original_model = llama_gguf(tmp_path / "llama3.gguf", llama3=(factor, original))
    model = zoo.from_pretrained("llama", path)
    c = model.config
    assert (c.rope_factor, c.rope_original_len) == (factor, original)
    ids = torch.randint(0, original_model.config.vocab_size, (1, 40),
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, original_model(ids).logits,
                                   rtol=0, atol=1e-4)


def test_the_header_gives_the_config_and_shapes_without_the_weights(tmp_path):
    path, original = llama_gguf(tmp_path / "tiny.gguf", "Q8_0")
    assert detect_model(path) == "llama"
    config, shapes, source = read_shapes(path)
    assert source == path and all(t.device.type == "meta" for t in shapes.values())
    full_config, state = read_gguf(path)
    assert config == full_config
    assert {k: tuple(t.shape) for k, t in shapes.items()} == \
        {k: tuple(t.shape) for k, t in state.items()}
    assert {k: tuple(t.shape) for k, t in original.state_dict().items()} == \
        {k: tuple(t.shape) for k, t in state.items()}
    assert (config["num_key_value_heads"], config["vocab_size"]) == (2, original.config.vocab_size)


def test_what_the_zoo_cannot_read_is_one_line_naming_the_file(tmp_path):
    path, _ = llama_gguf(tmp_path / "tiny.gguf")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(path.read_bytes()[:3000])
    cases = [
        (truncated, "cannot read it as GGUF"),
        (llama_gguf(tmp_path / "falcon.gguf", architecture="falcon")[0],
         "a GGUF file of architecture 'falcon'; the zoo reads llama, mistral"),
        (llama_gguf(tmp_path / "scaled.gguf", extra_tensors={  # divisors of no known scaling
            "rope_freqs.weight": torch.linspace(1, 3, 8).numpy()})[0],
         "rope_freqs holds RoPE divisors that are not Llama 3.1's scaling"),
    ]
    for file, message in cases:
        with pytest.raises(CheckpointError, match=message) as error:
            zoo.from_pretrained("llama", file)
        assert str(error.value).startswith(str(file)), error.value
        assert "\n" not in str(error.value)
