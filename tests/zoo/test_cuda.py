"""Every zoo model on CUDA: it builds there, its fp32 logits match the CPU's, it runs in bf16,
it trains a step, and the decoders' cached generation agrees with the full forward.

Deselected by default (pyproject's addopts); run with `-m gpu`. Skipped without a CUDA device.
The tiny variants are used, with every weight perturbed so that no zero-initialised matrix
(RWKV's, for one) hides a difference between the devices."""

from __future__ import annotations

import pytest
import torch

import zoo
from harness.models import build_variant

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MODELS = sorted(zoo.REGISTRY)
DECODERS = [n for n in MODELS if hasattr(zoo.load_class(n), "generate")]
ATOL = 1e-4  # fp32 parity on logits, with TF32 off
SEQLEN = 45  # within the tiny BERT's 64 positions
# RWKV's parallel WKV takes chunks of 128 tokens on CUDA (8 on CPU): a prefill that crosses one.
PREFILL, DECODED = 133, 7


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 off, so that an fp32 matmul on the GPU is an fp32 matmul (10-bit mantissas would
    put the CPU/GPU difference near 1e-3); restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def perturbed(name: str):
    """The tiny variant on the CPU, every weight moved off its initial value."""
    torch.manual_seed(0)
    model = build_variant(name, "tiny").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def on_cuda(name: str, cpu_model):
    """`zoo.build(..., device="cuda")` holding the CPU model's weights."""
    model = build_variant(name, "tiny", device="cuda").eval()
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(t.is_cuda for t in tensors)
    model.load_state_dict(cpu_model.state_dict())
    return model


def cuda_inputs(inputs: dict) -> dict:
    return {k: v.cuda() for k, v in inputs.items()}


@pytest.mark.parametrize("name", MODELS)
def test_fp32_logits_match_the_cpu(name):
    cpu_model = perturbed(name)
    inputs = cpu_model.dummy_inputs(batch=3, seqlen=SEQLEN, device="cpu", padded=True)
    model = on_cuda(name, cpu_model)
    with torch.no_grad():
        expected = cpu_model(**inputs).logits
        logits = model(**cuda_inputs(inputs)).logits
    assert logits.is_cuda and logits.dtype == torch.float32
    torch.testing.assert_close(logits.cpu(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_bf16_forward_is_finite_and_close(name):
    model = on_cuda(name, perturbed(name))
    inputs = cuda_inputs(model.dummy_inputs(batch=3, seqlen=SEQLEN, device="cuda", padded=True))
    with torch.no_grad():
        exact = model(**inputs).logits
        half = model.to(torch.bfloat16)(**inputs).logits
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    # bf16 keeps 8 bits of mantissa: about 1% of the logits' scale after two layers (measured on
    # an H100). The argmax is not compared: a tiny random model has many near ties.
    error = (half.float() - exact).abs().max() / exact.abs().max()
    assert error < 0.05, f"bf16 logits differ by {error:.3f} of their scale"


@pytest.mark.parametrize("name", ["gpt", "transformer"])
def test_left_padding_matches_the_cpu(name):
    # A left-padded query sees nothing but padding: it must average the padded keys on CUDA as
    # on the CPU (the CUDA memory-efficient kernel once made it a row of zeros), and stay finite.
    cpu_model = perturbed(name)
    ids = torch.randint(0, cpu_model.config.vocab_size, (3, SEQLEN))
    mask = torch.ones(3, SEQLEN, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, :SEQLEN - 3] = 0
    if name == "gpt":
        inputs = {"input_ids": ids, "attention_mask": mask}
    else:
        inputs = {"src_ids": ids.flip(1), "tgt_ids": ids, "tgt_mask": mask}
    model = on_cuda(name, cpu_model)
    with torch.no_grad():
        expected = cpu_model(**inputs).logits
        logits = model(**cuda_inputs(inputs)).logits.cpu()
        half = model.to(torch.bfloat16)(**cuda_inputs(inputs)).logits
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)
    assert torch.isfinite(half).all()


@pytest.mark.parametrize("name", MODELS)
def test_a_training_step_on_cuda(name):
    model = on_cuda(name, perturbed(name)).train()
    inputs = model.dummy_inputs(batch=2, seqlen=SEQLEN, device="cuda")
    vocab = model.config.vocab_size
    targets = torch.randint(0, vocab, (2, SEQLEN), device="cuda")
    loss = model(**inputs, targets=targets).loss
    loss.backward()
    assert loss.is_cuda and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.is_cuda and torch.isfinite(g).all() for g in grads)


def greedy_and_full(name: str, model, inputs: dict, new: int):
    """(tokens decoded on the cache, logits of the full forward over those tokens): greedy
    decoding must pick the full forward's argmax at every decoded position."""
    if name == "transformer":  # decoding starts from BOS and reads the source
        tokens = model.generate(inputs["src_ids"], new, bos_id=0)
        return tokens[:, 1:], model(inputs["src_ids"], tokens[:, :-1]).logits
    prompt = inputs["input_ids"]
    tokens = model.generate(prompt, new)
    assert torch.equal(tokens[:, :prompt.size(1)], prompt)
    return tokens[:, prompt.size(1):], model(tokens[:, :-1]).logits[:, prompt.size(1) - 1:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", DECODERS)
def test_cached_generation_equals_the_uncached_forward(name, dtype):
    model = on_cuda(name, perturbed(name)).to(dtype)
    inputs = model.dummy_inputs(batch=2, seqlen=SEQLEN, device="cuda")
    with torch.no_grad():
        decoded, logits = greedy_and_full(name, model, inputs, new=8)
    assert decoded.is_cuda and decoded.shape == (2, 8)
    if dtype == torch.float32:
        assert torch.equal(logits.argmax(-1), decoded)
    else:  # bf16: rounding may flip a near tie between the cached and the full path
        assert (logits.argmax(-1) == decoded).float().mean() >= 0.75


@pytest.mark.parametrize("name", [n for n in DECODERS if n != "transformer"])
def test_incremental_logits_match_the_full_forward(name):
    model = on_cuda(name, perturbed(name))
    ids = model.dummy_inputs(batch=2, seqlen=PREFILL + DECODED, device="cuda")["input_ids"]
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :PREFILL], use_cache=True)
        steps = [out.logits]
        for t in range(PREFILL, PREFILL + DECODED):
            out = model(ids[:, t:t + 1], cache=out.cache)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)
