"""Time RWKV's training step with zoo.fast's wkv route (the C WKV and its backward) against
the plain model, and against GPT and Hugging Face's RWKV, side by side on this machine.

    python benchmarks/rwkv_training.py                       # 256, 1024, 4096 tokens
    python benchmarks/rwkv_training.py --seqlen 1024 --peers --profile

A step is the benchmark's train workload (harness.bench: forward, backward and AdamW, `small`
variants, float32, batch 1, the same inputs for all). Each contender runs two warm-up steps,
then they take turns, step after step (median of --rounds), so a noisy machine slows all alike.
--peers adds our GPT (dropout 0) and transformers' RwkvForCausalLM; --profile prints the top
operators of two routed steps (torch.profiler, by self CPU time).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from harness.bench import hf, ours
from harness.bench.workload import Cell, draw_inputs
from harness.models import build

CONTENDERS = {  # name: (zoo model, speed routes, peer)
    "rwkv, wkv route": ("rwkv", True, False),
    "rwkv, plain": ("rwkv", False, False),
    "gpt (dropout 0)": ("gpt", True, False),
    "hf rwkv": ("rwkv", False, True),
}


def train_step(name: str, seqlen: int):
    model_name, fast, peer = CONTENDERS[name]
    overrides = {"dropout": 0.0} if model_name == "gpt" else None
    model = build(model_name, "small", seqlen=seqlen, seed=0, fast=fast,
                  overrides=overrides).model
    cell = Cell(model=model_name, variant="small", impl="hf" if peer else "eager", mode="train",
                seqlen=seqlen, batch=1, dtype="float32", device="cpu", threads=None, warmup=2,
                repeat=1, new_tokens=0, fast=fast)
    inputs = draw_inputs(model, "train", 1, seqlen, torch.device("cpu"))
    return (hf.workload if peer else ours.eager)(cell, model, inputs).run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlen", default="256,1024,4096")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peers", action="store_true", help="also GPT and transformers' RWKV")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    names = list(CONTENDERS) if args.peers else list(CONTENDERS)[:2]
    table = Table("tokens", "contender", "tok/s (median)", "step s (median)", "min s",
                  title=f"training step, {torch.get_num_threads()} threads")
    for seqlen in (int(s) for s in args.seqlen.split(",")):
        steps = {name: train_step(name, seqlen) for name in names}
        for step in steps.values():
            step(), step()
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        for name in names:
            median = statistics.median(times[name])
            table.add_row(str(seqlen), name, f"{seqlen / median:.0f}", f"{median:.3f}",
                          f"{min(times[name]):.3f}")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                steps[names[0]](), steps[names[0]]()
            print(f"{names[0]}, {seqlen} tokens, two steps:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
