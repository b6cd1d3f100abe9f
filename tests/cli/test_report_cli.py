"""`catalog report` as a user runs it: the summary, the files, and the error paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.results import parse


def record(**values) -> dict:
    """A record as the store holds it, checked against its kind's schema."""
    return parse(values).to_dict()

runner = CliRunner()
MACHINE = dict(cpu="AMD EPYC", gpu=None, device="cpu", dtype="float32", threads=2,
               torch="2.13.0+cpu", version="0.1.0", git="abc1234")


def run(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], lines


def results_file(path: Path, models=("gpt", "rwkv"), command: str | None = None,
                 **machine) -> Path:
    rows = []
    for model in models:
        for seqlen in (128, 256):
            rows.append(record(
                kind="bench", model=model, variant="tiny", impl="zoo", mode="forward",
                seqlen=seqlen, batch=1, status="ok", tokens_per_s=1000.0 * seqlen,
                ms_median=1.0, ms_iqr=0.1, peak_mem_bytes=2**28, act_mem_bytes=2**20 * seqlen,
                mfu=0.1, params=200_000, time="2026-11-20T10:00:00+00:00",
                notes=["position table extended"] if seqlen == 256 else [],
                command=command, **{**MACHINE, **machine}))
        rows.append(record(
            kind="quality", model=model, variant="tiny", impl="zoo", mode="train", seqlen=64,
            batch=4, status="ok", task="lm", metric="bits_per_byte", value=5.4321,
            params=182_208, budget="2,000 tokens", budget_tokens=2000, tokens=2048, steps=8,
            train_seconds=2.0, seed=0, lr=1e-3, tokenizer="bytes", corpus="corpus.txt",
            baseline=4.05, **{**MACHINE, **machine}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_writes_the_files_and_summarises(tmp_path):
    results = results_file(tmp_path / "r.jsonl")
    out = tmp_path / "reports" / "mine"
    result = run("report", "--results", str(results), "--out", str(out),
                 "--command", "catalog bench gpt rwkv --variant tiny --seqlen 128,256")
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {"index.md", "index.html", "cpu-float32-throughput.png", "cpu-float32-memory.png",
            "cpu-float32-mfu.png", "cpu-float32-quality-lm.png", "timeline.png"} == names
    for name in names:
        assert name in result.stdout
    assert "4 benchmark cell(s), 2 quality score(s) in 1 section(s)" in result.stdout
    assert "AMD EPYC · cpu · float32" in result.stdout
    md = (out / "index.md").read_text()
    assert "| 256,000 |" in md and "| 5.4321 | 182,208 | 2,000 tokens |" in md
    assert "catalog bench gpt rwkv --variant tiny --seqlen 128,256" in md
    assert "position table extended (on 2 cell(s)" in md
    html = (out / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "<table>" in html


def test_the_commands_records_carry_are_listed_without_command(tmp_path):
    made_by = "catalog bench gpt rwkv --variant tiny --seqlen 128,256"
    results = results_file(tmp_path / "r.jsonl", command=made_by)
    result = run("report", "--results", str(results), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    commands = (tmp_path / "out" / "index.md").read_text().split("### Commands")[1]
    assert f"```bash\n{made_by}\n```" in commands  # once, though four cells carry it
    # the quality scores were written without one
    assert f"The command was not recorded for 2 quality score(s) in {results}" in commands


def test_models_takes_catalog_ids_and_lists(tmp_path):
    results = results_file(tmp_path / "r.jsonl", models=("gpt", "rwkv", "bert"))
    out = tmp_path / "out"
    result = run("report", "--results", str(results), "--out", str(out), "--models", "gpt-2,rwkv")
    assert result.exit_code == 0, result.output
    md = (out / "index.md").read_text()
    assert "| gpt | tiny |" in md and "| rwkv | tiny |" in md and "| bert |" not in md


def test_several_results_files_and_machines_make_sections(tmp_path):
    a = results_file(tmp_path / "a.jsonl")
    b = results_file(tmp_path / "b.jsonl", dtype="bfloat16")
    result = run("report", "--results", str(a), "--results", str(b), "--out",
                 str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "in 2 section(s)" in result.stdout and "AMD EPYC · cpu · bfloat16" in result.stdout
    assert (tmp_path / "out" / "cpu-bfloat16-throughput.png").exists()


def test_default_results_are_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(run("report"), "reports/results holds no .jsonl file")
    assert not (tmp_path / "reports" / "latest").exists()
    results_file(tmp_path / "reports" / "results" / "bench.jsonl")
    result = run("report")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "latest" / "index.html").exists()


@pytest.mark.parametrize("content, fragment", [
    ("", "no results to report in"),
    ('{"kind": "bench", "mo\n', "no results to report in"),
])
def test_nothing_to_report_is_one_line_and_writes_nothing(tmp_path, content, fragment):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    out = tmp_path / "out"
    one_line_error(run("report", "--results", str(path), "--out", str(out)), fragment)
    assert not out.exists()


def test_missing_file_and_unknown_model(tmp_path):
    one_line_error(run("report", "--results", str(tmp_path / "nope.jsonl"), "--out",
                       str(tmp_path / "out")), "no results file")
    results = results_file(tmp_path / "r.jsonl")
    one_line_error(run("report", "--results", str(results), "--out", str(tmp_path / "out"),
                       "--models", "bert"), "no results to report for bert")
    assert not (tmp_path / "out").exists()


def test_damaged_lines_are_warned_about(tmp_path):
    results = results_file(tmp_path / "r.jsonl")
    with open(results, "a") as f:
        f.write("not json\n")
    result = run("report", "--results", str(results), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "skipped a damaged line" in result.stderr


def test_help_describes_every_option():
    result = run("report", "--help")
    assert result.exit_code == 0
    for option in ("--results", "--out", "--models", "--command", "--title"):
        assert option in result.stdout


def test_an_output_folder_that_is_a_file_is_one_line_naming_it(tmp_path):
    results = results_file(tmp_path / "r.jsonl")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    for out in (blocked, blocked / "out"):
        result = run("report", "--results", str(results), "--out", str(out))
        one_line_error(result, f"--out {out}: {blocked} is a file; give a folder")
