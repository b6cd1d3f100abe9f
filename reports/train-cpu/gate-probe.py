"""Mamba's whole training step (or forward) with its step sizes' softplus, skip and gate in
the selective scan's C pass (the scan route's gated_scan) and in PyTorch around the C scan
(MambaMixer.gated_scan), alternated step by step in one process.

    python reports/train-cpu/gate-probe.py mamba:small:1024:float32 mamba:small:1024:float32:forward
"""

from __future__ import annotations

from probes import alternate_cells, parser, prepare

from zoo.fast.state_space import CompiledScanMambaMixer
from zoo.mamba import MambaMixer


def main(cells: list[str], rounds: int) -> None:
    prepare()
    fused = CompiledScanMambaMixer.gated_scan
    ways = {"gate in the kernel": lambda: setattr(CompiledScanMambaMixer, "gated_scan", fused),
            "gate in PyTorch": lambda: setattr(CompiledScanMambaMixer, "gated_scan",
                                               MambaMixer.gated_scan)}
    alternate_cells(cells, ways, rounds)


if __name__ == "__main__":
    args = parser(__doc__).parse_args()
    main(args.cells, args.rounds)
