"""The results store as tables: select records, pivot them, pair ours with the peers, export.

What `catalog results` shows, as plain functions on the DataFrame of `harness.results`:

  select   --kind, --where FIELD=VALUE (and != < <= > >=), --query (a pandas expression)
  columns  --columns, or a default set for the kind of records shown
  pivot    --pivot ROWS:COLUMNS:VALUES, with --agg where a cell gets several records
  export   csv, json and markdown text; `display` gives the cells as the terminal shows them

`build` runs the whole pipeline for one set of options and returns the table. Every mistake in
the options is a TableError whose one line names the option, the value, and what would be
right (for a field name: the valid ones, and the closest).
"""

from __future__ import annotations

import difflib
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness import results

DEFAULT_RESULTS = Path("reports/results")
FORMATS = ("table", "csv", "json", "markdown")
AGGREGATIONS = ("mean", "median", "min", "max", "sum", "count", "first", "last")

# The columns shown when --columns is not given: what tells the records apart, then what was
# measured.
DEFAULT_COLUMNS = {
    "bench": ("model", "variant", "impl", "mode", "seqlen", "batch", "threads", "dtype", "device",
              "status", "tokens_per_s", "ms_median", "peak_mem_bytes", "mfu"),
    "quality": ("model", "variant", "impl", "task", "metric", "value", "params", "budget",
                "seqlen", "batch", "seed", "status"),
    "mixed": ("kind", "model", "variant", "impl", "mode", "task", "metric", "seqlen", "batch",
              "status", "tokens_per_s", "peak_mem_bytes", "value"),
    "ratios": ("model", "variant", "mode", "seqlen", "batch", "threads", "dtype", "peer",
               "ours_tokens_per_s", "peer_tokens_per_s", "tokens_per_s_ratio", "peak_mem_ratio"),
}


class TableError(ValueError):
    """Options that do not make a table (an unknown field, a pivot cell with several records)."""


def default_results(folder: Path | str = DEFAULT_RESULTS) -> list[Path]:
    """Every results file of the store: `reports/results/*.jsonl`."""
    return sorted(Path(folder).glob("*.jsonl"))


def load(paths: Sequence[Path | str], *, all_runs: bool = False
         ) -> tuple[pd.DataFrame, list[str]]:
    """The records of `paths` (each cell's latest measurement unless `all_runs`) and warnings;
    a TableError when there is no file to read or a given file is missing."""
    if not paths:
        raise TableError(f"no results: {DEFAULT_RESULTS} holds no .jsonl file; run `catalog "
                         "bench` or `catalog quality` first, or pass --results")
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise TableError(f"no results file {', '.join(missing)}")
    df, warnings = results.load_frame(paths, all_runs=True)
    if not all_runs and len(df):
        kept = results.latest(df)
        if len(kept) < len(df):
            warnings.append(f"{len(df) - len(kept)} earlier measurement(s) of the same cell "
                            "left out: each cell shows its latest (--all-runs shows them all)")
        df = kept
    return df, warnings


# Fields that hold a list or a mapping rather than one value.
LIST_FIELDS = ("notes", "routes")
DICT_FIELDS = ("scores", "mqar")


# --- selecting -----------------------------------------------------------------------------


def check_fields(df: pd.DataFrame, names: Sequence[str], option: str) -> None:
    """A TableError for the first name that is not a column of `df`, listing the columns."""
    for name in names:
        if name not in df.columns:
            close = difflib.get_close_matches(name, list(df.columns), n=2)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise TableError(f"{option}: unknown field {name!r}{hint}; fields: "
                             f"{', '.join(df.columns)}")


def of_kind(df: pd.DataFrame, kind: str | None) -> pd.DataFrame:
    """The records of one kind, with only the fields that kind has (all records for None)."""
    if kind is None:
        return df
    if kind not in results.KINDS:
        raise TableError(f"--kind {kind!r}: expected {' or '.join(results.KINDS)}")
    fields = [name for name, info in results.KINDS[kind].model_fields.items() if not info.exclude]
    keep = [c for c in df.columns if c in fields or c == "source"]
    return df.loc[df["kind"].eq(kind).fillna(False).astype(bool), keep]


@dataclass(frozen=True)
class Condition:
    """One --where: FIELD=VALUE[,VALUE...] (any of the values), FIELD!=VALUE[,VALUE...] (none
    of them), or FIELD<VALUE, <=, >, >= (numbers, or text such as times in alphabetical order).
    For a field that holds a list (notes, routes), = means that an item contains VALUE, commas
    and all. A record missing the field matches no condition."""

    field: str
    op: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Condition:
        match = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(!=|>=|<=|==|=|>|<)\s*(.*?)\s*", text)
        if not match or not match.group(3):
            raise TableError(f"--where {text!r}: expected FIELD=VALUE (or !=, <, <=, >, >=), "
                             "e.g. --where model=gpt or --where seqlen>=1024")
        name, op, value = match.groups()
        op = "=" if op == "==" else op
        alternatives = op in ("=", "!=") and name not in LIST_FIELDS
        values = tuple(v.strip() for v in value.split(",")) if alternatives else (value,)
        return cls(name, op, values)

    def mask(self, df: pd.DataFrame) -> pd.Series:
        column = df[self.field]
        if self.field in LIST_FIELDS:
            # Notes are sentences: matching a part of one is what finds them.
            if self.op not in ("=", "!="):
                raise TableError(f"--where {self}: {self.field} holds lists; use = or !=")
            has = column.map(lambda v: isinstance(v, list) and
                             any(self.values[0] in str(item) for item in v)).astype(bool)
            return has if self.op == "=" else ~has & column.map(lambda v: isinstance(v, list))
        if self.field in DICT_FIELDS:
            raise TableError(f"--where {self}: {self.field} holds a mapping; use --query or "
                             "--columns to see it")
        values: list[Any] = list(self.values)
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            try:
                values = [float(v) for v in values]
            except ValueError:
                raise TableError(f"--where {self}: {self.field} holds numbers; give one, e.g. "
                                 f"{self.field}{self.op}{_example(column)}") from None
        else:
            column = column.astype("string")
        if self.op == "=":
            mask = column.isin(values)
        elif self.op == "!=":
            mask = ~column.isin(values)
        else:
            mask = {"<": column.lt, "<=": column.le, ">": column.gt, ">=": column.ge}[self.op](
                values[0])
        return mask.where(column.notna(), False).fillna(False).astype(bool)

    def __str__(self) -> str:
        return f"{self.field}{self.op}{','.join(self.values)}"


def _example(column: pd.Series) -> str:
    values = column.dropna()
    return str(values.iloc[0]) if len(values) else "1"


def where(df: pd.DataFrame, conditions: Sequence[str]) -> pd.DataFrame:
    """The rows that meet every condition (see Condition)."""
    parsed = [Condition.parse(text) for text in conditions]
    check_fields(df, [c.field for c in parsed], "--where")
    for condition in parsed:
        df = df[condition.mask(df)]
    return df


def query(df: pd.DataFrame, expression: str) -> pd.DataFrame:
    """The rows for which a pandas expression over the fields is true, e.g.
    "seqlen >= 1024 and status == 'ok'" (a record missing a field it compares is left out)."""
    try:
        mask = df.eval(expression, engine="python")
    except NameError as exc:  # pandas' UndefinedVariableError: a name that is not a field
        found = re.search(r"name '([^']+)' is not defined", str(exc))
        if found:
            check_fields(df, [found.group(1)], "--query")
        raise TableError(f"--query {expression!r}: {exc}") from None
    except Exception as exc:  # pandas raises many kinds of error for a bad expression
        raise TableError(f"--query {expression!r}: {type(exc).__name__}: {exc}; expected a "
                         "condition such as \"seqlen >= 1024 and status == 'ok'\"") from None
    if not isinstance(mask, pd.Series) or not pd.api.types.is_bool_dtype(mask):
        raise TableError(f"--query {expression!r} is not a condition (true or false for each "
                         "record); e.g. \"seqlen >= 1024 and status == 'ok'\"")
    return df[mask.fillna(False).astype(bool)]


def columns(df: pd.DataFrame, names: Sequence[str] | None, default: str) -> pd.DataFrame:
    """The given columns, in that order, or DEFAULT_COLUMNS[default] (those `df` has)."""
    if names:
        check_fields(df, names, "--columns")
        return df[list(dict.fromkeys(names))]
    return df[[c for c in DEFAULT_COLUMNS[default] if c in df.columns]]


# --- pivoting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pivot:
    """ROWS:COLUMNS:VALUES, each part one field or several separated by commas; COLUMNS may be
    empty (one row per ROWS, one column per VALUES)."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Pivot:
        parts = text.split(":")
        names = [tuple(n.strip() for n in part.split(",") if n.strip()) for part in parts]
        if len(parts) != 3 or not names[0] or not names[2]:
            raise TableError(f"--pivot {text!r}: expected ROWS:COLUMNS:VALUES, e.g. "
                             "seqlen:model,impl:tokens_per_s")
        return cls(*names)

    @property
    def fields(self) -> tuple[str, ...]:
        return self.rows + self.columns + self.values


def pivot(df: pd.DataFrame, spec: Pivot, agg: str | None = None) -> pd.DataFrame:
    """One row per distinct ROWS, one column per distinct COLUMNS (and VALUES field), holding
    VALUES. Without `agg` each cell must get at most one record; otherwise a TableError says
    which cell got several and how to make it one."""
    check_fields(df, spec.fields, "--pivot")
    grouping = [f for f in spec.rows + spec.columns if f in LIST_FIELDS + DICT_FIELDS]
    if grouping:
        raise TableError(f"--pivot: {grouping[0]} holds lists or mappings, which cannot make "
                         "rows or columns; put it in VALUES, or use --columns")
    if agg is not None and agg not in AGGREGATIONS:
        raise TableError(f"--agg {agg!r}: expected one of {', '.join(AGGREGATIONS)}")
    keys = list(spec.rows + spec.columns)
    if agg is None:
        _refuse_shared_cells(df, spec)
    grouped = df.groupby(keys, dropna=False, sort=True)[list(spec.values)]
    try:
        table = grouped.agg(agg or "first")
    except TypeError:
        text = [v for v in spec.values if not pd.api.types.is_numeric_dtype(df[v])]
        raise TableError(f"--agg {agg}: {', '.join(text)} is not a number; use --agg first, "
                         "last or count for it") from None
    if spec.columns:
        table = table.unstack(list(spec.columns)).sort_index(axis=1)
        if len(spec.values) == 1:  # the values' name adds nothing when there is one
            table = table.droplevel(0, axis=1)
        table.columns = ["/".join(_label(v) for v in (c if isinstance(c, tuple) else (c,)))
                         for c in table.columns]
    return table.reset_index()


def _label(value: Any) -> str:
    return "none" if pd.isna(value) else str(value)


def _refuse_shared_cells(df: pd.DataFrame, spec: Pivot) -> None:
    keys = list(spec.rows + spec.columns)
    shared = df[df.duplicated(keys, keep=False)]
    if shared.empty:
        return
    first = shared.iloc[0]
    same = shared[(shared[keys].astype(object).fillna("\0") ==
                   first[keys].astype(object).fillna("\0")).all(axis=1)]
    cell = ", ".join(f"{k}={_label(first[k])}" for k in keys)
    # The fields that tell measurements apart, in the order that best explains a clash.
    if "kind" in same.columns:
        kinds = [k for k in same["kind"].dropna().unique() if k in results.KEYS]
        identity = [f for kind in kinds for f in results.KEYS[kind]] + ["source"]
    else:  # the ours/peer pairs of --ratios
        identity = [*results.LIKE, "peer"]
    differ = [f for f in dict.fromkeys(identity)
              if f in same.columns and f not in keys
              and same[f].map(results.hashable).nunique(dropna=False) > 1]
    if differ:
        name = differ[0]
        why = f" (they differ in {', '.join(differ[:4])})"
        fixes = (f"filter (e.g. --where {name}={_label(same[name].iloc[0])}), add {name} to the "
                 f"pivot's rows or columns, or choose an --agg ({', '.join(AGGREGATIONS)})")
    else:
        why = " (earlier measurements of the same cell)"
        fixes = f"drop --all-runs, or choose an --agg ({', '.join(AGGREGATIONS)})"
    raise TableError(f"--pivot: {len(same)} records fall in the cell {cell}{why}; {fixes}")


# --- the pipeline --------------------------------------------------------------------------


@dataclass
class Options:
    """What `catalog results` was asked for (see the command's help)."""

    kind: str | None = None
    where: Sequence[str] = ()
    query: str | None = None
    ratios: bool = False
    columns: Sequence[str] = ()
    pivot: str | None = None
    agg: str | None = None
    all_runs: bool = False


@dataclass
class Table:
    frame: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    records: int = 0  # records read (after --all-runs), before any selection


def build(paths: Sequence[Path | str], options: Options) -> Table:
    """Read `paths` and make the table `options` ask for: records of a kind, filtered (or the
    ours/peer pairs of `results.ratios`, filtered), then pivoted or cut to some columns."""
    if options.pivot and options.columns:
        raise TableError("--columns and --pivot: choose one (a pivot's columns are the COLUMNS "
                         "part of ROWS:COLUMNS:VALUES)")
    if options.agg and not options.pivot:
        raise TableError("--agg combines the records of a pivot cell; give --pivot too")
    if options.ratios and options.kind == "quality":
        raise TableError("--ratios pairs benchmark cells; drop --kind quality")
    df, warnings = load(paths, all_runs=options.all_runs)
    read = len(df)
    # With --ratios the filters apply to the pairs: --where peer=hf, --query "... < 1".
    df = results.ratios(df) if options.ratios else of_kind(df, options.kind)
    df = where(df, options.where)
    if options.query:
        df = query(df, options.query)
    # The default columns suit the rows that are left: bench cells alone need no quality field.
    kinds = set() if options.ratios else set(df["kind"].dropna())
    default = "ratios" if options.ratios else kinds.pop() if len(kinds) == 1 else "mixed"
    if options.pivot:
        df = pivot(df, Pivot.parse(options.pivot), options.agg)
    else:
        df = columns(df, options.columns, default)
    return Table(df.reset_index(drop=True), warnings, read)


# --- exporting -----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-ready value: None for missing, Python numbers for numpy's."""
    if isinstance(value, (list, dict)):
        return value
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def text(value: Any, thousands: bool = False) -> str:
    """A cell as a person reads it: four significant digits below 1,000 and none after the
    point above it; integers with thousands separators when `thousands`; lists joined."""
    if isinstance(value, list):
        return "; ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    if pd.isna(value):
        return ""
    value = _plain(value)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if thousands else str(value)
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def numeric_columns(df: pd.DataFrame) -> list[bool]:
    """Whether each column holds numbers (shown right-aligned)."""
    return [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
            for c in df.columns]


def display(df: pd.DataFrame) -> list[list[str]]:
    """The cells of `df`, row by row, as `text` writes them. An integer column gets thousands
    separators throughout when its largest value has five digits or more (byte counts,
    parameters), so that a column reads alike from top to bottom."""
    texts = []
    for name in df.columns:
        column = df[name]
        thousands = (pd.api.types.is_integer_dtype(column) and column.notna().any()
                     and column.abs().max() >= 10_000)
        texts.append([text(v, thousands) for v in column])
    return [list(row) for row in zip(*texts, strict=True)] if texts else [[] for _ in df.index]


def export(df: pd.DataFrame, fmt: str) -> str:
    """`df` as csv (lists joined by "; ", as `catalog list` writes them), json (a list of
    objects, full precision, null for missing) or markdown (the cells as `display` shows them;
    pandas' to_markdown, through the tabulate package)."""
    if fmt == "csv":
        flat = df.astype(object)
        for name in flat.columns:
            flat[name] = flat[name].map(lambda v: "; ".join(map(str, v)) if isinstance(v, list)
                                        else json.dumps(v) if isinstance(v, dict) else v)
        buffer = io.StringIO()
        flat.to_csv(buffer, index=False, lineterminator="\n")
        return buffer.getvalue()
    if fmt == "json":
        rows = [{str(k): _plain(v) for k, v in row.items()} for row in df.to_dict("records")]
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "markdown":
        # tabulate leaves a | in a cell as it is, which would end the cell early.
        cells = [[cell.replace("|", "\\|") for cell in row] for row in display(df)]
        shown = pd.DataFrame(cells, columns=[str(c) for c in df.columns], dtype=object)
        align = ["right" if numeric else "left" for numeric in numeric_columns(df)]
        try:
            return shown.to_markdown(index=False, disable_numparse=True,
                                     colalign=align or None) + "\n"
        except ImportError as exc:
            raise TableError(f"--format markdown needs the tabulate package ({exc}); "
                             "pip install tabulate") from None
    raise TableError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
