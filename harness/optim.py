"""The optimizer every training step of the harness takes: the trainer's, and the benchmark's
for ours and the peers alike.

AdamW with PyTorch's fused kernel (torch >= 2.4 on the CPU, earlier on CUDA): one pass over each
parameter instead of about eight tensor operations per parameter and step. For the `small` GPT
(26.8M parameters) on the 2-core CPU here a step takes 18 ms fused and 51 ms unfused on a quiet
machine (benchmarks/training_parts.py); 28 ms and 95-105 ms while it was busy, when the unfused
step was 14% of a whole training step at 256 tokens. The fused kernel computes the same
update; where it is not available (an older torch, another device), the default one runs.
"""

from __future__ import annotations

from typing import Any

import torch


def adamw(params: Any, **options: Any) -> torch.optim.AdamW:
    """torch.optim.AdamW(params, **options), fused where PyTorch has the kernel."""
    params = list(params)  # a generator would be spent by a first, refused attempt
    try:
        return torch.optim.AdamW(params, fused=True, **options)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, **options)

