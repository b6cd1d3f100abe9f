"""benchmarks/mixed_precision_curve.py: both precisions trained on the same data and seed,
their curves recorded side by side (tiny GPT, a few steps)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from conftest import write_corpus

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mixed_precision_curve.py"


def load_script():
    spec = importlib.util.spec_from_file_location("mixed_precision_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_precisions_train_on_the_same_steps_and_are_recorded(tmp_path, capsys):
    results = tmp_path / "curves.jsonl"
    assert load_script().main([
        "--model", "gpt", "--variant", "tiny", "--budget", f"{6 * 4 * 64}-tokens",
        "--corpus", str(write_corpus(tmp_path)), "--seqlen", "64", "--batch-size", "4",
        "--seeds", "0,1", "--eval-every", "2", "--results", str(results)]) == 0
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["dtype"], r["seed"]) for r in rows] == [
        ("float32", 0), ("bfloat16", 0), ("float32", 1), ("bfloat16", 1)]
    for row in rows:
        assert row["steps"] == 6 and row["tokens"] == 6 * 4 * 64
        assert [step for step, _ in row["curve"]] == [2, 4, 6]
        assert all(0 < loss < 20 for _, loss in row["curve"])
    # Same seed, same data: the two precisions start from the same weights, so their first
    # evaluations agree to bfloat16's precision.
    first = {(r["dtype"], r["seed"]): r["curve"][0][1] for r in rows}
    assert abs(first["float32", 0] - first["bfloat16", 0]) < 0.05
    out = capsys.readouterr().out
    assert "validation loss" in out and "bfloat16: test bits_per_byte" in out
