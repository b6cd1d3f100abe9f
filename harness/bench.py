"""Measure one benchmark cell: (model, variant, impl, mode, seqlen, batch, dtype, device).

A cell runs in a fresh process of its own (see `harness.sweep`), so that its peak memory is its
own. There the model is built (seeded, so that every process and every peer gets the same
weights), a `Workload` is prepared for the mode, warm-up runs are made, then `repeat` timed
runs; the result is a dict of measurements that the sweep turns into a record.

Modes:
  forward   one forward pass over (batch, seqlen) tokens, without gradients (prefill / encode);
  train     forward + backward + an AdamW step, with a next-token (or masked-token) loss;
  generate  incremental decoding after a prompt of `seqlen` tokens: each timed run decodes one
            token per sequence on the KV cache or recurrent state (greedy).

Memory: the peak during the warm-up and timed runs (peak RSS on CPU, max_memory_allocated on
CUDA), and the part of it above the loaded weights. For generate cells the prefill happens
before, so their memory is that of decoding: the weights plus the KV cache or the state.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

MODES = ("forward", "train", "generate")
COMPILED = "zoo-compiled"  # the zoo model under torch.compile (`catalog bench --compile`)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEED = 0  # every cell builds its model from this seed: a peer converts these same weights


class BenchError(ValueError):
    """A cell that cannot be run as asked (a mode the model lacks, an unknown peer, ...)."""


@dataclass
class Workload:
    """What a mode times: `run()` once per timed repetition, processing `tokens` tokens.
    `flops` is the analytic forward-and-backward cost of one run (for MFU)."""

    run: Callable[[], Any]
    tokens: int
    flops: float | None
    notes: tuple[str, ...] = ()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def accounting(model, mode: str, batch: int, seqlen: int) -> tuple[int, float | None]:
    """(tokens, FLOPs) of one timed run of `mode`, for the zoo model and its peers alike.
    Training costs 3x the forward (backward about twice the forward, Kaplan et al. 2020).
    A decoded token attends to about `seqlen` positions: that is the causal average over
    2 * seqlen - 1 positions (see the models' flops_per_token). The encoder-decoder's decoding
    cost per token is not modelled: its FLOPs are None (no MFU)."""
    if mode == "generate":
        if not getattr(model, "causal_lm", False):
            return batch, None
        return batch, model.flops_per_token(2 * seqlen - 1) * batch
    forward = model.flops_per_token(seqlen) * batch * seqlen
    return batch * seqlen, 3 * forward if mode == "train" else forward


def zoo_workload(model, mode: str, batch: int, seqlen: int, device: torch.device,
                 new_tokens: int) -> Workload:
    """The workload of a zoo model (any of them, through the shared interface)."""
    from zoo.fast import describe

    inputs = model.dummy_inputs(batch, seqlen, device)
    seq2seq = "src_ids" in inputs
    vocab = model.config.vocab_size
    tokens, flops = accounting(model, mode, batch, seqlen)
    if mode == "forward":
        model.eval()

        def run():
            with torch.no_grad():
                return model(**inputs).logits

        return Workload(run, tokens, flops, notes=describe(model))
    if mode == "train":
        model.train()
        targets = torch.randint(0, vocab, (batch, seqlen), device=device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run():
            optimizer.zero_grad(set_to_none=True)
            loss = model(**inputs, targets=targets).loss
            loss.backward()
            optimizer.step()
            return loss

        return Workload(run, tokens, flops)
    if mode == "generate":
        if not (getattr(model, "causal_lm", False) or seq2seq):
            raise BenchError(f"{type(model).__name__} is an encoder: generate mode needs a "
                             "model that decodes (gpt, rwkv, pangu-pi, transformer)")
        model.eval()
        with torch.no_grad():
            if seq2seq:  # the source is the prompt; decoding starts from one BOS token
                start = torch.zeros(batch, 1, dtype=torch.long, device=device)
                out = model(inputs["src_ids"], start, use_cache=True)
                step = lambda tok, cache: model(inputs["src_ids"], tok, cache=cache)  # noqa: E731
            else:
                out = model(inputs["input_ids"], use_cache=True)
                step = lambda tok, cache: model(tok, cache=cache)  # noqa: E731
        # Keep the last position's logits only: the prompt's (B, T, V) logits would otherwise
        # stay alive and count as decoding memory.
        state = {"logits": out.logits[:, -1:].clone(), "cache": out.cache}
        del out

        def run():
            with torch.no_grad():
                out = step(state["logits"].argmax(dim=-1), state["cache"])
            state["logits"], state["cache"] = out.logits, out.cache
            return out.logits

        return Workload(run, tokens, flops,
                        notes=(*describe(model),
                               f"decodes {new_tokens} timed tokens after the prompt"))
    raise BenchError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")


# --- memory ------------------------------------------------------------------------------

def _status_field(pid: int | str, field: str) -> int | None:
    """A `VmRSS`/`VmHWM` line of /proc/<pid>/status, in bytes (None off Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss(pid: int | str = "self") -> int | None:
    return _status_field(pid, "VmRSS")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> None:
    """Hand memory that was freed back to the OS (glibc keeps it otherwise), so that the RSS
    measured next is what is live: the weights, the inputs, a KV cache or a state."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss() -> int:
    peak = _status_field("self", "VmHWM")
    if peak is not None:
        return peak
    import resource  # ru_maxrss: kilobytes on Linux, bytes on macOS

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if platform.system() == "Darwin" else maxrss * 1024


# --- one cell ------------------------------------------------------------------------------

def build_model(name: str, fields: dict[str, Any], seqlen: int, dtype: torch.dtype,
                device: torch.device):
    """The zoo model of a cell from its config fields (the parent resolved the catalog
    variant), seeded, with its position table lengthened when `seqlen` is longer than the
    published one (the returned notes say so)."""
    from harness.models import build

    built = build(name, overrides=fields, seqlen=seqlen, seed=SEED, dtype=dtype, device=device)
    return built.model, built.notes


def measure(cell: dict[str, Any]) -> dict[str, Any]:
    """Run one cell in this process and return its measurements (see the module docstring).
    `cell` holds model, fields (its config), impl, mode, seqlen, batch, dtype, device, threads,
    warmup, repeat and new_tokens."""
    device = torch.device(cell["device"])
    dtype = DTYPES[cell["dtype"]]
    if cell.get("threads"):
        torch.set_num_threads(cell["threads"])
    # Decoding goes past the prompt: the position table must cover the decoded tokens too.
    length = cell["seqlen"] + (cell["warmup"] + cell["new_tokens"] if cell["mode"] == "generate"
                               else 0)
    model, notes = build_model(cell["model"], cell["fields"], length, dtype, device)
    params = model.num_params()
    # "Above the weights" is measured from here: the loaded model, before any input exists.
    release_freed_memory()
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else current_rss() or 0
    if cell["impl"] in ("zoo", COMPILED):
        if cell["impl"] == COMPILED:
            # Compiled on the first calls, which are warm-up runs (at least two: decoding
            # recompiles once for a growing KV cache, then treats its length as dynamic).
            cell = {**cell, "warmup": max(cell["warmup"], 2)}
            model = torch.compile(model)
            notes += (f"torch.compile (inductor), compiled during {cell['warmup']} warm-up "
                      "runs",)
        workload = zoo_workload(model, cell["mode"], cell["batch"], cell["seqlen"], device,
                                cell["new_tokens"])
    else:
        from harness.peers import peer_workload

        workload = peer_workload(cell["impl"], cell["model"], model, cell["mode"], cell["batch"],
                                 cell["seqlen"], device, cell["new_tokens"])
        del model  # the peer holds its own copy of the weights (as many bytes as ours)
    # The peak is measured from here: what preparing the workload (a generate cell's prefill)
    # freed is not counted; what it keeps (the KV cache or the state) is.
    release_freed_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()

    times = []
    repeat = cell["new_tokens"] if cell["mode"] == "generate" else cell["repeat"]
    for i in range(cell["warmup"] + repeat):
        sync(device)
        start = time.perf_counter()
        workload.run()
        sync(device)
        if i >= cell["warmup"]:
            times.append(time.perf_counter() - start)

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_rss()
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
        "notes": [*notes, *workload.notes],
    }


# --- the machine's matrix-multiply peak, for MFU ------------------------------------------

PEAK_METHOD = 2  # 1: torch.mm alone; 2: the best of torch.mm and zoo.fast.linear's route


def measure_matmul_peak(device: str = "cpu", dtype: str = "float32", threads: int | None = None,
                        seconds: float = 3.0) -> float:
    """FLOP/s of the best of several n x n matrix multiplies, n chosen for the device (2048 on
    CPU, 8192 on GPUs), each timed after a warm-up, for about `seconds`. Both torch.mm and the
    route the zoo's linear layers take (on the CPU, oneDNN's matmul, faster than MKL's on some
    processors) are timed, and the faster counts: MFU is measured against the machine's peak,
    not one library's."""
    from zoo.fast import linear

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    n = 8192 if dev.type == "cuda" else 2048
    a = torch.randn(n, n, device=dev).to(DTYPES[dtype])
    b = torch.randn(n, n, device=dev).to(DTYPES[dtype])
    best = math.inf
    with torch.no_grad():
        for multiply in (lambda: torch.mm(a, b), lambda: linear(a, b)):
            multiply()
            spent = 0.0
            while spent < seconds / 2 or best == math.inf:
                sync(dev)
                start = time.perf_counter()
                multiply()
                sync(dev)
                elapsed = time.perf_counter() - start
                best, spent = min(best, elapsed), spent + elapsed
    return 2 * n**3 / best


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What every record carries about where it was measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = None
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    gpu = None
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": ram, "gpu": gpu,
            "torch": torch.__version__}


# --- the child process: `python -m harness.bench CELL_JSON` prints one JSON result line ------

def _child(argv: list[str]) -> int:
    """Run one cell (or `--calibrate DEVICE DTYPE THREADS`) and print the result as JSON on the
    last line of stdout; failures are reported the same way, with a status."""
    import json
    import sys

    try:
        if argv[0] == "--calibrate":
            device, dtype, threads = argv[1], argv[2], int(argv[3]) or None
            result = {"status": "ok", "peak_flops": measure_matmul_peak(device, dtype, threads)}
        else:
            cell = json.loads(argv[0])
            if cell.get("max_memory") and cell["device"].startswith("cuda"):
                total = torch.cuda.get_device_properties(torch.device(cell["device"])).total_memory
                torch.cuda.set_per_process_memory_fraction(
                    min(cell["max_memory"] / total, 1.0), torch.device(cell["device"]))
            result = {"status": "ok", **measure(cell),
                      "threads": torch.get_num_threads()}
    except Exception as exc:  # noqa: BLE001 - any failure becomes a record with a status
        message = str(exc).splitlines()[0] if str(exc) else ""
        # The CPU allocator reports a refused allocation as a RuntimeError.
        out_of_memory = isinstance(exc, torch.OutOfMemoryError | MemoryError) or any(
            text in str(exc) for text in ("not enough memory", "can't allocate memory"))
        result = {"status": "oom" if out_of_memory else "error",
                  "error": f"{type(exc).__name__}: {message}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_child(sys.argv[1:]))
