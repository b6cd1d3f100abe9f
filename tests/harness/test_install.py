"""A non-editable install (what `pip install .` puts in site-packages) finds the catalog data
from any directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_a_non_editable_install_ships_and_finds_the_catalog(tmp_path):
    pytest.importorskip("setuptools")
    # Build from a clean copy so that nothing is written into the checkout (build/, egg-info).
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".ci-venv", "build", "*.egg-info", "__pycache__", ".*_cache"))
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    assert len(list((target / "catalog").glob("*.yaml"))) == len(list(REPO.glob("catalog/*.yaml")))
    tasks = target / "harness" / "quality" / "lm_eval_tasks"
    assert {p.name for p in tasks.glob("*.yaml")} == {"heldout.yaml", "lastword.yaml"}

    # Run from an unrelated folder with only the installed copy importable.
    probe = ("import json, harness.catalog as c; cat = c.load_catalog(); print(json.dumps("
             "[str(c.default_catalog_dir()), len(cat.entries), len(cat.problems)]))")
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={"PYTHONPATH": str(target), "PATH": ""})
    assert run.returncode == 0, run.stderr
    where, entries, problems = json.loads(run.stdout)
    assert Path(where) == target / "catalog"
    assert (entries, problems) == (len(list(REPO.glob("catalog/*.yaml"))), 0)
