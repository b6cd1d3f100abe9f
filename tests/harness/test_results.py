"""The results store: typed records, append, reload, damaged lines, the DataFrame."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from pydantic import ValidationError

from harness import results
from harness.results import BenchRecord, QualityRecord


def test_records_have_every_standard_field_then_their_kinds_own():
    rec = BenchRecord(model="gpt", status="ok", peak_flops=1e11).to_dict()
    assert list(rec)[: len(results.FIELDS)] == list(results.FIELDS)
    assert rec["kind"] == "bench" and rec["notes"] == [] and rec["mfu"] is None
    assert rec["peak_flops"] == 1e11 and "resumed" not in rec  # in memory only
    assert "command" in results.FIELDS and "budget" in QualityRecord(model="gpt").to_dict()


def test_a_mistyped_field_is_an_error_not_a_silent_none():
    with pytest.raises(ValidationError, match="tokens_per_sec"):
        BenchRecord(model="gpt", tokens_per_sec=1.0)
    with pytest.raises(ValidationError, match="status"):
        BenchRecord(model="gpt", status="fine")
    rec = BenchRecord(model="gpt")
    with pytest.raises(ValidationError):
        rec.seqlen = "long"


def test_append_and_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    for i in range(3):
        results.append(path, BenchRecord(model="gpt", seqlen=i, command="catalog bench gpt"))
    results.append(path, QualityRecord(model="gpt", value=1.5, scores={"loss": 2.0}))
    loaded = results.load([path, tmp_path / "missing.jsonl"])
    assert [r.seqlen for r in loaded.records[:3]] == [0, 1, 2] and loaded.warnings == []
    assert isinstance(loaded.records[3], QualityRecord) and loaded.records[3].scores["loss"] == 2
    assert loaded.records[0].command == "catalog bench gpt"
    assert loaded.sources == [str(path)] * 4


def test_damaged_lines_and_foreign_records_are_skipped_with_a_warning(tmp_path):
    path = tmp_path / "r.jsonl"
    results.append(path, BenchRecord(model="gpt", seqlen=1))
    with open(path, "a") as f:
        f.write('{"kind": "bench", "seq')  # a run killed mid-write: no newline
    results.append(path, BenchRecord(model="gpt", seqlen=2))  # starts a new line
    with open(path, "a") as f:
        f.write("[1, 2]\n\n")
        f.write(json.dumps({"kind": "bench", "model": "gpt", "seqlen": 3, "tokns": 1}) + "\n")
        f.write(json.dumps({"kind": "speed", "model": "gpt"}) + "\n")
    loaded = results.load([path])
    assert [r.seqlen for r in loaded.records] == [1, 2]
    assert len(loaded.warnings) == 4 and f"{path}:2:" in loaded.warnings[0]
    assert "unknown field 'tokns'" in loaded.warnings[2]
    assert "unknown kind 'speed'" in loaded.warnings[3]


def test_key_identifies_a_measurement():
    a = BenchRecord(model="gpt", seqlen=512, mode="forward", status="ok")
    b = a.model_copy(update={"status": "timeout", "tokens_per_s": 1.0})
    assert results.key(a) == results.key(b)
    assert results.key(a) != results.key(a.model_copy(update={"seqlen": 1024}))


def test_a_results_path_that_cannot_be_written_is_refused(tmp_path):
    results.check_writable(tmp_path / "new" / "r.jsonl")
    assert not (tmp_path / "new" / "r.jsonl").exists()  # checked, not left behind
    with pytest.raises(OSError, match="is a folder"):
        results.check_writable(tmp_path)
    with pytest.raises(OSError, match="/proc/x/r.jsonl cannot be written"):
        results.check_writable("/proc/x/r.jsonl")
    with pytest.raises(OSError, match="/dev/null is not a regular file"):
        results.check_writable("/dev/null")  # a device: reading /dev/zero back never ends


def bench(seqlen: int, impl: str = "zoo", tokens_per_s: float = 100.0, **fields):
    return BenchRecord(**{
        "model": "gpt", "variant": "small", "impl": impl, "mode": "forward", "seqlen": seqlen,
        "batch": 1, "dtype": "float32", "device": "cpu", "threads": 2, "cpu": "x",
        "tokens_per_s": tokens_per_s, "peak_mem_bytes": 1000, **fields})


def test_a_frame_has_one_column_per_field_and_nullable_dtypes():
    df = results.frame([bench(128), bench(256, status="oom", tokens_per_s=None),
                        QualityRecord(model="rwkv", value=2.5)], sources=["a", "a", "b"])
    assert list(df.columns[: len(results.FIELDS)]) == list(results.FIELDS)
    assert {"peak_flops", "budget", "source"} <= set(df.columns)
    assert str(df["seqlen"].dtype) == "Int64" and pd.isna(df["seqlen"][2])
    assert list(df["kind"]) == ["bench", "bench", "quality"]


def test_latest_keeps_each_cells_last_measurement():
    old = bench(128, tokens_per_s=1.0, time="2026-01-01T00:00:00+00:00")
    new = bench(128, tokens_per_s=2.0, time="2026-02-01T00:00:00+00:00")
    other = bench(256, time="2026-01-15T00:00:00+00:00")
    kept = results.latest(results.frame([new, other, old]))
    assert sorted(zip(kept.seqlen, kept.tokens_per_s, strict=True)) == [(128, 2.0), (256, 100.0)]


def test_ratios_pair_ours_with_each_peer_alike():
    df = results.frame([bench(128, tokens_per_s=300.0), bench(128, "hf", 100.0),
                        bench(256, tokens_per_s=300.0), bench(256, "hf", 100.0, status="oom"),
                        bench(128, "hf", 50.0, batch=4)])  # another batch: no pair
    pairs = results.ratios(df)
    assert list(pairs.peer) == ["hf"] and list(pairs.seqlen) == [128]
    assert pairs.tokens_per_s_ratio[0] == pytest.approx(3.0) and pairs.peak_mem_ratio[0] == 1.0
    assert results.ratios(results.frame([])).empty
