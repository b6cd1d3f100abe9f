"""Local lm-eval tasks on held-out text, built at run time and loaded offline.

The task definitions ship here as YAML (`heldout.yaml`: rolling log-likelihood, word and byte
perplexity, bits per byte; `lastword.yaml`: a last-word cloze, accuracy and perplexity). Their
data, the held-out documents of the corpus, exist only once a run has split its corpus, so
`write_tasks` writes the JSONL files into a run folder together with copies of the YAMLs that
point at them by absolute path (lm-eval resolves a relative `data_files` path against the working
directory). `task_manager` then indexes that folder and nothing else:

    written = write_tasks("runs/gpt/lm_eval_tasks", heldout_documents)
    lm_eval.simple_evaluate(model=..., tasks=list(written),
                            task_manager=task_manager("runs/gpt/lm_eval_tasks"))

Loading reads only the local files; set HF_DATASETS_OFFLINE=1 so `datasets` does not look for
the Hub either. The metrics are lm-eval's built-in ones (no `evaluate.load`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import yaml

TEMPLATES = Path(__file__).resolve().parent
HELDOUT_TASK, LASTWORD_TASK = "zoo_heldout", "zoo_lastword"
_TEMPLATE_FILES = {HELDOUT_TASK: "heldout.yaml", LASTWORD_TASK: "lastword.yaml"}

# A cloze target: a word of letters (inner apostrophes and hyphens allowed), so that the task
# asks for a word rather than a number, a symbol or a fragment of code.
_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|['-](?=[^\W\d_]))*")
_TRAILING_PUNCTUATION = ".,;:!?)]}\"'"


def last_word_examples(documents: Iterable[str], min_words: int = 8) -> list[dict[str, str]]:
    """Cloze examples {"context", "target"} from the paragraphs (blank-line separated) of
    `documents`: the paragraph's words joined by single spaces up to its last word, and
    " " + that word without trailing punctuation. Paragraphs shorter than `min_words` words or
    ending in something other than a word are skipped."""
    examples = []
    for document in documents:
        for paragraph in re.split(r"\n\s*\n", document):
            words = paragraph.split()
            if len(words) < min_words:
                continue
            last = words[-1].rstrip(_TRAILING_PUNCTUATION)
            if _WORD.fullmatch(last):
                examples.append({"context": " ".join(words[:-1]), "target": " " + last})
    return examples


def write_tasks(folder: str | Path, documents: Iterable[str],
                min_words: int = 8) -> dict[str, Path]:
    """Write the data and task YAMLs for held-out `documents` into `folder` (created; earlier
    files replaced). Returns {task name: YAML path}; a task without any example (no paragraph
    fit for the cloze) is left out, as lm-eval cannot load an empty data file."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    documents = [document for document in documents if document.strip()]
    rows = {HELDOUT_TASK: [{"text": document} for document in documents],
            LASTWORD_TASK: last_word_examples(documents, min_words)}
    written = {}
    for task, template in _TEMPLATE_FILES.items():
        data, config_path = folder / f"{task}.jsonl", folder / f"{task}.yaml"
        for stale in (data, config_path):
            stale.unlink(missing_ok=True)
        if not rows[task]:
            continue
        data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows[task]),
                        encoding="utf-8")
        config = yaml.safe_load((TEMPLATES / template).read_text(encoding="utf-8"))
        # The `datasets` cache of this data goes with it, not into the user's global cache.
        config["dataset_kwargs"] = {"data_files": {"test": str(data)},
                                    "cache_dir": str(folder / "datasets_cache")}
        header = f"# Written by harness.quality.lm_eval_tasks.write_tasks from {template}.\n"
        config_path.write_text(header + yaml.safe_dump(config, sort_keys=False),
                               encoding="utf-8")
        written[task] = config_path
    return written


def task_manager(folder: str | Path):
    """An lm-eval TaskManager that knows the tasks written in `folder` and no built-in task
    (indexing lm-eval's thousands of YAMLs takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(Path(folder).resolve()), include_defaults=False)
