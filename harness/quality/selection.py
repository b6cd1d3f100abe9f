"""The fair learning-rate choice of a quality grid, and the curves of the chosen cells.

A grid cell is one QualityRecord of equal-budget training (kind quality, impl zoo, mode train)
that was scored on validation as well as on test, or that failed. A cell group is one comparison
point: every field that identifies the measurement except the learning rate and the seed
(GROUP). Per group, `select` picks the learning rate with the best mean VALIDATION score over
seeds, and reports the TEST score at that rate: the test split never takes part in the choice
(the anchors, Zoology among them, chose on test, which flatters every model by the noise of that
choice).

  grid_rows       the records that are grid cells
  lr_curve        per group and learning rate: validation and test mean and spread, ok seeds,
                  failed cells
  select          per group: the chosen learning rate and the test score there
  selected_cells  the ok cells at each group's chosen learning rate, one row per seed
  extrapolation   bits per byte against evaluation length at the chosen rate, mean over seeds
  position_loss   mean loss by token position at the chosen rate, mean over seeds
  format_lr       a learning rate as the report writes it: 4.64e-4

Every function takes and returns a pandas DataFrame (`harness.results.frame`); a missing value
in a group field is equal to another missing value. Spreads are sample standard deviations over
seeds (missing for one seed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from harness.results import matches

# The fields of a comparison point, besides lr and seed: the cells of one group differ only in
# their learning rate and seed.
GROUP = ("task", "model", "variant", "width", "seqlen", "kv_pairs", "budget", "batch", "corpus",
         "tokenizer", "dtype", "device", "metric")

# Which way is better for each metric a grid can be scored on.
DIRECTIONS = {
    "accuracy": "max", "mlm_accuracy": "max", "exact_match": "max",
    "bits_per_byte": "min", "loss": "min", "perplexity": "min", "word_perplexity": "min",
}

LR_CURVE_COLUMNS = (*GROUP, "lr", "val_mean", "val_std", "test_mean", "test_std", "seeds",
                    "failed")
SELECT_COLUMNS = (*GROUP, "lr", "lrs", "val_mean", "val_std", "test_mean", "test_std", "seeds",
                  "failed", "status", "error", "chance", "baseline", "params")
# How the report names each metric.
METRIC_NAMES = {"bits_per_byte": "bits per byte", "mlm_accuracy": "masked-token accuracy",
                "accuracy": "accuracy"}


def format_lr(value: Any) -> str:
    """A learning rate as tables and axes show it: 1e-3, 4.64e-4 (three significant digits)."""
    if value is None or pd.isna(value):
        return "none"
    mantissa, exponent = f"{float(value):.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def higher_is_better(metric: str) -> bool:
    """Whether a larger score is better (a ValueError for a metric not in DIRECTIONS)."""
    if metric not in DIRECTIONS:
        raise ValueError(f"no direction known for metric {metric!r}; known: "
                         f"{', '.join(DIRECTIONS)} (add it to harness.quality.selection."
                         "DIRECTIONS)")
    return DIRECTIONS[metric] == "max"


def grid_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The grid cells of `df`: quality records of zoo training (kind quality, impl zoo, mode
    train) with a validation score, or that failed (status other than ok)."""
    if df.empty:
        return df
    trained = (matches(df["kind"], "quality") & matches(df["impl"], "zoo")
               & matches(df["mode"], "train"))
    scored = df["val_value"].notna() | ~matches(df["status"], "ok")
    return df[trained & scored.astype(bool)]


def _ok(cells: pd.DataFrame) -> pd.Series:
    return matches(cells["status"], "ok") & cells["val_value"].notna()


def _groups(cells: pd.DataFrame, by: list[str]):
    """groupby over `by`, missing values forming their own (equal) key."""
    return cells.groupby(by, dropna=False, sort=True)


def _key_dict(by: list[str], key: Any) -> dict[str, Any]:
    key = key if isinstance(key, tuple) else (key,)
    return {name: (None if pd.isna(v) else v) for name, v in zip(by, key, strict=True)}


def _norm(key: Any) -> tuple:
    """A group key that can be looked up: missing values (NaN, NA, None) as None."""
    key = key if isinstance(key, tuple) else (key,)
    return tuple(None if pd.isna(v) else v for v in key)


def _stats(values: pd.Series) -> tuple[float, float]:
    """(mean, sample standard deviation) of the present values; NaN where there are none (the
    spread also for a single value)."""
    values = values.dropna().astype(float)
    if values.empty:
        return np.nan, np.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else np.nan


def _frame(rows: list[dict[str, Any]], columns: tuple[str, ...], like: pd.DataFrame
           ) -> pd.DataFrame:
    """Rows as a DataFrame, the group fields keeping the dtypes they had in `like`."""
    out = pd.DataFrame.from_records(rows, columns=list(columns))
    types = {name: like[name].dtype for name in (*GROUP, "lr", "chance", "baseline", "params")
             if name in out.columns and name in like.columns}
    for name in ("val_mean", "val_std", "test_mean", "test_std"):
        if name in out.columns:
            types[name] = "Float64"
    for name in ("seeds", "failed", "lrs"):
        if name in out.columns:
            types[name] = "Int64"
    return out.astype(types)


def _check_metrics(cells: pd.DataFrame) -> None:
    for metric in cells["metric"].dropna().unique():
        higher_is_better(str(metric))


def lr_curve(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell group and learning rate: the validation and test scores' mean and spread over
    the ok seeds (`val_mean`, `val_std`, `test_mean`, `test_std`), how many seeds were ok
    (`seeds`) and how many cells failed (`failed`). Sorted by group, then learning rate."""
    cells = grid_rows(df)
    rows = []
    for key, at_lr in _groups(cells, [*GROUP, "lr"]):
        ok = at_lr[_ok(at_lr)]
        val_mean, val_std = _stats(ok["val_value"])
        test_mean, test_std = _stats(ok["value"])
        rows.append({**_key_dict([*GROUP, "lr"], key), "val_mean": val_mean, "val_std": val_std,
                     "test_mean": test_mean, "test_std": test_std, "seeds": len(ok),
                     "failed": int((~matches(at_lr["status"], "ok")).sum())})
    return _frame(rows, LR_CURVE_COLUMNS, cells)


def _only(column: pd.Series) -> Any:
    """The first present value of a column (None when it has none)."""
    values = column.dropna()
    return values.iloc[0] if len(values) else None


def select(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell group: the learning rate whose mean VALIDATION score over its ok seeds is best
    (highest or lowest by DIRECTIONS; a tie goes to the smaller rate) and, at that rate, the
    TEST score's mean and spread and the number of seeds. Also: `lrs`, the learning rates tried;
    `failed`, the group's failed cells; `status`, "ok" or, for a group with no ok cell (its
    scores missing), its failures' statuses; `error`, their error texts; and the group's
    `chance`, `baseline` and `params`. A learning rate whose cells all failed is never chosen;
    test scores never take part in the choice. A ValueError for a metric without a direction."""
    cells = grid_rows(df)
    _check_metrics(cells)
    curves = {_norm(key): at for key, at in _groups(lr_curve(cells), list(GROUP))}
    rows = []
    for key, group in _groups(cells, list(GROUP)):
        ident = _key_dict(list(GROUP), key)
        mine = curves[_norm(key)]
        candidates = mine[mine["seeds"].gt(0).fillna(False) & mine["val_mean"].notna()]
        failed = group[~matches(group["status"], "ok")]
        row = {**ident, "lrs": int(group["lr"].nunique(dropna=False)),
               "failed": len(failed), "chance": _only(group["chance"]),
               "baseline": _only(group["baseline"]), "params": _only(group["params"])}
        if len(candidates):
            higher = higher_is_better(str(ident["metric"]))
            ordered = candidates.sort_values(["val_mean", "lr"], ascending=[not higher, True],
                                             kind="stable")
            best = ordered.iloc[0]
            row.update(lr=best["lr"], val_mean=best["val_mean"], val_std=best["val_std"],
                       test_mean=best["test_mean"], test_std=best["test_std"],
                       seeds=best["seeds"], status="ok", error=None)
        else:
            statuses = sorted(failed["status"].dropna().astype(str).unique())
            errors = list(dict.fromkeys(failed["error"].dropna().astype(str)))
            row.update(lr=None, val_mean=np.nan, val_std=np.nan, test_mean=np.nan,
                       test_std=np.nan, seeds=0, status=", ".join(statuses) or "no ok cell",
                       error="; ".join(errors) or None)
        rows.append(row)
    return _frame(rows, SELECT_COLUMNS, cells)


def selected_cells(df: pd.DataFrame) -> pd.DataFrame:
    """The ok grid cells at each group's chosen learning rate (one row per seed), as in `df`."""
    cells = grid_rows(df)
    chosen = select(cells)
    chosen = chosen[chosen["lr"].notna()]
    ok = cells[_ok(cells)]
    if ok.empty or chosen.empty:
        return ok.iloc[0:0]
    on = [*GROUP, "lr"]
    wanted = {_norm(tuple(row)) for row in chosen[on].itertuples(index=False)}
    keep = [_norm(tuple(row)) in wanted for row in ok[on].itertuples(index=False)]
    return ok[keep]


EXTRAPOLATION_COLUMNS = (*GROUP, "lr", "mode_eval", "stride", "eval_seqlen", "bits_per_byte",
                         "bits_per_byte_std", "seeds", "notes")


def extrapolation(df: pd.DataFrame) -> pd.DataFrame:
    """Bits per byte against evaluation length at each group's chosen learning rate: one row
    per group, evaluation mode (`mode_eval`: nonoverlapping or sliding), stride and evaluation
    length, with the mean and spread over the seeds that scored it (`seeds`); `bits_per_byte`
    is missing (n/a) where no seed could take the length. `notes` joins the points' notes."""
    rows = []
    for cell in selected_cells(df).to_dict("records"):
        points = cell["extrapolation"]
        # a missing list comes out of pandas as None or as a float NaN: neither has points
        for point in points if isinstance(points, list) else []:
            rows.append({**{name: cell[name] for name in (*GROUP, "lr")},
                         "mode_eval": point.get("mode"), "stride": point.get("stride"),
                         "eval_seqlen": point.get("eval_seqlen"),
                         "value": point.get("bits_per_byte"), "note": point.get("note")})
    if not rows:
        return pd.DataFrame(columns=list(EXTRAPOLATION_COLUMNS))
    points = pd.DataFrame.from_records(rows)
    by = [*GROUP, "lr", "mode_eval", "stride", "eval_seqlen"]
    out = []
    for key, same in _groups(points, by):
        mean, std = _stats(same["value"])
        notes = list(dict.fromkeys(same["note"].dropna().astype(str)))
        out.append({**_key_dict(by, key), "bits_per_byte": mean, "bits_per_byte_std": std,
                    "seeds": int(same["value"].notna().sum()), "notes": "; ".join(notes)})
    result = pd.DataFrame.from_records(out, columns=list(EXTRAPOLATION_COLUMNS))
    return result.astype({"stride": "Int64", "eval_seqlen": "Int64", "bits_per_byte": "Float64",
                          "bits_per_byte_std": "Float64", "seeds": "Int64"})


POSITION_COLUMNS = (*GROUP, "lr", "eval_seqlen", "windows", "start", "end", "position", "loss",
                    "tokens", "seeds")
ICL_COLUMNS = (*GROUP, "lr", "eval_seqlen", "windows", "mean_loss", "mean_loss_std",
               "icl_score", "icl_score_std", "seeds")


def position_loss(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Loss by token position at each group's chosen learning rate, mean over seeds:
    (bins: one row per group, evaluation length and bin with its 1-based `start` and `end`
    positions, their midpoint `position`, the mean `loss` and the `tokens` counted over seeds;
    scores: one row per group and evaluation length with `mean_loss` and `icl_score` (later
    minus earlier loss; missing where no seed has one), their spreads, and `seeds`)."""
    bins, scores = [], []
    for cell in selected_cells(df).to_dict("records"):
        found = cell["position_loss"]  # one curve per window length (one dict: older records)
        for curve in found if isinstance(found, list) else [found]:
            if not isinstance(curve, dict) or not curve:  # missing: None, or NaN from pandas
                continue
            ident = {name: cell[name] for name in (*GROUP, "lr")}
            ident["eval_seqlen"] = curve.get("seqlen")
            for (start, end), loss, count in zip(curve.get("bins", []), curve.get("loss", []),
                                                 curve.get("tokens", []), strict=False):
                bins.append({**ident, "start": start, "end": end, "loss": loss, "tokens": count})
            scores.append({**ident, "windows": curve.get("windows"),
                           "mean_loss": curve.get("mean_loss"),
                           "icl_score": curve.get("icl_score")})
    if not scores:
        return (pd.DataFrame(columns=list(POSITION_COLUMNS)),
                pd.DataFrame(columns=list(ICL_COLUMNS)))
    by = [*GROUP, "lr", "eval_seqlen"]
    curves = []
    if bins:
        for key, same in _groups(pd.DataFrame.from_records(bins), [*by, "start", "end"]):
            ident = _key_dict([*by, "start", "end"], key)
            curves.append({**ident, "position": (ident["start"] + ident["end"]) / 2,
                           "loss": _stats(same["loss"])[0],
                           "tokens": int(same["tokens"].fillna(0).sum()),
                           "seeds": int(same["loss"].notna().sum())})
    icl = []
    for key, same in _groups(pd.DataFrame.from_records(scores), by):
        mean_loss, mean_loss_std = _stats(same["mean_loss"].astype(float))
        icl_score, icl_score_std = _stats(same["icl_score"].astype(float))
        icl.append({**_key_dict(by, key), "windows": _only(same["windows"]),
                    "mean_loss": mean_loss, "mean_loss_std": mean_loss_std,
                    "icl_score": icl_score, "icl_score_std": icl_score_std,
                    "seeds": len(same)})
    curves_df = pd.DataFrame.from_records(curves, columns=list(POSITION_COLUMNS)).astype(
        {"eval_seqlen": "Int64", "start": "Int64", "end": "Int64", "position": "Float64",
         "loss": "Float64", "tokens": "Int64", "seeds": "Int64"})
    icl_df = pd.DataFrame.from_records(icl, columns=list(ICL_COLUMNS)).astype(
        {"eval_seqlen": "Int64", "windows": "Int64", "mean_loss": "Float64",
         "mean_loss_std": "Float64", "icl_score": "Float64", "icl_score_std": "Float64",
         "seeds": "Int64"})
    return curves_df, icl_df
