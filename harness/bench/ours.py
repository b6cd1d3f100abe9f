"""The zoo's own implementation of a cell: the model as built, eager or under torch.compile."""

from __future__ import annotations

from typing import Any

import torch

from harness.bench.workload import DTYPES, Cell, Inputs, Workload, accounting, check_mode
from harness.optim import adamw
from zoo import fast


def eager(cell: Cell, model: Any, inputs: Inputs) -> Workload:
    """The workload of a zoo model (any of them, through the shared interface)."""
    check_mode(cell.model, model, cell.mode)
    tokens, flops = accounting(model, cell.mode, cell.batch, cell.seqlen)
    forward = inputs.forward
    if cell.mode == "forward":
        model.eval()

        def run():
            with torch.no_grad():
                return model(**forward).logits

        return Workload(run, tokens, flops, notes=fast.describe(model))
    if cell.mode == "train":
        model.train()
        optimizer = adamw(model.parameters(), lr=1e-4)

        def run():
            optimizer.zero_grad(set_to_none=True)
            loss = model(**forward, targets=inputs.targets).loss
            loss.backward()
            optimizer.step()
            return loss

        # in the cell's dtype, under autocast over float32 weights for a mixed-precision cell
        notes = fast.describe(model, training=True, dtype=DTYPES[cell.dtype])
        return Workload(run, tokens, flops, notes=notes)
    model.eval()
    batch = inputs.input_ids.size(0) if "input_ids" in forward else forward["src_ids"].size(0)
    with torch.no_grad():
        if "src_ids" in forward:  # the source is the prompt; decoding starts from one BOS token
            source = forward["src_ids"]
            start = torch.zeros(batch, 1, dtype=torch.long, device=source.device)
            out = model(source, start, use_cache=True)
            step = lambda tok, cache: model(source, tok, cache=cache)  # noqa: E731
        else:
            out = model(forward["input_ids"], use_cache=True)
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
                    notes=(*fast.describe(model),
                           f"decodes {cell.new_tokens} timed tokens after the prompt"))


# Compiled on the first calls, which are warm-up runs (at least two: decoding recompiles once
# for a growing KV cache, then treats its length as dynamic).
COMPILE_WARMUP = 2


def compiled(cell: Cell, model: Any, inputs: Inputs) -> Workload:
    """The same workload with the model under torch.compile (inductor)."""
    check_mode(cell.model, model, cell.mode)
    workload = eager(cell, torch.compile(model), inputs)
    warmup = max(cell.warmup, COMPILE_WARMUP)
    workload.notes = (f"torch.compile (inductor), compiled during {warmup} warm-up runs",
                      *workload.notes)
    workload.min_warmup = COMPILE_WARMUP
    return workload
