"""The catalog: load the YAML entries, validate them, and query them.

Each file in the catalog folder describes one model (schema in `catalog/README.md`). Loading
never stops at a bad file: `load_catalog` returns the entries that validate together with a
list of `Problem`s, each naming the file, the field and what would be valid, so that one
malformed entry cannot hide the others.
"""

from __future__ import annotations

import difflib
import importlib.resources
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ARCHITECTURES = ("encoder", "decoder", "encoder-decoder")

# The pretraining tasks of the paper's own list (after Qiu et al. 2020) ...
PAPER_TASKS = ("LM", "causal LM", "prefix LM", "MLM", "PLM", "DAE", "RTD", "NSP")
# ... and the other objectives that entries of the paper (or our additions) name.
OTHER_TASKS = (
    "blank infilling",
    "contrastive",
    "caption prediction",
    "image classification",
    "next action prediction",
    "trajectory prediction",
    "protein structure prediction",
    "diffusion denoising",
    "dialogue",
    "instruction tuning",
    "translation",
)
TASKS = PAPER_TASKS + OTHER_TASKS

# Families that group models without a catalog entry of their own at the root.
FAMILY_GROUPS = ("Control Transformers", "Diffusion", "SE(3) Transformer")

SORT_KEYS = ("date", "name", "params")

_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_COUNT_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMBT]?)$", re.IGNORECASE)
_TASK_RE = re.compile(r"^(?P<base>[^()]+?)(?:\s*\((?P<qualifier>[^()]+)\))?$")
_ID_RE = r"^[a-z0-9][a-z0-9.-]*$"
_DATE_RE = r"^(19|20)\d\d-(0[1-9]|1[0-2])$"


class CatalogError(ValueError):
    """A request the catalog cannot answer: unknown id, bad filter value, missing folder."""


def parse_count(value: Any) -> int:
    """`125M` -> 125_000_000; plain integers pass through. Raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a count")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{value} is not a positive count")
        return value
    match = _COUNT_RE.match(str(value).strip())
    if not match:
        raise ValueError(
            f"{value!r} is not a count; write a number with an optional K/M/B/T suffix, e.g. 125M"
        )
    number, suffix = match.groups()
    return round(float(number) * _SUFFIXES[suffix.upper()])


def format_count(count: int | None) -> str:
    """125_000_000 -> '125M', 1_500_000_000 -> '1.5B' (three significant digits)."""
    if count is None:
        return ""
    for suffix in ("T", "B", "M", "K"):
        unit = _SUFFIXES[suffix]
        if count >= unit:
            return f"{count / unit:.3g}{suffix}"
    return str(count)


def task_name(task: str) -> str:
    """'MLM (dynamic masking)' -> 'MLM': the task without its qualifier."""
    match = _TASK_RE.match(task.strip())
    return match.group("base").strip() if match else task.strip()


class ParamCount(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1)
    count: int

    @field_validator("count", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> int:
        return parse_count(value)


class Paper(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://\S+$")


class Variant(BaseModel):
    """A size of a runnable model: its published count plus config fields that differ from the
    zoo config's defaults (the extra keys, kept as given)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    params: int | None = None

    @field_validator("params", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> int | None:
        return None if value is None else parse_count(value)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Entry(BaseModel):
    """One model of the catalog, as validated from its YAML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_ID_RE)
    name: str = Field(min_length=1)
    family: str = Field(min_length=1)
    parent: str | None = None
    architecture: Literal["encoder", "decoder", "encoder-decoder"]
    pretraining_task: list[str] = Field(min_length=1)
    fine_tuned: bool = False
    extension: str = Field(min_length=1)
    application: str = Field(min_length=1)
    corpus: str = Field(min_length=1)
    date: str = Field(pattern=_DATE_RE)
    params: list[ParamCount]
    params_note: str | None = None
    license: str = Field(min_length=1)
    lab: str = Field(min_length=1)
    paper: Paper
    link: str | None = Field(default=None, pattern=r"^https?://\S+$")
    notes: str | None = None
    zoo: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    variants: dict[str, Variant] | None = None

    @field_validator("pretraining_task")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        for task in tasks:
            base = task_name(task)
            if base not in TASKS:
                hint = _did_you_mean(base, TASKS)
                raise ValueError(
                    f"{task!r} is not a known task{hint}; valid names: {', '.join(TASKS)} "
                    "(optionally followed by a qualifier in parentheses)"
                )
        return tasks

    @property
    def year(self) -> int:
        return int(self.date[:4])

    @property
    def max_params(self) -> int | None:
        return max((p.count for p in self.params), default=None)

    @property
    def runnable(self) -> bool:
        return self.zoo is not None

    @property
    def task_names(self) -> list[str]:
        return [task_name(t) for t in self.pretraining_task]


@dataclass(frozen=True)
class Problem:
    """Something wrong with one catalog file: where, which field, and what would be valid."""

    file: Path
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}" + (f": field '{self.field}'" if self.field else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Catalog:
    root: Path
    entries: tuple[Entry, ...]
    problems: tuple[Problem, ...]

    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def get(self, key: str) -> Entry:
        """The entry with this id (or name, case and punctuation ignored); CatalogError otherwise,
        with the closest ids suggested."""
        wanted = _normalise(key)
        for entry in self.entries:
            if key == entry.id or wanted in (_normalise(entry.id), _normalise(entry.name)):
                return entry
        close = difflib.get_close_matches(key.lower(), self.ids(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `catalog list`"
        raise CatalogError(f"unknown model id {key!r}{hint}")

    def family_root(self, entry: Entry) -> Entry | None:
        """The entry at the root of `entry`'s family (None for groups without one)."""
        wanted = _normalise(entry.family)
        return next((e for e in self.entries if _normalise(e.name) == wanted), None)

    def family_members(self, entry: Entry) -> list[Entry]:
        """The other entries of the same family, oldest first."""
        wanted = _normalise(entry.family)
        members = [e for e in self.entries if _normalise(e.family) == wanted and e.id != entry.id]
        return sort_entries(members, "date")

    def ancestry(self, entry: Entry) -> list[Entry]:
        """`entry`'s chain of parents, nearest first (stops at a missing id or a cycle)."""
        by_id = {e.id: e for e in self.entries}
        chain: list[Entry] = []
        current = entry
        while current.parent and current.parent in by_id and by_id[current.parent] not in chain:
            current = by_id[current.parent]
            if current.id == entry.id:
                break
            chain.append(current)
        return chain

    def variant(self, zoo_name: str, variant: str) -> Variant:
        """The variant `variant` of zoo model `zoo_name`, from whichever entry runs it."""
        for entry in self.entries:
            if entry.zoo == zoo_name and variant in (entry.variants or {}):
                return entry.variants[variant]
        available = self.variant_names(zoo_name)
        if not available:
            raise CatalogError(f"no catalog entry runs zoo model {zoo_name!r}")
        raise CatalogError(f"zoo model {zoo_name!r} has no variant {variant!r}"
                           f"{_did_you_mean(variant, available)}; variants: {', '.join(available)}")

    def variant_names(self, zoo_name: str) -> list[str]:
        """Every variant of zoo model `zoo_name`, across the entries that run it."""
        return [name for e in self.entries if e.zoo == zoo_name for name in (e.variants or {})]

    def families(self) -> list[str]:
        return sorted({e.family for e in self.entries}, key=str.casefold)

    def select(
        self,
        family: str | None = None,
        task: str | None = None,
        lab: str | None = None,
        since: int | None = None,
        until: int | None = None,
        runnable: bool | None = None,
        query: str | None = None,
    ) -> list[Entry]:
        """Entries matching every filter given. `family` matches the architecture or the lineage
        family; `task` a task name; `lab` and `query` are case-insensitive substrings (every word
        of `query` must appear in the name, id, extension or application)."""
        if since is not None and until is not None and since > until:
            raise CatalogError(f"--since {since} is after --until {until}")
        match_family = self._family_matcher(family) if family else None
        match_task = self._task_matcher(task) if task else None
        words = query.casefold().split() if query else []
        selected = []
        for entry in self.entries:
            if match_family and not match_family(entry):
                continue
            if match_task and not match_task(entry):
                continue
            if lab and lab.casefold() not in entry.lab.casefold():
                continue
            if since is not None and entry.year < since:
                continue
            if until is not None and entry.year > until:
                continue
            if runnable is not None and entry.runnable != runnable:
                continue
            text = " ".join((entry.id, entry.name, entry.extension, entry.application)).casefold()
            if any(word not in text for word in words):
                continue
            selected.append(entry)
        return selected

    def _family_matcher(self, family: str):
        wanted = _normalise(family)
        if wanted in {_normalise(a) for a in ARCHITECTURES}:
            return lambda e: _normalise(e.architecture) == wanted
        known = {_normalise(f) for f in self.families()}
        if wanted not in known:
            choices = list(ARCHITECTURES) + self.families()
            raise CatalogError(
                f"unknown family or architecture {family!r}{_did_you_mean(family, choices)}; "
                f"valid: {', '.join(choices)}"
            )
        return lambda e: _normalise(e.family) == wanted

    @staticmethod
    def _task_matcher(task: str):
        wanted = task.strip().casefold()
        known = {t.casefold() for t in TASKS}
        if task_name(wanted) not in known:
            raise CatalogError(
                f"unknown task {task!r}{_did_you_mean(task, TASKS)}; valid: {', '.join(TASKS)}"
            )
        return lambda e: any(
            wanted in (t.casefold(), task_name(t).casefold()) for t in e.pretraining_task
        )


def check_variants(catalog: Catalog) -> list[Problem]:
    """Checks that need the zoo (imports torch): every variant's fields are fields of its
    model's config. Entries whose model the zoo cannot import are reported too."""
    import dataclasses

    import zoo

    problems = []
    for entry in catalog.entries:
        if not entry.zoo:
            continue
        path = catalog.root / f"{entry.id}.yaml"
        try:
            config_class = zoo.load_class(entry.zoo).config_class
        except (ImportError, KeyError, AttributeError) as exc:
            problems.append(Problem(path, "zoo", f"the zoo cannot load {entry.zoo!r}: {exc}"))
            continue
        fields = {f.name for f in dataclasses.fields(config_class)}
        for name, variant in (entry.variants or {}).items():
            for key in variant.config:
                if key not in fields:
                    problems.append(Problem(path, f"variants.{name}.{key}", (
                        f"not a field of {config_class.__name__}{_did_you_mean(key, fields)}; "
                        f"fields: {', '.join(sorted(fields))}")))
    return problems


def computed_params(entry: Entry) -> dict[str, int | None]:
    """Each variant's parameter count, from the zoo model built on the `meta` device (no
    memory); None where the model cannot be built."""
    import zoo

    counts: dict[str, int | None] = {}
    for name, variant in (entry.variants or {}).items():
        try:
            model = zoo.build(entry.zoo, device="meta", **variant.config)
            counts[name] = model.num_params()
        except (ImportError, KeyError, TypeError, ValueError):
            counts[name] = None
    return counts


def sort_entries(entries: Iterable[Entry], key: str = "date", descending: bool = False):
    """Sort by date (then name), name, or largest published size (unknown sizes last)."""
    if key not in SORT_KEYS:
        raise CatalogError(f"unknown sort key {key!r}; valid: {', '.join(SORT_KEYS)}")
    entries = list(entries)
    by_name = sorted(entries, key=lambda e: e.name.casefold())
    if key == "name":
        return by_name[::-1] if descending else by_name
    if key == "date":
        return sorted(by_name, key=lambda e: e.date, reverse=descending)
    known = [e for e in by_name if e.max_params is not None]
    unknown = [e for e in by_name if e.max_params is None]
    # Largest first is what "sort by params" usually wants; --desc gives smallest first.
    return sorted(known, key=lambda e: e.max_params, reverse=not descending) + unknown


def default_catalog_dir() -> Path:
    """The catalog folder shipped with the package (works from a source tree and a wheel)."""
    return Path(str(importlib.resources.files("catalog")))


def load_catalog(root: Path | str | None = None) -> Catalog:
    """Read and validate every `*.yaml` file under `root` (default: the shipped catalog)."""
    root = Path(root) if root is not None else default_catalog_dir()
    if root.exists() and not root.is_dir():
        raise CatalogError(f"catalog folder {root} is a file; give the folder of *.yaml files")
    if not root.is_dir():
        raise CatalogError(f"catalog folder {root} does not exist")
    files = sorted([*root.glob("*.yaml"), *root.glob("*.yml")])
    if not files:
        raise CatalogError(f"catalog folder {root} has no *.yaml files")
    entries: list[Entry] = []
    problems: list[Problem] = []
    paths: dict[str, Path] = {}
    for path in files:
        entry, file_problems = _load_entry(path)
        problems.extend(file_problems)
        if entry is not None:
            entries.append(entry)
            paths[entry.id] = path
    problems.extend(_cross_check(entries, paths))
    return Catalog(root=root, entries=tuple(entries), problems=tuple(problems))


def _load_entry(path: Path) -> tuple[Entry | None, list[Problem]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        return None, [Problem(path, None, f"not UTF-8 text ({exc.reason})")]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        return None, [Problem(path, None, f"invalid YAML: {where}{reason}")]
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        return None, [Problem(path, None, f"expected a mapping of fields, found {found}")]
    try:
        entry = Entry.model_validate(data)
    except ValidationError as exc:
        return None, [_problem_from_error(path, err) for err in exc.errors()]
    if entry.id != path.stem:
        message = f"{entry.id!r} must equal the file name without .yaml, {path.stem!r}"
        return None, [Problem(path, "id", message)]
    return entry, []


def _problem_from_error(path: Path, error: dict) -> Problem:
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "missing (required)"
    elif error["type"] == "extra_forbidden":
        message = "unknown field; see catalog/README.md for the valid fields"
    elif error["type"] == "string_pattern_mismatch":
        message = f"{error['input']!r} does not match the expected form {_FORMS.get(field, '')}"
    elif error["type"] == "literal_error":
        message = f"{error['input']!r} is not valid; {message.lower()}"
    elif "input" in error and not isinstance(error["input"], dict | list):
        message = f"{message} (got {error['input']!r})"
    return Problem(path, field or None, message.strip())


_FORMS = {
    "id": "(a lower-case slug: a-z, 0-9, '-', '.')",
    "date": "YYYY-MM, e.g. 2019-07",
    "link": "(an http(s) URL)",
    "paper.url": "(an http(s) URL)",
    "zoo": "(a zoo.REGISTRY key: a-z, 0-9, '-', '_')",
}


def _cross_check(entries: Sequence[Entry], files: dict[str, Path]) -> list[Problem]:
    """Checks that need the whole catalog: families, parents and variants."""
    names = {_normalise(e.name) for e in entries} | {_normalise(g) for g in FAMILY_GROUPS}
    ids = {e.id for e in entries}
    problems = []
    variant_owner: dict[tuple[str, str], str] = {}
    for entry in entries:
        path = files[entry.id]
        if _normalise(entry.family) not in names:
            valid = sorted({e.family for e in entries} | set(FAMILY_GROUPS), key=str.casefold)
            problems.append(Problem(path, "family", (
                f"{entry.family!r} names no catalog entry nor known group"
                f"{_did_you_mean(entry.family, valid)}; valid: {', '.join(valid)}"
            )))
        if entry.parent is not None and (entry.parent not in ids or entry.parent == entry.id):
            problems.append(Problem(path, "parent", (
                f"{entry.parent!r} is not the id of another entry"
                f"{_did_you_mean(entry.parent, sorted(ids - {entry.id}))}"
            )))
        if entry.zoo and not entry.variants:
            problems.append(Problem(path, "variants", "runnable entries (with zoo:) need variants"))
        if entry.variants and not entry.zoo:
            problems.append(Problem(path, "zoo", "missing: variants are only for runnable entries"))
        published = {p.count for p in entry.params}
        for name, variant in (entry.variants or {}).items():
            owner = variant_owner.setdefault((entry.zoo or "", name), entry.id)
            if owner != entry.id:
                problems.append(Problem(path, f"variants.{name}", (
                    f"zoo model {entry.zoo!r} already has a variant {name!r} (in {owner}); "
                    "variant names must be unique per zoo model")))
            if variant.params is not None and variant.params not in published:
                problems.append(Problem(path, f"variants.{name}.params", (
                    f"{format_count(variant.params)} is not among the entry's published params "
                    f"({', '.join(format_count(c) for c in sorted(published)) or 'none'})"
                )))
    return problems


def _normalise(text: str) -> str:
    """Case-, space- and separator-insensitive form used for matching names."""
    return re.sub(r"[\s_/]+", "-", text.strip().casefold())


def _did_you_mean(value: str, choices: Iterable[str]) -> str:
    by_lower = {c.casefold(): c for c in choices}
    close = difflib.get_close_matches(value.casefold(), list(by_lower), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(by_lower[c]) for c in close)}?)" if close else ""
