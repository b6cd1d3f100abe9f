"""T5 (zoo/t5.py): the released sizes' parameter counts against transformers' own class, the
position buckets against transformers' function, fp32 parity with Hugging Face's
T5ForConditionalGeneration built from tiny random configs (T5's wiring and T5 v1.1's) and read
with zoo.from_pretrained: logits, loss and gradients with padded sources and targets, cached
decoding, greedy generation, the export back, and the checkpoint errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import lazy_import, randomized
from decoder_parity import (
    ATOL,
    assert_seq2seq_cached_decoding_equals_the_full_forward,
    checkpoint_error,
    seq2seq_batch,
)

import zoo
from harness.models import build_variant
from zoo.t5 import T5, T5Config, relative_position_bucket

transformers = lazy_import("transformers")  # tests that use it skip without it

NAME = "t5"
# Small enough to be quick, long enough (S, T up to 30) to pass max_distance 20 and reach the
# logarithmic buckets and the last one.
SIZES = dict(vocab_size=120, d_model=32, d_kv=6, num_heads=4, d_ff=40, num_layers=2,
             relative_attention_num_buckets=16, relative_attention_max_distance=20,
             dropout_rate=0.0, decoder_start_token_id=0)
V11 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
SETTINGS = {
    "T5 (ReLU, tied output)": {},
    "T5 v1.1 (gated GELU, own output), 3 decoder layers": dict(**V11, num_decoder_layers=3),
    # transformers 5 builds a new v1.1 model with the output tied but not rescaled
    "T5 v1.1 as transformers 5 builds it": V11,
}
RELEASED = {  # (d_model, d_kv, num_heads, d_ff, num_layers, feed_forward_proj) -> params
    "t5-small": ((512, 64, 8, 2048, 6, "relu"), 60_506_624),
    "t5-3b": ((1024, 128, 32, 16384, 24, "relu"), 2_851_598_336),
    "flan-t5-small": ((512, 64, 6, 1024, 8, "gated-gelu"), 76_961_152),
    "flan-t5-large": ((1024, 64, 16, 2816, 24, "gated-gelu"), 783_150_080),
}


def hf_model(untie: bool = False, **overrides):
    """transformers' T5ForConditionalGeneration with random weights everywhere (norm gains
    included), eval mode; with `untie`, an output matrix of its own, as transformers 5 loads a
    released v1.1 file."""
    config = transformers.T5Config(**{**SIZES, **overrides})
    torch.manual_seed(0)
    hf = randomized(transformers.T5ForConditionalGeneration(config)).eval()
    if untie:
        hf.lm_head.weight = torch.nn.Parameter(torch.randn(hf.lm_head.weight.shape) / 6)
    return hf


def batch(V: int = 120):
    """decoder_parity.seq2seq_batch of this file's vocabulary, ids from 2 up."""
    return seq2seq_batch(V, first=2)


@pytest.fixture(scope="module", params=list(SETTINGS))
def pair(request, tmp_path_factory):
    """(transformers' model, the zoo model read from its saved folder)."""
    hf = hf_model(untie="own output" in request.param, **SETTINGS[request.param])
    folder = tmp_path_factory.mktemp("t5")
    hf.save_pretrained(folder)
    return hf, zoo.from_pretrained(NAME, folder).eval()


# ---- sizes and buckets ------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(RELEASED))
def test_released_sizes_count_as_transformers(variant):
    (d, d_kv, heads, d_ff, layers, ffn), published = RELEASED[variant]
    config = transformers.T5Config(d_model=d, d_kv=d_kv, num_heads=heads, d_ff=d_ff,
                                   num_layers=layers, feed_forward_proj=ffn,
                                   tie_word_embeddings=ffn == "relu")
    with torch.device("meta"):
        hf = transformers.T5ForConditionalGeneration(config)
    # transformers 5 keeps one tensor for a v1.1 output layer too; count it as the file does
    hf_count = sum(p.numel() for p in hf.parameters()) + (0 if ffn == "relu" else d * 32128)
    ours = build_variant(NAME, variant, device="meta").num_params()
    assert ours == hf_count == published


def test_the_default_config_is_t5_base():
    assert zoo.build(NAME, device="meta").num_params() == 222_903_552


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets, distance", [(32, 128), (16, 20), (8, 12)])
def test_buckets_are_transformers_buckets(bidirectional, buckets, distance):
    offsets = torch.arange(-400, 401)[None, :]
    reference = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        offsets, bidirectional=bidirectional, num_buckets=buckets, max_distance=distance)
    ours = relative_position_bucket(offsets, bidirectional, buckets, distance)
    assert torch.equal(ours, reference)
    assert ours.min() == 0 and ours.max() == buckets - 1


def test_buckets_by_hand():
    """T5's defaults: distances 0..7 exact, 8.. logarithmic to 128, the last bucket beyond;
    keys after the query in the upper 16 (bidirectional), none of them in a causal stack."""
    bucket = lambda d, both=True: relative_position_bucket(  # noqa: E731
        torch.tensor([d]), both, 32, 128).item()
    assert [bucket(-d) for d in range(8)] == list(range(8))
    assert [bucket(d) for d in range(1, 8)] == list(range(17, 24))
    # log(d / 8) / log(16) * 8 whole: 12 -> 8 + 1, 32 -> 8 + 4, 127 -> 8 + 7, then clamped
    assert [bucket(-d) for d in (12, 32, 127, 128, 5000)] == [9, 12, 15, 15, 15]
    assert bucket(5000) == 31
    assert [bucket(d, both=False) for d in (5, 1)] == [0, 0]
    assert [bucket(-d, both=False) for d in (0, 15, 16, 5000)] == [0, 15, 16, 31]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("queries, keys, first_query", [(5, 7, 0), (7, 5, 0), (300, 300, 0),
                                                         (1, 9, 8), (3, 12, 9), (1, 1, 0)])
def test_the_bias_laid_along_its_diagonals_is_the_lookup_of_every_offset(
        bidirectional, queries, keys, first_query):
    """The stack's bias, built once per offset and laid along the diagonals, equals the table
    looked up at bucket(key - query) for every (query, key): encoder and decoder, more keys
    than queries and fewer, a cache's later queries; contiguous, and the table's gradient the
    same."""
    from zoo.t5 import RelativePositionBias

    torch.manual_seed(0)
    bias = RelativePositionBias(4, 32, 128, bidirectional)
    query = torch.arange(first_query, first_query + queries)[:, None]
    offsets = torch.arange(keys)[None, :] - query
    expected = bias.table(relative_position_bucket(offsets, bidirectional, 32, 128))
    expected = expected.permute(2, 0, 1).unsqueeze(0)  # (1, n_head, queries, keys)
    got = bias(queries, keys, first_query)
    assert got.is_contiguous() and torch.equal(got, expected)
    weights = torch.randn_like(expected)
    (grad,) = torch.autograd.grad((got * weights).sum(), bias.table.weight)
    (want,) = torch.autograd.grad((expected * weights).sum(), bias.table.weight)
    torch.testing.assert_close(grad, want, atol=1e-4, rtol=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="feed_forward 'swiglu'"):
        T5Config(feed_forward="swiglu")
    with pytest.raises(ValueError, match="d_kv must be an integer >= 1"):
        T5Config(d_kv=0)
    with pytest.raises(ValueError, match="max_distance"):
        T5Config(num_buckets=32, max_distance=8)


# ---- parity with transformers ----------------------------------------------------------------

def test_logits_and_loss_match_with_padding(pair):
    hf, model = pair
    src, src_mask, tgt, tgt_mask = batch()
    labels = tgt.masked_fill(tgt_mask == 0, -100)
    start = torch.zeros(3, 1, dtype=torch.long)
    decoder_ids = torch.cat([start, tgt[:, :-1]], dim=1)  # what transformers makes of labels
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=decoder_ids,
                 decoder_attention_mask=tgt_mask, labels=labels)
        out = model(src, decoder_ids, src_mask=src_mask, tgt_mask=tgt_mask, targets=labels)
    real = tgt_mask.bool()
    diff = (out.logits - ref.logits)[real].abs().max().item()
    assert diff <= ATOL, diff
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)


def test_gradients_match(pair):
    """The backward too: the position tables (which every layer shares), the first and last
    attention, the output layer."""
    hf, model = pair
    src, src_mask, tgt, _ = batch()
    hf.zero_grad(), model.zero_grad()
    hf(input_ids=src, attention_mask=src_mask, labels=tgt).loss.backward()
    decoder_ids = torch.cat([torch.zeros(3, 1, dtype=torch.long), tgt[:, :-1]], dim=1)
    model(src, decoder_ids, src_mask=src_mask, targets=tgt).loss.backward()
    last = len(model.decoder) - 1
    pairs = {
        "enc_bias.table": hf.encoder.block[0].layer[0].SelfAttention.relative_attention_bias,
        "dec_bias.table": hf.decoder.block[0].layer[0].SelfAttention.relative_attention_bias,
        "encoder.0.self_attn.q": hf.encoder.block[0].layer[0].SelfAttention.q,
        f"decoder.{last}.cross_attn.k": hf.decoder.block[last].layer[1].EncDecAttention.k,
        "tok_emb": hf.shared,
    }
    for ours, theirs in pairs.items():
        grad = model.get_submodule(ours).weight.grad
        torch.testing.assert_close(grad, theirs.weight.grad, atol=1e-5, rtol=1e-4, msg=ours)
    if not model.config.tie_embeddings:
        torch.testing.assert_close(model.lm_head.weight.grad, hf.lm_head.weight.grad,
                                   atol=1e-5, rtol=1e-4)


def test_cached_decoding_equals_the_full_forward(pair):
    src, src_mask, tgt, _ = batch()
    assert_seq2seq_cached_decoding_equals_the_full_forward(pair[1], src, src_mask, tgt)


def test_greedy_generation_matches_transformers(pair):
    """Greedy tokens from transformers' forward over the whole prefix at each step, from its
    config's decoder start (transformers' generate cannot decode more decoder layers than
    encoder layers: its cache is sized by the encoder's count)."""
    hf, model = pair
    src, src_mask, _, _ = batch()
    ref = torch.full((3, 1), hf.config.decoder_start_token_id)
    with torch.no_grad():
        for _ in range(12):
            logits = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=ref).logits
            ref = torch.cat([ref, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    ours = model.generate(src, 12, src_mask=src_mask)  # starts from the padding token, id 0
    assert torch.equal(ours, ref)


# ---- export and checkpoints ------------------------------------------------------------------

@pytest.mark.parametrize("setting", list(SETTINGS))
def test_transformers_reads_the_export(setting, tmp_path):
    fields = {"feed_forward": "gated-gelu", "tie_embeddings": False, "scale_output": False,
              "n_decoder_layer": 3} if "v1.1" in setting else {}
    torch.manual_seed(1)
    model = randomized(T5(T5Config(vocab_size=90, d_model=24, d_kv=5, n_head=3, d_ff=36,
                                   n_layer=2, dropout=0.0, **fields))).eval()
    folder = zoo.save_pretrained(NAME, model, tmp_path / "out")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    src, src_mask, tgt, _ = batch(V=90)
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
        ours = model(src, tgt, src_mask=src_mask).logits
    assert (ours - ref).abs().max().item() <= ATOL
    back = zoo.from_pretrained(NAME, folder)
    assert back.config == model.config
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def rewrite_config(folder, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, **changes}))


def test_checkpoint_errors_are_one_line(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    rewrite_config(tmp_path, feed_forward_proj="gated-silu")
    assert "feed_forward_proj = 'gated-silu' is not supported by zoo.t5" in checkpoint_error(
        NAME, tmp_path)


def test_the_decoder_starts_where_the_config_says(tmp_path):
    hf_model().save_pretrained(tmp_path)
    assert zoo.from_pretrained(NAME, tmp_path).config.decoder_start_id == 0  # T5's padding
    rewrite_config(tmp_path, decoder_start_token_id=5)
    model = zoo.from_pretrained(NAME, tmp_path)
    assert model.config.decoder_start_id == 5
    assert model.generate(batch()[0], 3)[:, 0].tolist() == [5, 5, 5]


def test_the_tiny_and_small_variants_train_a_step_in_bfloat16():
    """Under autocast the attention runs in bfloat16 while the position tables are float32:
    the bias must follow the queries' dtype."""
    model = build_variant(NAME, "tiny")
    inputs = model.dummy_inputs(2, 16, padded=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs, targets=inputs["tgt_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss) and model.enc_bias.table.weight.grad is not None
    assert 20e6 < build_variant(NAME, "small", device="meta").num_params() < 30e6
