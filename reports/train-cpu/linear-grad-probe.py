"""A linear layer's two gradient products at a training step's row counts (256 and 1024 tokens of
the `small` LLaMA's shapes), in oneDNN as zoo.fast.dense's _OneDNNLinear takes them and in MKL's
torch.mm (what F.linear's backward runs, and so Hugging Face's step):
  - the weight gradient dy^T x: oneDNN on transposed views (PyTorch copies the transposed
    operand into rows first), MKL on the same views (its transpose flags, no copy);
  - the input gradient dy W: oneDNN with W^T as its weight view, MKL's mm.
GFLOP/s, the median of 5 rounds in which the four run in turn, each round the median of 20 runs.

    python reports/train-cpu/linear-grad-probe.py
"""

from __future__ import annotations

import statistics
import time

import torch

LINEAR = torch.ops.mkldnn._linear_pointwise
SHAPES = ((512, 512), (1408, 512), (512, 1408), (8192, 512))  # (out, in): attention, FFN, head


def median_seconds(f, n: int = 20) -> float:
    f()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def products(x: torch.Tensor, dy: torch.Tensor, w: torch.Tensor) -> dict:
    rows, (out, inn) = x.size(0), w.shape

    def onednn_dw():  # the smaller transposed copy, as _OneDNNLinear chooses
        if rows * inn + out * inn < rows * out:
            return LINEAR(x.t(), dy.t(), None, "none", [], "").t().contiguous()
        return LINEAR(dy.t(), x.t(), None, "none", [], "")

    return {"onednn_dw": onednn_dw, "mkl_dw": lambda: torch.mm(dy.t(), x),
            "onednn_dx": lambda: LINEAR(dy, w.t(), None, "none", [], ""),
            "mkl_dx": lambda: torch.mm(dy, w)}


def main() -> None:
    torch.set_flush_denormal(True)
    for rows in (256, 1024):
        for out, inn in SHAPES:
            forms = products(torch.randn(rows, inn), torch.randn(rows, out),
                             torch.randn(out, inn))
            times = {name: [] for name in forms}
            for _ in range(5):
                for name, f in forms.items():
                    times[name].append(median_seconds(f))
            flops = 2 * rows * out * inn
            print(rows, (out, inn), "  ".join(
                f"{name} {flops / statistics.median(t) / 1e9:6.1f}" for name, t in times.items()),
                "GFLOP/s")


if __name__ == "__main__":
    main()
