"""`catalog results` as a user runs it: the table, pivots, exports that parse back, and errors
that are one line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness import results
from harness.cli import app
from harness.results import BenchRecord, QualityRecord

runner = CliRunner()
MACHINE = dict(cpu="AMD EPYC", device="cpu", dtype="float32", threads=2, batch=1)


def run(*args: str):
    return runner.invoke(app, ["results", *args])


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def store(path: Path) -> Path:
    """gpt and rwkv forward and generate at 128 and 256, a Hugging Face gpt forward, and one
    quality score each."""
    for model in ("gpt", "rwkv"):
        for mode in ("forward", "generate"):
            for seqlen in (128, 256):
                results.append(path, BenchRecord(
                    model=model, variant="tiny", impl="zoo", mode=mode, seqlen=seqlen,
                    tokens_per_s=1000.0 * seqlen + (500 if model == "rwkv" else 0),
                    peak_mem_bytes=2**20 * seqlen, command=f"catalog bench {model}", **MACHINE))
        results.append(path, QualityRecord(model=model, variant="tiny", impl="zoo", task="lm",
                                           metric="bits_per_byte", value=3.0, **MACHINE))
    for seqlen in (128, 256):
        results.append(path, BenchRecord(model="gpt", variant="tiny", impl="hf", mode="forward",
                                         seqlen=seqlen, tokens_per_s=250.0 * seqlen, **MACHINE))
    return path


@pytest.fixture
def path(tmp_path):
    return store(tmp_path / "r.jsonl")


def test_a_table_of_the_records(path):
    result = run("--results", str(path), "--kind", "bench")
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[1]
    for column in ("model", "impl", "mode", "seqlen", "tokens_per_s", "peak_mem_bytes"):
        assert column in header
    assert "budget" not in result.stdout and "value" not in header
    assert "256,500" in result.stdout  # rwkv at 256, with thousands separators
    assert "10 row(s) from 12 record(s)" in result.stdout


def test_pivot_to_csv_on_stdout_parses_back(path):
    result = run("--results", str(path), "--where", "mode=forward",
                 "--pivot", "seqlen:model,impl:tokens_per_s", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["seqlen"] for r in rows] == ["128", "256"]
    assert {k: float(v) for k, v in rows[1].items()} == {
        "seqlen": 256, "gpt/hf": 64000, "gpt/zoo": 256000, "rwkv/zoo": 256500}


def test_out_file_takes_its_format_from_the_suffix(path, tmp_path):
    out = tmp_path / "sub" / "speed.json"
    result = run("--results", str(path), "--where", "model=gpt", "--where", "mode=forward",
                 "--columns", "model,impl,seqlen", "--columns", "tokens_per_s", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"wrote 4 row(s) to {out}" in result.stdout
    assert json.loads(out.read_text()) == [
        {"model": "gpt", "impl": "zoo", "seqlen": 128, "tokens_per_s": 128000.0},
        {"model": "gpt", "impl": "zoo", "seqlen": 256, "tokens_per_s": 256000.0},
        {"model": "gpt", "impl": "hf", "seqlen": 128, "tokens_per_s": 32000.0},
        {"model": "gpt", "impl": "hf", "seqlen": 256, "tokens_per_s": 64000.0}]
    markdown = tmp_path / "speed.md"
    result = run("--results", str(path), "--kind", "quality", "--out", str(markdown))
    assert result.exit_code == 0, result.output
    assert markdown.read_text().splitlines()[0].startswith("| model ")


def test_query_and_ratios(path):
    result = run("--results", str(path), "--query", "seqlen >= 256 and impl == 'hf'",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert row["impl"] == "hf" and row["seqlen"] == 256
    result = run("--results", str(path), "--ratios", "--format", "json")
    pairs = json.loads(result.stdout)
    assert [(p["seqlen"], p["peer"], p["tokens_per_s_ratio"]) for p in pairs] == [
        (128, "hf", 4.0), (256, "hf", 4.0)]
    table = run("--results", str(path), "--ratios")
    assert "tokens_per_s_ratio" in table.stdout and "2 row(s)" in table.stdout


def test_unknown_fields_are_one_line_naming_the_valid_ones(path):
    one_line_error(run("--results", str(path), "--where", "modle=gpt"),
                   "--where: unknown field 'modle'", "did you mean", "fields: kind, model,")
    one_line_error(run("--results", str(path), "--columns", "model,tokens_per_sec"),
                   "--columns: unknown field 'tokens_per_sec'", "'tokens_per_s'")
    one_line_error(run("--results", str(path), "--pivot", "seqlen:modl:tokens_per_s"),
                   "--pivot: unknown field 'modl'")
    one_line_error(run("--results", str(path), "--query", "seqln > 1"),
                   "--query: unknown field 'seqln'")


def test_a_pivot_cell_with_several_records_says_how_to_fix_it(path):
    line = one_line_error(run("--results", str(path), "--pivot", "seqlen:model:tokens_per_s"),
                          "--pivot: 3 records fall in the cell seqlen=128, model=gpt",
                          "--where", "--agg")
    assert "--where impl=zoo" in line or "--where mode=forward" in line
    result = run("--results", str(path), "--pivot", "seqlen:model:tokens_per_s", "--agg", "max",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0] == {"seqlen": 128, "gpt": 128000.0, "rwkv": 128500.0}


def test_output_and_input_errors(path, tmp_path, monkeypatch):
    one_line_error(run("--results", str(path), "--out", str(tmp_path / "t.txt")),
                   "--out", "t.txt", "--format csv, json or markdown")
    one_line_error(run("--results", str(path), "--format", "table", "--out",
                       str(tmp_path / "t.csv")), "--format table is for the terminal")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    one_line_error(run("--results", str(path), "--out", str(blocked / "t.csv")),
                   f"--out {blocked / 't.csv'}: {blocked} is a file, not a folder")
    (tmp_path / "d.csv").mkdir()
    one_line_error(run("--results", str(path), "--out", str(tmp_path / "d.csv")),
                   "is a folder; give a file")
    one_line_error(run("--results", str(tmp_path / "nope.jsonl")), "no results file",
                   "nope.jsonl")
    monkeypatch.chdir(tmp_path)
    one_line_error(run(), "reports/results holds no .jsonl file")
    store(tmp_path / "reports" / "results" / "bench.jsonl")
    result = run("--where", "model=rwkv", "--format", "csv")  # the store by default
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 + 5


def test_nothing_matches_is_said_not_an_error(path):
    result = run("--results", str(path), "--where", "model=bert")
    assert result.exit_code == 0 and result.stdout == ""
    assert "nothing of the 12 record(s) read matches" in result.stderr
    empty = run("--results", str(path), "--where", "model=bert", "--format", "csv")
    assert empty.exit_code == 0 and empty.stdout.startswith("kind,model,")


def test_help_describes_every_option():
    result = runner.invoke(app, ["results", "--help"])
    assert result.exit_code == 0
    for option in ("--results", "--kind", "--where", "--query", "--columns", "--pivot", "--agg",
                   "--ratios", "--all-runs", "--format", "--out"):
        assert option in result.stdout
    assert "results" in runner.invoke(app, ["--help"]).stdout
