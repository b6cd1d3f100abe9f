"""Benchmark sweeps end to end on tiny models: records, resume, failures, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness import results
from harness import sweep as sweeps
from harness.results import FIELDS


@pytest.fixture
def peak_cache(tmp_path):
    """A cached matmul peak, so that tests do not calibrate (1e11 FLOP/s)."""
    cache = tmp_path / "peaks.json"
    cache.write_text(json.dumps({sweeps.peak_label("cpu", "float32", None): 1e11}))
    return cache


def tiny(tmp_path, **fields) -> sweeps.Sweep:
    return sweeps.Sweep(**{"models": ["gpt"], "variant": "tiny", "seqlens": [32, 64],
                           "repeat": 2, "results": tmp_path / "bench.jsonl", **fields})


def test_parse_seqlens():
    assert sweeps.parse_seqlens("8192") == [8192]
    assert sweeps.parse_seqlens("1024,512, 2048") == [512, 1024, 2048]
    assert sweeps.parse_seqlens("512..4096") == [512, 1024, 2048, 4096]
    assert sweeps.parse_seqlens("500..1500") == [500, 1000]
    for bad in ("", "abc", "0", "-5", "4096..512", "512..", "1,x"):
        with pytest.raises(sweeps.SweepError, match="--seqlen"):
            sweeps.parse_seqlens(bad)


def test_parse_bytes():
    assert sweeps.parse_bytes("8G") == 8 * 2**30
    assert sweeps.parse_bytes("1.5GiB") == int(1.5 * 2**30)
    assert sweeps.parse_bytes("500M") == 500 * 2**20 and sweeps.parse_bytes("4096") == 4096
    for bad in ("lots", "-1G", "0", "nan", "infG", "0.5"):
        with pytest.raises(sweeps.SweepError, match="--max-memory"):
            sweeps.parse_bytes(bad)


def test_a_sweep_writes_one_complete_record_per_cell(tmp_path, peak_cache):
    plan = tiny(tmp_path, modes=["forward", "generate"])
    records = list(sweeps.run(plan, peak_cache))
    assert [(r.mode, r.seqlen) for r in records] == [
        ("forward", 32), ("forward", 64), ("generate", 32), ("generate", 64)]
    for r in records:
        assert set(FIELDS) <= set(r.to_dict()) and r.kind == "bench" and r.status == "ok", r
        assert r.tokens_per_s > 0 and r.ms_median > 0 and r.ms_iqr >= 0
        assert r.peak_mem_bytes >= r.act_mem_bytes >= 0
        assert r.flops_per_token > 0 and r.mfu == pytest.approx(
            r.flops_per_token * r.tokens_per_s / 1e11)
        assert r.params > 0 and r.threads >= 1 and r.cpu and r.torch
        assert r.peak_flops == 1e11 and r.impl == "zoo" and r.time
    on_disk = results.load([plan.results]).records
    assert [r.seqlen for r in on_disk] == [32, 64, 32, 64]


def test_more_threads_than_cores_is_said_in_the_notes(tmp_path, peak_cache):
    threads = len(os.sched_getaffinity(0)) + 1
    peaks = json.loads(peak_cache.read_text())
    peak_cache.write_text(json.dumps({**peaks,
                                      sweeps.peak_label("cpu", "float32", threads): 1e11}))
    [record] = sweeps.run(tiny(tmp_path, seqlens=[32], repeat=1, threads=threads), peak_cache)
    assert record.threads == threads, record
    assert f"{threads} threads on {threads - 1} cores: oversubscribed" in " ".join(record.notes)
    [fitting] = sweeps.run(tiny(tmp_path, seqlens=[32], repeat=1, threads=1, force=True),
                           peak_cache)
    assert "oversubscribed" not in " ".join(fitting.notes)


def test_a_rerun_skips_measured_cells_unless_forced(tmp_path, peak_cache):
    plan = tiny(tmp_path)
    first = list(sweeps.run(plan, peak_cache))
    with open(plan.results, "a") as f:
        f.write("not json\n")  # a damaged line does not stop the resume
    again = list(sweeps.run(plan, peak_cache))
    assert all(r.resumed for r in again)
    assert [r.tokens_per_s for r in again] == [r.tokens_per_s for r in first]
    assert len(plan.results.read_text().splitlines()) == 3
    plan.force = True
    assert not any(r.resumed for r in sweeps.run(plan, peak_cache))
    assert len(results.load([plan.results]).records) == 4


@pytest.mark.parametrize("fields, status", [
    ({"timeout": 0.2}, "timeout"),
    ({"max_memory": 20 * 2**20}, "over_budget"),
    ({"batch": 10**9}, "oom"),  # the first allocation is refused at once
])
def test_failures_are_recorded_and_skip_longer_lengths(tmp_path, peak_cache, fields, status):
    plan = tiny(tmp_path, models=["gpt", "rwkv"], seqlens=[32, 64, 128], **fields)
    records = list(sweeps.run(plan, peak_cache))
    assert [(r.model, r.status) for r in records] == [
        ("gpt", status), ("gpt", "skipped"), ("gpt", "skipped"),
        ("rwkv", status), ("rwkv", "skipped"), ("rwkv", "skipped")]
    assert records[0].error and records[0].tokens_per_s is None
    assert records[1].notes == [f"skipped: {status} at seqlen 32"]
    assert len(results.load([plan.results]).records) == 6


@pytest.mark.parametrize("fields, raised, status", [
    ({"timeout": 0.2}, {"timeout": 600.0}, "timeout"),
    ({"max_memory": 20 * 2**20}, {"max_memory": 8 * 2**30}, "over_budget"),
])
def test_a_rerun_keeps_failures_skipped_and_retries_them_under_a_larger_limit(
        tmp_path, peak_cache, fields, raised, status):
    plan = tiny(tmp_path, seqlens=[32, 64], **fields)
    list(sweeps.run(plan, peak_cache))
    again = list(sweeps.run(plan, peak_cache))  # the same limit: nothing runs again
    assert [(r.status, r.resumed) for r in again] == [(status, True), ("skipped", True)]
    assert again[1].notes == [f"skipped: {status} at seqlen 32"]
    assert len(plan.results.read_text().splitlines()) == 2  # nothing written again
    for name, value in raised.items():
        setattr(plan, name, value)
    retried = list(sweeps.run(plan, peak_cache))
    assert [(r.status, r.resumed) for r in retried] == [("ok", False), ("ok", False)]
    assert len(plan.results.read_text().splitlines()) == 4


def test_which_failures_a_larger_limit_retries():
    def failed(status, **fields):
        return results.BenchRecord(model="gpt", variant="tiny", impl="zoo", mode="train",
                                   seqlen=64, batch=1, dtype="float32", device="cpu", threads=2,
                                   status=status, **fields)

    assert results.limit_raised(failed("timeout", timeout_s=60.0), 120.0, None)
    assert not results.limit_raised(failed("timeout", timeout_s=60.0), 60.0, None)
    assert results.limit_raised(failed("timeout", wall_s=30.5), 60.0, None)  # a grid cell's
    assert results.limit_raised(failed("over_budget", max_memory=2**30), 600.0, 2**31)
    assert results.limit_raised(failed("oom", max_memory=2**30), 600.0, None)  # no cap now
    assert not results.limit_raised(failed("oom", max_memory=2**30), 600.0, 2**30)
    assert not results.limit_raised(failed("oom"), 600.0, 2**31)  # the machine's own memory
    assert not results.limit_raised(failed("error"), 600.0, 2**31)
    assert not results.limit_raised(failed("ok", timeout_s=60.0), 120.0, None)


def test_a_longer_position_table_is_noted(tmp_path, peak_cache):
    plan = tiny(tmp_path, models=["bert"], seqlens=[2048])
    (rec,) = sweeps.run(plan, peak_cache)
    assert rec.status == "ok"
    assert any("position table extended" in note for note in rec.notes)


@pytest.mark.parametrize("fields, message", [
    ({"models": ["gtp"]}, "unknown model 'gtp'"),
    ({"models": ["bert"], "modes": ["generate"]}, "bert is an encoder and cannot generate"),
    ({"models": ["mosaic-bert"], "against": ["hf"]}, "--against hf has no peer for mosaic-bert"),
    ({"against": ["nope"]}, "unknown peer 'nope'"),
    ({"dtype": "float64"}, "unknown dtype 'float64'"),
    ({"batch": 0}, "--batch must be at least 1"),
    ({"variant": "huge"}, "no variant 'huge'"),
    ({"results": "/proc/x/bench.jsonl"}, "cannot be written"),
])
def test_sweeps_that_cannot_start(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        sweeps.check(tiny(tmp_path, **fields))


@pytest.mark.parametrize("jobs", [[], ["--jobs", "2"]])
def test_interrupting_a_sweep_keeps_a_valid_file(tmp_path, peak_cache, jobs):
    """Ctrl-C stops a sweep cleanly, even in a process started with SIGINT ignored (as a
    shell starts a background job, and as this suite may be started): the CLI installs its own
    handler for the sweep. With several cells at once, every running cell is stopped too."""
    if jobs and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two jobs need two cores")
    out = tmp_path / "bench.jsonl"
    env = {**os.environ, "HOME": str(tmp_path)}
    cache = tmp_path / ".cache" / "transformer-catalog" / "matmul_peaks.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({sweeps.peak_label("cpu", "float32", threads): 1e11
                                 for threads in (None, 1)}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "bench", "gpt", "--variant", "tiny",
         "--seqlen", "32..4096", "--repeat", "2", "--results", str(out), *jobs],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or not out.read_text().strip()):
        time.sleep(0.1)
    cells = _children(proc.pid)
    while not cells and time.monotonic() < deadline:  # between two cells: wait for the next
        time.sleep(0.05)
        cells = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    lines = out.read_text().splitlines()
    assert 1 <= len(lines) < 8 and all(json.loads(line)["status"] == "ok" for line in lines)
    assert cells and not any(os.path.exists(f"/proc/{pid}") for pid in cells)


def _children(pid: int) -> list[int]:
    """The processes `pid` started (Linux), e.g. a sweep's running cells."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            found += [int(child) for child in children.read().split()]
    return found


def test_peers_are_measured_side_by_side_with_a_ratio(tmp_path, peak_cache):
    plan = tiny(tmp_path, models=["gpt", "rwkv"], seqlens=[40], against=["hf", "rwkv-pip"])
    records = list(sweeps.run(plan, peak_cache))
    assert [(r.model, r.impl, r.status) for r in records] == [
        ("gpt", "zoo", "ok"), ("gpt", "hf", "ok"),
        ("rwkv", "zoo", "ok"), ("rwkv", "hf", "ok"), ("rwkv", "rwkv-pip", "ok")]
    ratios = results.ratios(results.frame(records))
    assert sorted(zip(ratios.model, ratios.peer, strict=True)) == [
        ("gpt", "hf"), ("rwkv", "hf"), ("rwkv", "rwkv-pip")]
    zoo_gpt, hf_gpt = records[0], records[1]
    assert ratios.tokens_per_s_ratio[0] == pytest.approx(
        zoo_gpt.tokens_per_s / hf_gpt.tokens_per_s)
    assert hf_gpt.params == zoo_gpt.params  # the peer runs the same weights
    assert hf_gpt.flops_per_token == zoo_gpt.flops_per_token


def test_modes_a_model_cannot_run_are_left_out_of_a_mixed_sweep(tmp_path):
    plan = tiny(tmp_path, models=["bert", "gpt"], modes=["forward", "generate"])
    sweeps.check(plan)
    assert plan.unsupported() == [("bert", "generate")]
    assert {(c.model, c.mode) for c in plan.cells()} == {
        ("bert", "forward"), ("gpt", "forward"), ("gpt", "generate")}


def test_the_matmul_peak_is_the_best_of_torch_mm_and_the_zoo_route(monkeypatch):
    """MFU's denominator is the machine's peak: if the zoo's linears reach a faster kernel than
    torch.mm (oneDNN here), the peak must count it, or MFU passes 100%."""
    import torch

    import zoo.fast
    from harness.bench.peak import measure_matmul_peak

    calls = {"mm": 0, "linear": 0}
    real_mm, real_linear = torch.mm, zoo.fast.linear

    def slow_mm(a, b):  # torch.mm made to run at most 2 * 2048^3 / 1 s = 17 GFLOP/s
        calls["mm"] += 1
        time.sleep(1.0)
        return real_mm(a, b)

    def counted_linear(a, b):
        calls["linear"] += 1
        return real_linear(a, b)

    monkeypatch.setattr(torch, "mm", slow_mm)
    monkeypatch.setattr(zoo.fast, "linear", counted_linear)
    peak = measure_matmul_peak("cpu", "float32", seconds=0.4)
    assert calls["mm"] >= 2 and calls["linear"] >= 2
    # Set by the zoo route, not by the slowed torch.mm (with room for a busy machine).
    assert peak > 2 * (2 * 2048**3 / 1.0)


def test_the_peak_cache_key_names_the_method_the_instruction_set_and_the_kernel(monkeypatch):
    import zoo.fast

    label = sweeps.peak_label("cpu", "float32", None)
    assert "|method=2|isa=" in label
    assert label.endswith(f"|kernel={zoo.fast.many_rows_kernel()}")
    monkeypatch.setattr(zoo.fast, "many_rows_kernel", lambda: "mkl")
    assert sweeps.peak_label("cpu", "float32", None).endswith("|kernel=mkl")
    assert "isa=" not in sweeps.peak_label("cuda", "float32", None)


def test_compile_adds_a_compiled_cell_beside_each_eager_one(tmp_path):
    plan = tiny(tmp_path, models=["gpt", "rwkv"], compile=True, against=["hf"])
    impls = [(c.model, c.impl) for c in plan.cells() if c.seqlen == 32]
    assert impls == [("gpt", "zoo"), ("gpt", "zoo-compiled"), ("gpt", "hf"),
                     ("rwkv", "zoo"), ("rwkv", "zoo-compiled"), ("rwkv", "hf")]
    assert all(c.impl != "zoo-compiled" for c in tiny(tmp_path).cells())


@pytest.mark.slow
def test_a_compiled_cell_runs_and_says_so(tmp_path, peak_cache):
    plan = tiny(tmp_path, seqlens=[32], compile=True, warmup=0)
    eager, compiled = list(sweeps.run(plan, peak_cache))
    assert compiled.impl == "zoo-compiled" and compiled.status == "ok", compiled
    assert compiled.tokens_per_s > 0
    assert any(n.startswith("torch.compile (inductor), compiled during 2 warm-up runs")
               for n in compiled.notes)
    assert list(results.ratios(results.frame([eager, compiled])).peer) == ["zoo-compiled"]


def test_ours_and_the_peers_alternate_length_by_length(tmp_path):
    """The two sides of a ratio are measured one right after the other."""
    plan = tiny(tmp_path, against=["hf"], modes=["forward", "generate"])
    assert [(c.mode, c.seqlen, c.impl) for c in plan.cells()] == [
        ("forward", 32, "zoo"), ("forward", 32, "hf"), ("forward", 64, "zoo"),
        ("forward", 64, "hf"), ("generate", 32, "zoo"), ("generate", 32, "hf"),
        ("generate", 64, "zoo"), ("generate", 64, "hf")]
