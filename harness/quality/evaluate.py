"""lm-eval evaluation of a checkpoint (`catalog eval`): lm-evaluation-harness's
`simple_evaluate` with the `zoo` adapter on local tasks built from the test split of a corpus,
offline, and one `QualityRecord` per numeric score.

The checkpoint is a folder written by `catalog train` (its tokenizer and corpus are the ones it
was trained with; the task files are kept in CHECKPOINT/lm_eval_tasks), or a published decoder
or encoder-decoder (T5) checkpoint: a Hugging Face folder or hub id, scored with its own
tokenizer on --corpus, by default the standard library's documentation (as `catalog train`'s
default); its task files go to a temporary folder, never into the folder or the Hugging Face
cache."""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.environment import environment_defaults
from harness.machine import now, where
from harness.quality import tasks
from harness.quality.spec import QualityError
from harness.results import QualityRecord
from zoo.convert import resolve

# What lm-eval needs to run from local files alone: `datasets` must not look for the Hub (the
# task data are JSONL files next to the checkpoint), and neither it nor tqdm should draw
# progress bars over the caller's own output.
LM_EVAL_ENVIRONMENT = {"HF_DATASETS_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                       "TQDM_DISABLE": "1"}


@contextmanager
def _silent_request_bars() -> Iterator[None]:
    """lm-eval draws a tqdm bar while it builds each task's requests, and has no option to turn
    it off. TQDM_DISABLE would, but tqdm reads it once, when first imported, and torch imports
    tqdm long before lm-eval runs. So for the call, that bar's tqdm is a disabled one."""
    import lm_eval.api.task as task_module

    bar = getattr(task_module, "tqdm", None)  # None: an lm-eval without that bar
    if bar is not None:
        task_module.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            task_module.tqdm = bar


@dataclass(frozen=True)
class EvalSpec:
    """What `catalog eval` evaluates, and how."""

    checkpoint: Path | str  # a `catalog train` folder, or a published folder or hub id
    tasks: tuple[str, ...] | None = None  # local lm-eval task names; None: every one written
    corpus: str | None = None  # whose test split is evaluated; None: the checkpoint's own
    # (a published checkpoint's default: the standard library's documentation)
    batch_size: int = 8  # sequences per forward pass
    max_length: int | None = None  # longest sequence fed to the model; None: its training length
    limit: int | None = None  # examples per task; None: all
    device: str = "cpu"

    def __post_init__(self) -> None:
        # Checked here so that a bad value stops the command before task files are written
        # into the checkpoint folder.
        if self.tasks is not None and not self.tasks:
            raise QualityError("--tasks names no task; give e.g. zoo_heldout,zoo_lastword")
        if self.batch_size < 1:
            raise QualityError(f"--batch-size must be at least 1, not {self.batch_size}")
        for option, value in (("--max-length", self.max_length), ("--limit", self.limit)):
            if value is not None and value < 1:
                raise QualityError(f"{option} must be at least 1, not {value}")


@dataclass
class Evaluation:
    scores: dict[str, dict[str, Any]]  # lm-eval's: {task: {metric: value}}
    records: list[QualityRecord]  # one per numeric score, to append to the results
    trained_scores: dict[str, float]  # the harness's own scores, saved at training time


def run_lm_eval(spec: EvalSpec, command: str | None = None) -> Evaluation:
    """Evaluate the checkpoint through lm-eval and describe each numeric score by a record
    that carries `command`, the command line that asked for it. The task files of a `catalog
    train` checkpoint go to CHECKPOINT/lm_eval_tasks, a published one's to a temporary folder."""
    from harness.pretrained import is_trained_checkpoint

    path = resolve(spec.checkpoint)  # a hub id: its folder in the Hugging Face cache
    if path.is_dir() and not (path / "config.json").is_file():
        raise QualityError(f"{spec.checkpoint}: not a checkpoint (no config.json); give a folder "
                           "written by `catalog train`, a published checkpoint's folder or a "
                           "Hugging Face hub id")
    if is_trained_checkpoint(path):
        meta = _trained_config(path)
        source = spec.corpus or meta.get("corpus") or "stdlib"
        return _evaluate(spec, str(path), path / "lm_eval_tasks", meta, source, command)
    meta = _published_config(spec.checkpoint, path)
    with tempfile.TemporaryDirectory(prefix="catalog-eval-") as folder:
        return _evaluate(spec, str(path), Path(folder) / "lm_eval_tasks", meta,
                         spec.corpus or "stdlib", command)


def _evaluate(spec: EvalSpec, checkpoint: str, task_folder: Path, meta: dict[str, Any],
              source: str, command: str | None) -> Evaluation:
    try:
        documents = [d.text for d in tasks.load_corpus(source).test]
    except (OSError, ValueError, RuntimeError) as error:
        raise QualityError(str(error)) from None
    with environment_defaults(LM_EVAL_ENVIRONMENT):
        # Imported inside the block: `datasets` reads its variables once, when lm-eval first
        # imports it, so the variables must be set by then.
        from harness.quality.lm_eval_adapter import evaluate_checkpoint

        with _silent_request_bars():
            scores = evaluate_checkpoint(
                checkpoint, documents, task_folder,
                tasks=list(spec.tasks) if spec.tasks is not None else None, limit=spec.limit,
                device=spec.device, batch_size=spec.batch_size, max_length=spec.max_length)
    made_on = {"device": spec.device, "dtype": "float32", "threads": torch.get_num_threads(),
               **where(spec.device)}
    made = now()
    records = [
        QualityRecord(model=meta.get("zoo"), variant=meta.get("variant"), impl="lm-eval",
                      mode="eval", seqlen=spec.max_length or meta.get("seqlen"), status="ok",
                      task=task_name, metric=metric, value=value, params=meta.get("params"),
                      checkpoint=str(spec.checkpoint), corpus=spec.corpus or meta.get("corpus"),
                      limit=spec.limit, command=command, time=made, **made_on)
        for task_name, metrics in scores.items() for metric, value in metrics.items()
        if isinstance(value, (int, float))]  # a record holds a number; the rest is shown only
    return Evaluation(scores, records, meta.get("scores") or {})


def _published_config(given: Path | str, path: Path) -> dict[str, Any]:
    """What the records say of a published checkpoint (zoo model, `checkpoint:...` as the
    variant, parameters), or a QualityError when lm-eval's text tasks cannot score it: an
    encoder, or no tokenizer."""
    import zoo
    from harness.checkpoint_tokenizer import checkpoint_tokenizer
    from harness.pretrained import checkpoint_fields, checkpoint_label, require_generator

    name, fields = checkpoint_fields(path)
    require_generator(given, name, "lm-eval's scoring of text")
    if checkpoint_tokenizer(path) is None:
        raise QualityError(f"{given}: no tokenizer files (tokenizer.json, vocab.json + "
                           "merges.txt, or vocab.txt) beside the weights; lm-eval's text tasks "
                           "need the checkpoint's own tokenizer")
    params = zoo.build(name, device="meta", fast=False, **fields).num_params()
    return {"zoo": name, "variant": checkpoint_label(given), "params": params}


def _trained_config(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's config.json, or a QualityError when lm-eval's text tasks cannot use it."""
    meta = json.loads((Path(checkpoint) / "config.json").read_text())
    if meta.get("task") == "mqar":
        raise QualityError(f"{checkpoint} was trained on mqar, which has no text; lm-eval's "
                           "text tasks need a model trained with --task lm")
    return meta
