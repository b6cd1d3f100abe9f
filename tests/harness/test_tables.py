"""harness.tables: records selected, pivoted, paired and exported, and the errors that say
which option is wrong and how to put it right."""

from __future__ import annotations

import csv
import io
import json

import pytest

from harness import results, tables
from harness.results import BenchRecord, QualityRecord
from harness.tables import Options, TableError

MACHINE = dict(cpu="AMD EPYC", device="cpu", dtype="float32", threads=2, batch=1)


def bench(model: str, mode: str, seqlen: int, impl: str = "zoo", **fields) -> BenchRecord:
    speed = {"forward": 1e6, "generate": 1e4}[mode] / seqlen * (2 if model == "rwkv" else 1)
    values = dict(model=model, variant="small", impl=impl, mode=mode, seqlen=seqlen,
                  status="ok", tokens_per_s=speed, peak_mem_bytes=2**20 * seqlen,
                  time="2026-11-20T10:00:00+00:00", command=f"catalog bench {model}", **MACHINE)
    return BenchRecord(**{**values, **fields})


@pytest.fixture
def store(tmp_path):
    """gpt and rwkv, forward and generate at 128 and 256; a Hugging Face gpt forward at both
    lengths (half our speed at 128, with a note); gpt forward 512 ran out of memory; two
    quality scores."""
    path = tmp_path / "results.jsonl"
    for model in ("gpt", "rwkv"):
        for mode in ("forward", "generate"):
            for seqlen in (128, 256):
                results.append(path, bench(model, mode, seqlen))
    results.append(path, bench("gpt", "forward", 128, impl="hf", tokens_per_s=1e6 / 128 / 2,
                               peak_mem_bytes=2**21 * 128, notes=["peer: transformers 4.40"]))
    results.append(path, bench("gpt", "forward", 256, impl="hf", tokens_per_s=1e6 / 256 * 2))
    results.append(path, bench("gpt", "forward", 512, status="oom", tokens_per_s=None,
                               peak_mem_bytes=None))
    for model, value in (("gpt", 2.5), ("rwkv", 2.25)):
        results.append(path, QualityRecord(
            model=model, variant="tiny", impl="zoo", mode="train", task="lm",
            metric="bits_per_byte", value=value, seqlen=64, seed=0, budget="2,000 tokens",
            **{k: v for k, v in MACHINE.items() if k != "batch"}))
    return path


def build(store, **options):
    return tables.build([store], Options(**options))


def test_records_with_a_default_set_of_columns_for_their_kind(store):
    made = build(store)
    assert len(made.frame) == made.records == 13 and made.warnings == []
    assert list(made.frame.columns) == list(tables.DEFAULT_COLUMNS["mixed"])
    made = build(store, kind="bench")
    assert list(made.frame.columns) == list(tables.DEFAULT_COLUMNS["bench"])
    assert len(made.frame) == 11 and made.frame["mode"].notna().all()
    # the default suits the rows left: no quality record is 128 tokens long
    assert list(build(store, where=["seqlen>=128"]).frame.columns) == list(
        tables.DEFAULT_COLUMNS["bench"])
    quality = build(store, kind="quality")
    assert list(quality.frame["value"]) == [2.5, 2.25] and "budget" in quality.frame
    # a kind's table knows only that kind's fields
    with pytest.raises(TableError, match="unknown field 'budget'"):
        build(store, kind="bench", columns=["model", "budget"])


def test_where_equal_any_of_several_not_equal_and_comparisons(store):
    def models_lengths(**options):
        frame = build(store, kind="bench", **options).frame
        return sorted(zip(frame["model"], frame["impl"], frame["seqlen"], strict=True))

    assert models_lengths(where=["model=rwkv", "mode=forward"]) == [
        ("rwkv", "zoo", 128), ("rwkv", "zoo", 256)]
    assert models_lengths(where=["impl=hf,zoo", "seqlen>=256", "mode==forward"]) == [
        ("gpt", "hf", 256), ("gpt", "zoo", 256), ("gpt", "zoo", 512), ("rwkv", "zoo", 256)]
    assert models_lengths(where=["impl!=zoo"]) == [("gpt", "hf", 128), ("gpt", "hf", 256)]
    assert models_lengths(where=["seqlen<256", "model=gpt", "mode=forward"]) == [
        ("gpt", "hf", 128), ("gpt", "zoo", 128)]
    # a list field matches when one of its items contains the text
    assert models_lengths(where=["notes=transformers"]) == [("gpt", "hf", 128)]
    # a record missing the field meets no condition on it
    assert models_lengths(where=["tokens_per_s>0", "model=gpt", "seqlen>256"]) == []


def test_where_errors_name_the_field_and_what_would_be_right(store):
    with pytest.raises(TableError) as error:
        build(store, where=["modle=gpt"])
    message = str(error.value)
    assert message.startswith("--where: unknown field 'modle' (did you mean 'mode' or 'model'?)")
    assert "fields: kind, model, variant" in message and "\n" not in message
    with pytest.raises(TableError, match=r"seqlen holds numbers; give one, e\.g\. seqlen=128"):
        build(store, where=["seqlen=long"])
    with pytest.raises(TableError, match="expected FIELD=VALUE"):
        build(store, where=["model"])
    with pytest.raises(TableError, match="notes holds lists; use = or !="):
        build(store, where=["notes>a"])


def test_query_is_a_pandas_expression_over_the_fields(store):
    frame = build(store, query="seqlen >= 256 and status == 'ok' and kind == 'bench'").frame
    assert sorted(set(frame["seqlen"])) == [256] and len(frame) == 5
    # the quality records have no tokens/s: left out, not an error
    fast = build(store, query="tokens_per_s > 5000", columns=["kind", "tokens_per_s"]).frame
    assert len(fast) == 4 and set(fast["kind"]) == {"bench"}
    with pytest.raises(TableError, match=r"--query: unknown field 'seqln' \(did you mean "
                                         "'seqlen'"):
        build(store, query="seqln > 1")
    with pytest.raises(TableError, match="SyntaxError"):
        build(store, query="seqlen >")
    with pytest.raises(TableError, match="is not a condition"):
        build(store, query="seqlen * 2")


def test_pivot_rows_columns_values(store):
    frame = build(store, where=["mode=forward"], pivot="seqlen:model,impl:tokens_per_s").frame
    assert list(frame.columns) == ["seqlen", "gpt/hf", "gpt/zoo", "rwkv/zoo"]
    assert list(frame["seqlen"]) == [128, 256, 512]
    row = frame.set_index("seqlen").loc[128]
    assert row["gpt/zoo"] == pytest.approx(1e6 / 128) and row["gpt/hf"] == pytest.approx(
        1e6 / 256) and row["rwkv/zoo"] == pytest.approx(2e6 / 128)
    assert frame.set_index("seqlen")["rwkv/zoo"].isna().tolist() == [False, False, True]
    # several values: each column says which
    two = build(store, where=["mode=forward", "impl=zoo"],
                pivot="seqlen:model:tokens_per_s,peak_mem_bytes").frame
    assert "peak_mem_bytes/gpt" in two.columns and "tokens_per_s/rwkv" in two.columns
    # no COLUMNS: one row per ROWS
    flat = build(store, kind="quality", pivot="model::value").frame
    assert flat.to_dict("list") == {"model": ["gpt", "rwkv"], "value": [2.5, 2.25]}


def test_a_pivot_cell_with_several_records_is_refused_with_the_fix(store):
    with pytest.raises(TableError) as error:
        build(store, kind="bench", pivot="seqlen:model:tokens_per_s")
    message = str(error.value)
    assert message.startswith("--pivot: 3 records fall in the cell seqlen=128, model=gpt "
                              "(they differ in impl, mode)")
    assert ("filter (e.g. --where impl=zoo), add impl to the pivot's rows or columns, or choose "
            "an --agg (mean, median") in message
    mean = build(store, kind="bench", where=["mode=forward"], pivot="seqlen:model:tokens_per_s",
                 agg="mean").frame.set_index("seqlen")
    assert mean.loc[128, "gpt"] == pytest.approx((1e6 / 128 + 1e6 / 256) / 2)
    counts = build(store, kind="bench", pivot="seqlen:model:tokens_per_s", agg="count").frame
    assert counts.set_index("seqlen").loc[128, "gpt"] == 3
    with pytest.raises(TableError, match="--agg mean: status is not a number"):
        build(store, pivot="seqlen:model:status", agg="mean")


def test_a_clash_of_records_that_hold_routes_is_explained_too(tmp_path):
    """routes is a list, which pandas cannot count as it is: the clash's explanation compares
    it as a tuple (this was a TypeError traceback)."""
    path = tmp_path / "results.jsonl"
    results.append(path, bench("gpt", "forward", 128, routes=["linear", "ffn"]))
    results.append(path, bench("gpt", "forward", 128, routes=["linear"]))
    results.append(path, bench("gpt", "forward", 128, impl="hf"))
    with pytest.raises(TableError) as error:
        tables.build([path], Options(pivot="model:seqlen:tokens_per_s"))
    assert str(error.value).startswith("--pivot: 3 records fall in the cell model=gpt, "
                                       "seqlen=128 (they differ in impl, routes)")


def test_earlier_measurements_are_left_out_unless_all_runs(store):
    results.append(store, bench("rwkv", "forward", 128, tokens_per_s=1.0,
                                time="2026-11-21T10:00:00+00:00"))
    latest = build(store, where=["model=rwkv", "mode=forward"])
    assert sorted(latest.frame["tokens_per_s"]) == [1.0, pytest.approx(2e6 / 256)]
    assert any("1 earlier measurement(s) of the same cell left out" in w and "--all-runs" in w
               for w in latest.warnings)
    every = build(store, where=["model=rwkv", "mode=forward"], all_runs=True)
    assert len(every.frame) == 3 and every.warnings == []
    with pytest.raises(TableError, match=r"2 records fall in the cell seqlen=128, model=rwkv "
                                         r"\(earlier measurements of the same cell\); drop "
                                         "--all-runs"):
        build(store, where=["mode=forward", "impl=zoo"], all_runs=True,
              pivot="seqlen:model:tokens_per_s")


def test_ratios_pair_ours_with_peers_and_take_the_filters(store):
    pairs = build(store, ratios=True).frame
    assert list(pairs.columns) == list(tables.DEFAULT_COLUMNS["ratios"])
    assert sorted(zip(pairs["seqlen"], pairs["tokens_per_s_ratio"], strict=True)) == [
        (128, pytest.approx(2.0)), (256, pytest.approx(0.5))]
    assert pairs.set_index("seqlen").loc[128, "peak_mem_ratio"] == pytest.approx(0.5)
    slower = build(store, ratios=True, query="tokens_per_s_ratio < 1").frame
    assert list(slower["seqlen"]) == [256]
    pivoted = build(store, ratios=True, pivot="seqlen:peer:tokens_per_s_ratio").frame
    assert list(pivoted.columns) == ["seqlen", "hf"]
    with pytest.raises(TableError, match="unknown field 'status'"):  # pairs have no status
        build(store, ratios=True, where=["status=ok"])
    with pytest.raises(TableError, match="--ratios pairs benchmark cells"):
        build(store, ratios=True, kind="quality")


def test_option_combinations_that_make_no_table(store, tmp_path):
    with pytest.raises(TableError, match="--columns and --pivot: choose one"):
        build(store, columns=["model"], pivot="seqlen:model:tokens_per_s")
    with pytest.raises(TableError, match="--agg combines the records of a pivot cell"):
        build(store, agg="mean")
    with pytest.raises(TableError, match="expected ROWS:COLUMNS:VALUES"):
        build(store, pivot="seqlen:model")
    with pytest.raises(TableError, match="--pivot: notes holds lists"):
        build(store, pivot="notes:model:tokens_per_s")
    with pytest.raises(TableError, match="no results file .*missing.jsonl"):
        tables.build([tmp_path / "missing.jsonl"], Options())
    with pytest.raises(TableError, match="holds no .jsonl file"):
        tables.build([], Options())


def test_csv_and_json_parse_back_to_the_same_values(store):
    frame = build(store, kind="bench", where=["model=gpt", "mode=forward"],
                  columns=["impl", "seqlen", "status", "tokens_per_s", "notes"]).frame
    rows = list(csv.DictReader(io.StringIO(tables.export(frame, "csv"))))
    assert [r["impl"] for r in rows] == ["zoo", "zoo", "hf", "hf", "zoo"]
    assert float(rows[0]["tokens_per_s"]) == 1e6 / 128  # every digit kept
    assert rows[2]["notes"] == "peer: transformers 4.40" and rows[3]["notes"] == ""
    assert rows[4]["status"] == "oom" and rows[4]["tokens_per_s"] == ""
    parsed = json.loads(tables.export(frame, "json"))
    assert parsed[0] == {"impl": "zoo", "seqlen": 128, "status": "ok",
                         "tokens_per_s": 1e6 / 128, "notes": []}
    assert parsed[4]["tokens_per_s"] is None and parsed[2]["notes"] == [
        "peer: transformers 4.40"]
    pivoted = build(store, where=["mode=forward"], pivot="seqlen:model,impl:tokens_per_s").frame
    back = json.loads(tables.export(pivoted, "json"))
    assert back[0] == {"seqlen": 128, "gpt/hf": 1e6 / 256, "gpt/zoo": 1e6 / 128,
                       "rwkv/zoo": 2e6 / 128}
    assert back[2]["rwkv/zoo"] is None


def test_markdown_and_the_terminal_cells(store):
    frame = build(store, kind="bench", where=["model=gpt", "mode=forward", "seqlen=128"],
                  columns=["impl", "seqlen", "tokens_per_s", "peak_mem_bytes", "notes"]).frame
    frame.loc[1, "notes"] = ["a | b"]
    lines = tables.export(frame, "markdown").splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "impl", "seqlen", "tokens_per_s", "peak_mem_bytes", "notes"]
    assert lines[1].startswith("|:--") and lines[1].count("--:|") == 3  # numbers to the right
    assert "7,812" in lines[2] and "134,217,728" in lines[2] and "a \\| b" in lines[3]
    assert tables.display(frame)[0] == ["zoo", "128", "7,812", "134,217,728", ""]
    assert [tables.text(v) for v in (0.25, 2.0 / 3, 123456.7, None, ["x", "y"])] == [
        "0.25", "0.6667", "123,457", "", "x; y"]
    with pytest.raises(TableError, match="--format 'xml'"):
        tables.export(frame, "xml")
