"""DistilBERT as zoo.bert without token types: parity with Hugging Face's DistilBERT classes
built from tiny random configs (nothing downloaded), its published size, and the errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import lazy_import

import zoo
from harness.models import build_variant
from zoo.convert import CheckpointError, detect_model

transformers = lazy_import("transformers")  # tests that use it skip without it

TOL = dict(atol=1e-4, rtol=0)


def hf_model(cls: str = "DistilBertForMaskedLM", **overrides):
    fields = dict(vocab_size=211, dim=48, n_layers=3, n_heads=4, hidden_dim=100,
                  max_position_embeddings=40, attn_implementation="eager")
    torch.manual_seed(0)
    model = getattr(transformers, cls)(transformers.DistilBertConfig(**{**fields, **overrides}))
    with torch.no_grad():  # biases, LayerNorms and the MLM bias away from their init too
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def batch():
    """(3, 13): one full row, one right-padded, one left-padded."""
    torch.manual_seed(1)
    mask = (torch.arange(13)[None] < torch.tensor([13, 9, 5])[:, None]).long()
    mask[2] = mask[2].flip(0)
    return torch.randint(1, 211, (3, 13)).masked_fill(mask == 0, 0), mask


def test_parity_with_distilbert_for_masked_lm(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    assert detect_model(tmp_path) == "bert"
    model, info = zoo.from_pretrained("bert", tmp_path, output_loading_info=True)
    assert not info.missing and not info.unused
    c = model.config
    assert (c.type_vocab_size, c.next_sentence_head, c.n_layer, c.d_ff) == (0, False, 3, 100)
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 2:5] = ids[:, 2:5]
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels)
        ours = model(ids, mask, targets=labels)
    torch.testing.assert_close(ours.logits[mask.bool()], ref.logits[mask.bool()], **TOL)
    torch.testing.assert_close(ours.loss, ref.loss, **TOL)


@pytest.mark.parametrize("cls, unused", [
    ("DistilBertModel", ()),
    ("DistilBertForSequenceClassification",
     ("classifier.bias", "classifier.weight", "pre_classifier.bias", "pre_classifier.weight")),
])
def test_the_body_of_the_headless_classes(tmp_path, cls, unused):
    hf = hf_model(cls)
    hf.save_pretrained(tmp_path)
    model, info = zoo.from_pretrained("bert", tmp_path, output_loading_info=True)
    assert info.missing and all(k.startswith("lm_head.") for k in info.missing)
    assert info.unused == unused
    ids, mask = batch()
    body = hf if cls == "DistilBertModel" else hf.distilbert
    with torch.no_grad():
        ref = body(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = model.hidden_states(ids, attention_mask=mask)
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], **TOL)


def test_a_bare_weights_file(tmp_path):
    hf = hf_model(dim=128, n_heads=2)
    torch.save(hf.state_dict(), tmp_path / "weights.bin")
    model = zoo.from_pretrained("bert", tmp_path / "weights.bin")
    assert (model.config.n_head, model.config.n_layer, model.config.type_vocab_size) == (2, 3, 0)
    ids, mask = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        ours = model(ids, mask).logits
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], **TOL)


@pytest.mark.parametrize("field, value", [("activation", "silu"),
                                          ("tie_word_embeddings", False)])
def test_unsupported_configs_are_refused(tmp_path, field, value):
    hf = hf_model(n_layers=1)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(CheckpointError, match=field):
        zoo.from_pretrained("bert", tmp_path)


def test_a_missing_layer_weight_is_named(tmp_path):
    hf = hf_model(n_layers=1)
    hf.config.save_pretrained(tmp_path)
    state = dict(hf.state_dict())
    del state["distilbert.transformer.layer.0.ffn.lin2.bias"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="transformer.layer.0.ffn.lin2.bias"):
        zoo.from_pretrained("bert", tmp_path)


def test_the_published_size_is_hf_distilbert_for_masked_lm():
    with torch.device("meta"):
        hf = transformers.DistilBertForMaskedLM(transformers.DistilBertConfig())
    assert sum(p.numel() for p in hf.parameters()) == 66_985_530  # distilbert-base-uncased
    assert build_variant("bert", "distilbert-base", device="meta").num_params() == 66_985_530


def test_no_token_types():
    model = zoo.build("bert", n_layer=1, d_model=32, n_head=2, d_ff=64, vocab_size=50,
                      type_vocab_size=0, next_sentence_head=False).eval()
    inputs = model.dummy_inputs(batch=2, seqlen=8, padded=True)
    assert "token_type_ids" not in inputs and model.embeddings.token_type_embeddings is None
    ids = inputs["input_ids"]
    with torch.no_grad():
        plain = model(ids).logits
        assert torch.equal(model(ids, token_type_ids=torch.zeros_like(ids)).logits, plain)
    with pytest.raises(ValueError, match="no token types"):
        model(ids, token_type_ids=torch.ones_like(ids))
    targets = ids.masked_fill(torch.rand(ids.shape) < 0.5, -100)
    model.train()(**inputs, targets=targets).loss.backward()  # trains, on the fast routes
    assert model.embeddings.word_embeddings.weight.grad is not None
