"""The short causal depthwise convolution of the state-space models (Mamba, Mamba-2), continued
across calls through a conv state, and the padding mask of the tokens they read."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_depthwise_conv(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (b, T, channels); conv_state (b, channels, k - 1): the last k - 1 inputs before x
    (zeros at the start of a text); weight (channels, 1, k), one filter per channel. Returns
    the convolution (b, T, channels), each output seeing its token and the k - 1 before it, and
    the new conv state. Prepending the state and convolving without padding is the paper's conv
    with k - 1 zeros of padding keeping the first T outputs, continued across calls."""
    window = torch.cat([conv_state, x.transpose(1, 2)], dim=2)  # (b, channels, k - 1 + T)
    conv = F.conv1d(window, weight, bias, groups=x.size(-1))
    return conv.transpose(1, 2), window[:, :, window.size(2) - conv_state.size(2):]


def new_token_mask(attention_mask: torch.Tensor | None, T: int,
                   dtype: torch.dtype) -> torch.Tensor | None:
    """The (B, T) padding mask of the T new tokens (1 = token, 0 = padding) as `dtype`, from an
    `attention_mask` that covers them or, as for GPT, the cached tokens too (a recurrent state
    already holds the past, so only the last T columns are read); None without a mask."""
    if attention_mask is None:
        return None
    if attention_mask.size(1) < T:
        raise ValueError(f"attention_mask covers {attention_mask.size(1)} positions; "
                         f"expected at least the {T} new ones")
    return attention_mask[:, -T:].to(dtype)
