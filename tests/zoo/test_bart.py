"""BART and mBART (zoo/bart.py): the released sizes counted against transformers' own classes,
fp32 parity with Hugging Face's BartForConditionalGeneration and MBartForConditionalGeneration
built from tiny random configs and read with zoo.from_pretrained (logits, loss and gradients
with padded sources and targets, the untrained logits bias, cached decoding, greedy tokens),
the layers written out, the export back, and the checkpoint errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import lazy_import, randomized
from decoder_parity import (
    ATOL,
    assert_seq2seq_cached_decoding_equals_the_full_forward,
    checkpoint_error,
    seq2seq_batch,
)

import zoo
import zoo.bart
from harness.models import build_variant
from zoo.bart import POSITION_OFFSET, Bart, BartConfig
from zoo.layers import split_sinusoids
from zoo.transformer import sinusoidal_positions

transformers = lazy_import("transformers")  # tests that use it skip without it

NAME = "bart"
# 2 encoder and 3 decoder layers (the stacks may differ in depth), every dropout off.
SIZES = dict(vocab_size=120, max_position_embeddings=40, d_model=32, encoder_layers=2,
             decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
             encoder_ffn_dim=48, decoder_ffn_dim=48, dropout=0.0, attention_dropout=0.0,
             activation_dropout=0.0)
RELEASED = {  # (d_model, layers a stack, heads) -> parameters
    "bart-base": ((768, 6, 12), 139_420_416),
    "bart-large": ((1024, 12, 16), 406_291_456),
}


def hf_model(**overrides):
    """transformers' BartForConditionalGeneration with random weights everywhere (LayerNorm
    gains, biases and the untrained logits bias included), eval mode."""
    config = transformers.BartConfig(**{**SIZES, "attn_implementation": "eager", **overrides})
    torch.manual_seed(0)
    hf = randomized(transformers.BartForConditionalGeneration(config)).eval()
    with torch.no_grad():
        hf.final_logits_bias.copy_(torch.randn(hf.final_logits_bias.shape) / 4)
    return hf


def batch(V: int = 120):
    """decoder_parity.seq2seq_batch of this file's vocabulary, ids from 3 up."""
    return seq2seq_batch(V, first=3)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers' model, the zoo model read from its saved folder)."""
    hf = hf_model()
    folder = tmp_path_factory.mktemp("bart")
    hf.save_pretrained(folder)
    return hf, zoo.from_pretrained(NAME, folder).eval()


# ---- sizes, config and the layers written out -------------------------------------------------

@pytest.mark.parametrize("variant", list(RELEASED))
def test_released_sizes_count_as_transformers(variant):
    (d, layers, heads), count = RELEASED[variant]
    config = transformers.BartConfig(d_model=d, encoder_layers=layers, decoder_layers=layers,
                                     encoder_attention_heads=heads, decoder_attention_heads=heads,
                                     encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d)
    with torch.device("meta"):
        hf = transformers.BartForConditionalGeneration(config)
    model = build_variant(NAME, variant, device="meta")
    assert model.num_params() == sum(p.numel() for p in hf.parameters()) == count


def test_defaults_small_and_tiny():
    c = BartConfig()
    assert (c.vocab_size, c.max_seq_len, c.n_layer, c.decoder_layers, c.d_model, c.n_head,
            c.d_ff, c.activation, c.pad_token_id, c.decoder_start_id) == \
        (50265, 1024, 6, 6, 768, 12, 3072, "gelu", 1, 2)
    assert build_variant(NAME, "small", device="meta").num_params() == 27_316_224


@pytest.mark.parametrize("bad, says", [
    (dict(n_head=5), "not divisible by n_head"),
    (dict(activation="swish"), "activation 'swish'"),
    (dict(decoder_start_id=600), "decoder_start_id 600 is outside the vocabulary"),
    (dict(act_dropout=1.0), "act_dropout"),
])
def test_config_rejects_bad_values(bad, says):
    with pytest.raises(ValueError, match=says):
        BartConfig(**{"vocab_size": 512, "d_model": 64, "n_head": 4, **bad})


def test_layers_are_post_ln_with_embedding_norms_and_offset_positions():
    """The encoder's output and the decoder's states written out: LN(E[x] + P[2 + t]), then each
    sub-layer as LN(h + Sublayer(h)), GELU between fc1 and fc2."""
    torch.manual_seed(0)
    model = randomized(Bart(BartConfig(vocab_size=50, max_seq_len=16, n_layer=1,
                                       decoder_layers=1, d_model=16, n_head=2, d_ff=24,
                                       dropout=0.0, attn_dropout=0.0, act_dropout=0.0))).eval()
    src, tgt = torch.randint(0, 50, (1, 7)), torch.randint(0, 50, (1, 5))

    def attention(attn, x, memory, causal):
        q, k, v = attn.q_proj(x), attn.k_proj(memory), attn.v_proj(memory)
        heads = [slice(0, 8), slice(8, 16)]
        out = []
        for h in heads:
            scores = q[0, :, h] @ k[0, :, h].T / 8 ** 0.5
            if causal:
                scores = scores.masked_fill(torch.ones_like(scores).triu(1).bool(), float("-inf"))
            out.append(torch.softmax(scores, -1) @ v[0, :, h])
        return attn.out_proj(torch.cat(out, -1)[None])

    def ffn(layer, x):
        return layer.ffn.fc2(F.gelu(layer.ffn.fc1(x)))

    with torch.no_grad():
        x = model.enc_ln_emb(model.tok_emb(src) + model.enc_pos.weight[POSITION_OFFSET:][:7])
        enc = model.encoder[0]
        x = enc.self_attn_layer_norm(x + attention(enc.self_attn, x, x, False))
        x = enc.final_layer_norm(x + ffn(enc, x))
        torch.testing.assert_close(model.encode(src), x, atol=1e-5, rtol=0)
        y = model.dec_ln_emb(model.tok_emb(tgt) + model.dec_pos.weight[POSITION_OFFSET:][:5])
        dec = model.decoder[0]
        y = dec.self_attn_layer_norm(y + attention(dec.self_attn, y, y, True))
        y = dec.encoder_attn_layer_norm(y + attention(dec.encoder_attn, y, x, False))
        y = dec.final_layer_norm(y + ffn(dec, y))
        logits = y @ model.tok_emb.weight.T + model.final_logits_bias[0]
        torch.testing.assert_close(model(src, tgt).logits, logits, atol=1e-5, rtol=0)


def test_the_logits_bias_is_a_buffer_the_optimizer_never_sees():
    model = build_variant(NAME, "tiny")
    assert "final_logits_bias" in model.state_dict()
    assert all(p is not model.final_logits_bias for p in model.parameters())
    assert model.tok_emb.weight[model.config.pad_token_id].abs().sum() == 0  # the padding row


def test_flops_per_token():
    c = BartConfig(vocab_size=100, n_layer=2, decoder_layers=3, d_model=32, n_head=4, d_ff=48)
    d, f = 32, 48
    per_source = 2 * 2 * (4 * d * d + 2 * d * f) + 2 * 3 * 2 * d * d + 4 * 2 * d * 10
    per_target = 2 * 3 * (6 * d * d + 2 * d * f) + 2 * 100 * d + 4 * 3 * d * 9 / 2 \
        + 4 * 3 * d * 10
    assert Bart(c).flops_per_token(8, src_len=10) == per_target + per_source * 10 / 8


# ---- parity with transformers ----------------------------------------------------------------

def test_logits_and_loss_match_with_padding(pair):
    hf, model = pair
    assert (model.config.n_layer, model.config.decoder_layers) == (2, 3)
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    src, src_mask, tgt, tgt_mask = batch()
    labels = tgt.masked_fill(tgt_mask == 0, -100)
    start = torch.full((3, 1), 2)
    decoder_ids = torch.cat([start, tgt[:, :-1]], dim=1)  # what transformers makes of labels
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=decoder_ids,
                 decoder_attention_mask=tgt_mask, labels=labels)
        out = model(src, decoder_ids, src_mask=src_mask, tgt_mask=tgt_mask, targets=labels)
    real = tgt_mask.bool()
    diff = (out.logits - ref.logits)[real].abs().max().item()
    assert diff <= ATOL, diff
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)


def test_the_offset_and_the_logits_bias_are_what_matched(pair, monkeypatch):
    """Each left out moves the logits far past the tolerance: positions read without the
    offset of 2, and the head without the bias."""
    hf, model = pair
    src, src_mask, tgt, _ = batch()
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
        ours = model(src, tgt, src_mask=src_mask).logits
        assert (ours - ref).abs().max() <= ATOL
        bias = model.final_logits_bias.clone()
        model.final_logits_bias.zero_()
        assert (model(src, tgt, src_mask=src_mask).logits - ref).abs().max() > 100 * ATOL
        model.final_logits_bias.copy_(bias)
        monkeypatch.setattr(zoo.bart, "POSITION_OFFSET", 0)
        assert (model(src, tgt, src_mask=src_mask).logits - ref).abs().max() > 100 * ATOL


def test_gradients_match(pair):
    """The backward too: both position tables, the first encoder and the last decoder
    attention, the shared table."""
    hf, model = pair
    src, src_mask, tgt, _ = batch()
    hf.zero_grad(), model.zero_grad()
    hf(input_ids=src, attention_mask=src_mask, labels=tgt).loss.backward()
    decoder_ids = torch.cat([torch.full((3, 1), 2), tgt[:, :-1]], dim=1)
    model(src, decoder_ids, src_mask=src_mask, targets=tgt).loss.backward()
    pairs = {"enc_pos": hf.model.encoder.embed_positions,
             "dec_pos": hf.model.decoder.embed_positions,
             "encoder.0.self_attn.q_proj": hf.model.encoder.layers[0].self_attn.q_proj,
             "decoder.2.encoder_attn.k_proj": hf.model.decoder.layers[2].encoder_attn.k_proj,
             "tok_emb": hf.model.shared}
    for ours, theirs in pairs.items():
        grad = model.get_submodule(ours).weight.grad
        torch.testing.assert_close(grad, theirs.weight.grad, atol=1e-5, rtol=1e-4, msg=ours)


def test_cached_decoding_equals_the_full_forward(pair):
    src, src_mask, tgt, _ = batch()
    assert_seq2seq_cached_decoding_equals_the_full_forward(pair[1], src, src_mask, tgt)


def test_greedy_generation_matches_transformers(pair):
    """transformers' generate from its config's decoder start, greedy, with nothing forced or
    stopped (no EOS, no forced BOS): the same tokens."""
    hf, model = pair
    src, src_mask, _, _ = batch()
    ref = hf.generate(input_ids=src, attention_mask=src_mask, max_new_tokens=12,
                      do_sample=False, num_beams=1, eos_token_id=None, forced_bos_token_id=None,
                      forced_eos_token_id=None, no_repeat_ngram_size=0)
    ours = model.generate(src, 12, src_mask=src_mask)  # starts from </s>, id 2
    assert ours[:, 0].tolist() == [2, 2, 2] and len(set(ours[:, 1:].flatten().tolist())) > 1
    assert torch.equal(ours, ref)


def test_a_training_step_with_dropout_reaches_every_weight():
    torch.manual_seed(0)
    model = build_variant(NAME, "tiny").train()
    inputs = model.dummy_inputs(2, 16, padded=True)
    loss = model(**inputs, targets=inputs["tgt_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    assert model.final_logits_bias.grad is None


def test_inputs_past_the_position_table_are_refused_naming_it():
    model = build_variant(NAME, "tiny", max_seq_len=8).eval()
    with pytest.raises(ValueError, match="9 positions exceed the model's maximum of 8"):
        model(torch.zeros(1, 9, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))


# ---- export and checkpoints ------------------------------------------------------------------

def test_transformers_reads_the_export(tmp_path):
    torch.manual_seed(1)
    model = randomized(build_variant(NAME, "tiny", decoder_layers=3, activation="gelu_tanh",
                                     dropout=0.0, attn_dropout=0.0, act_dropout=0.0)).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()
    folder = zoo.save_pretrained(NAME, model, tmp_path / "out")
    hf = transformers.BartForConditionalGeneration.from_pretrained(folder).eval()
    src, src_mask, tgt, _ = batch(V=512)
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
        ours = model(src, tgt, src_mask=src_mask).logits
    assert (ours - ref).abs().max().item() <= ATOL
    back = zoo.from_pretrained(NAME, folder)
    assert back.config == model.config
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_base_model_and_task_heads_load(tmp_path):
    hf = hf_model()
    hf.model.save_pretrained(tmp_path / "base")  # BartModel: no head, no bias, no prefix
    base, info = zoo.from_pretrained(NAME, tmp_path / "base", output_loading_info=True)
    assert set(info.missing) == {"final_logits_bias"} and not info.unused
    src, src_mask, tgt, _ = batch()
    with torch.no_grad():
        ref = hf.model(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt)
        states = base.hidden_states(src, tgt, src_mask=src_mask)
        assert (states - ref.last_hidden_state).abs().max() <= ATOL
    classifier = transformers.BartForSequenceClassification(hf.config)
    classifier.model.load_state_dict(hf.model.state_dict())
    classifier.save_pretrained(tmp_path / "classifier")
    _, info = zoo.from_pretrained(NAME, tmp_path / "classifier", output_loading_info=True)
    assert info.unused and all(k.startswith("classification_head.") for k in info.unused)


def rewrite_config(folder, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("field, value, says", [
    ("decoder_ffn_dim", 64, "decoder_ffn_dim = 64"),
    ("encoder_layerdrop", 0.1, "encoder_layerdrop = 0.1"),
    ("activation_function", "swish", "activation_function = 'swish'"),
])
def test_configs_zoo_bart_cannot_run_are_refused_naming_the_field(field, value, says, tmp_path):
    hf_model().save_pretrained(tmp_path)
    rewrite_config(tmp_path, **{field: value})
    assert says in checkpoint_error(NAME, tmp_path)


def test_the_model_is_detected_and_starts_where_the_config_says(tmp_path):
    hf_model().save_pretrained(tmp_path)
    assert zoo.convert.detect_model(tmp_path) == NAME
    rewrite_config(tmp_path, decoder_start_token_id=5)
    model = zoo.from_pretrained(NAME, tmp_path)
    assert model.generate(batch()[0], 3)[:, 0].tolist() == [5, 5, 5]


# ---- mBART and Pegasus: BART's network pre-LN, with final LayerNorms and scaled embeddings -----

PRE_LN = {  # model_type -> (transformers class, its config class, config fields, decoder start)
    "mbart": ("MBartForConditionalGeneration", "MBartConfig", {}, 0),  # bos_token_id
    "pegasus": ("PegasusForConditionalGeneration", "PegasusConfig",
                {"activation_function": "relu"}, 0),  # <pad>
}


def pre_ln_model(kind: str, **overrides):
    """transformers' mBART or Pegasus of this file's sizes, tokens scaled, random weights
    everywhere but Pegasus's fixed sinusoids, eval mode. mBART's pretrained configs leave
    decoder_start_token_id unset."""
    cls, config_cls, fields, _ = PRE_LN[kind]
    config = getattr(transformers, config_cls)(**{**SIZES, "scale_embedding": True, **fields,
                                                   "attn_implementation": "eager", **overrides})
    torch.manual_seed(3)
    hf = randomized(getattr(transformers, cls)(config)).eval()
    with torch.no_grad():
        hf.final_logits_bias.copy_(torch.randn(hf.final_logits_bias.shape) / 4)
        if kind == "pegasus":
            for stack in (hf.model.encoder, hf.model.decoder):
                stack.embed_positions.weight.copy_(stack.embed_positions.create_weight())
    return hf


@pytest.fixture(scope="module", params=list(PRE_LN))
def pre_ln_pair(request, tmp_path_factory):
    """(model_type, transformers' model, the zoo model read from its saved folder)."""
    hf = pre_ln_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    assert zoo.convert.detect_model(folder) == NAME
    return request.param, hf, zoo.from_pretrained(NAME, folder).eval()


def test_mbart_large_cc25_counts_as_transformers():
    """The paper's model: BART-large's shape with 250,027 words (the paper rounds it to 680M)."""
    config = transformers.MBartConfig(vocab_size=250027, d_model=1024, encoder_layers=12,
                                      decoder_layers=12, encoder_attention_heads=16,
                                      decoder_attention_heads=16, encoder_ffn_dim=4096,
                                      decoder_ffn_dim=4096, scale_embedding=True)
    with torch.device("meta"):
        hf = transformers.MBartForConditionalGeneration(config)
    model = build_variant(NAME, "mbart-large-cc25", device="meta")
    assert model.config.pre_ln and model.config.scale_embedding
    assert model.num_params() == sum(p.numel() for p in hf.parameters()) == 610_851_840


def test_pegasus_large_counts_as_transformers_and_the_paper():
    """568M in the paper; transformers counts its two frozen sinusoid tables as well."""
    config = transformers.PegasusConfig(vocab_size=96103, d_model=1024, encoder_layers=16,
                                        decoder_layers=16, encoder_attention_heads=16,
                                        decoder_attention_heads=16, encoder_ffn_dim=4096,
                                        decoder_ffn_dim=4096, max_position_embeddings=1024)
    with torch.device("meta"):
        hf = transformers.PegasusForConditionalGeneration(config)
    trained = sum(p.numel() for p in hf.parameters() if p.requires_grad)
    model = build_variant(NAME, "pegasus-large", device="meta")
    assert model.num_params() == trained == 568_699_904
    assert sum(p.numel() for p in hf.parameters()) == trained + 2 * 1024 * 1024


def test_the_split_sinusoids_are_pegasus_tables():
    config = transformers.PegasusConfig(**{**SIZES, "max_position_embeddings": 50, "d_model": 36,
                                           "encoder_attention_heads": 2,
                                           "decoder_attention_heads": 2})
    table = transformers.PegasusForConditionalGeneration(config).model.encoder.embed_positions
    assert torch.equal(split_sinusoids(50, 36), table.create_weight())
    with pytest.raises(ValueError, match="d_model 33 is odd"):
        BartConfig(vocab_size=64, d_model=33, n_head=3, positions="sinusoidal")


def test_pre_ln_logits_loss_and_gradients_match(pre_ln_pair):
    kind, hf, model = pre_ln_pair
    c = model.config
    assert (c.pre_ln, c.scale_embedding, c.decoder_start_id) == (True, True, PRE_LN[kind][3])
    assert (c.positions, c.embedding_norm) == (("sinusoidal", False) if kind == "pegasus"
                                               else ("learned", True))
    trained = [p for p in hf.parameters() if p.requires_grad]
    assert model.num_params() == sum(p.numel() for p in trained)
    src, src_mask, tgt, tgt_mask = batch()
    labels = tgt.masked_fill(tgt_mask == 0, -100)
    decoder_ids = torch.cat([torch.zeros(3, 1, dtype=torch.long), tgt[:, :-1]], dim=1)
    ref = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=decoder_ids,
             decoder_attention_mask=tgt_mask, labels=labels)
    out = model(src, decoder_ids, src_mask=src_mask, tgt_mask=tgt_mask, targets=labels)
    assert (out.logits - ref.logits)[tgt_mask.bool()].abs().max().item() <= ATOL
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    hf.zero_grad(), model.zero_grad()
    ref.loss.backward()
    out.loss.backward()
    pairs = {"enc_ln_out": hf.model.encoder.layer_norm, "dec_ln_out": hf.model.decoder.layer_norm,
             "encoder.0.self_attn.q_proj": hf.model.encoder.layers[0].self_attn.q_proj,
             "tok_emb": hf.model.shared}
    for ours, theirs in pairs.items():
        grad = model.get_submodule(ours).weight.grad
        torch.testing.assert_close(grad, theirs.weight.grad, atol=1e-5, rtol=1e-4, msg=ours)


@pytest.mark.parametrize("change", [{"pre_ln": False}, {"scale_embedding": False},
                                    {"embedding_norm": "flip"}, {"sinusoids": "interleaved"}])
def test_each_switch_is_what_matched(pre_ln_pair, change):
    """The same weights with one switch the other way (post-LN layers without the final
    LayerNorms, no sqrt(d_model) scale, an embedding LayerNorm added or left out, Pegasus's
    sines and cosines interleaved as the Transformer's) are off by far more than 100x the
    tolerance."""
    kind, hf, model = pre_ln_pair
    c = model.config
    if "sinusoids" in change and kind != "pegasus":
        pytest.skip("mBART's positions are learned")
    if change.get("embedding_norm") == "flip":
        change = {"embedding_norm": not c.embedding_norm}
    other = Bart(dataclasses.replace(c, **{k: v for k, v in change.items() if k != "sinusoids"}))
    other.load_state_dict(model.state_dict(), strict=False)
    if "sinusoids" in change:
        d = c.d_model
        other.sinusoids.copy_(sinusoidal_positions(torch.arange(c.max_seq_len), d))
    src, src_mask, tgt, _ = batch()
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
        assert (other.eval()(src, tgt, src_mask=src_mask).logits - ref).abs().max() > 100 * ATOL


def test_pre_ln_cached_decoding_and_greedy_tokens(pre_ln_pair):
    kind, hf, model = pre_ln_pair
    src, src_mask, tgt, _ = batch()
    assert_seq2seq_cached_decoding_equals_the_full_forward(model, src, src_mask, tgt)
    ref = hf.generate(input_ids=src, attention_mask=src_mask, max_new_tokens=10,
                      do_sample=False, num_beams=1, eos_token_id=None, forced_bos_token_id=None,
                      forced_eos_token_id=None, no_repeat_ngram_size=0)
    ours = model.generate(src, 10, src_mask=src_mask)
    assert ours[:, 0].tolist() == [PRE_LN[kind][3]] * 3 and torch.equal(ours, ref)


@pytest.mark.parametrize("kind", list(PRE_LN))
def test_transformers_reads_a_pre_ln_export(tmp_path, kind):
    switches = zoo.convert.bart.KINDS[kind]
    torch.manual_seed(4)
    model = randomized(build_variant(NAME, "tiny", scale_embedding=True, dropout=0.0,
                                     attn_dropout=0.0, act_dropout=0.0, **switches)).eval()
    folder = zoo.save_pretrained(NAME, model, tmp_path / "out")
    assert json.loads((folder / "config.json").read_text())["model_type"] == kind
    hf = getattr(transformers, PRE_LN[kind][0]).from_pretrained(folder).eval()
    src, src_mask, tgt, _ = batch(V=512)
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
        assert (model(src, tgt, src_mask=src_mask).logits - ref).abs().max() <= ATOL
    back = zoo.from_pretrained(NAME, folder)
    assert back.config == model.config
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_switches_no_transformers_class_combines_are_refused_on_export(tmp_path):
    model = build_variant(NAME, "tiny", positions="sinusoidal")  # post-LN, normed
    with pytest.raises(zoo.convert.CheckpointError, match="no transformers class has "
                                                           "pre_ln=False, positions='sinusoidal'"):
        zoo.save_pretrained(NAME, model, tmp_path / "out")


def test_a_missing_final_layer_norm_is_named(tmp_path):
    hf = pre_ln_model("mbart", encoder_layers=1, decoder_layers=1)
    hf.config.save_pretrained(tmp_path)
    state = dict(hf.state_dict())
    del state["model.decoder.layer_norm.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert "model.decoder.layer_norm.weight" in checkpoint_error(NAME, tmp_path)
