"""Sweeps on a Ray cluster (a local one of 2 CPUs, started once for this file): a benchmark
sweep and an MQAR grid give the sequential launcher's records (timings aside), resume from the
file, and a worker that dies loses only its own cell."""

from __future__ import annotations

import json
import textwrap

import pytest

from harness import launch, results
from harness import sweep as sweeps
from harness.quality import grid as grid_module
from harness.quality.grid import run_grid

ray = pytest.importorskip("ray", reason="Ray is the optional extra transformer-catalog[ray]")

from tests.harness.quality.test_grid import small_grid  # noqa: E402

# A quality cell that kills the Ray worker running it (its parent) when its learning rate is
# 3e-3, and is the real cell otherwise.
KILLER = textwrap.dedent("""
    import json, os, signal, sys
    order = json.loads(sys.argv[1])
    if order["spec"]["lr"] == 3e-3:
        os.kill(os.getppid(), signal.SIGKILL)
        sys.exit(1)
    from harness.quality.grid import cell_main
    sys.exit(cell_main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs whose workers can import the killer cell."""
    folder = tmp_path_factory.mktemp("ray-cells")
    (folder / "killer_cell.py").write_text(KILLER)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(folder)}},
             object_store_memory=100 * 2**20)
    yield
    ray.shutdown()


@pytest.fixture
def peak_cache(tmp_path):
    cache = tmp_path / "peaks.json"
    cache.write_text(json.dumps({sweeps.peak_label("cpu", "float32", 1): 1e11}))
    return cache


TIMINGS = {"tokens_per_s", "ms_median", "ms_iqr", "peak_mem_bytes", "act_mem_bytes", "mfu",
           "time", "wall_s", "train_seconds", "test_seconds", "launcher", "jobs", "host", "cpus",
           "co_running", "checkpoint", "git"}


def same_but_timings(a: results.Record, b: results.Record) -> None:
    left, right = a.to_dict(), b.to_dict()
    for name in TIMINGS:
        left.pop(name, None), right.pop(name, None)
    assert left == right


def test_a_cluster_without_what_a_cell_asks_for_is_one_error(cluster):
    with pytest.raises(launch.LaunchError, match="has 2 CPUs and 0 GPUs; a cell asks for 1 "
                                                 r"CPU\(s\) and 1 GPU\(s\)"):
        launch.make("ray", None, "cuda", 1)
    assert ray.is_initialized()  # the cluster this file started is left as it was


def test_a_bench_sweep_on_ray_gives_the_sequential_records_and_resumes(cluster, tmp_path,
                                                                       peak_cache):
    plan = sweeps.Sweep(models=["gpt"], variant="tiny", seqlens=[32, 64], repeat=1, threads=1,
                        results=tmp_path / "sequential.jsonl")
    sequential = list(sweeps.run(plan, peak_cache))
    plan.results = tmp_path / "ray.jsonl"
    on_ray = sorted(sweeps.run(plan, peak_cache, launcher=launch.make("ray", None, "cpu", 1)),
                    key=lambda r: r.seqlen)
    assert [r.status for r in on_ray] == ["ok", "ok"]
    for mine, theirs in zip(sequential, on_ray, strict=True):
        same_but_timings(mine, theirs)
    assert {r.launcher for r in on_ray} == {"ray"} and all(r.host for r in on_ray)
    assert all(r.launcher is None for r in sequential)  # the default launcher marks nothing

    events = []  # a rerun on Ray runs nothing: both cells are in the file
    again = list(sweeps.run(plan, peak_cache, events.append, launcher=launch.Ray(cpus=1)))
    assert all(r.resumed for r in again) and [e.kind for e in events] == ["done", "done"]


def test_an_mqar_grid_on_ray_gives_the_sequential_records(cluster, tmp_path):
    grid = small_grid(tmp_path, threads=1)
    sequential = list(run_grid(grid))
    grid.results, grid.out = tmp_path / "ray.jsonl", tmp_path / "ray-runs"
    on_ray = sorted(run_grid(grid, launcher=launch.Ray(cpus=1)), key=lambda r: r.lr)
    assert [r.status for r in on_ray] == ["ok", "ok"]
    for mine, theirs in zip(sequential, on_ray, strict=True):
        same_but_timings(mine, theirs)  # scores, steps, learning rates: the very same
    assert [r.co_running for r in on_ray] == [1, 1]

    # resume: the cells the sequential launcher finished are not run again on Ray
    grid.results = tmp_path / "q.jsonl"
    resumed = list(run_grid(grid, launcher=launch.Ray(cpus=1)))
    assert [r.launcher for r in resumed] == [None, None]


def test_a_worker_that_dies_loses_only_its_own_cell(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(grid_module, "CELL_MODULE", "killer_cell")
    grid = small_grid(tmp_path, lrs=[1e-3, 3e-3, 1e-2], threads=1)
    records = {r.lr: r for r in run_grid(grid, launcher=launch.Ray(cpus=1))}
    assert records[3e-3].status == "error"
    assert "Ray worker" in records[3e-3].error
    assert records[1e-3].status == records[1e-2].status == "ok"
    stored = results.load([grid.results]).records
    assert sorted(r.lr for r in stored) == [1e-3, 3e-3, 1e-2]  # the failure is recorded too
