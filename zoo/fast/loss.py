"""The loss route: a model's training cross-entropy (zoo.model.LMLoss) as
zoo.fast.kernels.loss_cpu's C loop, one pass forward and one backward, where F.cross_entropy
makes several and holds three (rows x vocabulary) tensors at the start of the backward, when
the activations are held too, against the kernel's two (`python
reports/train-cpu/loss-probe.py` times both). F.cross_entropy is its oracle.
"""

from __future__ import annotations

import torch

from zoo.fast.conditions import compiling
from zoo.fast.kernels import loss_cpu
from zoo.model import LMLoss


class FusedLMLoss(LMLoss):
    """LMLoss by the C loop for CPU logits in float32, or in bfloat16 under autocast (taken to
    float32, as LMLoss computes); elsewhere (CUDA, float64, torch.compile, no compiler) its own
    F.cross_entropy."""

    DTYPES = (torch.float32, torch.bfloat16)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if (logits.device.type == "cpu" and logits.dtype in self.DTYPES
                and targets.dtype == torch.int64 and not compiling() and loss_cpu.available()):
            flat = logits.flatten(0, -2)
            z = flat.float()  # bfloat16 under autocast: a float32 copy of our own, which the
            # backward may overwrite with its gradient
            return loss_cpu.cross_entropy(z, targets.flatten(), self.ignore_index,
                                          overwrite=z is not flat)
        return super().forward(logits, targets)
