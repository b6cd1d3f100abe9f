"""The `catalog` command as a user runs it: output formats, filters, cards and error paths."""

from __future__ import annotations

import csv
import enum
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer
from conftest import valid_entry
from typer.testing import CliRunner

from harness.cli import app
from harness.cli.common import command_line

runner = CliRunner()


def run(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env)


def listed(*args: str) -> list[dict]:
    result = run("list", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def names(entries: list[dict]) -> set[str]:
    return {e["name"] for e in entries}


def assert_one_line_error(result, *fragments: str, code: int = 2):
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


def test_family_decoder_has_the_decoders_and_no_encoder():
    decoders = listed("--family", "decoder")
    assert {"GPT-2", "GPT-3", "LLaMA", "RWKV", "Pangu-π"} <= names(decoders)
    assert {e["architecture"] for e in decoders} == {"decoder"}


def test_family_encoder_and_encoder_decoder():
    assert {"BERT", "RoBERTa", "MosaicBERT"} <= names(listed("--family", "encoder"))
    enc_dec = listed("--family", "encoder-decoder")
    assert {"Transformer", "T5", "BART"} <= names(enc_dec)
    assert {e["architecture"] for e in enc_dec} == {"encoder-decoder"}


@pytest.mark.parametrize("family, member", [("BERT", "DistilBERT"), ("gpt", "GPT-3"),
                                            ("Llama", "Vicuna"), ("t5", "Flan-T5")])
def test_family_by_lineage(family, member):
    entries = listed("--family", family)
    assert member in names(entries)
    assert {e["family"].casefold() for e in entries} == {family.casefold()}


def shipped_files() -> int:
    """How many entries the shipped catalog has, counted as files: adding a model adds one."""
    from harness.catalog import default_catalog_dir

    return len(list(default_catalog_dir().glob("*.yaml")))


def test_json_lists_the_whole_catalog():
    entries = listed()
    assert len(entries) == shipped_files() >= 80
    assert {"id", "name", "family", "architecture", "params", "paper"} <= set(entries[0])


def test_csv_parses_back_to_the_same_entries():
    result = run("list", "--format", "csv", "--family", "encoder")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    by_id = {e["id"]: e for e in listed("--family", "encoder")}
    assert [r["id"] for r in rows] == list(by_id)
    roberta = next(r for r in rows if r["id"] == "roberta")
    assert roberta["max_params"] == "355000000" and roberta["family"] == "BERT"
    assert roberta["params"] == "base=125000000; large=355000000"


def test_markdown_is_a_table_with_one_row_per_entry():
    result = run("list", "--format", "markdown", "--runnable")
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| id | name |") and lines[1].startswith("| --- |")
    assert len(lines) == 2 + len(listed("--runnable")) == 2 + 38


def test_table_shows_a_count_of_matches():
    result = run("list", "--task", "PLM")
    assert result.exit_code == 0
    assert "XLNet" in result.stdout and "1 of " in result.stdout


def test_filters_combine():
    entries = listed("--task", "mlm", "--since", "2019", "--until", "2019", "--lab", "facebook")
    assert names(entries) == {"RoBERTa", "XLM-RoBERTa"}
    assert names(listed("--query", "protein")) == {"AlphaFold", "Galactica"}
    assert names(listed("--query", "protein amino-acid")) == {"AlphaFold"}
    assert {"Transformer", "RWKV", "Pangu-π", "MosaicBERT"} <= names(listed("--runnable"))
    assert "RWKV" not in names(listed("--not-runnable"))


def test_sort_by_params_puts_the_largest_first():
    entries = listed("--sort", "params")
    assert entries[0]["name"] in {"Switch Transformer", "Wu Dao 2.0"}
    assert listed("--sort", "name")[0]["name"] == "ALBERT"


def test_no_match_is_not_an_error():
    assert listed("--lab", "no such lab") == []


@pytest.mark.parametrize("args, fragments", [
    (["--family", "decoderr"], ["unknown family or architecture 'decoderr'", "'decoder'"]),
    (["--task", "MLLM"], ["unknown task 'MLLM'", "'MLM'"]),
    (["--since", "2022", "--until", "2020"], ["--since 2022 is after --until 2020"]),
])
def test_bad_filter_values_give_one_line_errors(args, fragments):
    assert_one_line_error(run("list", *args), *fragments)


@pytest.mark.parametrize("args", [["--sort", "size"], ["--format", "xml"], ["--since", "abc"]])
def test_bad_choices_are_usage_errors(args):
    result = run("list", *args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_show_roberta_card():
    result = run("show", "roberta")
    assert result.exit_code == 0
    out = " ".join(result.stdout.split())
    for fact in ("RoBERTa", "family BERT", "encoder", "MLM (dynamic masking)", "2019-07",
                 "125M", "355M", "Facebook AI", "https://arxiv.org/abs/1907.11692"):
        assert fact in out, fact
    assert "BERT (bert)" in out  # the family root
    assert "zoo implementation roberta" in out and "n_layer=24" in out


def test_show_lineage_and_name_lookup():
    out = " ".join(run("show", "Alpaca").stdout.split())
    assert "Alpaca <- LLaMA" in out and "Vicuna" in out
    out = " ".join(run("show", "transformer").stdout.split())
    assert "Transformer is the root of the Transformer family" in out


@pytest.mark.parametrize("fmt, parse", [("json", json.loads), ("yaml", None)])
def test_show_machine_readable(fmt, parse):
    import yaml

    result = run("show", "rwkv", "--format", fmt)
    data = (parse or yaml.safe_load)(result.stdout)
    assert data["id"] == "rwkv" and data["zoo"] == "rwkv"
    assert data["variants"]["430m"] == {"params": 430_000_000, "n_layer": 24, "d_model": 1024}


def test_show_unknown_id_suggests_the_closest():
    assert_one_line_error(run("show", "robrta"), "unknown model id 'robrta'", "roberta")


def test_validate_the_shipped_catalog():
    result = run("validate")
    assert result.exit_code == 0, result.output
    assert f"{shipped_files()} valid entries" in result.stdout and "0 problem(s)" in result.stdout


def test_validate_reports_every_problem_and_fails(write_catalog):
    folder = write_catalog(gpt=valid_entry("gpt", date="June 2018"), bad="a: [b\n",
                           ok=valid_entry("ok"))
    result = run("--catalog-dir", str(folder), "validate")
    assert result.exit_code == 1
    assert "gpt.yaml: field 'date'" in result.stderr and "YYYY-MM" in result.stderr
    assert "bad.yaml: invalid YAML" in result.stderr
    assert "2 valid entries" in result.stderr and "2 problem(s) in 2 file(s)" in result.stderr


def test_list_skips_a_malformed_entry_with_a_warning(write_catalog):
    folder = write_catalog(gpt=valid_entry("gpt"), bad="id: bad\nname: [\n")
    result = runner.invoke(app, ["list", "--format", "json"],
                           env={"TRANSFORMER_CATALOG_DIR": str(folder)})
    assert result.exit_code == 0
    assert sorted(e["id"] for e in json.loads(result.stdout)) == ["gpt", "transformer"]
    assert "warning:" in result.stderr and "bad.yaml" in result.stderr


def test_missing_catalog_dir(tmp_path):
    assert_one_line_error(run("--catalog-dir", str(tmp_path / "none"), "list"), "does not exist")


def test_timeline_writes_a_png(tmp_path):
    out = tmp_path / "plots" / "timeline.png"
    result = run("timeline", "--out", str(out), "--color-by", "architecture")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
    assert "models plotted" in result.stdout


def test_timeline_errors_keep_existing_files(tmp_path):
    existing = tmp_path / "timeline.xyz"
    existing.write_text("keep me")
    assert_one_line_error(run("timeline", "--out", str(existing)), "unsupported image format")
    assert existing.read_text() == "keep me"
    assert_one_line_error(run("timeline", "--out", str(tmp_path / "t.png"), "--family", "nope"),
                          "unknown family")
    blocked = tmp_path / "a-file"  # a folder that cannot be made: the error names the output
    blocked.write_text("")
    assert_one_line_error(run("timeline", "--out", str(blocked / "t.png")),
                          f"cannot write {blocked / 't.png'}: ")
    assert_one_line_error(run("timeline", "--out", str(tmp_path)),
                          f"{tmp_path} is a folder; give the image's file name, e.g. "
                          f"{tmp_path / 'timeline.png'}")


@pytest.mark.parametrize("command, options", [
    ([], ["list", "show", "validate", "timeline", "bench", "generate", "train", "quality",
          "eval", "report", "results", "--catalog-dir"]),
    (["list"], ["--family", "--task", "--lab", "--since", "--until", "--runnable", "--query",
                "--sort", "--format"]),
    (["show"], ["MODEL", "--format"]),
    (["validate"], []),
    (["timeline"], ["--out", "--color-by", "--family"]),
    (["generate"], ["CHECKPOINT", "--prompt", "--model", "--max-new-tokens", "--temperature",
                    "--top-k", "--seed", "--device"]),
    (["eval"], ["CHECKPOINT", "hub id", "--corpus", "--limit"]),
    (["bench"], ["--checkpoint", "randomly"]),
])
def test_help_describes_every_option(command, options):
    result = run(*command, "--help")
    assert result.exit_code == 0
    for option in options:
        assert option in result.stdout


def test_the_installed_console_script_runs_from_any_directory(tmp_path):
    script = shutil.which("catalog", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the package is not installed in this environment")
    result = subprocess.run([script, "list", "--family", "encoder", "--format", "json"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TRANSFORMER_CATALOG_DIR": ""})
    assert result.returncode == 0, result.stderr
    assert "RoBERTa" in names(json.loads(result.stdout))


def test_show_lists_variants_with_computed_parameter_counts():
    out = run("show", "rwkv").stdout
    assert "computed params" in out
    assert "169,342,464" in out and "14,148,597,760" in out and "28,871,680" in out


@pytest.mark.parametrize("model, line", [
    ("rwkv", "Checkpoints: reads Hugging Face folders (model_type rwkv) and official RWKV .pth "
             "files (zoo.from_pretrained); catalog export writes a Hugging Face folder or an "
             "official RWKV .pth"),
    ("rwkv7", "Checkpoints: reads official RWKV .pth files (zoo.from_pretrained); catalog export "
              "writes an official RWKV .pth"),
    ("pangu-pi", "Checkpoints: its `catalog train` folders only (transformers has no class for "
                 "it)"),
])
def test_show_says_which_checkpoints_a_runnable_model_reads_and_writes(model, line):
    out = " ".join(run("show", model).stdout.split())  # the card wraps long lines
    assert line in out


def test_validate_checks_variant_fields_against_the_zoo_config(write_catalog):
    folder = write_catalog(gpt=valid_entry("gpt", zoo="gpt", variants={"tiny": {"n_layers": 2}}))
    result = run("--catalog-dir", str(folder), "validate")
    assert result.exit_code == 1
    assert "gpt.yaml: field 'variants.tiny.n_layers'" in result.stderr
    assert "did you mean 'n_layer'" in result.stderr


@pytest.mark.parametrize("args, fragments", [
    (["bench", "gtp"], ["unknown model 'gtp'", "rwkv"]),
    (["bench", "rwkv", "--seqlen", "8k"], ["--seqlen '8k'"]),
    (["bench", "bert", "--mode", "generate"], ["bert is an encoder and cannot generate", "mamba2"]),
    (["bench", "rwkv", "--variant", "huge"], ["no variant 'huge'"]),
    (["bench", "rwkv", "--max-memory", "lots"], ["--max-memory 'lots'"]),
    (["bench", "rwkv", "--timeout", "nan"], ["--timeout must be a number of seconds above 0"]),
    (["bench", "rwkv", "--timeout", "inf"], ["--timeout must be", "not inf"]),
    (["bench", "rwkv", "--threads", "0"], ["--threads must be at least 1, not 0"]),
    (["bench", "rwkv", "--dtype", "float64"], ["unknown dtype 'float64'"]),
    (["bench", "mosaic-bert", "--against", "hf"], ["--against hf has no peer for mosaic-bert"]),
    (["bench"], ["name at least one model"]),
    (["bench", "gpt", "--mode", "forward,trian"],
     ["--mode 'trian': expected forward, train or generate"]),
    (["bench", "gpt", "--against", "hf,foo"], ["--against 'foo': expected hf or rwkv-pip"]),
    (["bench", "gpt", "--jobs", str(len(os.sched_getaffinity(0)) + 1)],
     ["on the CPU needs", "one per cell at least"]),
    (["bench", "gpt", "--launcher", "slurm"], ["--launcher 'slurm': choose local or ray"]),
    (["bench", "gpt", "--address", "auto"], ["--address is for --launcher ray"]),
    (["bench", "gpt", "--variant", "tiny", "--results", "/proc/x/r.jsonl"],
     ["/proc/x/r.jsonl cannot be written"]),
    (["bench", "llama", "--set", "window"], ["--set 'window': give FIELD=VALUE"]),
    (["bench", "llama", "mamba", "--set", "window=64"],
     ["--set window: mamba has no config field 'window'", "d_state"]),
    (["bench", "llama", "--set", "window=0"], ["--set window=0: llama refuses it", ">= 1"]),
    (["bench", "llama", "--set", "n_kv_head=3"], ["llama refuses it"]),
    (["bench", "mamba", "--set", "d_state=1.5"], ["mamba's d_state is an integer"]),
    # Sizes no model is built from: named before any cell runs, never a traceback.
    (["bench", "gpt", "--set", "n_layer=-1"], ["gpt refuses it", "n_layer must be", ">= 1"]),
    (["bench", "gpt", "--set", "n_head=0"], ["gpt refuses it", "n_head must be"]),
    (["bench", "gpt", "--set", "d_model=100"], ["gpt refuses it", "not divisible by n_head"]),
    (["bench", "bert", "--set", "dropout=1.5"], ["bert refuses it", "probability in [0, 1)"]),
    (["bench", "bert", "--set", "pad_token_id=9000"], ["bert refuses it", "outside the vocab"]),
    (["bench", "rwkv7", "--set", "head_size=0"], ["rwkv7 refuses it", "head_size must be"]),
    (["bench", "gpt", "--routes", "linear,flash"], ["--routes 'flash'", "linear, ffn", "loss"]),
    (["bench", "gpt", "--routes", "linear", "--plain"], ["--routes and --plain", "choose one"]),
])
def test_bench_refuses_bad_requests_in_one_line(args, fragments):
    assert_one_line_error(run(*args), *fragments)


@pytest.fixture
def cached_peak(tmp_path, monkeypatch):
    """A matmul peak cached under a $HOME of the test's own, so that bench cells skip the
    calibration (the cache is found when the command runs, not at import)."""
    from harness.sweep import peak_label

    cache = tmp_path / ".cache" / "transformer-catalog" / "matmul_peaks.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({peak_label("cpu", "float32", None): 1e11}))
    monkeypatch.setenv("HOME", str(tmp_path))


def test_bench_prints_a_table_and_accepts_catalog_ids(tmp_path, cached_peak):
    out = tmp_path / "r.jsonl"
    result = run("bench", "gpt-2", "--variant", "tiny", "--seqlen", "48", "--results", str(out))
    assert result.exit_code == 0, result.output
    table = " ".join(result.stdout.replace("│", " ").split())
    assert "gpt zoo forward 48 ok" in table and "%" in table and "GiB" in table
    rec = json.loads(out.read_text())
    assert rec["model"] == "gpt"
    assert rec["command"] == (f"catalog bench gpt-2 --variant tiny --seqlen 48 --results {out}")


def test_bench_modes_are_comma_separated_or_repeated(tmp_path, cached_peak):
    out = tmp_path / "r.jsonl"
    result = run("bench", "gpt", "--variant", "tiny", "--seqlen", "32", "--repeat", "1",
                 "--mode", "forward,train", "--mode", "forward", "--results", str(out))
    assert result.exit_code == 0, result.output
    modes = [json.loads(line)["mode"] for line in out.read_text().splitlines()]
    assert modes == ["forward", "train"]


def test_bench_set_builds_each_cell_with_the_fields_and_names_the_variant(tmp_path, cached_peak):
    """--set on top of the variant: the cell's model has the field (a window of 8 over 24
    tokens; grouped heads shrink the parameters), the record names the variant with it, and a
    second setting is a cell of its own rather than a cell already measured."""
    from harness.models import build

    out = tmp_path / "r.jsonl"
    for window in (8, 16):
        result = run("bench", "llama", "--variant", "tiny", "--seqlen", "24", "--repeat", "1",
                     "--set", f"window={window}", "--set", "n_kv_head=1", "--results", str(out))
        assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in records] == ["tiny window=8,n_kv_head=1",
                                               "tiny window=16,n_kv_head=1"]
    grouped = build("llama", "tiny", overrides={"n_kv_head": 1}, device="meta").model
    assert records[0]["params"] == grouped.num_params()
    assert records[0]["params"] < build("llama", "tiny", device="meta").model.num_params()


def test_bench_routes_takes_only_those_and_each_choice_is_a_cell_of_its_own(tmp_path,
                                                                               cached_peak):
    """--routes: the cell's model takes the routes named (comma-separated or repeated), its
    record lists them and its notes say what ran; the default, every route, is another
    measurement, and a rerun of the same choice is found in the results (not measured again)."""
    out = tmp_path / "r.jsonl"
    common = ("--variant", "tiny", "--mode", "train", "--seqlen", "32", "--repeat", "1",
              "--results", str(out))
    for extra in (("--routes", "linear,loss"), ("--routes", "loss", "--routes", "linear"), ()):
        result = run("bench", "gpt", *common, *extra)
        assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["routes"] for r in records] == [["linear", "loss"], ["linear", "ffn", "dropout",
                                                                   "loss"]]
    from zoo.fast.kernels import dropout_cpu

    assert "dropout (training): PyTorch's" in records[0]["notes"]  # the route not taken
    taken = "dropout (training): masks from a C kernel (zoo.fast.kernels.dropout_cpu)"
    assert (taken in records[1]["notes"]) == dropout_cpu.available()


class DemoMode(str, enum.Enum):
    forward = "forward"
    generate = "generate"


demo = typer.Typer()
demo_commands: list[str] = []


@demo.callback()
def demo_top(ctx: typer.Context, folder: Annotated[str | None, typer.Option(
        envvar="DEMO_FOLDER")] = None) -> None:
    pass


@demo.command("bench")
def demo_bench(ctx: typer.Context, models: list[str],
               mode: Annotated[list[DemoMode] | None, typer.Option()] = None,
               seqlen: str = "1024", force: bool = False, warm: bool = True) -> None:
    demo_commands.append(command_line(ctx))


def test_the_command_line_is_rebuilt_from_what_was_given(monkeypatch):
    """Records carry the command that made them: arguments, repeated options, enum values,
    flags both ways and environment-set options, never the defaults."""
    monkeypatch.setenv("DEMO_FOLDER", "my dir")
    result = runner.invoke(demo, ["bench", "gpt", "rwkv", "--mode", "forward", "--mode",
                                  "generate", "--force", "--no-warm"])
    assert result.exit_code == 0, result.output
    assert demo_commands == ["catalog --folder 'my dir' bench gpt rwkv --mode forward --mode "
                             "generate --force --no-warm"]


def test_a_failed_allocation_anywhere_is_one_line_and_other_errors_are_not_hidden(capsys):
    from harness.cli.common import one_line_errors

    with pytest.raises(typer.Exit) as stopped, one_line_errors():
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "3221225472 bytes. Error code 12 (Cannot allocate memory)")
    assert stopped.value.exit_code == 2
    assert capsys.readouterr().err.strip() == ("error: out of memory (an allocation of 3.0 GiB "
                                               "refused): give shorter inputs or smaller batches")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"), one_line_errors():
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


def test_a_sweep_whose_cells_shared_their_cores_ends_with_a_note(capsys):
    """After the table, one line on stderr counts the records whose contention reached
    harness.machine.BUSY_CORES; quiet or unmeasured records add nothing."""
    from harness.cli.common import note_busy
    from harness.results import BenchRecord

    def cell(contention):
        return BenchRecord(model="gpt", variant="tiny", impl="zoo", mode="forward", seqlen=64,
                           contention=contention)

    note_busy([cell(0.04), cell(None)], "cells", "measure them again")
    assert capsys.readouterr().err == ""
    note_busy([cell(0.31), cell(0.04), cell(1.2)], "cells", "measure them again")
    assert capsys.readouterr().err == (
        "note: 2 of the 3 cells shared their cores with other work (up to 1.20 cores' worth, "
        "the records' contention): measure them again\n")
