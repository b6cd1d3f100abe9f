"""Published checkpoints through the `catalog` command, as a user runs it: `catalog generate`
(text streamed from a tiny GPT-2 folder or a cached hub id: transformers' greedy tokens),
`catalog eval CHECKPOINT` on a published folder, `catalog bench --checkpoint` (the sizes of a
checkpoint, random weights), and every bad input as one line on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import lazy_import, write_corpus
from tiny_checkpoints import (
    bart_folder,
    bert_folder,
    decoder_folder,
    gpt2_folder,
    hub_cache_entry,
    llama_gguf,
    offline_hub,
    t5_folder,
)
from typer.testing import CliRunner

from harness.cli import app
from harness.results import load

runner = CliRunner()
transformers = lazy_import("transformers")
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return gpt2_folder(tmp_path_factory.mktemp("ckpt") / "gpt2")


def hf_greedy_text(folder: Path, prompt: str, new: int) -> str:
    """transformers' greedy continuation of `prompt` (the tokens before <|endoftext|>)."""
    tokenizer = transformers.GPT2TokenizerFast.from_pretrained(str(folder))
    model = transformers.GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new, pad_token_id=0)
    tokens = out[0, ids.size(1):].tolist()
    tokens = tokens[:tokens.index(0)] if 0 in tokens else tokens
    return tokenizer.decode(ids[0].tolist() + tokens)


# ---------------------------------------------------------------------------- catalog generate


def test_generate_streams_transformers_greedy_text(gpt2):
    prompt = "The quick brown"
    result = run("generate", gpt2, "--prompt", prompt, "--max-new-tokens", "12",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout == hf_greedy_text(gpt2, prompt, 12) + "\n"
    assert "zoo model gpt, 37,760 parameters, on cpu" in result.stderr


# An encoder-decoder folder: how it is written, its transformers class, the ids its tokenizer puts
# around a source (None: none), its decoder's start and its end of text.
SEQ2SEQ_FOLDERS = {
    # T5's tokenizer ends a text with </s> (1); the decoder starts from the padding token, 0
    "t5": (t5_folder, "T5ForConditionalGeneration", (None, 1), 0, 1),
    # BART's vocab.json + merges.txt give <s> ... </s> (0, 2); the decoder starts from </s>
    "bart": (bart_folder, "BartForConditionalGeneration", (0, 2), 2, 2),
}


@pytest.mark.parametrize("name", list(SEQ2SEQ_FOLDERS))
def test_generate_from_an_encoder_decoder_folder_prints_transformers_greedy_text(name, tmp_path):
    """An encoder-decoder reads the prompt (with the tokens its tokenizer puts around it) as
    its source; its decoder's text, from the start token config.json names, is printed alone,
    as transformers' generate and tokenizer give it."""
    write, architecture, (first, last), start, end = SEQ2SEQ_FOLDERS[name]
    folder = write(tmp_path / name, seed=1)
    prompt = "The quick brown fox"
    result = run("generate", folder, "--prompt", prompt, "--max-new-tokens", "12",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = getattr(transformers, architecture).from_pretrained(str(folder)).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    assert ids[0, -1].item() == last and first in (None, ids[0, 0].item())
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             num_beams=1, max_new_tokens=12)
    assert out[0, 0].item() == start  # the decoder's start: config.json's
    tokens = out[0, 1:].tolist()
    tokens = tokens[:tokens.index(end)] if end in tokens else tokens
    assert len(tokens) >= 6  # text to compare, not an EOS at once
    expected = tokenizer.decode(tokens, skip_special_tokens=True)
    assert expected.strip() and result.stdout == expected + "\n"
    assert f"zoo model {name}" in result.stderr and "the encoder reads the prompt" in \
        result.stderr


def test_generate_samples_repeatably_with_a_seed(gpt2):
    args = ["generate", gpt2, "--prompt", "A model", "--temperature", "1.2", "--top-k", "20",
            "--seed", "5", "--max-new-tokens", "10"]
    first, second = run(*args), run(*args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout and first.stdout.startswith("A model")


def test_generate_from_a_hub_id_in_the_offline_cache(gpt2, tmp_path, monkeypatch):
    cache = offline_hub(tmp_path, monkeypatch)
    hub_cache_entry(cache, "someone/tiny-gpt2", gpt2)
    result = run("generate", "someone/tiny-gpt2", "--prompt", "Zoë", "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    assert result.stdout == hf_greedy_text(gpt2, "Zoë", 8) + "\n"


def test_generate_from_an_official_rwkv_file_with_its_tokenizer_beside_it(gpt2, tmp_path):
    import zoo
    from harness.checkpoint_tokenizer import load_tokenizer
    from zoo.convert import rwkv_to_official

    torch.manual_seed(0)
    model = zoo.build("rwkv", vocab_size=320, n_layer=2, d_model=32).eval()
    torch.save(rwkv_to_official(model.state_dict()), tmp_path / "RWKV-4-tiny.pth")
    load_tokenizer(gpt2).save(tmp_path / "tokenizer.json")  # as 20B_tokenizer.json would be
    result = run("generate", tmp_path / "RWKV-4-tiny.pth", "--prompt", "Hi",
                 "--max-new-tokens", "6")
    assert result.exit_code == 0, result.output
    assert "zoo model rwkv" in result.stderr
    tok = load_tokenizer(tmp_path)
    ids = tok.encode("Hi")
    new = model.generate(torch.tensor([ids]), 6, eos_id=tok.eos_id)[0, len(ids):].tolist()
    new = new[:new.index(tok.eos_id)] if tok.eos_id in new else new
    assert result.stdout == tok.decode(ids + new, skip_special_tokens=True) + "\n"


@pytest.mark.parametrize("architecture, name", [("GPTNeoX", "gpt-neox"), ("Bloom", "bloom"),
                                                ("OPT", "opt"), ("GPTJ", "gpt-j"),
                                                ("GPTNeo", "gpt-neo"), ("CTRL", "ctrl")])
def test_generate_from_a_pythia_bloom_opt_or_gpt_j_folder_is_transformers_greedy_text(
        tmp_path, architecture, name):
    """A GPT-NeoX folder as Pythia's are laid out, read as zoo.gpt_neox; a BLOOM one as
    zoo.bloom, an OPT one as zoo.opt, a GPT-J one as zoo.gptj."""
    folder = decoder_folder(tmp_path / name, architecture)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    prompt = "The quick brown"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=12, pad_token_id=0)
    new = out[0, ids.size(1):].tolist()
    new = new[:new.index(0)] if 0 in new else new
    result = run("generate", folder, "--prompt", prompt, "--max-new-tokens", "12")
    assert result.exit_code == 0, result.output
    # OPT's text starts with the BOS its tokenizer adds, which the printed text leaves out
    assert ids[0, 0].item() == 0 if name == "opt" else 0 not in ids
    assert result.stdout == tokenizer.decode(ids[0].tolist() + new,
                                             skip_special_tokens=True) + "\n"
    assert f"zoo model {name}" in result.stderr


def test_generate_from_a_gguf_file_is_transformers_greedy_text(tmp_path):
    """The file's own tokenizer (its metadata) and quantized weights, as transformers reads
    them with gguf_file=."""
    pytest.importorskip("gguf")
    path, _ = llama_gguf(tmp_path / "tiny-Q8_0.gguf", "Q8_0")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path),
                                                              gguf_file=path.name).eval()
    prompt = "The quick brown"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=10, pad_token_id=tokenizer.eos_token_id)
    new = out[0, ids.size(1):].tolist()
    new = new[:new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
    result = run("generate", path, "--prompt", prompt, "--max-new-tokens", "10")
    assert result.exit_code == 0, result.output
    assert result.stdout == tokenizer.decode(ids[0].tolist() + new) + "\n"
    assert "zoo model llama" in result.stderr


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def test_generate_chat_replies_as_transformers_does_with_the_chat_template(gpt2, tmp_path):
    """--chat: the prompt as the user's turn, laid out by tokenizer_config.json's chat_template
    (transformers' apply_chat_template), and the reply alone printed: transformers' greedy
    tokens after the templated prompt."""
    import shutil

    folder = tmp_path / "instruct"
    shutil.copytree(gpt2, folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**settings, "chat_template": CHAT_TEMPLATE}))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi there"}],
                                        add_generation_prompt=True, tokenize=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    assert tokenizer.decode(ids) == "user: Hi there\nassistant:"
    model = transformers.GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                             dtype=torch.long), do_sample=False, max_new_tokens=8,
                             pad_token_id=0)
    reply = out[0, len(ids):].tolist()
    reply = reply[:reply.index(0)] if 0 in reply else reply
    result = run("generate", folder, "--prompt", "Hi there", "--chat", "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    assert result.stdout == tokenizer.decode(ids + reply)[len(tokenizer.decode(ids)):] + "\n"
    assert_one_line_error(run("generate", gpt2, "--prompt", "Hi", "--chat"),
                          "has no chat template", "leave out --chat")


def test_the_command_reads_the_hub_settings_from_the_environment(gpt2, tmp_path):
    """In a fresh process huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE itself."""
    cache = tmp_path / "hf"
    hub_cache_entry(cache, "gpt2", gpt2)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "harness.cli", "generate", "gpt2", "--prompt", "Hi",
               "--max-new-tokens", "3", "--device", "cpu"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Hi")
    missing = subprocess.run([*command[:4], "someone/absent", *command[5:]], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert f"not in the Hugging Face cache ({cache})" in missing.stderr


# --------------------------------------------------------------------- every bad input, one line


def copy_folder(source: Path, target: Path, **replace: bytes | str | None) -> Path:
    """`source`'s files in `target`, with some replaced (None: left out)."""
    target.mkdir()
    for file in source.iterdir():
        content = replace.get(file.name, file.read_bytes())
        if content is not None:
            (target / file.name).write_bytes(content.encode() if isinstance(content, str)
                                             else content)
    return target


def test_bad_checkpoints_are_one_line_errors(gpt2, tmp_path, monkeypatch):
    weights = (gpt2 / "model.safetensors").read_bytes()
    truncated = copy_folder(gpt2, tmp_path / "truncated",
                            **{"model.safetensors": weights[: len(weights) // 2]})
    garbage = copy_folder(gpt2, tmp_path / "garbage", **{"config.json": "{not json"})
    electra = copy_folder(gpt2, tmp_path / "electra", **{"config.json": json.dumps(
        {"model_type": "electra", "architectures": ["ElectraForMaskedLM"]})})
    no_tokenizer = copy_folder(gpt2, tmp_path / "bare", **{"vocab.json": None,
                                                           "merges.txt": None})
    bert = bert_folder(tmp_path / "bert")
    cases = [
        ([truncated], ["model.safetensors: cannot read weights"]),
        ([garbage], ["config.json: invalid JSON"]),
        ([garbage, "--model", "gpt"], ["config.json: invalid JSON"]),
        ([electra], ["model_type 'electra' is not a model the zoo loads", "supported:"]),
        ([gpt2, "--model", "llama"], ["model_type 'gpt2' is not a llama checkpoint"]),
        ([gpt2, "--model", "gtp"], ["no checkpoint converter for zoo model 'gtp'"]),
        ([bert], ["holds an encoder alone (zoo model bert): ",
                  "catalog generate needs a model that writes text", "t5"]),
        ([no_tokenizer], ["no tokenizer files", "needs the checkpoint's own tokenizer"]),
        ([tmp_path / "absent"], ["absent: no such file or folder"]),
        ([gpt2, "--max-new-tokens", "0"], ["--max-new-tokens must be at least 1, not 0"]),
        ([gpt2, "--temperature", "-0.5"], ["--temperature must be 0 (greedy) or above, not -0.5"]),
        ([gpt2, "--max-new-tokens", "100"], ["pass the 64 positions"]),
    ]
    for args, fragments in cases:
        result = run("generate", *args, "--prompt", "Hi", "--device", "cpu")
        assert_one_line_error(result, *fragments)
        assert result.stdout == ""
    offline_hub(tmp_path, monkeypatch)
    assert_one_line_error(run("generate", "someone/absent", "--prompt", "Hi"),
                          "someone/absent: no such file or folder, and not in the Hugging Face "
                          "cache",
                          "hf download someone/absent")


# ------------------------------------------------------------------------------ catalog eval


def test_eval_scores_a_published_checkpoint_with_its_tokenizer(gpt2, tmp_path):
    corpus = write_corpus(tmp_path)
    before = sorted(p.name for p in gpt2.iterdir())
    results = tmp_path / "eval.jsonl"
    result = run("eval", gpt2, "--corpus", corpus, "--tasks", "zoo_heldout", "--limit", "2",
                 "--device", "cpu", "--results", results)
    assert result.exit_code == 0, result.output
    assert "bits_per_byte" in result.stdout and "harness" not in result.stdout
    records = {r.metric: r for r in load([results]).records}
    rec = records["bits_per_byte"]
    assert (rec.model, rec.variant, rec.params, rec.corpus) == (
        "gpt", f"checkpoint:{gpt2}", 37_760, str(corpus))
    assert 0 < rec.value < 20
    assert sorted(p.name for p in gpt2.iterdir()) == before  # no task files in the folder


def test_eval_scores_a_published_t5(tmp_path):
    """An encoder-decoder folder is scored too (its encoder reads each window's context)."""
    folder = t5_folder(tmp_path / "t5")
    results = tmp_path / "eval.jsonl"
    result = run("eval", folder, "--corpus", write_corpus(tmp_path), "--tasks", "zoo_heldout",
                 "--limit", "2", "--device", "cpu", "--results", results)
    assert result.exit_code == 0, result.output
    rec = {r.metric: r for r in load([results]).records}["bits_per_byte"]
    assert (rec.model, rec.variant, rec.params) == ("t5", f"checkpoint:{folder}", 44_960)
    assert rec.value > 0


def test_eval_of_an_id_at_a_revision_scores_that_revision_and_names_it(gpt2, tmp_path,
                                                                         monkeypatch):
    """Pythia's intermediate checkpoints are branches: `id@branch` scores that branch's
    weights, and the record's variant keeps the revision."""
    cache = offline_hub(tmp_path, monkeypatch)
    hub_cache_entry(cache, "someone/tiny-gpt2", gpt2)
    hub_cache_entry(cache, "someone/tiny-gpt2", gpt2_folder(tmp_path / "early", seed=1),
                    "e" * 40, ref="step3000")
    corpus, results = write_corpus(tmp_path), tmp_path / "eval.jsonl"
    values = {}
    for checkpoint in ("someone/tiny-gpt2", "someone/tiny-gpt2@step3000",
                       tmp_path / "early"):
        result = run("eval", checkpoint, "--corpus", corpus, "--tasks", "zoo_heldout",
                     "--limit", "2", "--device", "cpu", "--results", results)
        assert result.exit_code == 0, result.output
        values[str(checkpoint)] = next(r.value for r in load([results]).records
                                       if r.metric == "bits_per_byte"
                                       and r.variant == f"checkpoint:{checkpoint}")
    assert values["someone/tiny-gpt2@step3000"] == values[str(tmp_path / "early")]
    assert values["someone/tiny-gpt2@step3000"] != values["someone/tiny-gpt2"]


def test_eval_outside_a_git_repository_writes_nothing_of_git_to_the_terminal(gpt2, tmp_path,
                                                                            monkeypatch,
                                                                            capfd):
    """lm-eval asks git for the working directory's commit, and git complains on the
    terminal (file descriptor 2, past Python's sys.stderr) where there is none."""
    monkeypatch.chdir(tmp_path)
    result = run("eval", gpt2, "--corpus", write_corpus(tmp_path), "--tasks", "zoo_heldout",
                 "--limit", "1", "--device", "cpu", "--results", tmp_path / "e.jsonl")
    assert result.exit_code == 0, result.output
    assert "not a git repository" not in capfd.readouterr().err


def test_eval_refuses_an_encoder_and_a_checkpoint_without_tokenizer(gpt2, tmp_path):
    assert_one_line_error(run("eval", bert_folder(tmp_path / "bert")),
                          "an encoder alone (zoo model bert): lm-eval's scoring of text needs a "
                          "model that "
                          "writes text")
    bare = copy_folder(gpt2, tmp_path / "bare", **{"vocab.json": None, "merges.txt": None})
    assert_one_line_error(run("eval", bare), "no tokenizer files")
    assert_one_line_error(run("eval", tmp_path / "absent"), "no such file or folder")
    corpus = write_corpus(tmp_path)
    assert_one_line_error(run("eval", gpt2, "--corpus", corpus, "--tasks", "hellaswag",
                              "--results", tmp_path / "e.jsonl"),
                          "--tasks hellaswag: not among the local tasks (zoo_heldout, "
                          "zoo_lastword); this command runs lm-eval offline")
    assert not (tmp_path / "e.jsonl").exists()


# ------------------------------------------------------------------------ catalog bench


@pytest.fixture
def peak_cache(tmp_path, monkeypatch):
    from harness.sweep import peak_label

    cache = tmp_path / ".cache" / "transformer-catalog" / "matmul_peaks.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({peak_label("cpu", "float32", None): 1e11}))
    monkeypatch.setenv("HOME", str(tmp_path))


def test_bench_takes_the_sizes_of_a_checkpoint(tmp_path, peak_cache):
    """A GPT-2 folder of 3 layers, width 48: the benchmarked model has its parameters."""
    config = transformers.GPT2Config(vocab_size=90, n_positions=40, n_embd=48, n_layer=3,
                                     n_head=4)
    hf = transformers.GPT2LMHeadModel(config)
    hf.save_pretrained(tmp_path / "gpt2-shape")
    out = tmp_path / "bench.jsonl"
    result = run("bench", "--checkpoint", tmp_path / "gpt2-shape", "--seqlen", "16",
                 "--repeat", "1", "--device", "cpu", "--results", out)
    assert result.exit_code == 0, result.output
    rec = json.loads(out.read_text())
    assert rec["status"] == "ok" and rec["model"] == "gpt"
    assert rec["params"] == hf.num_parameters()
    assert rec["variant"] == f"checkpoint:{tmp_path / 'gpt2-shape'}"
    assert "randomly initialised" in result.stderr


def test_bench_checkpoint_refuses_mixed_requests(gpt2):
    for args, fragment in (
            (["gpt", "rwkv", "--checkpoint", gpt2], "--checkpoint benchmarks one model"),
            (["--all", "--checkpoint", gpt2], "--checkpoint benchmarks one model"),
            (["--checkpoint", gpt2, "--variant", "tiny"], "--variant and --checkpoint"),
            (["--checkpoint", "bad id!"], "not a Hugging Face hub id")):
        assert_one_line_error(run("bench", *args), fragment)
