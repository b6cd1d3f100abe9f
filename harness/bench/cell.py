"""One benchmark cell, measured in this process.

The sweep (`harness.sweep`) runs every cell in a fresh process of its own,
`python -m harness.bench.cell CELL_JSON`, so that the cell's peak memory is its own. There the
zoo model is built from the benchmark seed, the cell's inputs are drawn once and handed to the
implementation the cell names (harness.bench.implementations), warm-up runs are made, then the
timed runs; the measurements are printed as one JSON line, which the sweep turns into a record.

Contention: how much of the cell's cores other processes (or a hypervisor) took during the
timed runs, in cores (harness.machine.LoadMeter); a cell that shared its cores says so.

Memory: the peak during the warm-up and timed runs (peak RSS on CPU, max_memory_allocated on
CUDA), and the part of it above the loaded weights. For generate cells the prefill happens
before, so their memory is that of decoding: the weights plus the KV cache or the state.
"""

from __future__ import annotations

import json
import signal
import statistics
import sys
import time
from typing import Any

import torch

from harness.bench import implementations
from harness.bench.memory import (
    current_rss,
    keep_freed_memory,
    peak_rss,
    release_freed_memory,
    reset_peak_rss,
)
from harness.bench.peak import measure_matmul_peak
from harness.bench.workload import DTYPES, SEED, Cell, draw_inputs, sync
from harness.machine import LoadMeter, busy_note, out_of_memory, usable_cores


def mixed_precision(cell: Cell) -> bool:
    """A training cell in bfloat16 or float16 trains as the quality trainer does: float32
    weights, gradients and optimizer, the step under torch.autocast to the cell's dtype."""
    return cell.mode == "train" and cell.dtype != "float32"


def build_model(cell: Cell):
    """The zoo model of a cell from its config fields (the sweep resolved the catalog
    variant), seeded, in the cell's dtype (float32 for mixed precision) and device, with the
    zoo's speed routes unless the cell asks for the plain model, and its position table
    lengthened when the cell needs more positions than the published table has (the returned
    notes say so)."""
    from harness.models import build

    # Only the eager zoo cell takes the routes: torch.compile chooses its own kernels, and a
    # peer takes the weights alone.
    fast = cell.fast and cell.impl == implementations.OURS
    dtype = torch.float32 if mixed_precision(cell) else DTYPES[cell.dtype]
    built = build(cell.model, overrides=cell.fields, seqlen=cell.length, seed=SEED,
                  dtype=dtype, device=torch.device(cell.device), fast=fast, routes=cell.routes)
    return built.model, built.notes


def training_setup() -> list[str]:
    """A CPU training cell runs as the quality trainer trains (harness.quality.train): denormals
    flushed to zero, freed memory kept for reuse. Returns what was set, for the record's notes."""
    notes = []
    if torch.set_flush_denormal(True):
        notes.append("denormals flushed to zero")
    if keep_freed_memory():
        notes.append("freed memory kept for reuse (glibc: no mmap, no trim)")
    return notes


def measure(cell: Cell) -> dict[str, Any]:
    """Run one cell in this process and return its measurements (see the module docstring)."""
    from zoo import fast

    device = torch.device(cell.device)
    if cell.threads:
        torch.set_num_threads(cell.threads)
    setup = training_setup() if cell.mode == "train" and device.type == "cpu" else []
    cores = len(usable_cores())
    if device.type == "cpu" and cell.threads and cell.threads > cores:
        setup.append(f"{cell.threads} threads on {cores} cores: oversubscribed, slower than "
                     "the machine can run")
    implementation = implementations.get(cell.impl)
    model, notes = build_model(cell)
    params = model.num_params()
    routes = list(fast.applied(model)) if not implementation.peer else None  # what ran
    # "Above the weights" is measured from here: the loaded model, before any input exists.
    release_freed_memory()
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else current_rss() or 0
    inputs = draw_inputs(model, cell.mode, cell.batch, cell.seqlen, device)
    workload = implementation.workload(cell, model, inputs)
    if mixed_precision(cell):
        step, dtype = workload.run, DTYPES[cell.dtype]

        def autocast_step():
            with torch.autocast(device.type, dtype=dtype):
                return step()

        workload.run = autocast_step
        setup.append(f"mixed precision: autocast to {cell.dtype} over float32 weights")
    # A peer holds its own copy of the weights (as many bytes as ours): the zoo model goes.
    del model
    # The peak is measured from here: what preparing the workload (a generate cell's prefill)
    # freed is not counted; what it keeps (the KV cache or the state) is.
    release_freed_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()

    times = []
    warmup = max(cell.warmup, workload.min_warmup)
    repeat = cell.new_tokens if cell.mode == "generate" else cell.repeat
    for i in range(warmup + repeat):
        sync(device)
        if i == warmup:
            meter = LoadMeter(threads=torch.get_num_threads())
        start = time.perf_counter()
        workload.run()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    contention = meter.others()
    busy = busy_note(contention, len(meter.cores), "the timed runs", "measure it again")
    if busy:
        setup.append(busy)

    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    median = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [median, median, median]
    return {
        "params": params,
        "tokens_per_s": workload.tokens / median,
        "ms_median": 1000 * median,
        "ms_iqr": 1000 * (q[2] - q[0]),
        "peak_mem_bytes": peak,
        "act_mem_bytes": max(peak - weights, 0),
        "flops_per_token": workload.flops / workload.tokens if workload.flops else None,
        "flops_per_s": workload.flops / median if workload.flops else None,
        "notes": [*notes, *workload.notes, *setup],
        "routes": routes,
        "contention": None if contention is None else round(contention, 2),
    }


# --- the child process: `python -m harness.bench.cell CELL_JSON` prints one JSON line --------

def main(argv: list[str]) -> int:
    """Run one cell (or `--calibrate DEVICE DTYPE THREADS`) and print the result as JSON on the
    last line of stdout; failures are reported the same way, with a status."""
    try:
        if argv[0] == "--calibrate":
            device, dtype, threads = argv[1], argv[2], int(argv[3]) or None
            result = {"status": "ok", "peak_flops": measure_matmul_peak(device, dtype, threads)}
        else:
            cell = Cell(**json.loads(argv[0]))  # the sweep sends dataclasses.asdict(cell)
            if cell.max_memory and cell.device.startswith("cuda"):
                total = torch.cuda.get_device_properties(torch.device(cell.device)).total_memory
                torch.cuda.set_per_process_memory_fraction(
                    min(cell.max_memory / total, 1.0), torch.device(cell.device))
            result = {"status": "ok", **measure(cell), "threads": torch.get_num_threads()}
    except Exception as exc:  # noqa: BLE001 - any failure becomes a record with a status
        message = str(exc).splitlines()[0] if str(exc) else ""
        result = {"status": "error" if out_of_memory(exc) is None else "oom",
                  "error": f"{type(exc).__name__}: {message}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    # Ctrl-C reaches the cell too and ends it at once, even where the sweep's own process
    # ignores SIGINT (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main(sys.argv[1:]))
