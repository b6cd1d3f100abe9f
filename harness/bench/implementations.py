"""The implementations a benchmark cell can time, in one registry.

  zoo           this project's model (the `impl` of "ours" in every ratio)
  zoo-compiled  the same model under torch.compile (`catalog bench --compile`)
  hf            Hugging Face transformers (`--against hf`): albert, bart, bert, bloom, ctrl, gpt,
                gpt-j, gpt-neo, gpt-neox, llama, mamba, mamba2, opt, roberta, rwkv, t5
  rwkv-pip      the official `rwkv` package (`--against rwkv-pip`): rwkv, rwkv5, rwkv6,
                rwkv7

Each is a function `(cell, zoo_model, inputs) -> Workload`, imported when a cell uses it: the
zoo model of the cell (built from the benchmark seed) and the cell's inputs (drawn once, see
`harness.bench.workload`) are handed to it, so a peer runs the same weights on the same tokens.
A peer copies the weights into its own model and keeps no reference to the zoo's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.bench.workload import BenchError

if TYPE_CHECKING:
    from harness.bench.workload import Cell, Inputs, Workload

WorkloadFn = Callable[["Cell", Any, "Inputs"], "Workload"]


@dataclass(frozen=True)
class Implementation:
    name: str
    target: str  # "module:function" that builds the workload
    models: tuple[str, ...] | None = None  # the zoo models it implements (None: every one)
    peer: bool = True  # another library's implementation, compared with ours in a ratio

    def covers(self, model: str) -> bool:
        return self.models is None or model in self.models

    def workload(self, cell: Cell, zoo_model: Any, inputs: Inputs) -> Workload:
        if not self.covers(cell.model):
            raise BenchError(f"peer {self.name!r} has no implementation of {cell.model!r}; "
                             f"it has: {', '.join(self.models or ())}")
        module, _, function = self.target.partition(":")
        build: WorkloadFn = getattr(importlib.import_module(module), function)
        return build(cell, zoo_model, inputs)


OURS = "zoo"
COMPILED = "zoo-compiled"
IMPLEMENTATIONS: dict[str, Implementation] = {impl.name: impl for impl in (
    Implementation(OURS, "harness.bench.ours:eager", peer=False),
    Implementation(COMPILED, "harness.bench.ours:compiled", peer=False),
    Implementation("hf", "harness.bench.hf:workload", ("albert", "bart", "bert", "bloom", "ctrl",
                                                        "gpt", "gpt-j", "gpt-neo", "gpt-neox",
                                                        "llama", "mamba", "mamba2", "opt",
                                                        "roberta", "rwkv", "t5")),
    Implementation("rwkv-pip", "harness.bench.rwkv_pip:workload",
                   ("rwkv", "rwkv5", "rwkv6", "rwkv7")),
)}
# peer -> the zoo models it implements
PEERS: dict[str, tuple[str, ...]] = {
    name: impl.models or () for name, impl in IMPLEMENTATIONS.items() if impl.peer}


def get(name: str) -> Implementation:
    if name not in IMPLEMENTATIONS:
        raise BenchError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    return IMPLEMENTATIONS[name]
