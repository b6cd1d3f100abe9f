"""The dropout route: dropout masks drawn by a C kernel, and attention with dropout computed
as its math form on such a mask.

PyTorch's CPU flash attention takes no dropout, so with dropout SDPA falls back to its math
path with PyTorch's slow mask. Here the mask is zoo.fast.kernels.dropout_cpu's, and the whole
attention is zoo.fast.kernels.attention_cpu's (float32, or bfloat16 under autocast): softmax
and dropout in one C pass, its backward written out, the products batched or, over many keys
where oneDNN is the linear kernel, oneDNN's a head at a time. zoo.layers.math_attention is the
oracle. T5's attention takes it too: its logits are not scaled, and its position bias, the
additive mask here, learns, so the kernel gives the mask its gradient.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoo import t5
from zoo.fast import dense
from zoo.fast.conditions import compiling
from zoo.fast.kernels import attention_cpu, dropout_cpu
from zoo.layers.attention import MultiHeadAttention, additive_mask
from zoo.mosaic_bert import AlibiAttention


def _dropout_runs(x: torch.Tensor, p: float) -> bool:
    return not compiling() and dropout_cpu.runs(x, p)


class FastDropout(nn.Dropout):
    """nn.Dropout with its mask drawn by kernels/dropout_cpu.py's kernel where it runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.inplace and _dropout_runs(x, self.p):
            return dropout_cpu.dropout(x, self.p)
        return super().forward(x)


CAUSAL_BLOCK = 256  # query rows per block of causal attention with dropout
# From this many keys, in float32 where oneDNN is the linear kernel, kernels/attention_cpu.py
# takes its products a head at a time in oneDNN; below it, and in bfloat16, torch.matmul's
# batched products were faster (zoo/fast/measurements.md; training_parts.py --attention)
PER_HEAD_MIN_KEYS = 1024


def attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           attn_mask: torch.Tensor | None, is_causal: bool, p: float,
                           block: int = CAUSAL_BLOCK,
                           scale: float | None = None) -> torch.Tensor:
    """softmax(scale q k^T + mask) v with dropout p on the probabilities, written out as
    zoo.layers.math_attention is, with kernels/dropout_cpu.py's mask. `attn_mask` is None or an
    additive float mask, broadcasting to (B, nh, T_query, T_key), with its gradient where it
    wants one (T5's position bias); `is_causal` as in SDPA; `scale` 1/sqrt(hs) when None.

    Causal self-attention goes `block` query rows at a time, each block over the keys up to its
    last row only: the keys after it would all be masked. At T = 1024 in blocks of 256 that is
    62% of the full product's work and memory (1/2 + 1/(2 * blocks) of it in general)."""
    T, S = q.size(-2), k.size(-2)
    if not is_causal or T != S or T <= block:
        return _attention_rows(q, k, v, attn_mask, 0 if is_causal else None, p, scale)
    # Heads split from (B, T, C) are strided views: laid out once here, each block's rows and
    # key prefix are views the batched products take as they are, not a copy per block.
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    rows = []
    for start in range(0, T, block):
        end = min(start + block, T)
        mask = attn_mask
        if mask is not None:  # its rows and columns, where it has them (not broadcast)
            mask = mask[..., start:end, :] if mask.size(-2) > 1 else mask
            mask = mask[..., :end] if mask.size(-1) > 1 else mask
        rows.append(_attention_rows(q[:, :, start:end], k[:, :, :end], v[:, :, :end], mask,
                                    start, p, scale))
    return torch.cat(rows, dim=2)


def _kernel_attention(q, k, v, attn_mask) -> bool:
    """Whether attention with dropout over these goes to kernels/attention_cpu.py: float32 or
    bfloat16 CPU tensors, float32 outside autocast only (under it, its products are bfloat16)."""
    return (not compiling() and attention_cpu.runs(q, k, v, attn_mask)
            and (q.dtype == torch.bfloat16 or not torch.is_autocast_enabled("cpu")))


def _per_head(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether kernels/attention_cpu.py takes its products a head at a time in oneDNN: float32
    where oneDNN is the linear kernel, over PER_HEAD_MIN_KEYS keys or more."""
    return (q.dtype == torch.float32 and k.size(-2) >= PER_HEAD_MIN_KEYS
            and dense.many_rows_kernel() == "onednn")


def _attention_rows(q, k, v, attn_mask, first_row: int | None, p: float,
                    scale: float | None) -> torch.Tensor:
    """Attention of queries at rows first_row.. (None: not causal) over keys 0..S-1: by
    kernels/attention_cpu.py (softmax and dropout in C, with their backward) where it runs,
    else written out in PyTorch."""
    if _kernel_attention(q, k, v, attn_mask):
        return attention_cpu.attention(q, k, v, attn_mask, first_row, p,
                                       per_head=_per_head(q, k), scale=scale)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)
    if first_row is not None:  # query r (row first_row + r) sees keys 0..first_row + r
        future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
        scores.masked_fill_(future.triu(1 + first_row), float("-inf"))
    if attn_mask is not None:
        scores.add_(attn_mask)
    return torch.matmul(dropout_cpu.dropout(torch.softmax(scores, dim=-1), p), v)


class _DropoutAttend:
    """An attention module's `attend` with the probabilities' dropout done by
    kernels/dropout_cpu.py: PyTorch's CPU flash attention takes no dropout, so with dropout SDPA
    computes the same math path, with PyTorch's slow mask. A boolean mask (BERT's padding) is taken
    as an additive one (-inf where a query may not attend) where kernels/attention_cpu.py computes
    the attention, which gives a row with nothing to attend zeros as SDPA does; the PyTorch form
    would give NaNs, so there it stays SDPA's. Without dropout (inference, p = 0), or where the
    kernel does not run, it is the plain `attend` (SDPA). `logit_scale` is the module's factor on
    q k^T, None for 1/sqrt(hs)."""

    logit_scale: float | None = None

    def attend(self, q, k, v, attn_mask, dropout, is_causal, new_key_length):
        if (dropout > 0 and _dropout_runs(q, dropout)
                and q.numel() // q.size(-1) * k.size(-2) < dropout_cpu.MAX_ELEMENTS):
            mask = attn_mask
            if (mask is not None and mask.dtype == torch.bool
                    and _kernel_attention(q, k, v, None)):
                mask = additive_mask(mask, q.dtype)
            # a float32 mask with bfloat16 q (MosaicBERT's ALiBi bias under autocast): the kernel
            # adds it in float32's place as the PyTorch form would
            if (mask is None or mask.dtype == q.dtype
                    or (mask.dtype == torch.float32 and _kernel_attention(q, k, v, mask))):
                return attention_with_dropout(q, k, v, mask, is_causal, dropout,
                                              scale=self.logit_scale)
        return super().attend(q, k, v, attn_mask, dropout, is_causal, new_key_length)


class DropoutAttention(_DropoutAttend, MultiHeadAttention):
    pass


class DropoutAlibiAttention(_DropoutAttend, AlibiAttention):
    pass


class DropoutT5Attention(_DropoutAttend, t5.Attention):
    logit_scale = 1.0  # T5 does not divide its logits by sqrt(d_kv)
