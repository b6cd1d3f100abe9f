"""RMSNorm (Zhang & Sennrich 2019), shared by Pangu-π and LLaMA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RMS_NORM = getattr(F, "rms_norm", None)  # torch >= 2.4; the written-out equation before that


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and RMS_NORM is not None:  # the same equation in one call
            return RMS_NORM(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)
