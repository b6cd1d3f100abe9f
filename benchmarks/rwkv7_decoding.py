"""Time RWKV-7's cached decoding with zoo.fast's wkv7 route, whole and in part, against the
plain model, side by side on this machine.

    python benchmarks/rwkv7_decoding.py                      # small, 64 tokens, PyTorch's threads
    taskset -c 0 python benchmarks/rwkv7_decoding.py --threads 1 --rounds 9

The contenders hold the same weights (the `small` variant, float32, seed 0):
  plain            zoo.build(..., fast=False): every block's ~60 PyTorch operations a token;
  wkv7 time mix    the routes as they were before the block step: the linear route, and the
                   time mix's WKV as zoo.fast.kernels.wkv7_cpu's C loop, blocks and head
                   plain classes;
  wkv7 block step  every route: each block's decoding step as zoo.fast.kernels.wkv7_step_cpu's
                   one call, the head's product zoo.fast.kernels.matvec_cpu's.
Each decodes --new-tokens tokens one at a time (batch 1) after a --prompt-token prefill; a round
times each contender once, in turn, so a noisy machine slows all alike; the table gives the
median ms a token over --rounds rounds, its spread, and the ratio to the plain path.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

import zoo.fast
from harness.models import build_variant
from zoo import rwkv7

CONTENDERS = ("plain", "wkv7 time mix", "wkv7 block step")


def build(name: str) -> torch.nn.Module:
    model = build_variant("rwkv7", "small", seed=0, fast=name != "plain").eval()
    if name == "wkv7 time mix":  # back to the plain block and the linear route's head
        for block in model.blocks:
            block.__class__ = rwkv7.Block
        model.head.__class__ = zoo.fast.FastLinear
    return model


def decode(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds a token of cached greedy decoding after `prompt` (B, T)."""
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(token, cache=out.cache)
            token = out.logits[:, -1:].argmax(-1)
        return (time.perf_counter() - start) / new_tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {name: build(name) for name in CONTENDERS}
    vocab_size = models["plain"].config.vocab_size
    prompt = torch.randint(0, vocab_size, (1, args.prompt_tokens),
                           generator=torch.Generator().manual_seed(0))
    for model in models.values():  # warm-up: compiles the kernels, faults the weights in
        decode(model, prompt, 4)
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(args.rounds):
        for name, model in models.items():
            times[name].append(decode(model, prompt, args.new_tokens))
    table = Table("contender", "routes", "ms/token (median)", "min", "max", "x plain",
                  title=f"RWKV-7 small, cached decoding of {args.new_tokens} tokens, "
                        f"{torch.get_num_threads()} threads")
    plain = statistics.median(times["plain"])
    for name in CONTENDERS:
        median = statistics.median(times[name])
        table.add_row(name, ", ".join(zoo.fast.applied(models[name])) or "-",
                      f"{1e3 * median:.2f}", f"{1e3 * min(times[name]):.2f}",
                      f"{1e3 * max(times[name]):.2f}", f"{plain / median:.2f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
