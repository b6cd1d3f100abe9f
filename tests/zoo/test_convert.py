"""zoo.convert in both directions: every exporter (zoo -> Hugging Face / official layout) read
back by its converter gives the zoo config and weights exactly, and the exported folder loads
in transformers with the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomized

import zoo
from zoo.convert import CONVERTERS, EXPORTERS, CheckpointError, rwkv_to_official

TINY = {
    "gpt": dict(vocab_size=96, max_seq_len=40, n_layer=2, n_head=2, d_model=32, d_ff=80),
    "bert": dict(vocab_size=96, max_position_embeddings=40, n_layer=2, n_head=2, d_model=32,
                 d_ff=64),
    "roberta": dict(vocab_size=96, max_position_embeddings=40, n_layer=2, n_head=2, d_model=32,
                    d_ff=64),
    "rwkv": dict(vocab_size=96, n_layer=2, d_model=32),
    "llama": dict(vocab_size=96, max_seq_len=40, n_layer=2, n_head=4, d_model=32, d_ff=48),
    "mamba": dict(vocab_size=96, n_layer=2, d_model=32),
    "mamba2": dict(vocab_size=96, n_layer=2, d_model=32, d_state=16, head_dim=16),
}
CASES = [("gpt", {}), ("gpt", {"pre_ln": False, "d_ff": 128, "activation": "relu"}),
         ("gpt", {"activation": "gelu", "layer_norm_eps": 1e-6, "dropout": 0.0}),
         ("bert", {}), ("bert", {"next_sentence_head": False}), ("roberta", {}), ("rwkv", {}),
         ("rwkv", {"layer_norm_eps": 1e-6, "context_length": 64}), ("rwkv", {"d_ff": 48}),
         # LLaMA's multi-head attention; GQA with Llama 2's eps and Mistral's RoPE base; and
         # Mistral: GQA with a window (5) shorter than the 12 tokens the logits are compared on.
         ("llama", {}), ("llama", {"n_kv_head": 2, "norm_eps": 1e-5, "rope_theta": 1e6}),
         ("llama", {"n_kv_head": 1, "window": 5}),
         ("mamba", {}), ("mamba", {"d_state": 8, "d_conv": 3, "expand": 3, "dt_rank": 5,
                                   "conv_bias": False, "bias": True, "norm_eps": 1e-6}),
         # Mamba-2: 4 heads in one group; and 6 heads in 2 groups (B, C and the gated norm
         # per group) with a clamped step size and chunks shorter than the 12 tokens compared.
         ("mamba2", {}), ("mamba2", {"n_groups": 2, "d_conv": 3, "expand": 3, "conv_bias": False,
                                     "bias": True, "norm_eps": 1e-6, "dt_limit_min": 0.01,
                                     "dt_limit_max": 1.5, "chunk_size": 8})]


def build(name: str, **fields):
    return randomized(zoo.build(name, **{**TINY[name], **fields}).eval())


@pytest.mark.parametrize("name,fields", CASES)
def test_export_then_import_gives_the_model_back_exactly(name, fields):
    model = build(name, **fields)
    config, state = EXPORTERS[name](model.config, model.state_dict())
    assert config["model_type"] and config["architectures"]
    json.dumps(config)  # a config.json
    back_fields, back_state = CONVERTERS[name](config, state)
    for field, value in back_fields.items():
        assert getattr(model.config, field) == value, field
    ours = model.state_dict()
    assert set(back_state) == set(ours)
    for key, tensor in ours.items():
        assert torch.equal(back_state[key], tensor), key


@pytest.mark.parametrize("name,fields", CASES)
def test_an_exported_folder_loads_back_with_from_pretrained(name, fields, tmp_path):
    from safetensors.torch import save_file

    model = build(name, **fields)
    config, state = EXPORTERS[name](model.config, model.state_dict())
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    loaded = zoo.from_pretrained(name, tmp_path)
    ids = torch.randint(0, TINY[name]["vocab_size"], (2, 12))
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)


@pytest.mark.parametrize("name,fields", CASES)
def test_the_exported_model_runs_in_transformers_with_the_same_logits(name, fields):
    transformers = pytest.importorskip("transformers")
    model = build(name, **fields)
    config, state = EXPORTERS[name](model.config, model.state_dict())
    model_type, (architecture,) = config.pop("model_type"), config.pop("architectures")
    hf_class = getattr(transformers, architecture)
    options = {"attn_implementation": "eager"} if model_type in ("llama", "mistral") else {}
    hf = hf_class(transformers.AutoConfig.for_model(model_type, **config, **options)).eval()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    tied = {"lm_head.weight", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
            "lm_head.decoder.weight", "lm_head.decoder.bias"}
    assert not unexpected and set(missing) <= tied, (missing, unexpected)
    ids = torch.randint(0, TINY[name]["vocab_size"], (2, 12))
    with torch.no_grad():
        out = hf(ids)
        theirs = out.prediction_logits if hasattr(out, "prediction_logits") else out.logits
        assert torch.allclose(theirs, model(ids).logits, atol=1e-4)


@pytest.mark.parametrize("name,fields,architecture", [
    ("llama", {}, "LlamaForCausalLM"), ("llama", {"window": 5}, "MistralForCausalLM"),
    ("mamba", {}, "MambaForCausalLM"), ("mamba2", {}, "Mamba2ForCausalLM"),
    ("mamba2", {"chunk_size": 8}, "Mamba2ForCausalLM")])
def test_llama_and_mamba_export_the_fields_transformers_reads(name, fields, architecture):
    transformers = pytest.importorskip("transformers")
    model = build(name, **fields)
    config, state = EXPORTERS[name](model.config, model.state_dict())
    assert config["architectures"] == [architecture]
    model_type = config.pop("model_type")
    config.pop("architectures")
    hf = transformers.AutoConfig.for_model(model_type, **config)
    c = model.config
    if name == "llama":
        assert (hf.num_key_value_heads, hf.head_dim, hf.rms_norm_eps) == (
            c.n_kv_head, c.d_model // c.n_head, c.norm_eps)
        assert hf.rope_parameters["rope_theta"] == c.rope_theta
        assert getattr(hf, "sliding_window", None) == c.window
        assert hf.tie_word_embeddings is False and "lm_head.weight" in state
    else:  # the Mambas: the embedding under Hugging Face's name, the tied head not stored
        assert hf.tie_word_embeddings is True and hf.residual_in_fp32 is False
        assert "backbone.embeddings.weight" in state and "lm_head.weight" not in state
    if name == "mamba":
        assert (hf.intermediate_size, hf.time_step_rank) == (c.d_inner, c.dt_rank)
    elif name == "mamba2":  # every field written, Mamba2Config's defaults being Codestral's
        assert (hf.num_heads, hf.head_dim, hf.n_groups, hf.state_size) == (
            c.n_heads, c.head_dim, c.n_groups, c.d_state)
        assert tuple(hf.time_step_limit) == (c.dt_limit_min, c.dt_limit_max)
        assert hf.chunk_size == (c.chunk_size or 256)  # unset: transformers' own


def test_the_official_rwkv_layout_keeps_the_names_and_widens_time_mix():
    model = build("rwkv")
    official = rwkv_to_official(model.state_dict())
    assert official.keys() == model.state_dict().keys()
    assert official["blocks.0.att.time_mix_k"].shape == (1, 1, 32)
    fields, back = CONVERTERS["rwkv"]({}, official)
    assert fields["n_layer"] == 2 and torch.equal(back["blocks.1.att.time_mix_r"],
                                                  model.blocks[1].att.time_mix_r)


@pytest.mark.parametrize("name,fields,message", [
    ("gpt", {"pre_ln": False, "d_ff": 100}, "d_ff"),
    ("gpt", {"pre_ln": False, "activation": "gelu"}, "no 'gelu' activation"),
    ("roberta", {"next_sentence_head": True}, "next-sentence head"),
    ("llama", {"d_ff": 0}, "d_ff 0"),
    # mixer-only blocks, as MQAR trains them: transformers' GPT-2 and RWKV always have an MLP
    ("gpt", {"d_ff": 0}, "GPT-2 always has a feed-forward; this config has d_ff 0"),
    ("gpt", {"pre_ln": False, "d_ff": 0}, "OpenAI GPT always has a feed-forward"),
    ("rwkv", {"d_ff": 0}, "RWKV always has a channel mix"),
])
def test_configs_hugging_face_cannot_express_are_refused(name, fields, message):
    model = zoo.build(name, **{**TINY[name], **fields}, device="meta")
    with pytest.raises(CheckpointError, match=message):
        EXPORTERS[name](model.config, model.state_dict())


def test_a_gpt2_head_that_is_not_the_embedding_is_refused(tmp_path):
    """GPT-2 ties its head: a stored lm_head.weight must be the embedding (zoo.convert.tie_head,
    which the BLOOM, OPT and Mamba converters share)."""
    from safetensors.torch import load_file, save_file
    from tiny_checkpoints import gpt2_folder

    folder = gpt2_folder(tmp_path / "gpt2", tokenizer=False)
    state = load_file(str(folder / "model.safetensors"))
    save_file({**state, "lm_head.weight": state["transformer.wte.weight"].clone()},
              str(folder / "model.safetensors"))
    model = zoo.from_pretrained("gpt", folder)  # an equal copy loads, tied
    assert model.lm_head.weight is model.wte.weight
    save_file({**state, "lm_head.weight": state["transformer.wte.weight"] + 1},
              str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="'lm_head.weight' differs from the token "
                                              "embedding; zoo.gpt ties its output head to it"):
        zoo.from_pretrained("gpt", folder)


@pytest.mark.parametrize("name", ["rwkv", "rwkv5", "rwkv6", "rwkv7"])
def test_a_mixer_only_rwkv_is_refused_as_an_official_pth(tmp_path, name):
    """The rwkv package reads every block's channel mix (its width off blocks.0.ffn.key), so a
    model with d_ff 0 has no official form; nothing is written."""
    model = zoo.build(name, vocab_size=96, n_layer=2, d_model=64, d_ff=0)
    with pytest.raises(CheckpointError, match="official RWKV .pth always has a channel mix"):
        zoo.convert.save_pretrained(name, model, tmp_path / "model.pth", format="official")
    assert not any(tmp_path.iterdir())
