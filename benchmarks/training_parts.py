"""Time the parts of a CPU training step that issue 15 changed, each beside what it replaced.

    python benchmarks/training_parts.py
    python benchmarks/training_parts.py --profile gpt:1024 [--plain]   # where a step's time goes
    python benchmarks/training_parts.py --profile gpt:256 --batch 8 --dtype bfloat16
    python benchmarks/training_parts.py --attention [--dtype bfloat16]   # attention's two forms

  - a 32 MiB elementwise product in fresh pages, then after `keep_freed_memory` (reused pages),
    which the rest is timed under, as training cells and the trainer run;
  - a dropout mask over one `small` GPT layer's attention probabilities at 1024 tokens
    (8 x 1024 x 1024): PyTorch's `bernoulli_` and `F.dropout` against zoo.fast.kernels.dropout_cpu;
  - that layer's scores q k^T (8 heads of 1024 x 64 by 64 x 1024): torch.matmul's batched MKL
    product against oneDNN's a head at a time, as zoo/fast/kernels/attention_cpu.py takes them;
  - that layer's causal attention with dropout, forward and backward: SDPA (its math path, the
    only one that takes dropout on the CPU), the route's PyTorch form whole and in blocks of
    256 (where its kernel does not run), and the route as it runs here
    (zoo.fast.kernels.attention_cpu where a C compiler built it); and BERT's (not causal, a padding
    mask), PyTorch form and route, and with BERT's own boolean padding mask, SDPA (what took it
    before) and the route;
  - one AdamW step of the `small` GPT (26.8M parameters): PyTorch's default and the fused kernel;
  - a (1024 x 512) by (512 x 2048) product in float32 and in bfloat16.
Each figure is the fastest of several runs (a shared machine only ever slows a run down).
--profile MODEL:SEQLEN prints torch.profiler's top operators over two training steps of the
`small` model (the benchmark's train workload), with the zoo's routes or, with --plain, without;
--batch and --dtype bfloat16 (mixed precision) profile the step the quality trainer takes.
--attention times one layer's attention with dropout (8 heads of 64, forward and backward), BERT's
(a padding mask) and GPT's (causal), in the route's PyTorch form and by
zoo.fast.kernels.attention_cpu with its products batched and a head at a time (the choice
zoo.fast.dropout.PER_HEAD_MIN_KEYS makes), and as the route takes it, twice each; with --dtype
bfloat16, under autocast on bfloat16 q, k and v (autocast's linears' outputs).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import zoo.fast
from harness.bench import ours
from harness.bench.cell import training_setup
from harness.bench.memory import keep_freed_memory
from harness.bench.workload import Cell, draw_inputs
from harness.models import build
from zoo.fast.dropout import attention_with_dropout
from zoo.fast.kernels import attention_cpu, dropout_cpu


def fastest_ms(run, repeat: int = 7) -> float:
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def profile_step(model_name: str, seqlen: int, fast: bool, batch: int = 1,
                 dtype: str = "float32") -> None:
    """torch.profiler's top operators over two training steps, as a training cell runs them
    (bfloat16: mixed precision, the step under autocast over float32 weights)."""
    from torch.profiler import ProfilerActivity, profile

    training_setup()
    model = build(model_name, "small", seqlen=seqlen, seed=0, fast=fast).model
    cell = Cell(model=model_name, variant="small", impl="zoo", mode="train", seqlen=seqlen,
                batch=batch, dtype=dtype, device="cpu", threads=None, warmup=2, repeat=1,
                new_tokens=0, fast=fast)
    inputs = draw_inputs(model, "train", batch, seqlen, torch.device("cpu"))
    plain_step = ours.eager(cell, model, inputs).run

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            return plain_step()

    step(), step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(), step()
    print(f"{model_name} small, {batch} x {seqlen} tokens, {dtype}, "
          f"{'routes' if fast else 'plain'}, two steps:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def attention_forms(dtype: str = "float32") -> None:
    """The --attention table: each size, each form, fastest of 15 runs, two rounds (bfloat16:
    under autocast on bfloat16 q, k and v)."""
    if not attention_cpu.available():
        print("zoo.fast.kernels.attention_cpu does not run here (no C compiler)")
        return
    keep_freed_memory()
    torch.set_flush_denormal(True)
    forms = {"PyTorch form": {"_kernel_attention": lambda *args: False},
             "batched": {"_per_head": lambda q, k: False}}
    if zoo.fast.onednn_available():
        forms["a head at a time"] = {"_per_head": lambda q, k: True}
    forms["the route"] = {}
    table = Table(title=f"Attention with dropout, one layer, forward and backward, {dtype} "
                        "(ms, fastest of 15); attention_cpu's products batched or a head at a "
                        "time", header_style="bold")
    for column in ("tokens", "attention", *forms, "PyTorch / route"):
        table.add_column(column, justify="left" if column == "attention" else "right")
    for B, T in ((8, 128), (1, 256), (8, 256), (1, 512), (1, 1024), (1, 2048)):
        qkv = [torch.randn(B, T, 512, dtype=getattr(torch, dtype)).view(B, T, 8, 64)
               .transpose(1, 2).requires_grad_() for _ in range(3)]
        dy = torch.randn(B, 8, T, 64, dtype=getattr(torch, dtype))
        for causal, mask in ((False, torch.zeros(B, 1, 1, T)), (True, None)):
            def step(qkv=qkv, dy=dy, mask=mask, causal=causal):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    y = attention_with_dropout(*qkv, mask, causal, 0.1)
                y.backward(dy)

            for _ in range(2):
                times = {}
                for form, patches in forms.items():
                    with (mock.patch.multiple(zoo.fast.dropout, **patches) if patches
                          else contextlib.nullcontext()):
                        times[form] = fastest_ms(step, 15)
                table.add_row(f"{B} x {T}", "GPT's (causal)" if causal else "BERT's (mask)",
                              *(f"{ms:.2f}" for ms in times.values()),
                              f"{times['PyTorch form'] / times['the route']:.2f}x")
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", metavar="MODEL:SEQLEN", default=None)
    parser.add_argument("--plain", action="store_true", help="profile without the routes")
    parser.add_argument("--batch", type=int, default=1, help="sequences per profiled step")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: mixed precision (autocast over float32 weights)")
    parser.add_argument("--attention", action="store_true",
                        help="time attention with dropout's two forms at several sizes")
    args = parser.parse_args(argv)
    if args.attention:
        attention_forms(args.dtype)
        return
    if args.profile:
        model_name, _, seqlen = args.profile.partition(":")
        profile_step(model_name, int(seqlen or 1024), fast=not args.plain, batch=args.batch,
                     dtype=args.dtype)
        return
    torch.manual_seed(0)
    rows: list[tuple[str, str, float]] = []
    x = torch.randn(8 * 1024 * 1024)
    fresh = fastest_ms(lambda: x * 2)
    # From here on this process keeps the pages it frees, as training cells and the trainer do,
    # so that what follows is timed as a training step runs it.
    keep_freed_memory()
    rows += [("32 MiB elementwise product", "fresh pages (glibc default)", fresh),
             ("", "reused pages (keep_freed_memory)", fastest_ms(lambda: x * 2))]
    probs = torch.rand(1, 8, 1024, 1024)
    rows += [("dropout mask, 8M elements", "torch bernoulli_",
              fastest_ms(lambda: torch.empty_like(probs).bernoulli_(0.9))),
             ("", "F.dropout", fastest_ms(lambda: F.dropout(probs, 0.1, True))),
             ("", "zoo.fast.kernels.dropout_cpu",
              fastest_ms(lambda: dropout_cpu.dropout(probs, 0.1)))]

    q, k, v = (torch.randn(1, 8, 1024, 64, requires_grad=True) for _ in range(3))
    flops = 2 * 8 * 1024 * 1024 * 64
    with torch.no_grad():
        products = [("scores q k^T, 8 heads 1024 x 1024", "torch.matmul (MKL, batched)",
                     lambda: torch.matmul(q, k.transpose(-2, -1)))]
        if zoo.fast.onednn_available():
            products.append(("", "oneDNN, a head at a time",
                             lambda: [attention_cpu._product(q[0, h], k[0, h])
                                      for h in range(8)]))
        for part, label, product in products:
            ms = fastest_ms(product)
            rows.append((part, f"{label} ({flops / ms / 1e6:.0f} GFLOP/s)", ms))
    route_kind = "zoo.fast.kernels.attention_cpu" if attention_cpu.available() else "PyTorch form"

    def attention(route):
        route().sum().backward()

    def pytorch_form(route):  # the route's attention where its kernel does not run
        with mock.patch.object(zoo.fast.dropout, "_kernel_attention", lambda *args: False):
            attention(route)

    padding = torch.zeros(1, 1, 1, 1024)
    padding[..., -100:] = torch.finfo(torch.float32).min
    rows += [("causal attention + dropout, fwd+bwd", "SDPA (math path)", fastest_ms(
                lambda: attention(lambda: F.scaled_dot_product_attention(
                    q, k, v, dropout_p=0.1, is_causal=True)), 5)),
             ("", "route's PyTorch form, whole", fastest_ms(lambda: pytorch_form(
                 lambda: attention_with_dropout(q, k, v, None, True, 0.1, block=1024)), 5)),
             ("", "route's PyTorch form, blocks of 256", fastest_ms(lambda: pytorch_form(
                 lambda: attention_with_dropout(q, k, v, None, True, 0.1)), 5)),
             ("", f"route here ({route_kind}), blocks of 256", fastest_ms(lambda: attention(
                 lambda: attention_with_dropout(q, k, v, None, True, 0.1)), 5)),
             ("BERT's attention + dropout, fwd+bwd", "route's PyTorch form", fastest_ms(
                 lambda: pytorch_form(
                     lambda: attention_with_dropout(q, k, v, padding, False, 0.1)), 5)),
             ("", f"route here ({route_kind})", fastest_ms(lambda: attention(
                 lambda: attention_with_dropout(q, k, v, padding, False, 0.1)), 5))]
    # BERT's own padding mask is boolean: SDPA's math path with PyTorch's dropout took it until
    # the route learnt to pass it on as an additive mask (the layer's `attend`).
    layer = zoo.build("bert", n_layer=1, d_model=512, n_head=8).blocks[0].attn
    layer.train()
    allowed = padding == 0
    rows += [("BERT's, boolean padding mask", "SDPA (math path)", fastest_ms(
                 lambda: attention(lambda: F.scaled_dot_product_attention(
                     q, k, v, attn_mask=allowed, dropout_p=0.1)), 5)),
             ("", f"the route's attend ({route_kind})", fastest_ms(lambda: attention(
                 lambda: layer.attend(q, k, v, allowed, 0.1, False, False)), 5))]

    model = build("gpt", variant="small", seqlen=256).model
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    for label, options in (("torch.optim.AdamW default", {}), ("fused", {"fused": True})):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **options)
        rows.append(("AdamW step, small GPT" if not options else "", label,
                     fastest_ms(optimizer.step, 10)))

    a, w = torch.randn(1024, 512), torch.randn(2048, 512)
    for dtype in (torch.float32, torch.bfloat16):
        ms = fastest_ms(lambda dtype=dtype: F.linear(a.to(dtype), w.to(dtype)))
        gflops = 2 * 1024 * 512 * 2048 / ms / 1e6
        rows.append(("linear 1024x512 @ 512x2048" if dtype == torch.float32 else "",
                     f"{str(dtype).removeprefix('torch.')} ({gflops:.1f} GFLOP/s)", ms))

    table = Table(title=f"Parts of a training step ({torch.get_num_threads()} threads)",
                  header_style="bold")
    for column in ("part", "how", "ms (fastest)"):
        table.add_column(column, justify="right" if column.startswith("ms") else "left")
    for part, how, ms in rows:
        table.add_row(part, how, f"{ms:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
