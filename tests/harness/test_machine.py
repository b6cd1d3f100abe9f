"""What the harness knows of the machine: a record's git revision is "-dirty" when the code
that ran differs from it, not when a results file or report in the checkout does; a --device
the machine lacks is refused by name; a failed allocation is told from other errors; the load
meter tells how much of its cores other work took."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from harness import machine
from harness.machine import LoadMeter, check_device, cpu_seconds, git_revision, out_of_memory

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


@needs_git
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


@needs_git
def test_outside_a_checkout_there_is_no_revision(tmp_path):
    assert git_revision(tmp_path) is None


@pytest.mark.parametrize("device, count, message", [
    ("gpu0", 0, "--device 'gpu0' is not a torch device; give cpu, cuda or cuda:N"),
    ("mps", 0, "--device 'mps': give cpu, cuda or cuda:N"),
    ("cuda", 0, "--device cuda: no CUDA device on this machine; give cpu"),
    ("cuda:1", 0, "--device cuda:1: no CUDA device on this machine; give cpu"),
    ("cuda:1", 1, "--device cuda:1: this machine has 1 CUDA device, cuda:0 to cuda:0"),
    ("cuda:4", 2, "--device cuda:4: this machine has 2 CUDA devices, cuda:0 to cuda:1"),
])
def test_a_device_the_machine_lacks_is_refused_by_name(monkeypatch, device, count, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(ValueError) as error:
        check_device(device)
    assert str(error.value) == message


def test_devices_the_machine_has_pass_and_elsewhere_only_the_name_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert check_device("cpu") == "cpu"
    assert check_device("cuda:3", here=False) == "cuda:3"  # a cluster's GPU, not this machine's
    with pytest.raises(ValueError, match="not a torch device"):
        check_device("gpu0", here=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda") == "cuda" and check_device("cuda:1") == "cuda:1"


@pytest.mark.parametrize("error, refused", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                  "allocate memory: you tried to allocate 40000000000 bytes. Error code 12 "
                  "(Cannot allocate memory)"), "an allocation of 37.3 GiB"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total "
                            "capacity of 79.1 GiB of which 3.2 GiB is free."),
     "an allocation of 20.00 GiB"),
    (MemoryError(), "an allocation"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x8)"), None),
    (ValueError("memory"), None),
])
def test_out_of_memory_is_told_from_other_errors_with_its_size(error, refused):
    assert out_of_memory(error) == refused


# ----------------------------------------------------------------------------- the load meter

STAT = """cpu  500 0 100 900 0 0 0 0 0 0
cpu0 100 10 20 400 7 3 2 5 0 0
cpu1 200 0 30 500 0 0 0 40 0 0
cpu2 999 0 0 0 0 0 0 0 0 0
intr 1 2 3

cpu3 garbage
"""


def test_cpu_seconds_sums_the_cores_busy_idle_and_stolen_ticks(tmp_path, monkeypatch):
    """busy = user + nice + system + irq + softirq, idle = idle + iowait, per core."""
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    monkeypatch.setattr(machine.os, "sysconf", lambda name: 100)
    assert cpu_seconds([0, 1], stat) == pytest.approx(
        ((100 + 10 + 20 + 3 + 2 + 200 + 30) / 100, (400 + 7 + 500) / 100, (5 + 40) / 100))
    assert cpu_seconds([0], stat) == pytest.approx((1.35, 4.07, 0.05))
    assert cpu_seconds([0, 7], stat) is None  # a core the file does not list
    assert cpu_seconds([3], stat) is None  # nor one it lists with what is not a count
    assert cpu_seconds([0], tmp_path / "missing") is None


@pytest.mark.parametrize("threads, idle, expected", [
    (2, 0.0, (2 + 0.5) / 2),  # others' 2 s all taken from a process with a thread per core
    (2, 1.5, (0.5 + 0.5) / 2),  # 1.5 s of the cores sat idle: others needed to take only 0.5
    (1, 0.0, (0 + 0.5) / 2),  # a one-thread process leaves a core (2 s) to others
])
def test_the_meter_is_others_time_beyond_what_was_free_plus_stolen_time(
        monkeypatch, threads, idle, expected):
    readings = iter([((10.0, 0.0, 1.0), 5.0, 100.0), ((13.0, idle, 1.5), 6.0, 102.0)])
    monkeypatch.setattr(LoadMeter, "_read", lambda self: next(readings))
    # 2 cores for 2 s; busy 3 s, of which 1 s this process's own; 0.5 s stolen
    assert LoadMeter([0, 1], threads=threads).others() == pytest.approx(expected)


def test_a_span_too_short_or_without_counters_is_not_judged(monkeypatch):
    readings = iter([((10.0, 0.0, 1.0), 5.0, 100.0), ((10.01, 0.0, 1.0), 5.0, 100.1)])
    monkeypatch.setattr(LoadMeter, "_read", lambda self: next(readings))
    assert LoadMeter([0, 1]).others() is None  # under MIN_SECONDS: mostly the ticks' rounding
    readings = iter([(None, 5.0, 100.0), (None, 6.0, 102.0)])
    assert LoadMeter([0, 1]).others() is None  # no /proc/stat


@pytest.mark.skipif(cpu_seconds(machine.usable_cores()) is None, reason="needs /proc/stat")
def test_a_busy_process_takes_from_work_on_every_core_and_not_from_a_sleeper():
    """A spinning child (it inherits this process's cores) takes a share of them from a
    matrix-product loop with a thread per core; while this process sleeps it takes nothing."""
    import sys
    import time

    cores, threads = machine.usable_cores(), torch.get_num_threads()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the interpreter starts
        torch.set_num_threads(len(cores))
        a = torch.randn(512, 512)
        meter = LoadMeter(cores, threads=len(cores))
        start = time.perf_counter()
        while time.perf_counter() - start < 0.8:
            a @ a
        assert 0.3 < meter.others() < 1.5
        if len(cores) > 1:  # on one core the spinner leaves it no idle time to tell by
            meter = LoadMeter(cores, threads=len(cores))
            time.sleep(0.5)
            assert meter.others() < 0.25
    finally:
        torch.set_num_threads(threads)
        spinner.kill()
        spinner.wait()


def test_the_busy_note_counts_the_cores_in_words():
    assert machine.busy_note(0.1, 2, "training", "x") is None  # below BUSY_CORES
    assert machine.busy_note(0.43, 1, "training", "its tokens/s read low") == (
        "the machine was busy: other work took 0.43 of the core's time during training; its "
        "tokens/s read low")
    assert machine.busy_note(1.02, 2, "the timed runs", "measure it again") == (
        "the machine was busy: other work took 1.02 of the 2 cores' time during the timed runs; "
        "measure it again")
