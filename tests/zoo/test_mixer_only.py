"""`d_ff = 0`: blocks that hold the sequence mixer alone (Zoology's MQAR models), for every
decoder: no feed-forward weights, the analytic FLOPs without them, and a model that still
trains and decodes like the full forward."""

from __future__ import annotations

import pytest
import torch

import zoo

FIELDS = {"gpt": {"n_head": 2, "dropout": 0.0, "max_seq_len": 32},
          "rwkv": {}, "pangu-pi": {"n_head": 2}, "llama": {"n_head": 2},
          "gpt-neox": {"n_head": 2}, "bloom": {"n_head": 2},
          "opt": {"n_head": 2, "dropout": 0.0, "attn_dropout": 0.0, "max_seq_len": 32},
          "gpt-j": {"n_head": 2, "rotary_dim": 4}, "gpt-neo": {"n_head": 2, "max_seq_len": 32},
          "ctrl": {"n_head": 2, "max_seq_len": 32}}


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_mixer_only_blocks_have_no_feed_forward(name):
    torch.manual_seed(0)
    full = zoo.build(name, vocab_size=64, d_model=32, n_layer=2, **FIELDS[name])
    mixer = zoo.build(name, vocab_size=64, d_model=32, n_layer=2, d_ff=0, **FIELDS[name])
    ffn = {"gpt": "mlp", "rwkv": "ffn", "pangu-pi": "ffn", "llama": "ffn",
           "gpt-neox": "mlp", "bloom": "mlp", "opt": "mlp", "gpt-j": "mlp",
           "gpt-neo": "mlp", "ctrl": "mlp"}[name]
    assert all(getattr(block, ffn) is None for block in mixer.blocks)
    assert not any(f".{ffn}." in key for key in mixer.state_dict())
    # the analytic FLOPs drop by exactly the feed-forward's matrix products
    linear = sum(module.weight.numel() for name, module in full.named_modules()
                 if isinstance(module, torch.nn.Linear) and f".{ffn}." in f"{name}.")
    dropped = full.flops_per_token(16) - mixer.flops_per_token(16)
    # (Pangu-π: plus its depthwise mixing taps, one multiply-add per tap)
    assert dropped >= 2 * linear and dropped == pytest.approx(2 * linear, rel=0.1)
    ids = torch.randint(0, 64, (2, 12))
    out = mixer(input_ids=ids, targets=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    mixer.eval()
    with torch.no_grad():
        logits = mixer(input_ids=ids).logits
        prompt = ids[:, :8]
        generated = mixer.generate(prompt, max_new_tokens=4)
        # greedy decoding with the cache equals the argmax of the full forward at each step
        full_pass = mixer(input_ids=generated[:, :-1]).logits
    assert torch.equal(generated[:, 8:], full_pass[:, 7:].argmax(-1))
    assert logits.shape == (2, 12, 64)
