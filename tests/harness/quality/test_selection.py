"""The learning rate of a grid cell is chosen on validation, never on test: synthetic grids
written to a results file and read back, as the report reads them."""

from __future__ import annotations

import pandas as pd
import pytest

from harness import results
from harness.quality import selection
from harness.results import QualityRecord


def cell(model: str, lr: float, seed: int, val: float | None, test: float | None, *,
         task: str = "mqar", status: str = "ok", **fields) -> QualityRecord:
    """One grid cell as `catalog quality` writes it (MQAR by default)."""
    values = dict(model=model, variant="small", impl="zoo", mode="train", task=task,
                  metric="accuracy" if task == "mqar" else "bits_per_byte", seqlen=64,
                  kv_pairs=4 if task == "mqar" else None, width=64, batch=32,
                  budget="2 epochs", dtype="float32", device="cpu", lr=lr, seed=seed,
                  status=status, val_value=val, value=test,
                  chance=0.25 if task == "mqar" else None,
                  baseline=4.05 if task == "lm" else None)
    values.update(fields)
    return QualityRecord(**values)


def frame(tmp_path, cells) -> pd.DataFrame:
    path = tmp_path / "grid.jsonl"
    for c in cells:
        results.append(path, c)
    df, warnings = results.load_frame([path])
    assert not warnings
    return df


def one(table, **where):
    rows = table
    for name, value in where.items():
        rows = rows[rows[name].eq(value).fillna(False)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_the_choice_is_on_validation_even_when_test_ranks_the_rates_the_other_way(tmp_path):
    # lr 1e-3 is best on validation, 1e-2 on test: choosing on test would pick 1e-2.
    df = frame(tmp_path, [cell("rwkv", 1e-3, s, val=0.90, test=0.70 + s / 100) for s in (0, 1)]
               + [cell("rwkv", 1e-2, s, val=0.60, test=0.95) for s in (0, 1)])
    chosen = one(selection.select(df), model="rwkv")
    assert chosen["lr"] == 1e-3 and chosen["lrs"] == 2
    assert chosen["test_mean"] == pytest.approx(0.705)  # the test score AT the chosen rate
    assert chosen["val_mean"] == pytest.approx(0.90)


def test_bits_per_byte_are_chosen_lowest(tmp_path):
    df = frame(tmp_path, [cell("gpt", 1e-3, 0, val=2.5, test=2.6, task="lm"),
                          cell("gpt", 3e-3, 0, val=2.1, test=2.9, task="lm"),
                          cell("gpt", 1e-2, 0, val=3.0, test=2.0, task="lm")])
    chosen = one(selection.select(df), model="gpt")
    assert chosen["lr"] == 3e-3 and chosen["test_mean"] == pytest.approx(2.9)
    assert chosen["baseline"] == pytest.approx(4.05) and chosen["metric"] == "bits_per_byte"
    assert not selection.higher_is_better("bits_per_byte")
    assert selection.higher_is_better("accuracy")
    with pytest.raises(ValueError, match="no direction known for metric 'bleu'"):
        selection.higher_is_better("bleu")


def test_failed_cells_are_not_chosen_and_are_counted(tmp_path):
    failed = dict(status="oom", val=None, test=None, error="CUDA out of memory")
    df = frame(tmp_path, [
        # lr 1e-2 would win on its one ok seed's validation score had its failures been ok...
        cell("gpt", 1e-2, 0, **failed), cell("gpt", 1e-2, 1, **failed),
        cell("gpt", 1e-3, 0, val=0.5, test=0.5), cell("gpt", 1e-3, 1, val=0.7, test=0.6),
        # ...and a group whose every cell failed has no choice.
        cell("gpt", 1e-3, 0, seqlen=512, kv_pairs=64, **failed),
        cell("gpt", 1e-2, 0, seqlen=512, kv_pairs=64, status="timeout", val=None, test=None),
    ])
    table = selection.select(df)
    ok = one(table, seqlen=64)
    assert ok["lr"] == 1e-3 and ok["failed"] == 2 and ok["status"] == "ok"
    assert ok["seeds"] == 2 and ok["lrs"] == 2
    none = one(table, seqlen=512)
    assert pd.isna(none["lr"]) and pd.isna(none["test_mean"])
    assert none["status"] == "oom, timeout" and none["failed"] == 2 and none["seeds"] == 0
    assert none["error"] == "CUDA out of memory"
    curve = selection.lr_curve(df)
    at = one(curve, seqlen=64, lr=1e-2)
    assert at["seeds"] == 0 and at["failed"] == 2 and pd.isna(at["val_mean"])
    assert list(selection.selected_cells(df)["seed"]) == [0, 1]  # lr 1e-3 of seqlen 64 only


def test_mean_and_spread_over_seeds(tmp_path):
    df = frame(tmp_path, [cell("rwkv", 1e-3, s, val=v, test=t) for s, v, t in
                          ((0, 0.8, 0.70), (1, 0.9, 0.80), (2, 1.0, 0.90))])
    chosen = one(selection.select(df), model="rwkv")
    assert chosen["seeds"] == 3
    assert chosen["test_mean"] == pytest.approx(0.80)
    assert chosen["test_std"] == pytest.approx(0.10)  # sample standard deviation
    assert chosen["val_mean"] == pytest.approx(0.90) and chosen["val_std"] == pytest.approx(0.1)
    single = frame(tmp_path / "one", [cell("rwkv", 1e-3, 0, val=0.5, test=0.4)])
    assert pd.isna(one(selection.select(single), model="rwkv")["test_std"])  # one seed


def test_groups_split_on_every_identifying_field_but_lr_and_seed(tmp_path):
    df = frame(tmp_path, [cell("gpt", 1e-3, 0, val=0.9, test=0.9),
                          cell("gpt", 1e-3, 0, val=0.1, test=0.1, width=None),
                          cell("gpt", 1e-2, 1, val=0.2, test=0.2, width=None),
                          cell("gpt", 1e-3, 0, val=0.3, test=0.3, width=128),
                          cell("rwkv", 1e-3, 0, val=0.4, test=0.4)])
    table = selection.select(df)
    assert len(table) == 4  # width 64, missing, 128 for gpt; rwkv
    missing = table[table["width"].isna()].iloc[0]
    assert missing["lrs"] == 2 and missing["lr"] == 1e-2  # missing widths are one group


def test_only_grid_cells_take_part(tmp_path):
    old = QualityRecord(model="gpt", impl="zoo", mode="train", task="mqar", metric="accuracy",
                        value=0.99, lr=1e-3, seed=0)  # no validation score: not a grid cell
    evals = QualityRecord(model="gpt", impl="lm-eval", mode="eval", task="x", metric="accuracy",
                          value=0.5, val_value=0.5)
    df = frame(tmp_path, [old, evals, cell("gpt", 1e-3, 0, val=0.5, test=0.4)])
    assert len(selection.grid_rows(df)) == 1
    assert one(selection.select(df), model="gpt")["test_mean"] == pytest.approx(0.4)


def test_curves_of_the_chosen_rate(tmp_path):
    def curves(value: float, icl: float | None):
        extrapolation = [
            {"eval_seqlen": n, "mode": "nonoverlapping", "stride": None,
             "bits_per_byte": None if n > 512 else value + n / 1e4, "loss": None,
             "tokens": 1000, "note": "longer than the position table" if n > 512 else None}
            for n in (256, 512, 1024)]
        position = {"seqlen": 256, "windows": 4, "bins": [[1, 1], [2, 3], [4, 7]],
                    "loss": [value + 1, value, value - 1], "tokens": [4, 8, 16],
                    "mean_loss": value, "icl_score": icl}
        return dict(extrapolation=extrapolation, position_loss=position)

    df = frame(tmp_path, [
        cell("gpt", 1e-3, 0, val=2.0, test=2.0, task="lm", **curves(2.0, -0.5)),
        cell("gpt", 1e-3, 1, val=2.2, test=2.2, task="lm", **curves(3.0, None)),
        cell("gpt", 1e-2, 0, val=9.0, test=9.0, task="lm", **curves(9.0, -9.0)),  # not chosen
    ])
    points = selection.extrapolation(df)
    assert list(points["eval_seqlen"]) == [256, 512, 1024]
    assert list(points["bits_per_byte"][:2]) == pytest.approx([2.5256, 2.5512])
    assert pd.isna(points["bits_per_byte"].iloc[2]) and points["seeds"].iloc[2] == 0
    assert points["notes"].iloc[2] == "longer than the position table"
    bins, scores = selection.position_loss(df)
    assert list(bins["position"]) == [1.0, 2.5, 5.5]
    assert list(bins["loss"]) == pytest.approx([3.5, 2.5, 1.5])
    assert list(bins["tokens"]) == [8, 16, 32]
    [score] = scores.to_dict("records")
    assert score["icl_score"] == pytest.approx(-0.5) and score["seeds"] == 2
    assert score["mean_loss"] == pytest.approx(2.5) and score["windows"] == 4


def test_cells_without_length_curves_beside_cells_with_them(tmp_path):
    """Equal-budget runs record no curves; read in one frame with benchmark records, their
    missing lists come out of pandas as NaN, which the curves skip."""
    from harness import results
    from harness.quality import selection
    from harness.results import QualityRecord

    common = {"task": "lm", "impl": "zoo", "mode": "train", "metric": "bits_per_byte",
              "seqlen": 64, "lr": 1e-3, "seed": 0, "budget": "1 s", "val_value": 3.0,
              "value": 3.1}
    curve = [{"eval_seqlen": 64, "mode": "nonoverlapping", "stride": None,
              "bits_per_byte": 3.1, "loss": 2.0, "tokens": 10, "note": None}]
    path = tmp_path / "q.jsonl"
    # a benchmark record in the same frame turns the curve columns' gaps into float NaN
    results.append(path, results.BenchRecord(model="gpt", impl="zoo", mode="forward"))
    results.append(path, QualityRecord(model="gpt", **common))
    results.append(path, QualityRecord(model="rwkv", extrapolation=curve,
                                       position_loss={"seqlen": 64, "bins": [[1, 2]],
                                                      "loss": [2.0], "tokens": [10],
                                                      "mean_loss": 2.0, "icl_score": None,
                                                      "windows": 1}, **common))
    only_plain, _ = results.load_frame([path])
    only_plain = only_plain[only_plain["model"] == "gpt"]  # no record with curves at all
    # (after a merge of frames read with benchmark records, pandas gives NaN for the gaps)
    only_plain = only_plain.assign(extrapolation=float("nan"), position_loss=float("nan"))
    assert selection.extrapolation(only_plain).empty
    assert selection.position_loss(only_plain)[1].empty
    df, _ = results.load_frame([path])
    assert list(selection.extrapolation(df)["model"]) == ["rwkv"]
    bins, scores = selection.position_loss(df)
    assert list(scores["model"]) == ["rwkv"]
