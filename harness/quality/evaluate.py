"""lm-eval evaluation of a trained checkpoint (`catalog eval`): lm-evaluation-harness's
`simple_evaluate` with the `zoo` adapter on local tasks built from the test split of the
checkpoint's corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.quality import tasks
from harness.quality.spec import QualityError


def evaluate_with_lm_eval(checkpoint: Path, task_names: list[str] | None = None,
                          corpus: str | None = None, limit: int | None = None,
                          **model_args: Any) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Run lm-eval's `simple_evaluate` with the `zoo` adapter on the local tasks built from the
    test split of the checkpoint's corpus (or `corpus`). Returns ({task: {metric: value}},
    the checkpoint's config.json). The task files go to CHECKPOINT/lm_eval_tasks."""
    config_file = Path(checkpoint) / "config.json"
    if not config_file.exists():
        raise QualityError(f"{checkpoint}: not a checkpoint (no config.json); give a folder "
                           "written by `catalog train`")
    meta = json.loads(config_file.read_text())
    if meta.get("task") == "mqar":
        raise QualityError(f"{checkpoint} was trained on mqar, which has no text; lm-eval's "
                           "text tasks need a model trained with --task lm")
    source = corpus or meta.get("corpus") or "stdlib"
    try:
        documents = [d.text for d in tasks.load_corpus(source).test]
    except (OSError, ValueError, RuntimeError) as error:
        raise QualityError(str(error)) from None
    from harness.quality.lm_eval_adapter import evaluate_checkpoint

    scores = evaluate_checkpoint(checkpoint, documents, Path(checkpoint) / "lm_eval_tasks",
                                 tasks=task_names, limit=limit, **model_args)
    return scores, meta
