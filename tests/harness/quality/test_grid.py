"""Quality grids: the cells of the axes, one process per cell, records appended as cells end,
failures recorded, a rerun skipping what is done."""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness import results
from harness.launch import Outcome, Placement
from harness.quality import grid as grid_module
from harness.quality.grid import Grid, identity, parse_shapes, run_grid
from harness.quality.spec import OutOfMemory, QualityError, RunSpec
from harness.quality.tasks import MQARConfig
from harness.quality.train import Budget

# A small MQAR: 64 examples, 2 steps of 16 sequences of 16 tokens.
MQAR = MQARConfig(vocab_size=64, seqlen=16, num_kv_pairs=2, num_train=64, num_test=32,
                  num_valid=32)


def small_grid(tmp_path, **fields) -> Grid:
    base = RunSpec(task="mqar", budget=Budget(tokens=2 * 16 * 16), variant="tiny",
                   batch_size=16, mqar=MQAR, eval_every=1)
    fields.setdefault("lrs", [1e-3, 3e-3])
    return Grid(["gpt"], base, out=tmp_path / "runs", results=tmp_path / "q.jsonl",
                timeout=300, **fields)


def test_cells_cover_the_axes_with_distinct_folders(tmp_path):
    grid = small_grid(tmp_path, widths=[32, 64], shapes=[(16, 2), (32, 4)], seeds=[0, 1])
    cells = grid.cells()
    assert len(cells) == 2 * 2 * 2 * 2
    assert len({c.folder for c in cells}) == len(cells) == len({identity(c) for c in cells})
    first = cells[0].spec
    assert (first.width, first.mqar.seqlen, first.mqar.num_kv_pairs) == (32, 16, 2)
    assert {c.spec.train_config.lr for c in cells} == {1e-3, 3e-3}


def test_set_fields_make_cells_of_their_own(tmp_path):
    """A grid run with --set is told apart from the variant's own: another identity (a rerun of
    one does not skip the other) and another folder (neither resumes the other's checkpoint)."""
    plain = small_grid(tmp_path).cells()
    base = dataclasses.replace(small_grid(tmp_path).base, overrides=(("n_layer", 3),))
    changed = Grid(["gpt"], base, lrs=[1e-3, 3e-3], out=tmp_path / "runs",
                   results=tmp_path / "q.jsonl", timeout=300).cells()
    assert {identity(c) for c in plain}.isdisjoint({identity(c) for c in changed})
    assert {c.folder for c in plain}.isdisjoint({c.folder for c in changed})
    assert {identity(c)[1] for c in changed} == {"tiny n_layer=3"}


def test_zoology_pairs_or_every_combination():
    assert parse_shapes([64, 128], [4, 8], paired=True) == [(64, 4), (128, 8)]
    assert parse_shapes([64, 128], [4, 32], paired=False) == [(64, 4), (128, 4), (128, 32)]
    with pytest.raises(QualityError, match="--cross"):
        parse_shapes([64, 128], [4], paired=True)


def test_a_cell_that_cannot_fit_is_refused_before_any_runs(tmp_path):
    grid = small_grid(tmp_path, shapes=[(16, 2), (16, 8)])  # 8 pairs need 32 tokens
    with pytest.raises(ValueError, match="seqlen"):
        list(run_grid(grid))
    assert not grid.results.exists()


@pytest.mark.slow
def test_cells_run_in_their_own_process_and_a_rerun_skips_them(tmp_path, monkeypatch):
    grid = small_grid(tmp_path)
    records = list(run_grid(grid))
    assert [r.status for r in records] == ["ok", "ok"]
    assert [r.lr for r in records] == [1e-3, 3e-3]
    rec = records[0]
    assert rec.task == "mqar" and rec.kv_pairs == 2 and rec.width == 64
    assert rec.val_value is not None and rec.value is not None and rec.wall_s > 0
    assert len(results.load([grid.results]).records) == 2

    def no_run(job):
        raise AssertionError("a finished cell ran again")

    events = []
    again = list(run_grid(grid, events.append, Scripted(no_run)))
    assert [r.value for r in again] == [r.value for r in records]
    assert all(e.resumed for e in events)


def test_a_failed_cell_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    calls = []

    def answer(job):
        calls.append(job.module)
        if len(calls) == 1:
            return "oom", {"error": "killed by the system (out of memory)", "wall_s": 3.0}
        return "timeout", {"error": f"still running after {job.timeout:g} s",
                           "wall_s": job.timeout}

    grid = small_grid(tmp_path)
    records = list(run_grid(grid, launcher=Scripted(answer)))
    assert [r.status for r in records] == ["oom", "timeout"]
    assert calls == ["harness.quality.cell"] * 2
    assert "out of memory" in records[0].error and records[0].value is None
    stored = results.load([grid.results]).records
    assert [r.status for r in stored] == ["oom", "timeout"]
    assert identity(stored[1]) == identity(grid.cells()[1])

    calls.clear()  # a rerun keeps both; with a larger timeout it tries the timed-out one again
    assert [r.status for r in run_grid(grid, launcher=Scripted(answer))] == ["oom", "timeout"]
    assert calls == []
    grid.timeout *= 2
    rerun = list(run_grid(grid, launcher=Scripted(lambda job: calls.append(job) or (
        "timeout", {"error": "again", "wall_s": job.timeout}))))
    assert [r.status for r in rerun] == ["oom", "timeout"] and len(calls) == 1
    assert calls[0].timeout == grid.timeout and rerun[1].error == "again"


def test_a_killed_grid_keeps_its_finished_cells(tmp_path, monkeypatch):
    """Ctrl-C during the second cell: the first cell's record is in the file, and the rerun
    runs the second only."""
    ran = []

    def answer(job):
        ran.append(job.argv)
        if len(ran) == 2:
            raise KeyboardInterrupt
        return "ok", {"record": fake_record(grid.cells()[0]).to_dict(), "wall_s": 1.0}

    grid = small_grid(tmp_path)
    first = Scripted(answer)
    with pytest.raises(KeyboardInterrupt):
        list(run_grid(grid, launcher=first))
    assert len(results.load([grid.results]).records) == 1
    assert first.closed  # the launcher stopped what was still running

    def second(job):
        ran.append(job.argv)
        return "ok", {"record": fake_record(grid.cells()[1]).to_dict(), "wall_s": 1.0}

    records = list(run_grid(grid, launcher=Scripted(second)))
    assert len(ran) == 3 and [r.lr for r in records] == [1e-3, 3e-3]
    assert len(results.load([grid.results]).records) == 2


class Scripted:
    """A launcher that runs nothing: each job's outcome is `answer(job)`, one at a time."""

    name, jobs = "local", 1

    def __init__(self, answer):
        self.answer, self.pending, self.closed = answer, [], False

    def has_room(self):
        return not self.pending

    def busy(self):
        return bool(self.pending)

    def submit(self, item, job):
        self.pending.append((item, job))

    def wait(self):
        item, job = self.pending.pop()
        return [Outcome(item, *self.answer(job), Placement("local", 1))]

    def close(self):
        self.closed = True


def fake_record(cell):
    """The record a cell's process would send (its identity, made-up scores)."""
    values = dict(zip(grid_module.CELL_FIELDS, identity(cell), strict=True))
    return results.QualityRecord(**values, impl="zoo", mode="train", metric="accuracy",
                                 value=0.5, val_value=0.5)


def test_the_spec_crosses_to_a_cell_process_intact():
    spec = RunSpec(task="lm", budget=Budget(flops=2e12), width=96, lr=3e-3, seed=2,
                   extrapolate=1024, stride=128)
    assert RunSpec.from_dict(spec.to_dict()) == spec
    mqar = dataclasses.replace(spec, task="mqar", extrapolate=None, stride=None, mqar=MQAR)
    assert RunSpec.from_dict(mqar.to_dict()) == mqar


def test_training_length_is_an_axis_of_an_lm_grid(tmp_path):
    base = RunSpec(task="lm", budget=Budget(flops=1e12), variant="tiny")
    grid = Grid(["gpt", "rwkv"], base, shapes=[(128, None), (256, None)],
                out=tmp_path, results=tmp_path / "q.jsonl")
    cells = grid.cells()
    assert [(c.model, c.spec.train_config.seqlen) for c in cells] == [
        ("gpt", 128), ("gpt", 256), ("rwkv", 128), ("rwkv", 256)]
    assert all(c.spec.budget.flops == 1e12 and c.spec.width == 64 for c in cells)
    assert len({identity(c) for c in cells}) == 4


@pytest.mark.parametrize("error, status, message", [
    (OutOfMemory("gpt: out of memory training 8 x 4096 tokens a step on cpu (an allocation of "
                 "6.0 GiB refused); give a smaller --batch-size or --seqlen"), "oom",
     "gpt: out of memory training 8 x 4096 tokens a step"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 "
                  "bytes. Error code 12"), "oom", "out of memory (an allocation of 1.0 GiB "
                                                  "refused)"),
    (MemoryError(), "oom", "out of memory (an allocation refused)"),
    (QualityError("--seqlen 65: seq2seq needs an even length"), "error", "--seqlen 65"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied\nmore"), "error",
     "mat1 and mat2 shapes cannot be multiplied"),
    (RuntimeError(), "error", "RuntimeError"),
])
def test_a_cell_that_fails_prints_its_status_and_reason(monkeypatch, capsys, error, status,
                                                        message):
    def fail(order):
        raise error

    monkeypatch.setattr(grid_module, "_run_cell", fail)
    assert grid_module.cell_main([json.dumps({"threads": None})]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["status"] == status and payload["error"].startswith(message)


def test_a_grid_whose_checkpoints_cannot_be_saved_is_refused_before_any_cell(tmp_path):
    (tmp_path / "a-file").write_text("")
    grid = small_grid(tmp_path)
    grid.out = tmp_path / "a-file" / "runs"
    with pytest.raises(QualityError, match="a-file is a file, not a folder"):
        list(run_grid(grid, launcher=Scripted(lambda job: pytest.fail("a cell ran"))))
    assert not grid.results.exists()


def test_a_cell_left_unfinished_goes_on_from_its_save(tmp_path, monkeypatch):
    """A grid killed mid-cell leaves the cell's last save: the rerun's cell resumes from it and
    ends with the record an uninterrupted cell gives. A state of other options, or a damaged
    one, is no reason to fail: the cell starts again; --force always starts again."""
    import harness.quality.run as run_module
    from harness.quality.data import prepare

    cell = small_grid(tmp_path, lrs=[1e-3]).cells()[0]
    order = {"model": cell.model, "spec": cell.spec.to_dict(), "folder": str(cell.folder)}
    straight = grid_module._run_cell(order)
    calls = []
    real_run_one = run_module.run_one

    def spy(*args, **kwargs):
        calls.append(kwargs.get("resume", False))
        return real_run_one(*args, **kwargs)

    monkeypatch.setattr(run_module, "run_one", spy)

    def killed_in_step_2(history, lr):  # after step 1's save, before step 2's
        if history.steps == 2:
            raise KeyboardInterrupt

    data = prepare(cell.spec, {"mqar"})
    with pytest.raises(KeyboardInterrupt):  # the killed grid's cell: saved at step 1 of 2
        real_run_one(cell.model, data, cell.folder, on_step=killed_in_step_2)
    resumed = grid_module._run_cell(order)
    assert calls == [True]
    assert (resumed.steps, resumed.scores) == (straight.steps, straight.scores)

    (cell.folder / "state.pt").write_text("damaged")
    calls.clear()
    assert grid_module._run_cell(order).scores == straight.scores
    assert calls == [True, False]  # refused, then started again
    (cell.folder / "state.pt").write_text("damaged")
    calls.clear()
    grid_module._run_cell({**order, "force": True})
    assert calls == [False]
