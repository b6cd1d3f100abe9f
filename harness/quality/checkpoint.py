"""Trained checkpoints: a folder with config.json, model.safetensors and tokenizer.json.

config.json holds the zoo model name, its config fields and whatever the trainer adds (task,
budget, seed, step); the weights are saved with safetensors (tied weights stored once).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from harness.quality.tokenizer import Tokenizer, load_tokenizer


def save_checkpoint(folder: Path | str, name: str, model, tokenizer: Tokenizer,
                    **meta: Any) -> Path:
    """Write the checkpoint of zoo model `name` into `folder` (created; files replaced whole)."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"zoo": name, "config": dataclasses.asdict(model.config), **meta}
    for file, write in (("model.safetensors", lambda p: save_model(model, str(p))),
                        ("tokenizer.json", tokenizer.save),
                        ("config.json", lambda p: p.write_text(json.dumps(config, indent=2)))):
        tmp = folder / f".{file}.tmp"
        write(tmp)
        os.replace(tmp, folder / file)
    return folder


def load_checkpoint(folder: Path | str, device: str = "cpu", fast: bool = True):
    """(model in eval mode, tokenizer, config.json dict) of a checkpoint folder; with the zoo's
    CPU speed routes unless `fast` is False (as zoo.build)."""
    from safetensors.torch import load_model

    import zoo
    import zoo.fast

    folder = Path(folder)
    for file in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / file).exists():
            raise FileNotFoundError(f"{folder}: not a checkpoint (no {file})")
    meta = json.loads((folder / "config.json").read_text())
    cls = zoo.load_class(meta["zoo"])
    model = cls(cls.config_class(**meta["config"]))
    load_model(model, str(folder / "model.safetensors"), device=device)
    if fast:
        zoo.fast.apply(model)
    return model.to(device).eval(), load_tokenizer(folder / "tokenizer.json"), meta
