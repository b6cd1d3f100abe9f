"""Mamba's whole training step (or forward) with its skip and gate in the selective scan's C
pass (the scan route's gated_scan) and in PyTorch after the C scan (MambaMixer.gated_scan),
alternated step by step in one process.

    python reports/train-cpu/gate-probe.py mamba:small:1024:float32 mamba:small:1024:float32:forward
"""

from __future__ import annotations

import argparse

import torch
from probes import alternate_steps

from harness.bench.memory import keep_freed_memory
from zoo.fast.state_space import CompiledScanMambaMixer
from zoo.mamba import MambaMixer


def main(cells: list[str], rounds: int) -> None:
    keep_freed_memory()  # as training cells run
    torch.set_flush_denormal(True)
    fused = CompiledScanMambaMixer.gated_scan
    ways = {"gate in the kernel": lambda: setattr(CompiledScanMambaMixer, "gated_scan", fused),
            "gate in PyTorch": lambda: setattr(CompiledScanMambaMixer, "gated_scan",
                                               MambaMixer.gated_scan)}
    for cell in cells:
        name, variant, seqlen, dtype, *mode = cell.split(":")
        alternate_steps(name, int(seqlen), ways, rounds=rounds, variant=variant, dtype=dtype,
                        mode=mode[0] if mode else "train")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", nargs="+", help="NAME:VARIANT:SEQLEN:DTYPE[:forward]")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    main(args.cells, args.rounds)
