"""The results store: append, reload, damaged lines."""

from __future__ import annotations

import json

from harness import results


def test_record_has_every_standard_field_and_keeps_extras():
    rec = results.record(kind="bench", model="gpt", status="ok", extra=1)
    assert list(rec)[: len(results.FIELDS)] == list(results.FIELDS)
    assert rec["extra"] == 1 and rec["notes"] == [] and rec["mfu"] is None


def test_append_and_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    for i in range(3):
        results.append(path, results.record(kind="bench", seqlen=i))
    loaded = results.load([path, tmp_path / "missing.jsonl"])
    assert [r["seqlen"] for r in loaded.records] == [0, 1, 2] and loaded.warnings == []


def test_damaged_lines_are_skipped_with_a_warning(tmp_path):
    path = tmp_path / "r.jsonl"
    results.append(path, results.record(kind="bench", seqlen=1))
    with open(path, "a") as f:
        f.write('{"kind": "bench", "seq')  # a run killed mid-write: no newline
    results.append(path, results.record(kind="bench", seqlen=2))  # starts a new line
    with open(path, "a") as f:
        f.write("[1, 2]\n\n")
    loaded = results.load([path])
    assert [r["seqlen"] for r in loaded.records] == [1, 2]
    assert len(loaded.warnings) == 2 and f"{path}:2:" in loaded.warnings[0]
    assert all(json.loads(line) for line in path.read_text().splitlines()[2:3])


def test_key_identifies_a_measurement():
    a = results.record(kind="bench", model="gpt", seqlen=512, mode="forward", status="ok")
    b = {**a, "status": "timeout", "tokens_per_s": 1.0}
    assert results.key(a) == results.key(b)
    assert results.key(a) != results.key({**a, "seqlen": 1024})
