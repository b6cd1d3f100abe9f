"""ALBERT (zoo/albert.py): the published sizes counted against transformers' own class, the
three changes from BERT (factorised embeddings, one shared block, the sentence-order head), fp32
parity with Hugging Face's AlbertForPreTraining built from tiny random configs and read with
zoo.from_pretrained (masked-LM and SOP logits, loss and gradients, padded batches), the base and
task-head classes, the export back, and the checkpoint errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import lazy_import, randomized
from decoder_parity import checkpoint_error

import zoo
from harness.models import build_variant
from zoo.albert import Albert, AlbertConfig
from zoo.bert import Bert

transformers = lazy_import("transformers")  # tests that use it skip without it

NAME = "albert"
TOL = dict(atol=1e-4, rtol=0)
# 3 layers sharing one block, E = 16 below H = 32, every dropout off.
SIZES = dict(vocab_size=120, embedding_size=16, hidden_size=32, num_hidden_layers=3,
             num_attention_heads=4, intermediate_size=48, max_position_embeddings=40,
             classifier_dropout_prob=0.0, attn_implementation="eager")


def hf_model(cls: str = "AlbertForPreTraining", **overrides):
    """transformers' ALBERT class with random weights everywhere (biases, LayerNorm gains and
    the decoder bias included), eval mode."""
    torch.manual_seed(0)
    config = transformers.AlbertConfig(**{**SIZES, **overrides})
    return randomized(getattr(transformers, cls)(config)).eval()


def batch(V: int = 120):
    """(3, 13): one full row, two right-padded; segment B from position 6 of each row."""
    torch.manual_seed(2)
    lengths = torch.tensor([13, 9, 5])
    mask = (torch.arange(13)[None] < lengths[:, None]).long()
    ids = torch.randint(3, V, (3, 13)).masked_fill(mask == 0, 0)
    types = ((torch.arange(13)[None] >= 6) & mask.bool()).long()
    return ids, mask, types


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers' AlbertForPreTraining, the zoo model read from its saved folder)."""
    hf = hf_model()
    folder = tmp_path_factory.mktemp("albert")
    hf.save_pretrained(folder)
    return hf, zoo.from_pretrained(NAME, folder)


# ---- sizes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, shape, count", [
    ("base", (768, 12, 12), 11_813_810),
    ("large", (1024, 24, 16), 17_847_474),
    ("xlarge", (2048, 24, 32), 59_021_490),
])
def test_published_sizes_are_transformers_albert_for_pretraining(variant, shape, count):
    """The paper's Table 1 shapes (d_ff 4H, H/64 heads, E = 128, 30,000 words), counted by
    transformers; the paper prints 12M, 18M and 60M."""
    d, layers, heads = shape
    config = transformers.AlbertConfig(hidden_size=d, num_hidden_layers=layers,
                                       num_attention_heads=heads, intermediate_size=4 * d)
    with torch.device("meta"):
        hf = transformers.AlbertForPreTraining(config)
    assert sum(p.numel() for p in hf.parameters()) == count
    model = build_variant(NAME, variant, device="meta")
    assert model.num_params() == count
    assert (model.config.d_model, model.config.n_layer, model.config.n_head) == shape


def test_the_docstring_formula_counts_base():
    V, P, E, H, f = 30000, 512, 128, 768, 3072
    count = ((V + P + 2) * E + 2 * E + E * H + H + 4 * H * H + 2 * H * f + f + 9 * H
             + H * E + 3 * E + V + H * H + 3 * H + 2)
    assert count == 11_813_810 == Albert(AlbertConfig()).num_params()


def test_small_is_parameter_matched():
    model = build_variant(NAME, "small", device="meta")
    assert model.num_params() == 27_279_618  # the count written in catalog/albert.yaml
    bert = build_variant("bert", "small", device="meta")
    assert model.config.n_layer == bert.config.n_layer  # the same depth, a wider shared block
    assert abs(model.num_params() / bert.num_params() - 1) < 0.10


def test_defaults_are_the_released_version_2():
    c = AlbertConfig()
    assert (c.vocab_size, c.embedding_size, c.max_position_embeddings) == (30000, 128, 512)
    assert (c.activation, c.dropout, c.attn_dropout, c.classifier_dropout) == (
        "gelu_tanh", 0.0, 0.0, 0.1)
    assert (c.layer_norm_eps, c.pad_token_id, c.type_vocab_size) == (1e-12, 0, 2)


# ---- the changes from BERT ---------------------------------------------------------------------

def test_one_block_serves_every_layer():
    """Depth adds compute, not parameters: n_layer 1 and 6 have the same count, and the forward
    equals the shared block applied n_layer times by hand."""
    one, six = (zoo.build(NAME, n_layer=n, device="meta").num_params() for n in (1, 6))
    assert one == six
    torch.manual_seed(0)
    model = build_variant(NAME, "tiny", n_layer=3).eval()
    assert isinstance(model, Bert) and not hasattr(model, "blocks")
    ids, mask, types = batch(V=512)
    with torch.no_grad():
        x = model.embeddings(ids, types)
        for _ in range(3):
            x = model.block(x, mask.bool()[:, None, None, :])
        assert torch.equal(model.hidden_states(ids, mask, types), x)
    flops = zoo.build(NAME, device="meta").flops_per_token
    assert flops(100) - flops(0) == 4 * 12 * 768 * 100  # attention grows with every layer


def test_embeddings_are_narrow_and_the_head_works_back_down():
    model = build_variant(NAME, "tiny")
    E, d = model.config.embedding_size, model.config.d_model
    assert E < d
    assert model.embeddings.word_embeddings.weight.shape == (512, E)
    assert model.embeddings.project.weight.shape == (d, E)
    assert model.lm_head.dense.weight.shape == (E, d)
    assert model.lm_head.decoder.weight is model.embeddings.word_embeddings.weight


def test_flops_per_token_formula():
    model = zoo.build(NAME, device="meta")
    E, d = 128, 768
    weights = 2 * E * d + 12 * (4 * d * d + 2 * d * 3072) + 30000 * E
    assert model.flops_per_token(64) == 2 * weights + 4 * 12 * d * 64


# ---- parity with transformers ------------------------------------------------------------------

def test_masked_lm_and_sentence_order_logits_and_loss(pair):
    hf, model = pair
    assert model.config.next_sentence_head and model.config.embedding_size == 16
    ids, mask, types = batch()
    real = mask.bool()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        mlm, sop = model.pretraining_logits(ids, mask, types)
    torch.testing.assert_close(mlm[real], ref.prediction_logits[real], **TOL)
    torch.testing.assert_close(sop, ref.sop_logits, **TOL)
    labels = torch.full_like(ids, -100)
    labels[:, 2], order = ids[:, 2], torch.tensor([0, 1, 1])
    with torch.no_grad():
        ref_loss = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels,
                      sentence_order_label=order).loss
        loss = model(ids, mask, types, targets=labels, next_sentence_label=order).loss
    torch.testing.assert_close(loss, ref_loss, **TOL)


def test_gradients_of_the_shared_block(pair):
    """Every layer's gradient lands on the one block, as in transformers."""
    hf, model = pair
    ids, mask, types = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 1:4] = ids[:, 1:4]
    order = torch.tensor([1, 0, 1])
    hf.zero_grad()
    model.zero_grad()
    hf(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels,
       sentence_order_label=order).loss.backward()
    model(ids, mask, types, targets=labels, next_sentence_label=order).loss.backward()
    layer = hf.albert.encoder.albert_layer_groups[0].albert_layers[0]
    pairs = [(model.block.attn.q_proj, layer.attention.query),
             (model.block.ffn.fc_out, layer.ffn_output),
             (model.embeddings.project, hf.albert.encoder.embedding_hidden_mapping_in),
             (model.embeddings.word_embeddings, hf.albert.embeddings.word_embeddings)]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **TOL)


@pytest.mark.parametrize("override", [{"n_layer": 1}, {"n_layer": 4}])
def test_the_shared_block_run_another_number_of_times_breaks_parity(pair, tmp_path, override):
    """The depth is how often the one block runs: once fewer or once more, the same weights are
    off by far more than 100x the tolerance."""
    hf, _ = pair
    hf.save_pretrained(tmp_path)
    model = zoo.from_pretrained(NAME, tmp_path, **override)
    ids, mask, types = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).prediction_logits
        ours = model(ids, mask, types).logits
    assert (ours - ref)[mask.bool()].abs().max() > 100 * TOL["atol"]


def test_masked_lm_folder_has_no_sentence_order_head(tmp_path):
    hf = hf_model("AlbertForMaskedLM", hidden_act="relu", layer_norm_eps=1e-6)
    hf.save_pretrained(tmp_path)
    model, info = zoo.from_pretrained(NAME, tmp_path, output_loading_info=True)
    assert not model.config.next_sentence_head and not info.missing and not info.unused
    assert (model.config.activation, model.config.layer_norm_eps) == ("relu", 1e-6)
    ids, mask, types = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        ours = model(ids, mask, types).logits
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], **TOL)


@pytest.mark.parametrize("cls, unused", [
    ("AlbertModel", ("pooler.bias", "pooler.weight")),
    ("AlbertForSequenceClassification",
     ("albert.pooler.bias", "albert.pooler.weight", "classifier.bias", "classifier.weight")),
])
def test_the_body_of_the_headless_classes(tmp_path, cls, unused):
    hf = hf_model(cls)
    hf.save_pretrained(tmp_path)
    model, info = zoo.from_pretrained(NAME, tmp_path, output_loading_info=True)
    assert info.missing and all(k.startswith("lm_head.") for k in info.missing)
    assert info.unused == unused
    body = hf if cls == "AlbertModel" else hf.albert
    ids, mask, types = batch()
    with torch.no_grad():
        ref = body(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        ours = model.hidden_states(ids, mask, types)
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], **TOL)


# ---- export and checkpoint errors --------------------------------------------------------------

@pytest.mark.parametrize("head", [True, False])
def test_transformers_reads_the_export(tmp_path, head):
    torch.manual_seed(1)
    model = randomized(build_variant(NAME, "tiny", next_sentence_head=head)).eval()
    folder = zoo.save_pretrained(NAME, model, tmp_path / "out")
    cls = "AlbertForPreTraining" if head else "AlbertForMaskedLM"
    assert json.loads((folder / "config.json").read_text())["architectures"] == [cls]
    hf = getattr(transformers, cls).from_pretrained(folder).eval()
    ids, mask, types = batch(V=512)
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        ref = out.prediction_logits if head else out.logits
        ours = model(ids, mask, types).logits
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], **TOL)
    back = zoo.from_pretrained(NAME, folder)
    assert back.config == model.config
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def rewrite_config(folder, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("field, value", [
    ("num_hidden_groups", 3), ("inner_group_num", 2), ("hidden_act", "silu"),
    ("position_embedding_type", "relative_key"), ("tie_word_embeddings", False),
])
def test_configs_zoo_albert_cannot_run_are_refused_naming_the_field(field, value, tmp_path):
    hf_model(num_hidden_layers=1).save_pretrained(tmp_path)
    rewrite_config(tmp_path, **{field: value})
    assert f"{field} = {value!r}" in checkpoint_error(NAME, tmp_path)


def test_a_bare_weights_file_is_refused_for_want_of_its_depth(tmp_path):
    torch.save(hf_model().state_dict(), tmp_path / "weights.bin")
    assert "config.json" in checkpoint_error(NAME, tmp_path / "weights.bin")


def test_the_folder_is_detected(tmp_path):
    hf_model().save_pretrained(tmp_path)
    assert zoo.convert.detect_model(tmp_path) == NAME
