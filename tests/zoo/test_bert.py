"""BERT (zoo/bert.py): published sizes, formulas, and parity with Hugging Face's
BertForPreTraining / BertForMaskedLM built from tiny random configs (nothing downloaded)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import lazy_import

import zoo
from harness.models import build_variant
from zoo.bert import Bert, BertConfig, padding_mask
from zoo.convert import CheckpointError

transformers = lazy_import("transformers")  # tests that use it skip without it

TOL = dict(atol=1e-4, rtol=0)


# --- published parameter counts --------------------------------------------------------------

def head_params(d: int, vocab: int) -> int:
    """What the zoo's Bert adds to HF BertModel (which includes the pooler): the MLM transform
    (Dense d*d + d, LayerNorm 2d), the decoder's own bias (V; its weight is the tied word
    embeddings) and the NSP classifier (2d + 2)."""
    return (d * d + d) + 2 * d + vocab + (2 * d + 2)


@pytest.mark.parametrize("variant, bert_model, d", [
    ("base", 109_482_240, 768),   # zoo_specs.md section 8, HF BertModel incl. pooler
    ("large", 335_141_888, 1024),
])
def test_published_sizes_have_the_reference_count(variant, bert_model, d):
    # base: 109,482,240 + 590,592 + 1,536 + 30,522 + 1,538 = 110,106,428 (BertForPreTraining)
    # large: 335,141,888 + 1,049,600 + 2,048 + 30,522 + 2,050 = 336,226,108
    expected = bert_model + head_params(d, 30522)
    assert expected == {"base": 110_106_428, "large": 336_226_108}[variant]
    assert build_variant("bert", variant, device="meta").num_params() == expected


def test_small_variant_count_and_length():
    model = build_variant("bert", "small", device="meta")
    assert model.num_params() == 27_060_738  # the count written in catalog/bert.yaml
    assert model.config.max_seq_len == 512


def test_the_same_count_as_hf_bert_for_pretraining():
    """The count formula agrees with the reference classes themselves (meta device, no data)."""
    hf_config = transformers.BertConfig(num_hidden_layers=2)
    with torch.device("meta"):
        hf = transformers.BertForPreTraining(hf_config)
        hf_mlm = transformers.BertForMaskedLM(hf_config)
    ours = zoo.build("bert", n_layer=2, device="meta")
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())
    no_nsp = zoo.build("bert", n_layer=2, next_sentence_head=False, device="meta")
    assert no_nsp.num_params() == sum(p.numel() for p in hf_mlm.parameters())


# --- formulas --------------------------------------------------------------------------------

@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return build_variant("bert", "tiny").eval()


def test_init_follows_bert(tiny):
    std = torch.cat([b.attn.q_proj.weight.flatten() for b in tiny.blocks]).std().item()
    assert abs(std - 0.02) < 0.002
    assert torch.all(tiny.blocks[0].ffn.fc_in.bias == 0) and torch.all(tiny.lm_head.bias == 0)
    assert torch.all(tiny.blocks[0].ln_attn.weight == 1) and torch.all(tiny.embeddings.ln.bias == 0)
    assert torch.all(tiny.embeddings.word_embeddings.weight[0] == 0)  # [PAD] row
    assert tiny.embeddings.ln.eps == 1e-12


def test_decoder_is_tied_to_the_word_embeddings(tiny):
    ids = torch.tensor([[5, 6, 7]])
    h = tiny.hidden_states(ids)
    t = tiny.lm_head
    expected = t.ln(F.gelu(t.dense(h))) @ tiny.embeddings.word_embeddings.weight.T + t.bias
    torch.testing.assert_close(tiny(ids).logits, expected)
    # One tensor under two keys each (as Hugging Face's state dicts have them).
    assert t.decoder.weight is tiny.embeddings.word_embeddings.weight and t.decoder.bias is t.bias
    state = tiny.state_dict()
    assert state["lm_head.decoder.weight"].data_ptr() == \
        state["embeddings.word_embeddings.weight"].data_ptr()


def test_gelu_is_the_exact_erf_form(tiny):
    ffn = copy.deepcopy(tiny.blocks[0].ffn)
    d = ffn.fc_in.in_features
    with torch.no_grad():
        ffn.fc_in.weight.normal_(0, 1 / math.sqrt(d))  # pre-activations of about unit scale
    x = torch.randn(2, 50, d)
    exact = lambda z: 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))  # noqa: E731
    h = F.linear(x, ffn.fc_in.weight, ffn.fc_in.bias)
    expected = F.linear(exact(h), ffn.fc_out.weight, ffn.fc_out.bias)
    tanh_form = F.linear(F.gelu(h, approximate="tanh"), ffn.fc_out.weight, ffn.fc_out.bias)
    assert (expected - tanh_form).abs().max() > 1e-5  # the test can tell the two forms apart
    for grad in (False, True):  # the fused inference path and the plain autograd path
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(ffn(x), expected, atol=2e-6, rtol=1e-5)


def test_block_is_post_ln(tiny):
    block, x = tiny.blocks[0], torch.randn(2, 5, 64)
    h = block.ln_attn(x + block.attn(x))
    torch.testing.assert_close(block(x, None), block.ln_ffn(h + block.ffn(h)))


def test_positions_and_token_types_are_added(tiny):
    ids = torch.tensor([[9, 9, 9]])
    e = tiny.embeddings
    raw = (e.word_embeddings.weight[9] + e.position_embeddings.weight[:3]
           + e.token_type_embeddings.weight[[0, 1, 1]])
    torch.testing.assert_close(e(ids, torch.tensor([[0, 1, 1]])), e.ln(raw)[None])
    torch.testing.assert_close(e(ids, None), e(ids, torch.zeros_like(ids)))  # default: segment A


def test_padding_is_masked_out(tiny):
    inputs = tiny.dummy_inputs(batch=2, seqlen=9, padded=True)
    mask = inputs["attention_mask"]
    assert mask[0].all() and not mask[1].all()  # first row full, the others padded
    assert padding_mask(mask).shape == (2, 1, 1, 9)
    other = inputs["input_ids"].masked_fill(mask == 0, 77)  # change what the pads are
    a, b = tiny(**inputs).logits, tiny(**{**inputs, "input_ids": other}).logits
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()])


def test_nsp_logits_and_loss(tiny):
    inputs = tiny.dummy_inputs(batch=3, seqlen=7, padded=True)
    label = inputs.pop("next_sentence_label")
    mlm, nsp = tiny.pretraining_logits(**inputs)
    h = tiny.hidden_states(**inputs)
    torch.testing.assert_close(nsp, tiny.nsp_head(torch.tanh(tiny.pooler(h[:, 0]))))
    targets = torch.full(mlm.shape[:2], -100)
    targets[:, 1] = 3
    mlm_only = tiny(**inputs, targets=targets).loss
    total = tiny(**inputs, targets=targets, next_sentence_label=label).loss
    torch.testing.assert_close(mlm_only, F.cross_entropy(mlm[:, 1], targets[:, 1]))
    torch.testing.assert_close(total, mlm_only + F.cross_entropy(nsp, label))
    assert tiny(**inputs, next_sentence_label=label).loss is None  # the loss needs targets


def test_without_the_nsp_head():
    model = build_variant("bert", "tiny", next_sentence_head=False)
    assert not hasattr(model, "pooler") and "next_sentence_label" not in model.dummy_inputs(2, 5)
    with pytest.raises(ValueError, match="next-sentence"):
        model.pretraining_logits(torch.tensor([[1, 2]]))


def test_too_long_inputs_are_refused(tiny):
    with pytest.raises(ValueError, match="64 positions"):
        tiny(torch.ones(1, 65, dtype=torch.long))


def test_flops_per_token_formula():
    c = BertConfig()
    weights = 12 * (4 * 768**2 + 2 * 768 * 3072) + 768**2 + 30522 * 768
    assert zoo.build("bert", device="meta").flops_per_token(128) == 2 * weights + 4 * 12 * 768 * 128
    assert c.max_seq_len == 512


# --- parity with Hugging Face through zoo.from_pretrained ------------------------------------

def hf_config(**overrides):
    fields = dict(vocab_size=211, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=100, max_position_embeddings=40, type_vocab_size=2,
                  attn_implementation="eager")
    return transformers.BertConfig(**{**fields, **overrides})


def randomised(model):
    """Make biases, LayerNorms and the zero-initialised MLM bias non-trivial too."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def batch(vocab=211, pad=0):
    torch.manual_seed(2)
    lengths = torch.tensor([13, 9, 5])
    mask = (torch.arange(13)[None] < lengths[:, None]).long()  # (3, 13), non-power-of-two
    ids = torch.randint(1, vocab, (3, 13)).masked_fill(mask == 0, pad)
    types = ((torch.arange(13)[None] >= lengths[:, None] // 2) & mask.bool()).long()
    return ids, mask, types


def test_parity_with_bert_for_pretraining(tmp_path):
    hf = randomised(transformers.BertForPreTraining(hf_config()))
    hf.save_pretrained(tmp_path)
    model = zoo.from_pretrained("bert", tmp_path)
    assert model.config.next_sentence_head and model.config.layer_norm_eps == 1e-12
    ids, mask, types = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        mlm, nsp = model.pretraining_logits(ids, mask, types)
        logits = model(ids, mask, types).logits
    real = mask.bool()
    torch.testing.assert_close(mlm[real], ref.prediction_logits[real], **TOL)
    torch.testing.assert_close(logits, mlm)
    torch.testing.assert_close(nsp, ref.seq_relationship_logits, **TOL)
    # The pretraining loss: HF's needs both labels, as does the zoo's NSP term.
    labels = torch.full_like(ids, -100)
    labels[:, 2], nsl = ids[:, 2], torch.tensor([0, 1, 1])
    with torch.no_grad():
        ref_loss = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels,
                      next_sentence_label=nsl).loss
        loss = model(ids, mask, types, targets=labels, next_sentence_label=nsl).loss
    torch.testing.assert_close(loss, ref_loss, **TOL)


@pytest.mark.parametrize("hidden_act, ours", [("gelu_new", "gelu_tanh"), ("relu", "relu")])
def test_the_activation_is_read_and_written_back(tmp_path, hidden_act, ours):
    """hidden_act is BERT's feed-forward and masked-LM head activation, both sides: parity,
    and the export names it again."""
    hf = randomised(transformers.BertForMaskedLM(hf_config(hidden_act=hidden_act)))
    hf.save_pretrained(tmp_path)
    model = zoo.from_pretrained("bert", tmp_path)
    assert model.config.activation == ours
    ids, mask, types = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        logits = model(ids, mask, types).logits
    torch.testing.assert_close(logits[mask.bool()], ref[mask.bool()], **TOL)
    config, _ = zoo.convert.EXPORTERS["bert"](model.config, model.state_dict())
    assert config["hidden_act"] == hidden_act


def test_parity_with_bert_for_masked_lm_from_a_bin_file(tmp_path):
    """A pytorch_model.bin written with torch.save (transformers 5 saves only safetensors),
    carrying the tied decoder copies and, as old TF-converted files do, LayerNorm gamma/beta."""
    hf = randomised(transformers.BertForMaskedLM(hf_config(layer_norm_eps=1e-7)))
    hf.config.save_pretrained(tmp_path)
    legacy = {"LayerNorm.weight": "LayerNorm.gamma", "LayerNorm.bias": "LayerNorm.beta"}
    state = {}
    for key, tensor in hf.state_dict().items():
        for new, old in legacy.items():
            key = key.replace(new, old)
        state[key] = tensor
    assert "cls.predictions.decoder.weight" in state
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = zoo.from_pretrained("bert", tmp_path)
    assert not model.config.next_sentence_head and model.config.layer_norm_eps == 1e-7
    ids, mask, types = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        ours = model(ids, mask, types).logits
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], **TOL)


def test_a_bare_weights_file(tmp_path):
    config = hf_config(hidden_size=128, num_attention_heads=2)
    hf = randomised(transformers.BertForPreTraining(config))
    torch.save(hf.state_dict(), tmp_path / "weights.bin")
    model = zoo.from_pretrained("bert", tmp_path / "weights.bin")
    assert model.config.n_head == 2 and model.config.n_layer == 3  # heads 64 wide
    ids, mask, types = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).prediction_logits
        ours = model(ids, mask, types).logits
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], **TOL)


# --- converter errors ------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    hf = transformers.BertForPreTraining(hf_config(num_hidden_layers=1))
    hf.config.save_pretrained(tmp_path)
    return tmp_path, dict(hf.state_dict())


def test_a_missing_weight_is_named(saved):
    folder, state = saved
    del state["bert.encoder.layer.0.attention.self.key.bias"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="bert.encoder.layer.0.attention.self.key.bias"):
        zoo.from_pretrained("bert", folder)


def test_a_misshaped_weight_is_named(saved):
    folder, state = saved
    state["bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(99, 48)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.fc_in\.weight.*\(99, 48\)"):
        zoo.from_pretrained("bert", folder)


def test_an_unknown_weight_is_named(saved):
    folder, state = saved
    state["cls.extra.weight"] = torch.zeros(2)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cls.extra.weight"):
        zoo.from_pretrained("bert", folder)


@pytest.mark.parametrize("field, value", [("hidden_act", "silu"),
                                          ("position_embedding_type", "relative_key"),
                                          ("tie_word_embeddings", False)])
def test_unsupported_configs_are_refused(saved, field, value):
    folder, state = saved
    torch.save(state, folder / "pytorch_model.bin")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(CheckpointError, match=field):
        zoo.from_pretrained("bert", folder)


def test_bert_class_is_registered():
    assert zoo.load_class("bert") is Bert and Bert.config_class is BertConfig


def test_e5_large_is_bert_large_without_the_nsp_head():
    """E5's released folders are BertModel's (BERT-large's shape, a pooler, no heads); the zoo's
    variant has the masked-LM head and no pooler."""
    with torch.device("meta"):
        hf = transformers.BertModel(hf_config(hidden_size=1024, num_hidden_layers=24,
                                              num_attention_heads=16, intermediate_size=4096,
                                              vocab_size=30522, max_position_embeddings=512,
                                              type_vocab_size=2))
    bert_model = sum(p.numel() for p in hf.parameters())
    assert bert_model == 335_141_888
    pooler, head = 1024 * 1024 + 1024, (1024 * 1024 + 1024) + 2 * 1024 + 30522
    model = build_variant("bert", "e5-large", device="meta")
    assert not model.config.next_sentence_head
    assert model.num_params() == bert_model - pooler + head == 335_174_458
