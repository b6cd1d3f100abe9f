"""One quality run, end to end: the model trained at the equal budget, tested, saved as a
checkpoint and described by a `QualityRecord` (written by the caller). `catalog train` runs one
model, `catalog quality` several on the same `Prepared` data; `plan_runs` checks all of them and
their checkpoint folders before any data is prepared."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harness.machine import LoadMeter, busy_note, now, out_of_memory, where
from harness.models import set_texts
from harness.quality import curves, tasks
from harness.quality.checkpoint import save_checkpoint
from harness.quality.data import Prepared
from harness.quality.model import build_model, check_model, task_for
from harness.quality.spec import MQAR_NO_DROPOUT, OutOfMemory, QualityError, RunSpec
from harness.quality.task_setup import setup_task
from harness.quality.tokenizer import ByteTokenizer, Tokenizer
from harness.quality.train import History, train
from harness.results import QualityRecord, file_in_the_way
from zoo import fast

if TYPE_CHECKING:
    from harness.catalog import Catalog


@dataclass
class RunResult:
    record: QualityRecord | None  # None in a process other than the main one
    history: History
    checkpoint: Path | None


def run_one(model: str, data: Prepared, out: Path, *, resume: bool = False,
            on_step: Callable[[History, float], None] | None = None,
            is_main: bool = True, catalog: Catalog | None = None,
            command: str | None = None) -> RunResult:
    """Train `model` on the prepared task from scratch (or `resume` from `out/state.pt`), test
    it, save the checkpoint into `out` and return the quality record (written by the caller),
    which carries `command`, the command line that asked for the run. In a multi-process run
    only the main process (`is_main`) saves."""
    spec = data.spec
    task = task_for(model, spec.task)
    config = spec.train_config
    if task == "seq2seq" and config.seqlen % 2:
        raise QualityError(f"--seqlen {config.seqlen}: seq2seq needs an even length")
    state = out / "state.pt"
    with _memory_refused(model, "building it", spec.device, state, "--width or --variant"):
        net = build_model(model, task, data, catalog)
    with _memory_refused(model, f"training {config.batch_size} x {config.seqlen} tokens a step",
                         spec.device, state, "--batch-size or --seqlen"):
        setup = setup_task(model, task, data, spec.device)
        if spec.budget.flops:  # a compute budget counts each model's own cost of a token
            config = dataclasses.replace(config, flops_per_token=3 * net.flops_per_token(
                config.seqlen))
        # Others' use of this process's cores while it trains (one process: under torchrun
        # the other ranks share the machine by design).
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        meter = None if distributed else LoadMeter(threads=torch.get_num_threads())
        history = train(net, setup.batches, config, evaluate=setup.evaluate, state_path=state,
                        resume=resume, on_step=on_step, run=_made_of(model, task, spec))
        contention = meter.others() if meter else None
    if not is_main:
        return RunResult(None, history, None)
    net.eval()
    testing = time.monotonic()
    with _memory_refused(model, "testing", spec.device, state,
                         "--extrapolate" if spec.extrapolate else None), torch.no_grad():
        scores = setup.test(net)
        validation = setup.validate(net) if setup.validate else {}
        length_curves = _length_curves(net, data, config.seqlen, task) if spec.extrapolate \
            else {}
    test_seconds = time.monotonic() - testing
    params = net.num_params()
    notes = [*spec.notes, *setup.notes]
    if task == "seq2seq" and spec.extrapolate:
        notes.append("length curve: at each length the encoder reads half and the decoder "
                     "writes the other half; no sliding windows or loss by position (decoders')")
    if task == "mlm" and model in ("bert", "albert"):
        head = "sentence-order" if model == "albert" else "next-sentence"
        notes.append(f"no {head} head (the corpus has no sentence pairs)")
    if task == "mlm" and model == "albert":
        notes.append("single-token masks (ALBERT's paper masks n-grams of up to 3 tokens)")
    if task == "mqar":
        fields = {f.name for f in dataclasses.fields(net.config)}
        off = [n for n in MQAR_NO_DROPOUT if n in fields]  # build_model set them to 0
        if off:
            notes.append(f"{', '.join(off)} set to 0 for the recall task")
        if getattr(net.config, "d_ff", None) == 0:
            notes.append("mixer-only blocks (d_ff = 0), as Zoology's")
        if getattr(net.config, "n_head", None) == 1:
            notes.append("one attention head, as Zoology's")
        if hasattr(net.config, "init_std") and "init_std" not in dict(spec.overrides):
            notes.append(f"weights initialised with std {net.config.init_std:.3g} "
                         "(1/sqrt(3 d), PyTorch's default scale; Zoology's: 0.02)")
    if spec.overrides:
        notes.append("config fields set with --set: " + ", ".join(set_texts(spec.overrides)))
    meta = {"task": task, "variant": spec.variant_label, "seed": spec.seed, "seqlen": config.seqlen,
            "budget": str(spec.budget), "steps": history.steps, "tokens": history.tokens,
            "tokenizer_kind": spec.tokenizer, "corpus": data.corpus_name, "scores": scores,
            "params": params}
    if task == "mqar":
        meta["mqar"] = dataclasses.asdict(spec.mqar)
    busy = busy_note(contention, len(meter.cores) if meter else 0, "training",
                     "a time budget bought fewer steps than a quiet machine gives: train it "
                     "again" if spec.budget.seconds else "its tokens/s read low")
    if busy:
        notes.append(busy)
    if history.stopped_early:
        notes.append(f"stopped early at step {history.steps}: validation passed "
                     f"{config.stop_at[1]:g} {config.stop_at[0]}")
    checkpoint = save_checkpoint(out, model, net, _checkpoint_tokenizer(data, task), **meta)
    (out / "state.pt").unlink(missing_ok=True)  # finished: the optimizer state is not needed
    rec = QualityRecord(
        model=model, variant=spec.variant_label, impl="zoo", mode="train",
        seqlen=config.seqlen, batch=config.batch_size, dtype=config.dtype, device=spec.device,
        threads=torch.get_num_threads(), status="ok", params=params, task=task,
        metric=setup.metric, value=scores[setup.metric], notes=notes, time=now(),
        budget=str(spec.budget), budget_tokens=spec.budget.tokens,
        budget_seconds=spec.budget.seconds, tokens=history.tokens, steps=history.steps,
        train_seconds=round(history.seconds, 1), test_seconds=round(test_seconds, 1),
        tokens_per_s=history.tokens / history.seconds if history.seconds else None,
        seed=spec.seed, lr=config.lr, tokenizer=spec.tokenizer,
        vocab_size=net.config.vocab_size, corpus=data.corpus_name, scores=scores,
        routes=list(fast.applied(net)), budget_flops=spec.budget.flops,
        contention=None if contention is None else round(contention, 2),
        width=spec.width if spec.width is not None else getattr(net.config, "d_model", None),
        val_value=validation.get(setup.metric), stopped_early=history.stopped_early,
        **length_curves,
        final_train_loss=_mean_tail(history.losses), baseline=data.baseline if task in (
            "lm", "seq2seq") else None, checkpoint=str(checkpoint), command=command,
        **where(spec.device))
    if task == "mqar":
        rec.mqar = meta["mqar"]
        rec.chance = 1 / spec.mqar.num_kv_pairs
        rec.kv_pairs = spec.mqar.num_kv_pairs
    return RunResult(rec, history, checkpoint)


@contextmanager
def _memory_refused(model: str, doing: str, device: str, state: Path, smaller: str | None
                    ) -> Iterator[None]:
    """A failed allocation inside as a one-line OutOfMemory error that says what ran out, what
    to make smaller (the option `smaller`, if any), and what was kept (the last saved state,
    which --resume continues from)."""
    try:
        yield
    except Exception as exc:
        refused = out_of_memory(exc)
        if refused is None:
            raise
        said = [f"{model}: out of memory {doing} on {device} ({refused} refused)"]
        if smaller:
            said.append(f"give a smaller {smaller}")
        if state.exists():
            said.append(f"{state} is kept: --resume continues from it")
        raise OutOfMemory("; ".join(said)) from None


def _length_curves(net, data: Prepared, trained: int, task: str) -> dict:
    """Bits per byte of the first `curve_tokens` test tokens at each evaluation length
    (nonoverlapping windows, and sliding ones with --stride), and the loss by token position:
    in windows of the training length, which every model takes (so that the curves of a grid
    compare on the same windows), and in windows of the longest evaluation length the model
    takes when that is longer. Windows are cut from test documents at their start, or from the
    joined stream when too few documents are that long. The encoder-decoder (`seq2seq`) gets
    the first: its source and target halves of each length, in pairs that tile the stream."""
    spec, tok = data.spec, data.tokenizer
    stream = data.test_stream[:spec.curve_tokens + 1]
    byte_lengths = tasks.token_bytes(tok)
    if task == "seq2seq":
        return {"extrapolation": curves.seq2seq_extrapolation(
            net, stream, byte_lengths, lengths=spec.eval_lengths(), bos_id=tok.bos_id,
            eos_id=tok.eos_id, pad_id=tok.pad_id, device=spec.device)}
    rows = []
    for stride in (None, spec.stride) if spec.stride else (None,):
        rows += curves.extrapolation(net, stream, byte_lengths, lengths=spec.eval_lengths(),
                                     trained_length=trained, pad_id=tok.pad_id, stride=stride,
                                     device=spec.device)
    limit = curves.length_limit(net, trained)
    longest = max(L for L in spec.eval_lengths() if limit is None or L <= limit)
    documents = [torch.tensor([tok.eos_id, *tok.encode(text)]) for text in data.test_documents]
    by_position = []
    for length in dict.fromkeys((trained, longest)):
        windows = curves.document_windows(documents, length)
        source = "test documents, from their start"
        if windows.shape[0] < 4:
            windows = curves.stream_windows(data.test_stream, length)
            source = "the joined test stream (too few documents that long)"
        curve = curves.loss_by_position(net, windows, device=spec.device)
        by_position.append({**curve, "source": source})
    return {"extrapolation": rows, "position_loss": by_position}


def _checkpoint_tokenizer(data: Prepared, task: str) -> Tokenizer:
    # MQAR has no text: its checkpoint carries the byte tokenizer as a placeholder of the format
    return data.tokenizer if task != "mqar" else ByteTokenizer()


def _made_of(model: str, task: str, spec: RunSpec) -> dict[str, object]:
    """What makes a run besides the trainer's settings, which a resume must share: the model,
    its size and the data. (The device may change; so may what testing does after training.)"""
    return {"model": model, "task": task, "variant": spec.variant_label, "width": spec.width,
            "depth": spec.depth, "corpus": spec.corpus, "tokenizer": spec.tokenizer,
            "bpe_vocab": spec.bpe_vocab if spec.tokenizer == "bpe" else None,
            "mqar": dataclasses.asdict(spec.mqar) if task == "mqar" else None,
            "eval_tokens": spec.eval_tokens}


def _mean_tail(losses: list[float], n: int = 20) -> float | None:
    tail = [x for x in losses[-n:] if math.isfinite(x)]
    return sum(tail) / len(tail) if tail else None


# ------------------------------------------------------------------------------ folders


@dataclass(frozen=True)
class RunPlan:
    """The models of a command, each checked against the spec, with its checkpoint folder."""

    folders: dict[str, Path]  # model -> where its checkpoint goes, in the order given
    tasks: set[str]  # what `prepare` must build: the tasks the models run
    # --resume of several models: those an earlier run of the command finished, with the record
    # it appended (they are not trained again)
    finished: dict[str, QualityRecord] = dataclasses.field(default_factory=dict)


def check_resume_or_force(resume: bool, force: bool) -> None:
    if resume and force:
        raise QualityError("--resume continues what a run saved, --force starts over: give one")


def plan_runs(models: list[str], spec: RunSpec, out: Path | None, *, several: bool,
              resume: bool, force: bool, catalog: Catalog | None = None,
              results_path: Path | None = None) -> RunPlan:
    """Check, before any data is prepared, that every model runs the spec's task at its
    variant and that its folder may be written (see `run_folder`, `check_folder`).

    `resume` with several models continues an interrupted comparison: a model whose folder
    holds state.pt resumes, one that holds a finished checkpoint keeps it and its record in
    `results_path` (see `finished_record`), one with neither starts."""
    check_resume_or_force(resume, force)
    tasks_needed = {check_model(name, spec, catalog) for name in models}
    folders = {name: run_folder(out, name, spec, several) for name in models}
    if not (resume and several):
        for folder in folders.values():
            check_folder(folder, resume=resume, force=force)
        return RunPlan(folders, tasks_needed)
    finished, recorded = {}, None
    for name, folder in folders.items():
        check_out(folder)
        if (folder / "config.json").exists() and not (folder / "state.pt").exists():
            if recorded is None:  # read once, for every finished model
                recorded = _quality_records(results_path)
            finished[name] = finished_record(name, folder, spec, recorded, results_path)
    if not finished and not any((f / "state.pt").exists() for f in folders.values()):
        raise QualityError(f"--resume: no folder of {', '.join(map(str, folders.values()))} "
                           "holds an interrupted or finished run; drop --resume to start them")
    return RunPlan(folders, tasks_needed, finished)


def _quality_records(path: Path | None) -> list[QualityRecord]:
    from harness import results

    if path is None or not path.is_file():
        return []
    return [r for r in results.load([path]).records if isinstance(r, QualityRecord)]


def finished_record(name: str, folder: Path, spec: RunSpec, recorded: list[QualityRecord],
                    results_path: Path | None) -> QualityRecord:
    """The record (of `recorded`, read from `results_path`) an earlier run appended when it
    finished `name` into `folder`, checked to be of the same comparison (task, budget, seed,
    rate, size, precision): a QualityError that says what differs, or that there is none."""
    found = None
    for rec in recorded:
        if (rec.impl == "zoo" and rec.model == name and rec.checkpoint
                and Path(rec.checkpoint).resolve() == folder.resolve()):
            found = rec  # the latest one wins: a --force run replaced the checkpoint
    if found is None:
        raise QualityError(f"--resume: {folder} holds {name}'s finished checkpoint but "
                           f"{results_path} has no record of it; give the --results it went to, "
                           "or --force to train every model again")
    config = spec.train_config
    expected = {"task": task_for(name, spec.task), "budget": str(spec.budget),
                "seed": spec.seed, "lr": config.lr, "tokenizer": spec.tokenizer,
                "variant": spec.variant_label, "seqlen": config.seqlen,
                "batch": config.batch_size, "dtype": config.dtype}
    if spec.width is not None:  # --width, or the width sized for the budget
        expected["width"] = spec.width
    for field_name, value in expected.items():
        if getattr(found, field_name) != value:
            raise _kept_differs(name, folder, f"was trained with {field_name} "
                                f"{getattr(found, field_name)}, this run asks for {value}")
    return found


def check_finished_data(plan: RunPlan, data: Prepared) -> None:
    """The models a --resume keeps must have trained on this run's text: a QualityError naming
    the corpus otherwise (checked once the data is prepared, which names it)."""
    for name, rec in plan.finished.items():
        if rec.corpus != data.corpus_name:
            raise _kept_differs(name, plan.folders[name], f"was trained on {rec.corpus}, this "
                                f"run's corpus is {data.corpus_name}")


def _kept_differs(name: str, folder: Path, how: str) -> QualityError:
    return QualityError(f"--resume: {name} in {folder} {how}; resume with the options it was "
                        "started with, or --force to train every model again")


def check_out(folder: Path) -> None:
    """Refuse, before any training, a checkpoint folder that is a file or would be inside one:
    the run would train and then fail to save."""
    taken = file_in_the_way(folder)
    if taken == folder:
        raise QualityError(f"--out {folder} is a file; give a folder")
    if taken is not None:
        raise QualityError(f"--out {folder}: {taken} is a file, not a folder")


def run_folder(out: Path | None, model: str, spec: RunSpec, several: bool) -> Path:
    """Where a model's checkpoint goes: `out` itself for one model, `out/MODEL` for several;
    by default runs/MODEL-TASK-VARIANT-seedN, or runs/quality-TASK/MODEL."""
    if out is None:
        if several:
            return Path("runs") / f"quality-{spec.task}" / model
        variant = "-".join((spec.variant, *set_texts(spec.overrides))).replace(" ", "-")
        return Path("runs") / f"{model}-{spec.task}-{variant}-seed{spec.seed}"
    return out / model if several else out


def check_folder(folder: Path, *, resume: bool, force: bool) -> None:
    """Refuse to overwrite a finished checkpoint (unless `force`), to resume from nothing, and
    a folder that cannot be made (inside a file)."""
    check_out(folder)
    if resume:
        if not (folder / "state.pt").exists():
            raise QualityError(f"--resume: {folder} holds no interrupted run (no state.pt); "
                               "drop --resume to start one")
    elif (folder / "config.json").exists() and not force:
        raise QualityError(f"{folder} already holds a checkpoint; pass --force to overwrite it "
                           "or --out to write elsewhere")
    elif (folder / "state.pt").exists() and not force:
        raise QualityError(f"{folder} holds an interrupted run; pass --resume to continue it "
                           "or --force to start over")
