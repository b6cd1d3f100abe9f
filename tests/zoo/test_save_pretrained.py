"""zoo.save_pretrained: a zoo model written as a Hugging Face folder loads in transformers' own
class with the zoo's logits (fp32, within 1e-4) and reads back into the zoo exactly; written as
an official RWKV .pth it reads back exactly and runs in the official `rwkv` package."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_rwkv_pip

import zoo
from harness.models import build_variant
from zoo.convert import FORMATS, CheckpointError, formats_of

transformers = pytest.importorskip("transformers")

# (zoo model, config overrides on its tiny variant, the transformers class it becomes)
HF_CASES = {
    "gpt2": ("gpt", {}, "GPT2LMHeadModel"),
    "gpt1": ("gpt", {"pre_ln": False}, "OpenAIGPTLMHeadModel"),
    "bert": ("bert", {}, "BertForPreTraining"),
    "distilbert": ("bert", {"type_vocab_size": 0, "next_sentence_head": False},
                   "DistilBertForMaskedLM"),
    "roberta": ("roberta", {}, "RobertaForMaskedLM"),
    "rwkv": ("rwkv", {}, "RwkvForCausalLM"),
    "llama": ("llama", {"n_kv_head": 2}, "LlamaForCausalLM"),
    "mistral": ("llama", {"window": 8}, "MistralForCausalLM"),
    "mamba": ("mamba", {}, "MambaForCausalLM"),
    "mamba2": ("mamba2", {}, "Mamba2ForCausalLM"),
}


def tiny(name: str, **overrides):
    torch.manual_seed(0)
    model = build_variant(name, "tiny", fast=False, **overrides).eval()
    with torch.no_grad():  # biases and norms away from their initial 0 and 1, so each is checked
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def assert_same_weights(model, back) -> None:
    ours, theirs = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def hf_logits(hf, inputs: dict) -> torch.Tensor:
    kwargs = {k: v for k, v in inputs.items()
              if k in ("input_ids", "attention_mask", "token_type_ids")}
    out = hf(**kwargs)
    return out.logits if hasattr(out, "logits") else out.prediction_logits


@pytest.mark.parametrize("case", list(HF_CASES))
def test_a_hugging_face_folder_loads_in_transformers_with_the_zoo_logits(case, tmp_path):
    name, overrides, architecture = HF_CASES[case]
    model = tiny(name, **overrides)
    folder = zoo.save_pretrained(name, model, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [architecture]
    hf = getattr(transformers, architecture).from_pretrained(folder).eval()
    inputs = model.dummy_inputs(batch=2, seqlen=12, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(hf, inputs), model(**inputs).logits,
                                   rtol=0, atol=1e-4)
    back = zoo.from_pretrained(name, folder, fast=False)
    assert_same_weights(model, back)
    assert back.config == model.config


@pytest.mark.parametrize("name", sorted(FORMATS["official"]))
def test_an_official_pth_reads_back_exactly(name, tmp_path):
    model = tiny(name)
    path = zoo.save_pretrained(name, model, tmp_path / "model.pth", format="official")
    back = zoo.from_pretrained(name, path, fast=False)
    assert_same_weights(model, back)
    ids = model.dummy_inputs(batch=1, seqlen=9, device="cpu")["input_ids"]
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("name", ["rwkv5", "rwkv6", "rwkv7"])
def test_an_official_pth_runs_in_the_rwkv_package(name, tmp_path):
    model = tiny(name)
    path = zoo.save_pretrained(name, model, tmp_path / "model.pth", format="official")
    ids = [3, 17, 5, 9, 30, 2, 64]
    official = run_rwkv_pip(path, [ids], tmp_path, v7=name == "rwkv7")
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(official["logits0"], ours, rtol=0, atol=1e-4)


def test_weights_can_be_stored_in_bfloat16(tmp_path):
    model = tiny("gpt")
    folder = zoo.save_pretrained("gpt", model, tmp_path / "out", dtype=torch.bfloat16)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    back = zoo.from_pretrained("gpt", folder, dtype="auto", fast=False)
    assert next(back.parameters()).dtype == torch.bfloat16
    ours = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    for key, tensor in back.state_dict().items():
        assert torch.equal(tensor, ours[key]), key


def test_extra_config_fields_go_into_config_json(tmp_path):
    folder = zoo.save_pretrained("gpt", tiny("gpt"), tmp_path / "out",
                                 extra_config={"eos_token_id": 7})
    config = transformers.AutoConfig.from_pretrained(folder)
    assert config.eos_token_id == 7


def test_models_without_a_format_are_refused_naming_what_each_format_takes(tmp_path):
    assert formats_of("pangu-pi") == () and formats_of("rwkv") == ("hf", "official")
    with pytest.raises(CheckpointError, match=r"'pangu-pi' has no 'hf'.*'official' takes rwkv"):
        zoo.save_pretrained("pangu-pi", tiny("pangu-pi"), tmp_path / "out")
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'gguf'"):
        zoo.save_pretrained("gpt", tiny("gpt"), tmp_path / "out", format="gguf")
    with pytest.raises(CheckpointError, match="fixes d_ff at 4"):  # GPT-1 in transformers
        zoo.save_pretrained("gpt", tiny("gpt", pre_ln=False, d_ff=100), tmp_path / "out")
    assert not (tmp_path / "out").exists()
