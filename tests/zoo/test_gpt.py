"""GPT-1 / GPT-2 (zoo/gpt.py, zoo/convert/gpt.py): parameter counts, the two block wirings,
initialisation, the KV cache, and fp32 parity with Hugging Face's GPT2LMHeadModel and
OpenAIGPTLMHeadModel built from tiny random configs (nothing downloaded)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import lazy_import

import zoo
from harness.bench.hf import cache_kwargs, returned_cache
from harness.models import build_variant
from zoo.convert import CheckpointError, convert_gpt
from zoo.gpt import GPT, GPTConfig, PostLNBlock, PreLNBlock
from zoo.layers import math_attention

transformers = lazy_import("transformers")  # tests that use it skip without it

NAME = "gpt"
ATOL = 1e-4  # fp32 parity target on logits


# ---- published sizes (zoo_specs.md sections 3 and 8) -----------------------------------------

def gpt2_count(vocab: int, positions: int, n_layer: int, d: int) -> int:
    # Embeddings V*d + P*d; per block: QKV + out (4d^2 + 4d), MLP (8d^2 + 5d), two LNs (4d),
    # i.e. 12d^2 + 13d; final LN 2d. The tied head adds nothing.
    return vocab * d + positions * d + n_layer * (12 * d * d + 13 * d) + 2 * d


@pytest.mark.parametrize("variant, n_layer, d, published", [
    ("gpt2", 12, 768, 124_439_808),
    ("gpt2-medium", 24, 1024, 354_823_168),
    ("gpt2-large", 36, 1280, 774_030_080),
    ("gpt2-xl", 48, 1600, 1_557_611_200),
])
def test_gpt2_published_parameter_counts(variant, n_layer, d, published):
    # The spec counts HF GPT2Model (incl. ln_f); GPT2LMHeadModel's head is tied to wte, so our
    # LM has exactly the same count.
    assert gpt2_count(50257, 1024, n_layer, d) == published
    assert build_variant(NAME, variant, device="meta").num_params() == published


def test_gpt1_published_parameter_count():
    # HF OpenAIGPTModel: no final LN (-2d relative to the GPT-2 formula), tied head adds 0.
    published = 116_534_784
    assert gpt2_count(40478, 512, 12, 768) - 2 * 768 == published
    model = build_variant(NAME, "gpt-1", device="meta")
    assert model.num_params() == published
    assert not model.config.pre_ln and model.ln_f is None


def test_small_variant_count():
    # 8192*512 + 1024*512 + 7 * (12*512^2 + 13*512) + 2*512 = 26,786,304.
    assert build_variant(NAME, "small", device="meta").num_params() == 26_786_304


def test_defaults_are_gpt2_124m():
    c = GPTConfig()
    assert (c.vocab_size, c.max_seq_len, c.n_layer, c.n_head, c.d_model, c.d_ff) == \
        (50257, 1024, 12, 12, 768, 3072)
    assert c.pre_ln and c.activation == "gelu_tanh" and c.layer_norm_eps == 1e-5
    assert GPTConfig(d_model=64).d_ff == 256 and GPTConfig(d_model=64, d_ff=100).d_ff == 100


# ---- the formulas ----------------------------------------------------------------------------

def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return build_variant(NAME, "tiny", **overrides).eval()


def randomize_(module: torch.nn.Module) -> None:
    """Non-trivial values everywhere (biases and LayerNorms included), so parity tests see them."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.2 if p.ndim > 1 else 0.5)
            if p.ndim == 1 and p.numel() > 0:
                p.add_(1.0)  # LN gains around 1; harmless for biases


def manual_attention(attn, x: torch.Tensor) -> torch.Tensor:
    B, T, C = x.shape
    nh = attn.n_head
    q, k, v = (proj(x).view(B, T, nh, C // nh).transpose(1, 2)
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))  # (B, nh, T, hs)
    y = math_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
    return attn.out_proj(y)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def manual_mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    return mlp.fc_out(gelu_tanh(mlp.fc_in(x)))


def test_gpt1_block_is_post_ln():
    block = PostLNBlock(GPTConfig(d_model=32, n_head=4, n_layer=1, pre_ln=False)).eval()
    randomize_(block)
    x = torch.randn(2, 7, 32)
    n = block.ln_1(x + manual_attention(block.attn, x))
    expected = block.ln_2(n + manual_mlp(block.mlp, n))
    torch.testing.assert_close(block(x, None, None), expected, atol=1e-5, rtol=0)


def test_gpt2_block_is_pre_ln():
    block = PreLNBlock(GPTConfig(d_model=32, n_head=4, n_layer=1)).eval()
    randomize_(block)
    x = torch.randn(2, 7, 32)
    a = x + manual_attention(block.attn, block.ln_1(x))
    expected = a + manual_mlp(block.mlp, block.ln_2(a))
    torch.testing.assert_close(block(x, None, None), expected, atol=1e-5, rtol=0)


def test_activation_is_the_tanh_gelu():
    mlp = tiny().blocks[0].mlp
    d = mlp.fc_in.in_features
    with torch.no_grad():
        mlp.fc_in.weight.normal_(0, 2 / math.sqrt(d))  # pre-activations spread over about [-6, 6]
    x = torch.randn(2, 50, d)
    h = F.linear(x, mlp.fc_in.weight, mlp.fc_in.bias)
    expected = F.linear(gelu_tanh(h), mlp.fc_out.weight, mlp.fc_out.bias)
    exact_form = F.linear(F.gelu(h), mlp.fc_out.weight, mlp.fc_out.bias)
    assert (expected - exact_form).abs().max() > 1e-4  # the test can tell the two forms apart
    for grad in (False, True):  # the fused inference path and the plain autograd path
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(mlp(x), expected, atol=2e-6, rtol=1e-5)


def test_whole_model_wiring_and_tied_head():
    for pre_ln in (True, False):
        model = tiny(pre_ln=pre_ln)
        randomize_(model)
        ids = torch.randint(0, 512, (2, 9))
        x = model.wte(ids) + model.wpe(torch.arange(9))
        for block in model.blocks:
            x = block(x, None, None)
        if pre_ln:
            x = model.ln_f(x)
        torch.testing.assert_close(model(ids).logits, x @ model.wte.weight.T, atol=1e-5, rtol=0)
        state = model.state_dict()  # the head is the embedding: one tensor under two keys
        assert [k for k in state if "head" in k] == ["lm_head.weight"]
        assert state["lm_head.weight"].data_ptr() == state["wte.weight"].data_ptr()
        assert (model.ln_f is not None) == pre_ln


def test_initialisation_scales_residual_projections_in_gpt2_only():
    def stds(pre_ln):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=64, max_seq_len=64, n_layer=8, d_model=256, n_head=4,
                              pre_ln=pre_ln))
        b = model.blocks[3]
        return (b.attn.out_proj.weight.std().item(), b.mlp.fc_out.weight.std().item(),
                b.attn.q_proj.weight.std().item(), b.mlp.fc_in.weight.std().item(),
                model.wte.weight.std().item(), model.wpe.weight.std().item(),
                b.attn.q_proj.bias.abs().max().item(), b.ln_1.weight.mean().item())
    scaled = 0.02 / math.sqrt(2 * 8)
    gpt2, gpt1 = stds(True), stds(False)
    assert gpt2[:2] == pytest.approx([scaled, scaled], rel=0.05)
    assert gpt2[2:6] == pytest.approx([0.02] * 4, rel=0.05)
    assert gpt1[:6] == pytest.approx([0.02] * 6, rel=0.05)
    assert gpt2[6:] == (0.0, 1.0) and gpt1[6:] == (0.0, 1.0)


def test_flops_per_token():
    model = build_variant(NAME, "gpt2", device="meta")
    d, L, V = 768, 12, 50257
    weights = L * (4 * d * d + 2 * d * 4 * d) + V * d  # 123,532,032 (no biases, no wpe)
    assert model.flops_per_token(1024) == 2 * weights + 4 * L * d * 1025 / 2


def test_length_and_mask_errors():
    model = tiny(max_seq_len=16)
    with pytest.raises(ValueError, match="maximum of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = model(torch.zeros(1, 10, dtype=torch.long), use_cache=True).cache
    with pytest.raises(ValueError, match="maximum of 16"):
        model(torch.zeros(1, 7, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="expected 12"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache,
              attention_mask=torch.ones(1, 2, dtype=torch.long))


# ---- KV cache and generation (GPT-2 is covered by test_interface; GPT-1 wiring here) --------

@pytest.mark.parametrize("pre_ln", [True, False])
def test_incremental_decoding_with_padding_equals_the_full_forward(pre_ln):
    model = tiny(pre_ln=pre_ln)
    randomize_(model)
    ids = torch.randint(0, 512, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    mask[2, 8:] = 0  # right padding
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        out = model(ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
        steps = [out.logits]
        for t in range(4, 11):
            out = model(ids[:, t : t + 1], cache=out.cache, attention_mask=mask[:, : t + 1])
            steps.append(out.logits)
    assert torch.isfinite(full).all()
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


def test_gpt1_generate_matches_the_full_forward():
    model = tiny(pre_ln=False)
    prompt = torch.randint(0, 512, (2, 5))
    greedy = model.generate(prompt, max_new_tokens=7)
    assert greedy.shape == (2, 12)
    assert torch.equal(model(greedy[:, :-1]).logits[:, 4:].argmax(-1), greedy[:, 5:])


def test_generate_stops_at_eos():
    model = tiny()
    prompt = torch.randint(0, 512, (1, 3))
    first = model.generate(prompt, 1)[0, -1].item()
    out = model.generate(prompt, max_new_tokens=10, eos_id=first)
    assert out.shape == (1, 4)


# ---- parity with Hugging Face ----------------------------------------------------------------

def hf_gpt2(**kw):
    sizes = {"vocab_size": 389, "n_positions": 40, "n_embd": 48, "n_layer": 3, "n_head": 4}
    config = transformers.GPT2Config(**{**sizes, **kw}, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(config).eval()
    randomize_(model)
    return model


def hf_openai_gpt(**kw):
    sizes = {"vocab_size": 389, "n_positions": 40, "n_embd": 48, "n_layer": 3, "n_head": 4}
    config = transformers.OpenAIGPTConfig(**{**sizes, **kw})
    torch.manual_seed(1)
    model = transformers.OpenAIGPTLMHeadModel(config).eval()
    randomize_(model)
    return model


HF_MODELS = {"gpt2": hf_gpt2, "openai-gpt": hf_openai_gpt}


def converted(hf) -> GPT:
    fields, state = convert_gpt(hf.config.to_dict(), hf.state_dict())
    model = GPT(GPTConfig(**fields)).eval()
    model.load_state_dict(state, strict=True)
    return model


@pytest.mark.parametrize("kind", sorted(HF_MODELS))
def test_logits_and_loss_match_hugging_face(kind):
    hf = HF_MODELS[kind]()
    model = converted(hf)
    assert model.config.pre_ln == (kind == "gpt2")
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    ids = torch.randint(0, 389, (3, 23))
    targets = torch.cat([ids[:, 1:], torch.full((3, 1), -100)], dim=1)  # HF shifts; we don't
    with torch.no_grad():
        ref = hf(ids, labels=ids)
        out = model(ids, targets=targets)
    assert (out.logits - ref.logits).abs().max() <= ATOL
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(HF_MODELS))
def test_padded_batch_matches_hugging_face(kind):
    hf = HF_MODELS[kind]()
    model = converted(hf)
    ids = torch.randint(0, 389, (3, 19))
    mask = torch.ones(3, 19, dtype=torch.long)
    mask[0, 13:] = 0  # right padding
    mask[1, :5] = 0  # left padding (positions still count from the row's start, as in HF)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        ours = model(ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.isfinite(ours).all()
    assert (ours - ref)[real].abs().max() <= ATOL


def test_cached_decoding_matches_hugging_face_cache():
    hf = hf_gpt2()
    model = converted(hf)
    ids = torch.randint(0, 389, (2, 17))
    with torch.no_grad():
        ref = hf(ids[:, :10], use_cache=True)
        ref_step = hf(ids[:, 10:], **cache_kwargs(hf, returned_cache(ref))).logits
        ours = model(ids[:, :10], use_cache=True)
        our_step = model(ids[:, 10:], cache=ours.cache).logits
    assert (our_step - ref_step).abs().max() <= ATOL


# ---- from_pretrained on save_pretrained folders ---------------------------------------------

@pytest.mark.parametrize("kind", sorted(HF_MODELS))
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_from_pretrained_folder(kind, weights, tmp_path):
    hf = HF_MODELS[kind]()
    if weights == "safetensors":
        hf.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").exists()
    else:  # transformers 5 writes safetensors only; write the older .bin layout by hand
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == kind
    model = zoo.from_pretrained(NAME, tmp_path)
    assert not model.training and model.config.pre_ln == (kind == "gpt2")
    ids = torch.randint(0, 389, (2, 13))
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= ATOL


@pytest.mark.parametrize("kind", sorted(HF_MODELS))
def test_bare_weights_file_with_old_keys(kind, tmp_path):
    # Old hub files: the base model's keys (no "transformer." prefix), causal-mask buffers
    # stored as weights, no config: sizes come from the tensors, n_head = d_model / 64.
    hf = HF_MODELS[kind](n_embd=128, n_head=2)
    state = dict(hf.transformer.state_dict())
    state["h.0.attn.bias"] = torch.ones(1, 1, 40, 40).tril()
    if kind == "gpt2":
        state["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "weights.pth")
    model = zoo.from_pretrained(NAME, tmp_path / "weights.pth")
    assert model.config.n_head == 2 and model.config.pre_ln == (kind == "gpt2")
    ids = torch.randint(0, 389, (2, 9))
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= ATOL


def test_activation_names_are_mapped():
    gpt2 = transformers.GPT2Config(n_embd=48, n_layer=1, n_head=4).to_dict()
    state = transformers.GPT2LMHeadModel(transformers.GPT2Config(**gpt2)).state_dict()
    assert convert_gpt(gpt2, state)[0]["activation"] == "gelu_tanh"  # gelu_new
    assert convert_gpt({**gpt2, "activation_function": "gelu"}, state)[0]["activation"] == "gelu"
    openai = transformers.OpenAIGPTConfig(n_embd=48, n_layer=1, n_head=4).to_dict()
    openai_state = transformers.OpenAIGPTLMHeadModel(
        transformers.OpenAIGPTConfig(**openai)).state_dict()
    # HF's OpenAI GPT maps afn="gelu" to gelu_new, the tanh form.
    assert convert_gpt(openai, openai_state)[0]["activation"] == "gelu_tanh"
    with pytest.raises(CheckpointError, match="silu"):
        convert_gpt({**openai, "afn": "silu"}, openai_state)


# ---- converter errors ------------------------------------------------------------------------

@pytest.fixture
def saved_gpt2(tmp_path):
    hf = hf_gpt2()
    hf.config.save_pretrained(tmp_path)
    return tmp_path, {k: v.clone() for k, v in hf.state_dict().items()}


def write_state(folder, state):
    (folder / "model.safetensors").unlink(missing_ok=True)
    torch.save(state, folder / "pytorch_model.bin")


def test_missing_key_is_named(saved_gpt2):
    folder, state = saved_gpt2
    del state["transformer.h.1.ln_2.bias"]
    write_state(folder, state)
    with pytest.raises(CheckpointError, match=r"h\.1\.ln_2\.bias"):
        zoo.from_pretrained(NAME, folder)


def test_misshaped_fused_qkv_is_named(saved_gpt2):
    folder, state = saved_gpt2
    state["transformer.h.2.attn.c_attn.weight"] = state["transformer.h.2.attn.c_attn.weight"].t()
    write_state(folder, state)
    with pytest.raises(CheckpointError, match=r"h\.2\.attn\.c_attn\.weight.*\(48, 144\)"):
        zoo.from_pretrained(NAME, folder)


def test_misshaped_tensor_is_named(saved_gpt2):
    folder, state = saved_gpt2
    state["transformer.h.0.mlp.c_fc.bias"] = torch.zeros(100)
    write_state(folder, state)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.fc_in\.bias.*\(100,\)"):
        zoo.from_pretrained(NAME, folder)


def test_unexpected_key_and_untied_head_are_rejected(saved_gpt2):
    folder, state = saved_gpt2
    write_state(folder, {**state, "transformer.h.0.extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"h\.0\.extra\.weight"):
        zoo.from_pretrained(NAME, folder)
    write_state(folder, {**state, "lm_head.weight": torch.zeros(389, 48)})
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        zoo.from_pretrained(NAME, folder)


def test_foreign_model_type_is_rejected(saved_gpt2):
    folder, state = saved_gpt2
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neo"}))
    write_state(folder, state)
    with pytest.raises(CheckpointError, match="gpt_neo"):
        zoo.from_pretrained(NAME, folder)


# ---- CUDA (deselected by default; run with -m gpu) -------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_runs_in_bf16():
    model = tiny()
    randomize_(model)
    ids = torch.randint(0, 512, (3, 21))
    mask = torch.ones(3, 21, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        cpu = model(ids, attention_mask=mask).logits
        gpu = model.cuda()(ids.cuda(), attention_mask=mask.cuda()).logits.cpu()
        half = model.to(torch.bfloat16)(ids.cuda(), attention_mask=mask.cuda()).logits
    assert (gpu - cpu).abs().max() <= ATOL
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert model.generate(ids.cuda(), 4).shape == (3, 25)
