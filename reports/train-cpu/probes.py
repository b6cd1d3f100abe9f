"""What the probes in this folder share: the fastest of several runs, and a model's training
step timed two ways alternated in one process. (Imported by the probes beside it: a script's
own folder is on Python's path.)"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from harness.bench.memory import keep_freed_memory
from harness.models import build_variant

ROOT = Path(__file__).resolve().parents[2]


def prepare() -> None:
    """Set the process up as training cells run: freed memory kept, denormals flushed."""
    keep_freed_memory()
    torch.set_flush_denormal(True)


def parser(doc: str, cells: str = "+", first: tuple[tuple[str, str], ...] = (),
           cell: str = "NAME:VARIANT:SEQLEN:DTYPE[:forward]") -> argparse.ArgumentParser:
    """A probe's command line: the positional arguments `first` ((name, help) pairs), its cells
    (as `cell` says, `cells` as argparse's nargs) and --rounds; the description is the first
    paragraph of `doc`."""
    arguments = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name, text in first:
        arguments.add_argument(name, help=text)
    arguments.add_argument("cells", nargs=cells, help=cell)
    arguments.add_argument("--rounds", type=int, default=6)
    return arguments


def alternate_cells(cells: list[str], ways: dict[str, Callable[[], None]], rounds: int) -> None:
    """alternate_steps for each cell, "NAME:VARIANT:SEQLEN:DTYPE" with ":forward" for a forward
    without gradients."""
    for cell in cells:
        name, variant, seqlen, dtype, *mode = cell.split(":")
        alternate_steps(name, int(seqlen), ways, rounds=rounds, variant=variant, dtype=dtype,
                        mode=mode[0] if mode else "train")


def fastest_ms(run: Callable[[], object], repeat: int = 7) -> float:
    """The fastest of `repeat` timed calls of `run` after one untimed, in ms (a shared machine
    only ever slows a run down)."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def alternate_steps(name: str, seqlen: int, ways: dict[str, Callable[[], None]],
                    rounds: int = 6, variant: str = "small", dtype: str = "float32",
                    mode: str = "train") -> None:
    """Print the median and fastest time of one training step (`variant`, batch 1,
    fp32 weights, AdamW; `dtype` bfloat16: under autocast) each way, or with `mode` "forward"
    of one forward without gradients (eval mode): `ways` maps a label to a function that
    switches the process to it. Two warm-up steps, then `rounds` rounds of two steps each way,
    alternated; the first way is switched back on at the end."""
    model = build_variant(name, variant, seqlen=seqlen)  # a position table long enough
    model.train(mode == "train")
    ids = torch.randint(0, model.config.vocab_size, (1, seqlen))
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)

    def step():
        if mode == "forward":
            with torch.no_grad():
                model(ids)
            return
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(ids, targets=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    step()
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(rounds):
        for way, switch in ways.items():
            switch()
            step()
            start = time.perf_counter()
            step()
            step()
            seconds[way].append((time.perf_counter() - start) / 2)
    next(iter(ways.values()))()
    for way, times in seconds.items():
        times.sort()
        print(f"{name} {variant} {seqlen} {dtype} {mode} {way}: median "
              f"{times[len(times) // 2] * 1e3:.0f} ms, fastest {times[0] * 1e3:.0f} ms a step")


def module_at(name: str, commit: str) -> types.ModuleType:
    """The module `name` ("zoo.fast.kernels.scan_cpu") as it was at `commit`, its source read
    from git and loaded as a module of its own (a kernel's C source in it compiles to a library
    of its own)."""
    path = name.replace(".", "/") + ".py"
    source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"{name}@{commit}")
    exec(compile(source, f"{path}@{commit}", "exec"), module.__dict__)  # noqa: S102
    return module


def library_ways(name: str, before: str) -> dict[str, Callable[[], None]]:
    """alternate_steps' ways for a kernel module `name` whose functions load their library by
    its `_library()`: "now", and as it was at commit `before`. Refused (SystemExit) where a C
    function the module declares takes other arguments at `before`: today's Python would call
    the old library with them."""
    module = importlib.import_module(name)
    now, old = module._library, module_at(name, before)._library
    changed = [function for function, pointer in vars(now()).items()
               if hasattr(pointer, "argtypes")
               and getattr(old(), function).argtypes != pointer.argtypes]
    if changed:
        raise SystemExit(f"{name}'s C functions {', '.join(changed)} take other arguments at "
                         f"{before}: compare with a commit where they take today's")
    return {"now": lambda: setattr(module, "_library", now),
            before: lambda: setattr(module, "_library", old)}
