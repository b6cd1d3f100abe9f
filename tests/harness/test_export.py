"""harness.export: a `catalog train` checkpoint (or a published one) written as a Hugging Face
folder or an official RWKV .pth, with its tokenizer: transformers' classes read the same logits
(fp32, within 1e-4) and its AutoTokenizer the same ids the model was trained on; the harness
reads the export back to the same greedy text; bad requests are one-line errors that write
nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import lazy_import
from tiny_checkpoints import SENTENCES, TRAINING_TEXT, gpt2_folder

from harness.export import export_checkpoint
from harness.models import build_variant
from harness.pretrained import load_pretrained, stream_text
from harness.quality.checkpoint import save_checkpoint
from harness.quality.tokenizer import BPETokenizer, ByteTokenizer
from zoo.convert import CheckpointError

transformers = lazy_import("transformers")
TEXTS = [*SENTENCES, "a literal <eos> and <bos> in text", "".join(map(chr, range(1, 300)))]


def trained(folder: Path, name: str, tokenizer, task: str = "lm", **overrides) -> Path:
    """A checkpoint folder as `catalog train` writes it, of a tiny random model."""
    torch.manual_seed(0)
    model = build_variant(name, "tiny", fast=False, vocab_size=tokenizer.vocab_size, **overrides)
    return save_checkpoint(folder, name, model, tokenizer, task=task, seqlen=32, seed=0,
                           variant="tiny", budget="1 s")


def greedy(path: Path, prompt: str = "The ") -> str:
    return "".join(stream_text(load_pretrained(path), prompt, max_new_tokens=12))


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TRAINING_TEXT, 300)


def test_the_byte_tokenizer_as_tokenizers_gives_the_same_ids_and_text():
    ours = ByteTokenizer()
    tok = ours.as_tokenizers()
    tok.encode_special_tokens = True  # what split_special_tokens asks of transformers
    for text in TEXTS:
        ids = tok.encode(text).ids
        assert ids == ours.encode(text), text
        assert tok.decode(ids) == text
    assert [tok.token_to_id(t) for t in ("<bos>", "<eos>", "<pad>")] == [256, 257, 258]
    assert tok.get_vocab_size() == ours.vocab_size


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_a_trained_decoder_loads_in_transformers_with_its_ids_and_logits(kind, bpe, tmp_path):
    tokenizer = ByteTokenizer() if kind == "bytes" else bpe
    run = trained(tmp_path / "run", "gpt", tokenizer)
    exported = export_checkpoint(run, tmp_path / "hf")
    assert (exported.name, exported.format, exported.architecture) == \
        ("gpt", "hf", "GPT2LMHeadModel")
    assert exported.files == ("config.json", "model.safetensors", "tokenizer.json",
                              "tokenizer_config.json")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    # EOS began every training document: the start-of-text token too, as GPT-2's is
    assert [config[f"{kind}_token_id"] for kind in ("bos", "eos", "pad")] == \
        [tokenizer.eos_id, tokenizer.eos_id, tokenizer.pad_id]
    assert config["catalog"]["task"] == "lm" and config["catalog"]["source"] == str(run)

    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = TEXTS if kind == "bytes" else SENTENCES  # BPE: its specials are tokens in text too
    for text in texts:
        assert hf_tok(text)["input_ids"] == tokenizer.encode(text), text
    assert hf_tok.bos_token_id == hf_tok.eos_token_id == tokenizer.eos_id
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    model = load_pretrained(run, fast=False).model
    ids = torch.tensor([[hf_tok.bos_token_id, *hf_tok(SENTENCES[2])["input_ids"]]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(input_ids=ids).logits, rtol=0,
                                   atol=1e-4)
    assert greedy(tmp_path / "hf") == greedy(run)


def test_the_export_is_scored_at_its_training_length_and_exports_again_the_same(tmp_path):
    run = trained(tmp_path / "run", "gpt", ByteTokenizer())
    export_checkpoint(run, tmp_path / "hf")
    assert load_pretrained(tmp_path / "hf").meta == {"zoo": "gpt", "seqlen": 32}
    export_checkpoint(tmp_path / "hf", tmp_path / "again")  # the run and special ids carry over
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()


def test_an_encoder_gets_its_tokenizer_without_a_start_token(tmp_path):
    run = trained(tmp_path / "run", "bert", ByteTokenizer(), task="mlm")
    exported = export_checkpoint(run, tmp_path / "hf")
    assert exported.architecture == "BertForPreTraining"
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok(SENTENCES[0])["input_ids"] == ByteTokenizer().encode(SENTENCES[0])
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id) == (256, 257)  # an encoder's own


def test_a_trained_t5_starts_decoding_in_transformers_where_it_was_trained_to(tmp_path):
    """The seq2seq task starts every target from the tokenizer's BOS: the export says so as
    decoder_start_token_id, so transformers' generate gives the run's greedy tokens."""
    tokenizer = ByteTokenizer()
    run = trained(tmp_path / "run", "t5", tokenizer, task="seq2seq")
    exported = export_checkpoint(run, tmp_path / "hf")
    assert exported.architecture == "T5ForConditionalGeneration"
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["decoder_start_token_id"] == tokenizer.bos_id
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    model = load_pretrained(run, fast=False).model
    source = torch.tensor([tokenizer.encode(SENTENCES[0])])
    with torch.no_grad():
        ref = hf.generate(input_ids=source, max_new_tokens=8, min_new_tokens=8,
                          do_sample=False, num_beams=1)
    assert torch.equal(model.generate(source, 8, bos_id=tokenizer.bos_id), ref)
    back = load_pretrained(tmp_path / "hf", fast=False).model
    assert back.config.decoder_start_id == tokenizer.bos_id
    assert torch.equal(back.generate(source, 8), ref)


def test_an_mqar_model_is_exported_without_a_tokenizer(tmp_path):
    run = trained(tmp_path / "run", "gpt", ByteTokenizer(), task="mqar")
    exported = export_checkpoint(run, tmp_path / "hf")
    assert exported.files == ("config.json", "model.safetensors")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert [config.get(f"{kind}_token_id") for kind in ("bos", "eos", "pad")] == [None] * 3
    assert config["catalog"]["task"] == "mqar"


def test_an_official_rwkv7_pth_with_its_tokenizer_beside_it(bpe, tmp_path):
    run = trained(tmp_path / "run", "rwkv7", bpe)
    exported = export_checkpoint(run, tmp_path / "out")
    assert exported.format == "official" and exported.path == tmp_path / "out" / "model.pth"
    assert exported.files == ("model.pth", "tokenizer.json", "tokenizer_config.json")
    back = load_pretrained(exported.path)
    assert back.name == "rwkv7"
    for text in SENTENCES:
        assert back.tokenizer.encode(text) == bpe.encode(text)
    assert greedy(exported.path) == greedy(run)


def test_a_published_folder_keeps_its_tokenizer_files(tmp_path):
    source = gpt2_folder(tmp_path / "gpt2")
    exported = export_checkpoint(source, tmp_path / "out", dtype="bfloat16")
    copied = ("vocab.json", "merges.txt", "tokenizer_config.json", "generation_config.json")
    assert set(exported.files) == {"config.json", "model.safetensors", *copied}
    for name in copied:
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes()
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out")
    assert hf.dtype == torch.bfloat16


def test_bad_requests_are_refused_before_anything_is_written(tmp_path):
    run = trained(tmp_path / "run", "gpt", ByteTokenizer())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("a file")
    pangu = trained(tmp_path / "pangu", "pangu-pi", ByteTokenizer())
    rwkv7 = trained(tmp_path / "rwkv7", "rwkv7", ByteTokenizer())
    refused = [
        (run, tmp_path / "full", {}, ValueError, "not empty; give a new folder, or --force"),
        (run, run, {"force": True}, ValueError, "the checkpoint's own folder"),
        (run, tmp_path / "file", {}, ValueError, "a file, not a folder"),
        (run, tmp_path / "new", {"dtype": "int8"}, ValueError, "expected one of float32"),
        (run, tmp_path / "new", {"format": "gguf"}, CheckpointError, "unknown checkpoint format"),
        (pangu, tmp_path / "new", {}, CheckpointError, "transformers has no class for it"),
        (rwkv7, tmp_path / "new", {"format": "hf"}, CheckpointError,
         "'rwkv7' has no 'hf' checkpoint format"),
    ]
    for source, out, options, error, message in refused:
        with pytest.raises(error, match=message):
            export_checkpoint(source, out, **options)
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "model.safetensors",
                                                     "tokenizer.json"]
    export_checkpoint(run, tmp_path / "full", force=True)  # --force writes beside what is there
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_lm_evals_own_hf_model_scores_the_export_as_the_zoo_adapter_scores_the_run(kind, bpe,
                                                                                   tmp_path):
    """Documents (rolling windows, lm-eval's bits per byte) and empty contexts: the same
    log-likelihoods within 1e-4. (With a context, the zoo adapter conditions on the start
    token too, as the run's documents began; lm-eval's hf model only where the tokenizer adds
    one.)"""
    pytest.importorskip("accelerate")  # lm-eval's hf model needs it
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from harness.quality.lm_eval_adapter import ZooLM

    run = trained(tmp_path / "run", "gpt", ByteTokenizer() if kind == "bytes" else bpe)
    export_checkpoint(run, tmp_path / "hf")
    ours = ZooLM(pretrained=str(run), batch_size=2)
    # max_length: the zoo adapter's default is the training length (config.json says it); lm-eval
    # takes the model's position table unless told
    theirs = HFLM(pretrained=str(tmp_path / "hf"), batch_size=2, device="cpu", max_length=32)
    assert ours.max_length == 32
    documents = [(text,) for text in [" ".join(TRAINING_TEXT[:3]), SENTENCES[2], "x"]]
    rolling = [Instance("loglikelihood_rolling", {}, args, i) for i, args in enumerate(documents)]
    empty = [Instance("loglikelihood", {}, ("", text), i) for i, text in enumerate(SENTENCES[:3])]
    for requests in (rolling, empty):
        expected = theirs.loglikelihood_rolling(requests, disable_tqdm=True) \
            if requests is rolling else [ll for ll, _ in theirs.loglikelihood(requests, True)]
        got = ours.loglikelihood_rolling(requests) if requests is rolling else \
            [ll for ll, _ in ours.loglikelihood(requests)]
        assert got == pytest.approx(expected, abs=1e-4)


def test_a_gguf_file_becomes_a_hugging_face_folder_with_its_tokenizer(tmp_path):
    """llama.cpp's file (Q8_0 weights, its tokenizer in the metadata) out as a folder that
    LlamaForCausalLM and AutoTokenizer read: the dequantized logits, the same ids."""
    pytest.importorskip("gguf")
    from tiny_checkpoints import llama_gguf

    path, _ = llama_gguf(tmp_path / "tiny-Q8_0.gguf", "Q8_0")
    exported = export_checkpoint(path, tmp_path / "hf")
    assert exported.architecture == "LlamaForCausalLM"
    assert exported.files == ("config.json", "model.safetensors", "tokenizer.json",
                              "tokenizer_config.json")
    from_gguf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    from_folder = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in SENTENCES:
        assert from_folder(text)["input_ids"] == from_gguf(text)["input_ids"], text
    ids = torch.tensor([from_gguf(SENTENCES[0])["input_ids"]])
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits,
                                   load_pretrained(path).model(input_ids=ids).logits,
                                   rtol=0, atol=1e-4)
