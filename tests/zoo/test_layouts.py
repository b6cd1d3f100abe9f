"""Published checkpoints as people have them (issue 20): every common Hugging Face layout of the
supported families loads through zoo.from_pretrained, with a loading report, and gives Hugging
Face's numbers. Each folder is written by Hugging Face's own classes from a tiny random config
(no download): base models without a head, task-head classes, pretraining / LM-head classes,
sharded checkpoints, bf16 files. Bad input is one line naming the file and the key or field."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import lazy_import, one_line, randomized

import zoo
from zoo.convert import CheckpointError, LoadingInfo

transformers = lazy_import("transformers")

VOCAB = 99
BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=37, max_position_embeddings=40)
GPT = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=40, bos_token_id=0,
           eos_token_id=0, pad_token_id=0)
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=0,
             pad_token_id=0)
CONFIGS = {  # Hugging Face config class -> tiny fields
    "BertConfig": BERT, "RobertaConfig": BERT, "GPT2Config": GPT,
    "OpenAIGPTConfig": dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=40),
    "LlamaConfig": LLAMA, "MistralConfig": {**LLAMA, "sliding_window": 5},
    "MambaConfig": dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8),
    "Mamba2Config": dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8,
                         num_heads=4, head_dim=16, n_groups=1),
    "RwkvConfig": dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, context_length=64,
                       rescale_every=0),
}
CONFIG_OF = {"Bert": "BertConfig", "Roberta": "RobertaConfig", "GPT2": "GPT2Config",
             "OpenAIGPT": "OpenAIGPTConfig", "Llama": "LlamaConfig", "Mistral": "MistralConfig",
             "Mamba2": "Mamba2Config", "Mamba": "MambaConfig", "Rwkv": "RwkvConfig"}
BERT_MLM_HEAD = ("lm_head.bias", "lm_head.dense.bias", "lm_head.dense.weight", "lm_head.ln.bias",
                 "lm_head.ln.weight")
ENCODERS = ("bert", "roberta")


def hf_model(architecture: str, **fields):
    """A Hugging Face model of class `architecture` from its family's tiny config, with random
    weights everywhere (not the init's constant LayerNorms and zero biases)."""
    family = next(f for f in CONFIG_OF if architecture.startswith(f))
    config_class = getattr(transformers, CONFIG_OF[family])
    config = config_class(**{**CONFIGS[CONFIG_OF[family]], **fields})
    torch.manual_seed(0)
    return randomized(getattr(transformers, architecture)(config)).eval()


def saved(architecture: str, folder, **fields):
    model = hf_model(architecture, **fields)
    model.save_pretrained(folder)
    return model


def inputs(name: str) -> dict:
    """Token ids (2, 9), and for the encoders a right-padded second row with its mask."""
    ids = torch.randint(2, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    if name not in ENCODERS:
        return {"input_ids": ids}
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask}


def assert_same_hidden_states(model, hf_base, name: str) -> None:
    kwargs = inputs(name)
    with torch.no_grad():
        theirs = hf_base(**kwargs).last_hidden_state
        ours = model.hidden_states(**kwargs)
    real = kwargs.get("attention_mask", torch.ones(2, 9)).bool()
    assert (ours - theirs)[real].abs().max() <= 1e-4


def load(name: str, folder, **kwargs) -> tuple[torch.nn.Module, LoadingInfo]:
    return zoo.from_pretrained(name, folder, output_loading_info=True, **kwargs)


# ---- base models: the body loads, the head is new (or the tied embedding) --------------------

HEADLESS = [  # (zoo model, Hugging Face base class, missing (new heads), unused)
    ("bert", "BertModel", BERT_MLM_HEAD, ("pooler.dense.bias", "pooler.dense.weight")),
    ("roberta", "RobertaModel", BERT_MLM_HEAD, ("pooler.dense.bias", "pooler.dense.weight")),
    ("gpt", "GPT2Model", (), ()),  # the tied head is the embedding: not missing
    ("gpt", "OpenAIGPTModel", (), ()),
    ("llama", "LlamaModel", ("lm_head.weight",), ()),
    ("llama", "MistralModel", ("lm_head.weight",), ()),
    ("mamba", "MambaModel", (), ()),
    ("mamba2", "Mamba2Model", (), ()),
    ("rwkv", "RwkvModel", ("head.weight",), ()),
]


@pytest.mark.parametrize("name,architecture,missing,unused", HEADLESS)
def test_a_headless_base_model_loads_with_its_head_new(name, architecture, missing, unused,
                                                       tmp_path):
    hf = saved(architecture, tmp_path)
    torch.manual_seed(3)
    model, info = load(name, tmp_path)
    assert info == LoadingInfo(source=tmp_path / "model.safetensors", architecture=architecture,
                               missing=missing, unused=unused, dtype=torch.float32,
                               checkpoint_dtype=torch.float32)
    assert_same_hidden_states(model, hf, name)
    # The new head is the model's own initialisation: the same draws as building it afresh.
    torch.manual_seed(3)
    fresh = type(model)(model.config)
    own = fresh.state_dict()
    for key in missing:
        assert torch.equal(model.state_dict()[key], own[key]), key
    with torch.no_grad():
        assert torch.isfinite(model(**inputs(name)).logits).all()


def test_a_tied_head_left_out_is_the_embedding(tmp_path):
    saved("GPT2Model", tmp_path)
    model = zoo.from_pretrained("gpt", tmp_path)
    assert model.lm_head.weight is model.wte.weight


# ---- task-head classes: the body loads, the task head is unused -----------------------------

TASK_HEADS = [  # (zoo model, Hugging Face class, missing, unused)
    ("bert", "BertForSequenceClassification", BERT_MLM_HEAD,
     ("bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
      "classifier.weight")),
    ("bert", "BertForTokenClassification", BERT_MLM_HEAD, ("classifier.bias", "classifier.weight")),
    ("bert", "BertForQuestionAnswering", BERT_MLM_HEAD, ("qa_outputs.bias", "qa_outputs.weight")),
    ("bert", "BertForMultipleChoice", BERT_MLM_HEAD,
     ("bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
      "classifier.weight")),
    ("roberta", "RobertaForSequenceClassification", BERT_MLM_HEAD,
     ("classifier.dense.bias", "classifier.dense.weight", "classifier.out_proj.bias",
      "classifier.out_proj.weight")),
    ("roberta", "RobertaForTokenClassification", BERT_MLM_HEAD,
     ("classifier.bias", "classifier.weight")),
    ("gpt", "GPT2ForSequenceClassification", (), ("score.weight",)),
    ("gpt", "GPT2ForTokenClassification", (), ("classifier.bias", "classifier.weight")),
    ("gpt", "GPT2DoubleHeadsModel", (),
     ("multiple_choice_head.summary.bias", "multiple_choice_head.summary.weight")),
    ("gpt", "OpenAIGPTForSequenceClassification", (), ("score.weight",)),
    ("llama", "LlamaForSequenceClassification", ("lm_head.weight",), ("score.weight",)),
    ("llama", "LlamaForQuestionAnswering", ("lm_head.weight",),  # its body is `transformer.`
     ("qa_outputs.bias", "qa_outputs.weight")),
    ("llama", "MistralForTokenClassification", ("lm_head.weight",), ("score.bias", "score.weight")),
]


@pytest.mark.parametrize("name,architecture,missing,unused", TASK_HEADS)
def test_a_task_head_class_loads_its_body_and_leaves_the_head_unused(name, architecture, missing,
                                                                     unused, tmp_path):
    hf = saved(architecture, tmp_path)
    model, info = load(name, tmp_path)
    assert (info.architecture, info.missing, info.unused) == (architecture, missing, unused)
    assert_same_hidden_states(model, hf.base_model, name)


PRETRAINING = [("bert", "BertForPreTraining"), ("bert", "BertForMaskedLM"),
               ("bert", "BertForNextSentencePrediction"), ("roberta", "RobertaForMaskedLM"),
               ("gpt", "GPT2LMHeadModel"), ("gpt", "OpenAIGPTLMHeadModel"),
               ("llama", "LlamaForCausalLM"), ("mamba", "MambaForCausalLM"),
               ("rwkv", "RwkvForCausalLM")]


@pytest.mark.parametrize("name,architecture", PRETRAINING)
def test_pretraining_and_lm_head_classes_load_whole(name, architecture, tmp_path):
    hf = saved(architecture, tmp_path)
    model, info = load(name, tmp_path)
    # BertForNextSentencePrediction has the NSP head but no masked-LM head: that one is new.
    missing = BERT_MLM_HEAD if architecture == "BertForNextSentencePrediction" else ()
    assert (info.architecture, info.missing, info.unused) == (architecture, missing, ())
    assert_same_hidden_states(model, hf.base_model, name)
    if not missing:
        kwargs = inputs(name)
        real = kwargs.get("attention_mask", torch.ones(2, 9)).bool()
        with torch.no_grad():
            out = hf(**kwargs)
            theirs = out.prediction_logits if hasattr(out, "prediction_logits") else out.logits
            assert (model(**kwargs).logits - theirs)[real].abs().max() <= 1e-4


def test_a_causal_bert_is_refused(tmp_path):
    saved("BertLMHeadModel", tmp_path, is_decoder=True)
    with pytest.raises(CheckpointError, match="is_decoder is true"):
        zoo.from_pretrained("bert", tmp_path)


# ---- the acceptance ------------------------------------------------------------------

def test_a_headless_bert_gives_sentence_embeddings(tmp_path):
    """The commonest published encoder: a BertModel folder (a sentence-embedding model). Its
    mean-pooled final hidden states are Hugging Face's."""
    hf = saved("BertModel", tmp_path)
    model, info = load("bert", tmp_path)
    assert info.missing == BERT_MLM_HEAD and info.unused == ("pooler.dense.bias",
                                                             "pooler.dense.weight")
    kwargs = inputs("bert")
    mask = kwargs["attention_mask"][..., None]  # (B, T, 1)
    with torch.no_grad():
        h = model.hidden_states(**kwargs)  # (B, T, C)
        theirs = hf(**kwargs).last_hidden_state
    ours_mean = (h * mask).sum(1) / mask.sum(1)
    theirs_mean = (theirs * mask).sum(1) / mask.sum(1)
    assert ours_mean.shape == (2, 32) and (ours_mean - theirs_mean).abs().max() <= 1e-4


def write_bin_shards(model, folder, max_shard_size: str) -> None:
    """A sharded pytorch_model.bin checkpoint as transformers 4's save_pretrained(
    safe_serialization=False) wrote it (transformers 5 writes safetensors only): shards and a
    pytorch_model.bin.index.json by huggingface_hub's splitter."""
    from huggingface_hub import split_torch_state_dict_into_shards

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="pytorch_model{suffix}.bin", max_shard_size=max_shard_size)
    assert split.is_sharded
    for file, keys in split.filename_to_tensors.items():
        torch.save({k: state[k] for k in keys}, folder / file)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    model.config.save_pretrained(folder)


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_a_sharded_gpt2_folder_loads(weights, tmp_path):
    hf = hf_model("GPT2LMHeadModel")
    if weights == "safetensors":
        hf.save_pretrained(tmp_path, max_shard_size="20KB")
        index = tmp_path / "model.safetensors.index.json"
    else:
        write_bin_shards(hf, tmp_path, max_shard_size="20KB")
        index = tmp_path / "pytorch_model.bin.index.json"
    assert len(set(json.loads(index.read_text())["weight_map"].values())) > 2  # several shards
    model, info = load("gpt", tmp_path)
    assert (info.source, info.missing, info.unused) == (index, (), ())
    ids = inputs("gpt")["input_ids"]
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("name,architecture", [("llama", "LlamaForCausalLM"),
                                               ("mamba", "MambaForCausalLM")])
def test_a_bf16_folder_loads_as_fp32_or_in_its_dtype(name, architecture, tmp_path):
    hf_model(architecture).to(torch.bfloat16).save_pretrained(tmp_path)
    reference = getattr(transformers, architecture).from_pretrained(tmp_path,
                                                                    dtype=torch.float32).eval()
    model, info = load(name, tmp_path)  # fp32 by default, as today
    assert (info.dtype, info.checkpoint_dtype) == (torch.float32, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ids = inputs(name)["input_ids"]
    with torch.no_grad():
        assert (model(ids).logits - reference(ids).logits).abs().max() <= 1e-4
    kept, info = load(name, tmp_path, dtype="auto")  # the checkpoint's dtype, as HF's "auto"
    assert info.dtype == torch.bfloat16 and {p.dtype for p in kept.parameters()} == {
        torch.bfloat16}
    for key, tensor in kept.state_dict().items():  # the stored numbers, not rounded twice
        assert torch.equal(tensor, model.state_dict()[key].bfloat16()), key
    cast, info = load(name, tmp_path, dtype=torch.float16)
    assert info.dtype == torch.float16 and {p.dtype for p in cast.parameters()} == {torch.float16}
    with pytest.raises(ValueError, match="dtype"):
        zoo.from_pretrained(name, tmp_path, dtype="int8")


def test_loading_info_comes_with_the_speed_routes_applied(tmp_path):
    saved("GPT2Model", tmp_path)
    model, info = zoo.from_pretrained("gpt", tmp_path, output_loading_info=True)
    assert zoo.fast.applied(model) and isinstance(info, LoadingInfo)
    assert not isinstance(zoo.from_pretrained("gpt", tmp_path), tuple)


# ---- bad input: one line naming the file and the key or field --------------------------------

def error(name: str, path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as excinfo:
        zoo.from_pretrained(name, path, **kwargs)
    return one_line(excinfo)


def rewrite(folder, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


def test_a_missing_body_weight_of_a_headless_checkpoint_is_an_error(tmp_path):
    saved("BertModel", tmp_path)
    rewrite(tmp_path, lambda s: s.pop("encoder.layer.1.output.dense.bias"))
    assert error("bert", tmp_path).endswith(
        "model.safetensors: missing weight 'encoder.layer.1.output.dense.bias'")


def test_part_of_a_head_is_an_error(tmp_path):
    saved("BertForMaskedLM", tmp_path)
    rewrite(tmp_path, lambda s: s.pop("cls.predictions.transform.LayerNorm.bias"))
    assert "missing weight 'cls.predictions.transform.LayerNorm.bias'" in error("bert", tmp_path)


def test_an_extra_layer_inside_the_body_is_an_error(tmp_path):
    saved("BertForSequenceClassification", tmp_path)
    extra = {"bert.encoder.layer.2.output.dense.bias": torch.zeros(32)}  # a third layer of two
    rewrite(tmp_path, lambda s: s.update(extra))
    assert "unexpected weight 'bert.encoder.layer.2.output.dense.bias'" in error("bert", tmp_path)


def test_a_misshaped_weight_of_a_headless_checkpoint_is_an_error(tmp_path):
    saved("LlamaModel", tmp_path)
    rewrite(tmp_path, lambda s: s.update({"norm.weight": torch.ones(31)}))
    assert "weight 'norm.weight' has shape (31,)" in error("llama", tmp_path)


@pytest.mark.parametrize("name,expected", [("bert", "'bert', 'distilbert'"),
                                           ("roberta", "'roberta', 'xlm-roberta'"),
                                           ("llama", "'llama', 'mistral'"), ("rwkv", "'rwkv'")])
def test_a_folder_of_another_model_type_is_refused(name, expected, tmp_path):
    saved("GPT2LMHeadModel", tmp_path)
    assert error(name, tmp_path) == (f"{tmp_path / 'config.json'}: model_type 'gpt2' is not a "
                                     f"{name} checkpoint (expected one of {expected})")


def test_a_bare_weights_file_of_another_layout_is_refused(tmp_path):
    torch.save(hf_model("GPT2LMHeadModel").state_dict(), tmp_path / "weights.bin")
    assert error("bert", tmp_path / "weights.bin") == (
        f"{tmp_path / 'weights.bin'}: not a bert checkpoint: no weight "
        "'bert.embeddings.word_embeddings.weight' (its keys are those of 'gpt')")
    assert "its keys begin 'a', 'b'" in error("rwkv", _bare(tmp_path, {"a": torch.zeros(1),
                                                                          "b": torch.zeros(1)}))
    assert "a bare weights file; zoo model 'llama' reads a folder with its config.json" in error(
        "llama", tmp_path / "weights.bin")


def _bare(folder, state):
    torch.save(state, folder / "other.pth")
    return folder / "other.pth"


def test_a_truncated_safetensors_file_is_one_line(tmp_path):
    saved("GPT2LMHeadModel", tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    message = error("gpt", tmp_path)
    assert message.startswith(f"{weights}: cannot read weights (SafetensorError: ")


@pytest.mark.parametrize("text", ["[1, 2]", '"bert"', "null"])
def test_a_config_that_is_not_an_object_is_refused(text, tmp_path):
    saved("BertModel", tmp_path)
    (tmp_path / "config.json").write_text(text)
    assert error("bert", tmp_path).startswith(
        f"{tmp_path / 'config.json'}: not a JSON object of config fields")


def test_a_config_without_a_required_field_names_it(tmp_path):
    saved("BertModel", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert error("bert", tmp_path) == f"{tmp_path / 'config.json'}: no field 'hidden_size'"


def test_a_config_that_builds_no_model_is_refused(tmp_path):
    saved("BertModel", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_attention_heads": 5}))
    assert error("bert", tmp_path).startswith(f"{tmp_path / 'config.json'}: ")
