"""The performance targets (issue 7), checked against benchmark records.

`plan(...)` lists the sweeps that measure them; `check(records)` turns the records of such a run
into one `Row` per target and cell: what was measured, what is required, and whether it is met.
Every ratio is taken between records of one run (same machine, dtype and threads), whose cells
alternate ours and the peers' length by length; with several rounds (`perf_targets --rounds`)
each side keeps its fastest round. `benchmarks/perf_targets.py` runs and prints it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from harness.bench.implementations import COMPILED
from harness.results import Record

DENSE = ("bert", "gpt", "roberta")  # the models compared with Hugging Face's forward
ATTENTION = ("bert", "gpt", "roberta", "mosaic-bert", "pangu-pi")  # memory must grow linearly
DECODERS_WITH_CACHE = ("gpt", "pangu-pi")  # compared with Hugging Face GPT-2's decoding

FORWARD_RATIO = 1.0  # ours / HF tokens/s, and at most 1.0 for peak memory
MFU_AT_LENGTH = (2048, 0.80)  # from this length on, MFU against the measured matmul peak
RWKV_PREFILL_RATIO = 1.8  # ours / (HF RwkvModel, official rwkv package) at the longest length
RWKV_DECODE_RATIO = 2.0
RWKV_LATENCY_SPREAD = 1.10  # per-token latency at the longest context / at the shortest
DECODE_RATIO = 1.5  # GPT and Pangu-pi decoding / HF GPT-2 decoding
LINEAR_MEMORY = 2.5  # activation memory at 2T / at T: 2 when linear, 4 when a T x T is kept
BF16_RATIO = (2048, 3.0)  # bf16 / fp32 tokens/s of the dense forward at this length


@dataclass(frozen=True)
class Row:
    target: str  # what is required, in words
    cell: str  # which measurement
    value: float | None  # the measured ratio (None: a side is missing or failed)
    required: str  # e.g. ">= 1.80"
    met: bool | None  # None when it could not be measured

    @property
    def verdict(self) -> str:
        return {True: "met", False: "missed", None: "not measured"}[self.met]


@dataclass(frozen=True)
class SweepPlan:
    models: tuple[str, ...]
    modes: tuple[str, ...]
    seqlens: tuple[int, ...]
    against: tuple[str, ...] = ()
    dtype: str = "float32"
    variant: str | None = None  # None: the run's variant (`small` by default)
    group: str = "dense"  # a name of GROUPS: `perf_targets --only` selects by it
    compile: bool = False  # also the zoo model under torch.compile (impl "zoo-compiled")


GROUPS = ("dense", "attention-memory", "rwkv-prefill", "decoding", "bf16", "base-sizes")


# The published base size of each dense model (its catalog variant), also compared with HF.
BASE_VARIANTS = {"bert": "base", "gpt": "gpt2", "roberta": "base"}


def plan(seqlens: tuple[int, ...] = (512, 1024, 2048, 4096, 8192),
         decode_lengths: tuple[int, ...] = (512, 8192), base_sizes: bool = True
         ) -> list[SweepPlan]:
    """The sweeps behind every target; the longest of `seqlens` is "the long length"."""
    bf16_length = BF16_RATIO[0] if BF16_RATIO[0] in seqlens else max(seqlens)
    plans = [
        SweepPlan(DENSE, ("forward",), seqlens, ("hf",)),
        SweepPlan(("mosaic-bert", "pangu-pi"), ("forward",), seqlens, group="attention-memory"),
        SweepPlan(("rwkv",), ("forward",), (max(seqlens),), ("hf", "rwkv-pip"),
                  group="rwkv-prefill"),
        SweepPlan(("rwkv",), ("generate",), decode_lengths, ("hf", "rwkv-pip"), group="decoding"),
        SweepPlan(("gpt",), ("generate",), decode_lengths, ("hf",), group="decoding"),
        SweepPlan(("pangu-pi",), ("generate",), decode_lengths, group="decoding"),
        SweepPlan(DENSE, ("forward",), (bf16_length,), (), "bfloat16", group="bf16"),
    ]
    if base_sizes:
        plans += [SweepPlan((model,), ("forward",), seqlens, ("hf",), variant=variant,
                            group="base-sizes")
                  for model, variant in BASE_VARIANTS.items()]
    return plans


def _ok(records: Iterable[Record | dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """The measured cells by key. A cell measured in several rounds keeps its fastest record,
    ours and the peers' alike: a shared machine only ever slows a measurement down."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in records:
        r = r.to_dict() if isinstance(r, Record) else r
        if r.get("kind") != "bench" or r.get("status") != "ok":
            continue
        key = (r["model"], r.get("variant"), r["impl"], r["mode"], r["seqlen"], r["dtype"])
        if key not in best or (r.get("tokens_per_s") or 0) > (best[key].get("tokens_per_s") or 0):
            best[key] = r
    return best


def fastest(records: Iterable[Record | dict[str, Any]]) -> list[dict[str, Any]]:
    """The records the targets are checked on: each cell's fastest measured (ok) round."""
    return list(_ok(records).values())


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _row(target: str, cell: str, value: float | None, bound: float, at_least: bool = True
         ) -> Row:
    met = None if value is None else (value >= bound if at_least else value <= bound)
    return Row(target, cell, value, f"{'>=' if at_least else '<='} {bound:.2f}", met)


def _name(model: str, variant: str | None) -> str:
    return f"{model} {variant}" if variant else model


def _against_hf(speed: str, memory: str, cell: str, ours: dict[str, Any],
                hf: dict[str, Any], bound: float) -> list[Row]:
    """Ours against Hugging Face in one cell: tokens/s at least `bound` times theirs, peak
    memory at most `bound` times theirs."""
    return [_row(speed, cell, _ratio(ours.get("tokens_per_s"), hf.get("tokens_per_s")), bound),
            _row(memory, cell, _ratio(ours.get("peak_mem_bytes"), hf.get("peak_mem_bytes")),
                 bound, at_least=False)]


def check(records: Iterable[Record | dict[str, Any]]) -> list[Row]:
    """One row per target and cell found in `records` (fp32 unless the target says bf16).
    Cells are named "model variant mode length"; records of different variants never form
    a ratio."""
    ok = _ok(records)
    rows: list[Row] = []
    variants = sorted({k[1] for k in ok}, key=lambda v: (v != "small", str(v)))

    for variant in variants:
        def get(model, impl, mode, seqlen, dtype="float32", variant=variant):
            return ok.get((model, variant, impl, mode, seqlen, dtype), {})

        lengths = sorted({k[4] for k in ok if k[1] == variant and k[3] == "forward"
                          and k[5] == "float32"})
        for model in DENSE:  # forward against Hugging Face, and MFU
            for T in lengths:
                ours, hf = get(model, "zoo", "forward", T), get(model, "hf", "forward", T)
                if not ours and not hf:
                    continue
                cell = f"{_name(model, variant)} forward {T}"
                rows += _against_hf("throughput vs HF", "peak memory vs HF", cell, ours, hf,
                                    FORWARD_RATIO)
                if T >= MFU_AT_LENGTH[0]:
                    rows.append(_row("MFU (fp32 peak)", cell, ours.get("mfu"),
                                     MFU_AT_LENGTH[1]))

        rwkv = _name("rwkv", variant)
        longest = max((k[4] for k in ok if k[:2] == ("rwkv", variant) and k[3] == "forward"),
                      default=None)
        if longest is not None:  # RWKV prefill
            ours = get("rwkv", "zoo", "forward", longest)
            for peer in ("hf", "rwkv-pip"):
                rows.append(_row(f"RWKV prefill vs {peer}", f"{rwkv} forward {longest}",
                                 _ratio(ours.get("tokens_per_s"),
                                        get("rwkv", peer, "forward", longest).get("tokens_per_s")),
                                 RWKV_PREFILL_RATIO))

        decode = sorted({k[4] for k in ok if k[1] == variant and k[3] == "generate"
                         and k[5] == "float32"})
        for T in decode:  # decoding: RWKV against its peers, GPT and Pangu-pi against HF GPT-2
            ours = get("rwkv", "zoo", "generate", T)
            for peer in ("hf", "rwkv-pip"):
                theirs = get("rwkv", peer, "generate", T)
                if ours or theirs:
                    rows.append(_row(f"RWKV decoding vs {peer}", f"{rwkv} generate {T}",
                                     _ratio(ours.get("tokens_per_s"), theirs.get("tokens_per_s")),
                                     RWKV_DECODE_RATIO))
            hf_gpt2 = get("gpt", "hf", "generate", T)
            for model in DECODERS_WITH_CACHE:
                mine = get(model, "zoo", "generate", T)
                if mine or hf_gpt2:
                    cell = f"{_name(model, variant)} generate {T}"
                    rows.append(_row("decoding vs HF GPT-2", cell,
                                     _ratio(mine.get("tokens_per_s"), hf_gpt2.get("tokens_per_s")),
                                     DECODE_RATIO))
        if len(decode) >= 2:  # RWKV: flat latency and memory over the context
            short, long = get("rwkv", "zoo", "generate", decode[0]), \
                get("rwkv", "zoo", "generate", decode[-1])
            if short or long:
                cell = f"{rwkv} generate {decode[-1]} / {decode[0]}"
                rows.append(_row("RWKV per-token latency, long / short", cell,
                                 _ratio(long.get("ms_median"), short.get("ms_median")),
                                 RWKV_LATENCY_SPREAD, at_least=False))
                rows.append(_row("RWKV decoding memory, long / short", cell,
                                 _ratio(long.get("peak_mem_bytes"), short.get("peak_mem_bytes")),
                                 RWKV_LATENCY_SPREAD, at_least=False))

        for model in ATTENTION:  # memory linear in length: compare each doubling
            mine = [T for T in lengths if get(model, "zoo", "forward", T)]
            for short, long in pairwise(mine):
                if long != 2 * short or long < 4096:
                    continue
                a = get(model, "zoo", "forward", short).get("act_mem_bytes")
                b = get(model, "zoo", "forward", long).get("act_mem_bytes")
                rows.append(_row("activation memory per doubling",
                                 f"{_name(model, variant)} forward {long} / {short}",
                                 _ratio(b, a), LINEAR_MEMORY, at_least=False))

        for model in DENSE:  # bfloat16 against float32
            for T in sorted({k[4] for k in ok if k[5] == "bfloat16" and k[:2] == (model, variant)}):
                rows.append(_row("bf16 vs fp32 throughput", f"{_name(model, variant)} forward {T}",
                                 _ratio(get(model, "zoo", "forward", T, "bfloat16")
                                        .get("tokens_per_s"),
                                        get(model, "zoo", "forward", T).get("tokens_per_s")),
                                 BF16_RATIO[1]))
    return rows


# --- training (issue 15) ----------------------------------------------------------------------

TRAIN_MODELS = ("gpt", "bert", "rwkv")  # the training step against Hugging Face's
# The other models that had an HF peer when the training targets were set, and (group
# "train-newer") the models added since, each with its own: the GPU script runs the latter
# in a call of its own (STEPS=6), its first call having no time left for them.
TRAIN_MORE = ("llama", "roberta", "mamba", "mamba2")
TRAIN_NEWER = ("gpt-neox", "bloom", "opt", "gpt-j", "t5")
TRAIN_DENSE = ("gpt", "bert", "llama", "roberta", *TRAIN_NEWER)  # MFU targets for these
TRAIN_RATIO = 1.0  # ours / HF tokens/s, and at most 1.0 for peak memory, at every length
TRAIN_MFU = ((256, 1024), 0.50)  # TRAIN_DENSE's MFU at these lengths (float32 cells)
RWKV_TRAIN = (1024, 3.0, 1.5)  # at this length: RWKV / HF RWKV, and RWKV / our GPT
TRAIN_BF16 = ((256, 1024), 2.0)  # mixed-precision bf16 / fp32 tokens/s of ours at these lengths
COMPILED_RATIO = 1.0  # eager (the default) / torch.compile tokens/s: compile stays off unless
#                       it is faster everywhere


def train_plan(seqlens: tuple[int, ...] = (256, 512, 1024, 2048, 4096), dtype: str = "float32",
               compile: bool = False) -> list[SweepPlan]:
    """The sweeps behind the training targets: ours against Hugging Face at every length in
    `dtype` (float32 on a CPU; bfloat16, that is mixed precision, for the table on a GPU), the
    model under torch.compile beside ours when `compile`, first for TRAIN_MODELS, then (groups
    "train-more" and "train-newer") for the other models Hugging Face has; and ours at the other
    precision at the bf16 target's lengths, for the bf16 / fp32 ratio."""
    other = "bfloat16" if dtype == "float32" else "float32"
    mixed = tuple(T for T in TRAIN_BF16[0] if T in seqlens) or (min(seqlens),)
    return [SweepPlan(TRAIN_MODELS, ("train",), seqlens, ("hf",), dtype, group="train",
                      compile=compile),
            SweepPlan(("gpt", "bert"), ("train",), mixed, (), other, group="train-bf16"),
            SweepPlan(TRAIN_MORE, ("train",), seqlens, ("hf",), dtype, group="train-more",
                      compile=compile),
            SweepPlan(TRAIN_NEWER, ("train",), seqlens, ("hf",), dtype, group="train-newer",
                      compile=compile)]


TRAIN_GROUPS = ("train", "train-bf16", "train-more", "train-newer")


def check_training(records: Iterable[Record | dict[str, Any]]) -> list[Row]:
    """One row per training target and cell found in `records`. Ours is compared with Hugging
    Face in each precision Hugging Face's step was tried in (float32 on a CPU; bfloat16 for the
    table on a GPU; a cell not in float32 names its dtype); MFU against the fp32 peak, and
    bf16 against fp32, wherever our step was measured in those precisions."""
    records = [r.to_dict() if isinstance(r, Record) else r for r in records]
    ok = _ok(records)
    # A failed try of HF's step still counts (its rows read "not measured"); records without
    # HF at all are checked in float32 (their rows too read "not measured").
    compared = {r["dtype"] for r in records if r.get("kind") == "bench"
                and r.get("mode") == "train" and r.get("impl") == "hf"} or {"float32"}
    rows: list[Row] = []
    for variant in sorted({k[1] for k in ok}, key=lambda v: (v != "small", str(v))):
        def get(model, impl, seqlen, dtype="float32", variant=variant):
            return ok.get((model, variant, impl, "train", seqlen, dtype), {})

        def name(model, seqlen, dtype="float32", variant=variant):
            suffix = "" if dtype == "float32" else f" {dtype}"
            return f"{_name(model, variant)} train {seqlen}{suffix}"

        def lengths(model, dtype="float32", variant=variant):
            return sorted(k[4] for k in ok if k[:4] == (model, variant, "zoo", "train")
                          and k[5] == dtype)

        def mfu(model, seqlen):
            ours = get(model, "zoo", seqlen)
            if not ours or model not in TRAIN_DENSE or seqlen not in TRAIN_MFU[0]:
                return []
            return [_row("training MFU (fp32 peak)", name(model, seqlen), ours.get("mfu"),
                         TRAIN_MFU[1])]

        all_lengths = sorted({k[4] for k in ok if k[1] == variant and k[3] == "train"})
        for dtype in sorted(compared, key=lambda d: (d != "float32", d)):
            for model in TRAIN_MODELS + TRAIN_MORE + TRAIN_NEWER:
                for T in all_lengths:
                    ours, hf = get(model, "zoo", T, dtype), get(model, "hf", T, dtype)
                    if ours or hf:
                        rows += _against_hf("training vs HF", "training peak memory vs HF",
                                            name(model, T, dtype), ours, hf, TRAIN_RATIO)
                    if dtype == "float32":
                        rows += mfu(model, T)
            T, vs_hf, vs_gpt = RWKV_TRAIN
            rwkv = get("rwkv", "zoo", T, dtype)
            if rwkv:
                cell = name("rwkv", T, dtype)
                rows.append(_row("RWKV training vs HF", cell, _ratio(
                    rwkv.get("tokens_per_s"), get("rwkv", "hf", T, dtype).get("tokens_per_s")),
                    vs_hf))
                rows.append(_row("RWKV training vs our GPT", cell, _ratio(
                    rwkv.get("tokens_per_s"), get("gpt", "zoo", T, dtype).get("tokens_per_s")),
                    vs_gpt))
        if "float32" not in compared:  # float32 cells beside a comparison in bf16
            rows += [row for model in TRAIN_DENSE for T in lengths(model)
                     for row in mfu(model, T)]
        for model in ("gpt", "bert"):
            fp32 = set(lengths(model))
            for T in lengths(model, "bfloat16"):
                if T in fp32 or T in TRAIN_BF16[0]:
                    rows.append(_row("bf16 (mixed) vs fp32 training", name(model, T),
                                     _ratio(get(model, "zoo", T, "bfloat16").get("tokens_per_s"),
                                            get(model, "zoo", T).get("tokens_per_s")),
                                     TRAIN_BF16[1]))
        # A compiled cell that failed or ran out of time reads "not measured".
        for model, T, dtype in sorted({(r["model"], r["seqlen"], r["dtype"]) for r in records
                                       if r.get("kind") == "bench" and r.get("mode") == "train"
                                       and r.get("impl") == COMPILED
                                       and r.get("variant") == variant}):
            rows.append(_row("eager (default) vs torch.compile training", name(model, T, dtype),
                             _ratio(get(model, "zoo", T, dtype).get("tokens_per_s"),
                                    get(model, COMPILED, T, dtype).get("tokens_per_s")),
                             COMPILED_RATIO))
    return rows


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table, with a closing line counting the targets met."""
    lines = ["| target | cell | measured | required | verdict |", "|---|---|---:|---:|---|"]
    for row in rows:
        value = "" if row.value is None else f"{row.value:.2f}"
        lines.append(f"| {row.target} | {row.cell} | {value} | {row.required} | {row.verdict} |")
    met = sum(row.met is True for row in rows)
    missed = sum(row.met is False for row in rows)
    return "\n".join([*lines, "", f"{met} of {len(rows)} met, {missed} missed, "
                       f"{len(rows) - met - missed} not measured."]) + "\n"
