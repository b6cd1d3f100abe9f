"""Provenance: a record's git revision is "-dirty" when the code that ran differs from it, not
when a results file or report in the checkout does."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from harness.machine import git_revision

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


def test_only_code_changes_make_a_revision_dirty(tmp_path):
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "model.py").write_text("x = 1\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "results.jsonl").write_text("{}\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "first")
    head = git_revision(tmp_path)
    assert head and not head.endswith("-dirty")

    # a grid appending to a tracked results file, a new report beside it: still the same code
    with open(tmp_path / "reports" / "results.jsonl", "a") as results:
        results.write("{}\n")
    (tmp_path / "reports" / "new.jsonl").write_text("{}\n")
    assert git_revision(tmp_path) == head

    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "new.py").write_text("y = 2\n")  # a new file of code
    assert git_revision(tmp_path) == head + "-dirty"
    (tmp_path / "harness" / "new.py").unlink()
    (tmp_path / "zoo" / "model.py").write_text("x = 2\n")  # an edit
    assert git_revision(tmp_path) == head + "-dirty"


def test_outside_a_checkout_there_is_no_revision(tmp_path):
    assert git_revision(tmp_path) is None
