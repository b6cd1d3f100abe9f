"""Launchers (harness.launch): cells several at once on this machine, pinned to disjoint cores;
failures, time limits and Ctrl-C in a parallel run; concurrent appends to one results file."""

from __future__ import annotations

import json
import multiprocessing
import os
import textwrap
import time

import pytest

from harness import launch, results
from harness.launch import Job, LaunchError, Local, execute, make

# A cell that reports the cores it may use and its thread setting, after `sleep` seconds; or
# fails the way its order asks.
CELL = textwrap.dedent("""
    import json, os, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as the real cells do
    order = json.loads(sys.argv[1])
    time.sleep(order.get("sleep", 0))
    if order.get("crash"):
        raise SystemExit("the cell broke")
    class Stopped(Exception):
        pass
    def stopped(signum, frame):
        raise Stopped
    signal.signal(signal.SIGTERM, stopped)
    if order.get("spin"):
        try:
            time.sleep(60)
        except Stopped:  # a training cell finishes its step and saves it
            if order.get("saves"):
                time.sleep(0.5)
                open(order["saves"], "w").write("saved")
            raise
    print("noise on stdout")
    print(json.dumps({"status": "ok", "cpus": sorted(os.sched_getaffinity(0)),
                      "omp": os.environ.get("OMP_NUM_THREADS"), "pid": os.getpid()}))
""")

needs_two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                     reason="needs two cores to run two pinned cells")


@pytest.fixture
def cell_module(tmp_path, monkeypatch):
    (tmp_path / "fake_cell.py").write_text(CELL)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return "fake_cell"


def job(module: str, timeout: float = 60, **order) -> Job:
    return Job((json.dumps(order),), module, timeout)


@needs_two_cores
def test_two_cells_run_at_once_on_disjoint_cores(cell_module):
    started = time.monotonic()
    outcomes = list(execute(Local(jobs=2), ["a", "b"],
                            lambda item: job(cell_module, sleep=1.5)))
    wall = time.monotonic() - started
    assert [o.status for o in outcomes] == ["ok", "ok"]
    assert wall < 2 * 1.5 + 1.0  # side by side, not one after the other
    cpus = [o.result["cpus"] for o in outcomes]
    assert all(len(c) == len(os.sched_getaffinity(0)) // 2 for c in cpus)
    assert not set(cpus[0]) & set(cpus[1])  # disjoint
    assert [o.placement.cpus for o in outcomes] == cpus  # and the record says which
    assert {o.result["omp"] for o in outcomes} == {str(len(cpus[0]))}
    assert [o.placement.co_running for o in outcomes] == [1, 1]
    assert launch.record_fields(outcomes[0].placement)["jobs"] == 2


def test_one_job_is_the_sequential_sweep_with_the_whole_machine(cell_module):
    outcomes = list(execute(Local(), ["a", "b"], lambda item: job(cell_module)))
    assert [o.result["cpus"] for o in outcomes] == [sorted(os.sched_getaffinity(0))] * 2
    assert [o.placement.co_running for o in outcomes] == [0, 0]
    assert launch.record_fields(outcomes[0].placement) == {}  # records as before


@needs_two_cores
def test_failures_and_time_limits_in_a_parallel_run_leave_the_others_running(cell_module):
    orders = {"crash": {"crash": True}, "slow": {"spin": True}, "fine": {"sleep": 0.2},
              "also fine": {}}
    outcomes = {o.item: o for o in execute(
        Local(jobs=2), list(orders), lambda item: job(cell_module, timeout=3, **orders[item]))}
    assert outcomes["crash"].status == "error"
    assert "the cell broke" in outcomes["crash"].result["error"]
    assert outcomes["slow"].status == "timeout"
    assert outcomes["fine"].status == outcomes["also fine"].status == "ok"


def test_an_item_can_be_skipped_when_its_turn_comes(cell_module):
    ended = []

    def job_of(item):
        if ended:  # decided late: after the first item ended
            return f"skipped: {item} after {ended[0]}"
        return job(cell_module)

    outcomes = []
    for outcome in execute(Local(), ["first", "second"], job_of):
        ended.append(outcome.item)
        outcomes.append(outcome)
    assert [(o.item, o.status) for o in outcomes] == [("first", "ok"), ("second", "skipped")]
    assert outcomes[1].result == {"skipped": "skipped: second after first"}


@needs_two_cores
def test_stopping_a_run_stops_its_cells(cell_module):
    """Ctrl-C while cells run (or any early exit): the launcher kills what is still running."""
    launcher = Local(jobs=2)
    run = execute(launcher, ["quick", "slow"], lambda item: job(cell_module, spin=item == "slow"))
    first = next(run)
    assert first.item == "quick"
    pids = [cell.proc.pid for _, cell, _ in launcher._running.values()]
    run.close()  # what KeyboardInterrupt inside the loop leads to
    assert pids and not any(_alive(pid) for pid in pids)


def test_stopping_a_run_lets_its_cells_save_first(cell_module, tmp_path):
    """The launcher sends SIGTERM and waits a little before it kills: a training cell then
    saves the step under way, which a rerun resumes."""
    launcher = Local(jobs=2)
    saved = tmp_path / "state"
    run = execute(launcher, ["quick", "slow"],
                  lambda item: job(cell_module, spin=item == "slow", saves=str(saved)))
    assert next(run).item == "quick"
    pids = [cell.proc.pid for _, cell, _ in launcher._running.values()]
    time.sleep(1.0)  # the slow cell is past its start-up, in its 'step'
    began = time.monotonic()
    run.close()
    assert saved.read_text() == "saved"
    assert pids and not any(_alive(pid) for pid in pids)
    assert time.monotonic() - began < launch.STOP_GRACE_S  # it ended, nobody waited it out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead
        return stat.read().split()[2] != "Z"


def test_options_that_cannot_work_are_one_line_errors():
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(LaunchError, match=f"--jobs {cores + 1} on the CPU needs"):
        Local(jobs=cores + 1)
    with pytest.raises(LaunchError, match="--jobs must be at least 1"):
        Local(jobs=0)
    for launcher in ("local", "ray"):  # the command-line option, not only the class
        with pytest.raises(LaunchError, match="--jobs must be at least 1, not 0"):
            make(launcher, 0, "cpu")
    if cores >= 2:
        with pytest.raises(LaunchError, match="--threads 2 with --jobs 2"):
            Local(jobs=2, threads=2)
    with pytest.raises(LaunchError, match="give --device cuda"):
        Local(jobs=2, device="cuda:1")
    with pytest.raises(LaunchError, match="--launcher 'slurm'"):
        launch.make("slurm", None, "cpu")
    with pytest.raises(LaunchError, match="--address is for --launcher ray"):
        launch.make("local", None, "cpu", address="auto")


def test_several_cells_per_gpu_take_the_gpus_in_turn(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    slots = Local(jobs=3, device="cuda").slots
    assert [env["CUDA_VISIBLE_DEVICES"] for env, _, _ in slots] == ["2", "5", "2"]


# --- one results file, several writers ---------------------------------------------------------

def _writer(path: str, name: str, count: int) -> None:
    for i in range(count):
        results.append(path, results.QualityRecord(
            model=name, seed=i, notes=["x" * 5000]))  # long lines: more than one write's worth


def test_two_sweeps_appending_at_once_lose_no_line_and_tear_none(tmp_path):
    path = tmp_path / "shared.jsonl"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(str(path), name, 150))
               for name in ("gpt", "rwkv")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    assert [w.exitcode for w in writers] == [0, 0]
    loaded = results.load([path])
    assert not loaded.warnings  # every line parses
    seen = sorted((r.model, r.seed) for r in loaded.records)
    assert seen == sorted((m, i) for m in ("gpt", "rwkv") for i in range(150))


def test_the_cell_process_runs_with_this_python():
    status, result = launch.spawn(Job(("--calibrate", "cpu", "float32", "1"),
                                      "harness.bench.cell", 120))
    assert status == "ok" and result["peak_flops"] > 0
