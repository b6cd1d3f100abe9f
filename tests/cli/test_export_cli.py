"""`catalog export` as a user runs it: a `catalog train` folder written as a Hugging Face folder
that `catalog generate` continues exactly as it continues the run, an official RWKV .pth, and
bad requests as one line on stderr with exit 2."""

from __future__ import annotations

from pathlib import Path

import torch
from test_pretrained_cli import assert_one_line_error, run

from harness.models import build_variant
from harness.quality.checkpoint import save_checkpoint
from harness.quality.tokenizer import ByteTokenizer


def trained(folder: Path, name: str, **fields) -> Path:
    torch.manual_seed(0)
    model = build_variant(name, "tiny", fast=False, vocab_size=ByteTokenizer.vocab_size,
                          **fields)
    return save_checkpoint(folder, name, model, ByteTokenizer(), task="lm", seqlen=32)


def test_export_then_generate_continues_as_the_run_does(tmp_path):
    run_folder = trained(tmp_path / "run", "gpt")
    result = run("export", run_folder, tmp_path / "hf")
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'hf'}: zoo model gpt as Hugging Face" in result.stdout
    assert "transformers.GPT2LMHeadModel.from_pretrained" in result.stdout
    texts = [run("generate", folder, "--prompt", "The ", "--max-new-tokens", "10")
             for folder in (run_folder, tmp_path / "hf")]
    assert all(t.exit_code == 0 for t in texts)
    assert texts[0].stdout == texts[1].stdout and texts[0].stdout.startswith("The ")


def test_rwkv7_is_written_as_an_official_pth_that_the_folder_names(tmp_path):
    """The printed folder is what a user passes on: generate reads its model.pth and the
    tokenizer beside it, and continues as the run does."""
    run_folder = trained(tmp_path / "run", "rwkv7")
    result = run("export", run_folder, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "as an official RWKV .pth (model.pth, tokenizer.json" in result.stdout
    assert (tmp_path / "out" / "model.pth").is_file()
    texts = [run("generate", folder, "--prompt", "The ", "--max-new-tokens", "10")
             for folder in (run_folder, tmp_path / "out", tmp_path / "out" / "model.pth")]
    assert all(t.exit_code == 0 for t in texts), [t.output for t in texts]
    assert texts[0].stdout == texts[1].stdout == texts[2].stdout
    assert texts[0].stdout.startswith("The ")


def test_bad_requests_are_one_line(tmp_path):
    run_folder = trained(tmp_path / "run", "gpt")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert_one_line_error(run("export", run_folder, tmp_path / "full"), "not empty")
    assert_one_line_error(run("export", trained(tmp_path / "p", "pangu-pi"), tmp_path / "o"),
                          "'pangu-pi'", "transformers has no class for it")
    assert_one_line_error(run("export", run_folder, tmp_path / "o", "--format", "official"),
                          "'gpt' has no 'official' checkpoint format")
    assert_one_line_error(run("export", tmp_path / "missing", tmp_path / "o"), "missing")
    # mixer-only blocks, as MQAR cells train them: no Hugging Face or official form
    assert_one_line_error(run("export", trained(tmp_path / "m", "gpt", d_ff=0), tmp_path / "o"),
                          "GPT-2 always has a feed-forward; this config has d_ff 0")
    assert_one_line_error(run("export", trained(tmp_path / "r", "rwkv", d_ff=0), tmp_path / "o",
                              "--format", "official"), "official RWKV .pth always has a channel")
    assert not (tmp_path / "o").exists()
