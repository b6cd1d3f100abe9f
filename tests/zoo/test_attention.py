"""zoo.layers.math_attention, the written-out attention the tests use as their oracle, against
PyTorch's F.scaled_dot_product_attention under the same mask conventions (bool: True = may
attend; float: added to the scores; is_causal aligned to the first key). Float64 inputs, so
any difference beyond 1e-12 is a different computation, not rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.layers import causal_mask, math_attention

B, H, HS = 2, 3, 8


def qkv(t_query: int, t_key: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, t, HS, generator=g, dtype=torch.float64)
            for t in (t_query, t_key, t_key)]


@pytest.mark.parametrize("t_query, t_key", [(5, 5), (1, 7), (4, 9)])
def test_math_attention_equals_sdpa_for_every_mask_kind(t_query, t_key):
    q, k, v = qkv(t_query, t_key)
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(B, 1, t_query, t_key, generator=g) > 0.3
    keep[..., 0] = True  # every query may see at least one key (else softmax has no weights)
    additive = torch.randn(B, H, t_query, t_key, generator=g, dtype=torch.float64)
    for mask in (None, keep, additive, causal_mask(t_query, t_key, q.device)):
        torch.testing.assert_close(math_attention(q, k, v, attn_mask=mask),
                                   F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize("t_query, t_key", [(6, 6), (3, 8)])
def test_is_causal_matches_sdpa(t_query, t_key):
    q, k, v = qkv(t_query, t_key, seed=2)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(math_attention(q, k, v, is_causal=True), expected,
                               atol=1e-12, rtol=0)
    # Query i sees keys 0..i only: changing key 1 changes queries 1.. and leaves query 0 alone.
    k2 = k.clone()
    k2[:, :, 1] += 1.0
    changed = math_attention(q, k2, v, is_causal=True)
    torch.testing.assert_close(changed[:, :, :1], expected[:, :, :1], atol=1e-12, rtol=0)
    assert ((changed[:, :, 1:] - expected[:, :, 1:]).abs().amax(dim=-1) > 1e-6).all()
