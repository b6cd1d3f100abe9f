"""RoBERTa (zoo/roberta.py): published sizes, its deltas from BERT, and parity with Hugging
Face's RobertaForMaskedLM built from tiny random configs (nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
from conftest import lazy_import

import zoo
from harness.models import build_variant
from zoo.bert import Bert
from zoo.convert import CheckpointError
from zoo.roberta import Roberta, RobertaConfig

transformers = lazy_import("transformers")  # tests that use it skip without it

TOL = dict(atol=1e-4, rtol=0)


# --- published parameter counts --------------------------------------------------------------

@pytest.mark.parametrize("variant, roberta_model, d", [
    ("base", 124_645_632, 768),   # zoo_specs.md section 8, HF RobertaModel incl. pooler
    ("large", 355_359_744, 1024),
])
def test_published_sizes_have_the_reference_count(variant, roberta_model, d):
    # The zoo's RoBERTa is RobertaForMaskedLM's layout: minus the pooler (d*d + d), plus the
    # MLM head's Dense (d*d + d), LayerNorm (2d) and decoder bias (V = 50265; the decoder
    # weight is the tied word embeddings). The pooler and the Dense cancel:
    # base: 124,645,632 - 590,592 + 590,592 + 1,536 + 50,265 = 124,697,433
    # large: 355,359,744 - 1,049,600 + 1,049,600 + 2,048 + 50,265 = 355,412,057
    expected = roberta_model - (d * d + d) + (d * d + d) + 2 * d + 50265
    assert expected == {"base": 124_697_433, "large": 355_412_057}[variant]
    assert build_variant("roberta", variant, device="meta").num_params() == expected


def test_small_variant_count_and_length():
    model = build_variant("roberta", "small", device="meta")
    assert model.num_params() == 26_797_568  # the count written in catalog/roberta.yaml
    assert model.config.max_position_embeddings == 514 and model.config.max_seq_len == 512


def test_the_same_count_as_hf_roberta_for_masked_lm():
    hf_config = transformers.RobertaConfig(num_hidden_layers=2, max_position_embeddings=514,
                                           type_vocab_size=1)
    with torch.device("meta"):
        hf = transformers.RobertaForMaskedLM(hf_config)
    assert zoo.build("roberta", n_layer=2, device="meta").num_params() == sum(
        p.numel() for p in hf.parameters())


# --- the deltas from BERT --------------------------------------------------------------------

def test_config_deltas():
    c = RobertaConfig()
    assert (c.vocab_size, c.max_position_embeddings, c.type_vocab_size) == (50265, 514, 1)
    assert c.pad_token_id == 1
    assert c.layer_norm_eps == 1e-5 and not c.next_sentence_head
    assert (c.n_layer, c.d_model, c.n_head, c.d_ff) == (12, 768, 12, 3072)  # BERT-Base shape


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return build_variant("roberta", "tiny").eval()


def test_position_ids_count_real_tokens_past_the_pad_id(tiny):
    ids = torch.tensor([[0, 5, 6, 2, 1, 1],    # right padding
                        [1, 1, 0, 7, 7, 2],    # left padding
                        [0, 1, 8, 2, 9, 1]])   # pads anywhere keep position pad_token_id
    expected = torch.tensor([[2, 3, 4, 5, 1, 1],
                             [1, 1, 2, 3, 4, 5],
                             [2, 1, 3, 4, 5, 1]])
    assert torch.equal(tiny.embeddings.position_ids(ids), expected)
    mask = (ids != 1).long()  # pos = cumsum(mask) * mask + padding_idx
    assert torch.equal(expected, torch.cumsum(mask, 1) * mask + 1)


def test_position_padding_row(tiny):
    rows = tiny.embeddings.position_embeddings
    assert rows.padding_idx == 1 and torch.all(rows.weight[1] == 0)
    assert torch.all(tiny.embeddings.word_embeddings.weight[1] == 0)
    assert tiny.embeddings.ln.eps == 1e-5


def test_no_pooler_and_no_nsp(tiny):
    assert isinstance(tiny, Bert) and not hasattr(tiny, "pooler") and not hasattr(tiny, "nsp_head")
    inputs = tiny.dummy_inputs(batch=3, seqlen=7, padded=True)
    assert set(inputs) == {"input_ids", "attention_mask"}
    # Padding uses the pad id, so positions and the attention mask agree.
    assert torch.equal(inputs["input_ids"] != 1, inputs["attention_mask"].bool())


def test_max_length_is_position_rows_minus_the_offset(tiny):
    assert tiny.config.max_seq_len == 64
    tiny(torch.full((1, 64), 5))
    with pytest.raises(ValueError, match="64 positions"):
        tiny(torch.full((1, 65), 5))


def test_flops_per_token_has_no_pooler():
    model = zoo.build("roberta", device="meta")
    weights = 12 * (4 * 768**2 + 2 * 768 * 3072) + 768**2 + 50265 * 768
    assert model.flops_per_token(100) == 2 * weights + 4 * 12 * 768 * 100


# --- parity with Hugging Face through zoo.from_pretrained ------------------------------------

def hf_model(**overrides):
    fields = dict(vocab_size=203, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=100, max_position_embeddings=42, type_vocab_size=1,
                  layer_norm_eps=1e-5, pad_token_id=1, attn_implementation="eager")
    model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**{**fields, **overrides}))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # non-trivial biases, LayerNorms and MLM bias too
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def batch():
    """(3, 13), a non-power-of-two length: one full row, one right-padded, one left-padded (the
    last is where position ids from the input ids differ from 2, 3, ... for real tokens)."""
    torch.manual_seed(2)
    lengths = torch.tensor([13, 10, 4])
    mask = (torch.arange(13)[None] < lengths[:, None]).long()
    mask[2] = mask[2].flip(0)
    ids = torch.randint(3, 203, (3, 13))
    return ids.masked_fill(mask == 0, 1), mask


def compare(model, hf):
    ids, mask = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        ours = model(ids, mask).logits
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], **TOL)
    labels = torch.full_like(ids, -100)
    labels[:, 1:3] = ids[:, 1:3]
    with torch.no_grad():
        ref_loss = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
        torch.testing.assert_close(model(ids, mask, targets=labels).loss, ref_loss, **TOL)


def test_parity_with_roberta_for_masked_lm(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    model = zoo.from_pretrained("roberta", tmp_path)
    assert isinstance(model, Roberta) and model.config.max_seq_len == 40
    compare(model, hf)


def test_parity_from_a_bin_file_with_a_pooler(tmp_path):
    """torch.save of the state dict (transformers 5 saves only safetensors): tied decoder
    copies included, plus the pooler that the published roberta-base files carry."""
    hf = hf_model(type_vocab_size=2, layer_norm_eps=1e-6)
    hf.config.save_pretrained(tmp_path)
    state = dict(hf.state_dict())
    state["roberta.pooler.dense.weight"] = torch.zeros(48, 48)
    state["roberta.pooler.dense.bias"] = torch.zeros(48)
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = zoo.from_pretrained("roberta", tmp_path)
    assert model.config.type_vocab_size == 2 and model.config.layer_norm_eps == 1e-6
    compare(model, hf)


def test_a_missing_weight_is_named(tmp_path):
    hf = hf_model(num_hidden_layers=1)
    hf.config.save_pretrained(tmp_path)
    state = dict(hf.state_dict())
    del state["lm_head.layer_norm.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="lm_head.layer_norm.weight"):
        zoo.from_pretrained("roberta", tmp_path)


def test_a_misshaped_weight_is_named(tmp_path):
    hf = hf_model(num_hidden_layers=1)
    hf.config.save_pretrained(tmp_path)
    state = dict(hf.state_dict())
    state["roberta.embeddings.position_embeddings.weight"] = torch.zeros(40, 48)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="position_embeddings.weight.*\\(40, 48\\)"):
        zoo.from_pretrained("roberta", tmp_path)


# --- XLM-RoBERTa: RoBERTa's network under another model_type ----------------------------------

@pytest.mark.parametrize("cls", ["XLMRobertaForMaskedLM", "XLMRobertaModel"])
def test_xlm_roberta_folders_load_as_roberta(tmp_path, cls):
    """transformers' XLM-RoBERTa classes are its RoBERTa classes renamed (model_type
    "xlm-roberta", the same keys); a headless XLMRobertaModel gives the same final states."""
    from zoo.convert import detect_model

    fields = dict(vocab_size=203, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=100, max_position_embeddings=42, type_vocab_size=1,
                  layer_norm_eps=1e-5, pad_token_id=1, attn_implementation="eager")
    torch.manual_seed(3)
    hf = getattr(transformers, cls)(transformers.XLMRobertaConfig(**fields)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(tmp_path)
    assert detect_model(tmp_path) == "roberta"
    model, info = zoo.from_pretrained("roberta", tmp_path, output_loading_info=True)
    ids, mask = batch()
    if cls == "XLMRobertaForMaskedLM":
        assert not info.missing
        compare(model, hf)
        return
    assert info.missing and all(k.startswith("lm_head.") for k in info.missing)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = model.hidden_states(ids, attention_mask=mask)
    torch.testing.assert_close(ours[mask.bool()], ref[mask.bool()], **TOL)


@pytest.mark.parametrize("variant, count", [("xlm-roberta-base", 278_295_186),
                                            ("xlm-roberta-large", 560_142_482)])
def test_xlm_roberta_sizes_are_hf_xlm_roberta_for_masked_lm(variant, count):
    """The published sizes: RoBERTa's shapes with a 250,002-word vocabulary, counted as
    transformers' XLMRobertaForMaskedLM counts them (its tied decoder once)."""
    large = variant.endswith("large")
    hf_config = transformers.XLMRobertaConfig(
        vocab_size=250002, max_position_embeddings=514, type_vocab_size=1,
        hidden_size=1024 if large else 768, num_hidden_layers=24 if large else 12,
        num_attention_heads=16 if large else 12, intermediate_size=4096 if large else 3072)
    with torch.device("meta"):
        hf = transformers.XLMRobertaForMaskedLM(hf_config)
    assert sum(p.numel() for p in hf.parameters()) == count
    assert build_variant("roberta", variant, device="meta").num_params() == count
