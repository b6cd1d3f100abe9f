"""MosaicBERT (zoo/mosaic_bert.py): parameter counts, ALiBi, GeGLU, unpadding, and parity with a
plain reference written here (MosaicBERT is not in Hugging Face transformers)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import zoo
from harness.models import build_variant
from zoo import mosaic_bert
from zoo.layers import math_attention
from zoo.mosaic_bert import MosaicBert, MosaicBertConfig, Packing, alibi_bias, alibi_slopes

NAME = "mosaic-bert"


# ---- published sizes (zoo_specs.md sections 5 and 8) ----------------------------------------

def mlm_head_params(d_model: int, vocab: int) -> int:
    # Dense (d^2 + d) + LayerNorm (2d) + decoder bias (V); the decoder weight is the tied embedding.
    return d_model * d_model + d_model + 2 * d_model + vocab


@pytest.mark.parametrize("variant, encoder, with_both, d_model", [
    ("base", 136_777_728, 137_990_976, 768),
    ("large", 434_139_136, 436_270_912, 1024),
])
def test_published_parameter_counts(variant, encoder, with_both, d_model):
    # The spec counts the encoder + embeddings, and "with both" adds the pooler (d^2 + d) and the
    # MLM head. The masked-LM model (the default, like the reference's BertForMaskedLM) has the
    # MLM head but no pooler: base 136,777,728 + 622,656 = 137,400,384;
    # large 434,139,136 + 1,082,176 = 435,221,312.
    mlm = build_variant(NAME, variant, device="meta")
    assert mlm.num_params() == encoder + mlm_head_params(d_model, 30528)
    assert mlm.num_params() == with_both - (d_model * d_model + d_model)
    assert build_variant(NAME, variant, device="meta", pooler=True).num_params() == with_both


def test_small_variant_count():
    # 4,196,352 (embeddings + LN) + 6 x 3,805,696 (layers) + 271,872 (MLM head) = 27,302,400.
    assert build_variant(NAME, "small", device="meta").num_params() == 27_302_400


def test_defaults_are_the_base_model():
    c = MosaicBertConfig()
    assert (c.vocab_size, c.n_layer, c.d_model, c.n_head, c.d_ff) == (30528, 12, 768, 12, 3072)
    assert c.layer_norm_eps == 1e-12 and c.pad_token_id == 0 and c.type_vocab_size == 2
    assert c.vocab_size % 64 == 0


# ---- ALiBi -----------------------------------------------------------------------------------

def test_alibi_slopes_power_of_two():
    assert alibi_slopes(8) == [2.0**-k for k in range(1, 9)]
    assert alibi_slopes(16) == pytest.approx([2.0 ** (-k / 2) for k in range(1, 17)], rel=1e-12)


def test_alibi_slopes_twelve_heads_follow_the_non_power_of_two_rule():
    expected = [2.0**-k for k in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    assert alibi_slopes(12) == pytest.approx(expected, rel=1e-12)
    assert alibi_slopes(12)[8:] == pytest.approx([0.7071, 0.3536, 0.1768, 0.0884], abs=1e-4)
    # 6 heads: the 4-head slopes, then every other slope of 8 heads, two of them.
    assert alibi_slopes(6) == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])


def test_alibi_bias_is_symmetric_and_linear_in_distance():
    bias = alibi_bias(12, 7)
    assert bias.shape == (12, 7, 7)
    assert torch.equal(bias, bias.transpose(1, 2)) and torch.all(bias.diagonal(dim1=1, dim2=2) == 0)
    slopes = torch.tensor(alibi_slopes(12))
    for i, j in [(0, 6), (3, 1), (5, 5)]:
        torch.testing.assert_close(bias[:, i, j], -slopes * abs(i - j))


# ---- a plain reference: attention written out (math_attention), ALiBi matrix, GeGLU ------------

def reference_logits(model: MosaicBert, ids, mask, types=None) -> torch.Tensor:
    """The reference's padded math, written out with the model's weights."""
    c, (B, T) = model.config, ids.shape
    nh, hs = c.n_head, c.d_model // c.n_head
    types = torch.zeros_like(ids) if types is None else types
    x = model.wte.weight[ids] + model.wtt.weight[types]
    x = F.layer_norm(x, (c.d_model,), model.ln_emb.weight, model.ln_emb.bias, c.layer_norm_eps)
    pos = torch.arange(T, dtype=torch.float32)
    distance = (pos[:, None] - pos[None, :]).abs()
    # Press et al.'s slopes written out: 4 heads 2^-2k; 6 heads = 4 heads + 2^-1, 2^-3.
    slopes = {4: [2**-2, 2**-4, 2**-6, 2**-8], 6: [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]}[nh]
    alibi = -torch.tensor(slopes)[:, None, None] * distance  # (nh, T, T)
    padding = (1.0 - mask[:, None, None, :].float()) * -10000.0  # (B, 1, 1, T)
    for blk in model.blocks:
        a = blk.attn
        q, k, v = (p(x).view(B, T, nh, hs).transpose(1, 2)
                   for p in (a.q_proj, a.k_proj, a.v_proj))  # (B, nh, T, hs)
        y = math_attention(q, k, v, attn_mask=alibi + padding)  # (B, nh, T, hs)
        attn = a.out_proj(y.transpose(1, 2).flatten(2))
        x = F.layer_norm(x + attn, (c.d_model,), blk.ln_attn.weight, blk.ln_attn.bias,
                         c.layer_norm_eps)
        both = x @ blk.ffn.gated_layers.weight.t()  # (B, T, 2I), gate = first I columns
        gate, lin = both[..., : c.d_ff], both[..., c.d_ff :]
        gelu = 0.5 * gate * (1.0 + torch.erf(gate / math.sqrt(2.0)))
        ffn = (gelu * lin) @ blk.ffn.wo.weight.t() + blk.ffn.wo.bias
        x = F.layer_norm(x + ffn, (c.d_model,), blk.ln_ffn.weight, blk.ln_ffn.bias,
                         c.layer_norm_eps)
    h = F.gelu(model.head_dense(x))
    h = F.layer_norm(h, (c.d_model,), model.head_ln.weight, model.head_ln.bias, 1e-12)
    return h @ model.wte.weight.t() + model.lm_head.bias


def padded_batch(vocab: int, lengths: list[int], seqlen: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), seqlen), generator=g)
    mask = (torch.arange(seqlen)[None] < torch.tensor(lengths)[:, None]).long()
    types = (torch.arange(seqlen)[None] >= torch.tensor(lengths)[:, None] // 2).long() * mask
    return ids.masked_fill(mask == 0, 0), mask, types


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return build_variant(NAME, "tiny").eval()


LENGTHS, SEQLEN = [13, 7, 10], 13  # uneven padding, none a power of two


@pytest.mark.parametrize("unpad", [False, True])
def test_parity_with_the_plain_reference(tiny, unpad):
    ids, mask, types = padded_batch(tiny.config.vocab_size, LENGTHS, SEQLEN)
    with torch.no_grad():
        ours = tiny(ids, attention_mask=mask, token_type_ids=types, unpad=unpad).logits
        ref = reference_logits(tiny, ids, mask, types)
    real = mask.bool()
    assert (ours[real] - ref[real]).abs().max() <= 1e-4


def test_parity_with_a_non_power_of_two_head_count():
    torch.manual_seed(1)
    model = build_variant(NAME, "tiny", n_head=6, d_model=48).eval()
    ids, mask, types = padded_batch(model.config.vocab_size, [11, 5], 11, seed=1)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, token_type_ids=types).logits
        ref = reference_logits(model, ids, mask, types)
    assert (ours[mask.bool()] - ref[mask.bool()]).abs().max() <= 1e-4


# ---- unpadding --------------------------------------------------------------------------------

def test_unpadded_equals_padded_on_real_tokens_and_zero_elsewhere(tiny):
    ids, mask, types = padded_batch(tiny.config.vocab_size, LENGTHS, SEQLEN, seed=2)
    with torch.no_grad():
        padded = tiny(ids, attention_mask=mask, token_type_ids=types, unpad=False).logits
        packed = tiny(ids, attention_mask=mask, token_type_ids=types, unpad=True).logits
        hidden = tiny.hidden_states(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    assert (packed[real] - padded[real]).abs().max() <= 1e-5
    assert torch.all(packed[~real] == 0) and torch.all(hidden[~real] == 0)


def test_unpadded_path_runs_per_token_ops_on_packed_tokens_only(tiny):
    ids, mask, _ = padded_batch(tiny.config.vocab_size, LENGTHS, SEQLEN)
    rows = {}
    watched = {"ffn": tiny.blocks[0].ffn, "head": tiny.head_dense, "attn": tiny.blocks[0].attn}
    hooks = [module.register_forward_hook(
        lambda m, i, o, name=name: rows.update({name: i[0].shape}))
        for name, module in watched.items()]
    with torch.no_grad():
        tiny(ids, attention_mask=mask)
    for hook in hooks:
        hook.remove()
    assert rows["ffn"] == rows["head"] == (sum(LENGTHS), tiny.config.d_model)
    assert rows["attn"] == (len(LENGTHS), SEQLEN, tiny.config.d_model)  # re-padded per sequence


def test_unpadded_gradients_match_padded(tiny):
    ids, mask, types = padded_batch(tiny.config.vocab_size, LENGTHS, SEQLEN, seed=3)
    targets = torch.full_like(ids, -100)
    chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    targets[mask.bool() & chosen] = 5
    grads = []
    for unpad in (False, True):
        tiny.zero_grad()
        out = tiny(ids, attention_mask=mask, token_type_ids=types, targets=targets, unpad=unpad)
        out.loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in tiny.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_packing_round_trip():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    packing = Packing.from_mask(mask)
    assert packing.indices.tolist() == [0, 1, 2, 4, 8, 9, 10, 11]
    x = torch.randn(3, 4, 5)
    packed = packing.pack(x)
    assert packed.shape == (8, 5)
    assert torch.equal(packing.unpack(packed), x * mask[..., None])


def test_no_mask_equals_an_all_ones_mask(tiny):
    ids, _, _ = padded_batch(tiny.config.vocab_size, [9, 9], 9, seed=4)
    with torch.no_grad():
        a = tiny(ids).logits
        b = tiny(ids, attention_mask=torch.ones_like(ids)).logits
    assert (a - b).abs().max() <= 1e-5


def test_left_and_right_padding_agree_since_alibi_is_relative(tiny):
    ids, mask, _ = padded_batch(tiny.config.vocab_size, [6], 10, seed=5)
    left_ids, left_mask = ids.roll(4, dims=1), mask.roll(4, dims=1)
    with torch.no_grad():
        right = tiny(ids, attention_mask=mask).logits[0, :6]
        left = tiny(left_ids, attention_mask=left_mask).logits[0, 4:]
    assert (left - right).abs().max() <= 1e-5


def test_sequences_longer_than_512_need_no_position_table(tiny):
    ids = torch.randint(1, tiny.config.vocab_size, (1, 600))
    with torch.no_grad():
        assert torch.isfinite(tiny(ids).logits).all()


# ---- embeddings, heads, init, FLOPs -----------------------------------------------------------

def test_token_types_matter_and_there_is_no_position_embedding(tiny):
    names = [n for n, _ in tiny.named_parameters()]
    assert not any("pos" in n for n in names)
    ids, mask, types = padded_batch(tiny.config.vocab_size, [8, 8], 8, seed=6)
    with torch.no_grad():
        assert not torch.allclose(tiny(ids, mask, types).logits, tiny(ids, mask).logits)


def test_init_and_tying(tiny):
    assert tiny.lm_head.weight is tiny.wte.weight
    assert torch.all(tiny.wte.weight[0] == 0)
    assert tiny.blocks[0].ffn.gated_layers.bias is None
    assert tiny.blocks[0].ffn.gated_layers.weight.shape == (2 * 128, 64)
    assert torch.all(tiny.lm_head.bias == 0) and torch.all(tiny.blocks[0].attn.q_proj.bias == 0)
    assert 0.015 < tiny.blocks[0].ffn.wo.weight.std() < 0.025


def test_pooler_is_optional(tiny):
    with pytest.raises(ValueError, match="pooler"):
        tiny.pool(torch.zeros(1, 3, 64))
    torch.manual_seed(0)
    model = build_variant(NAME, "tiny", pooler=True).eval()
    ids, mask, _ = padded_batch(model.config.vocab_size, [5, 3], 5)
    hidden = model.hidden_states(ids, mask)
    torch.testing.assert_close(model.pool(hidden), torch.tanh(model.pooler(hidden[:, 0])))


def test_flops_per_token_formula():
    c = MosaicBertConfig()
    per_layer = 4 * 768**2 + 3 * 768 * 3072  # q, k, v, out + GeGLU (gate, linear, wo)
    head = 768**2 + 30528 * 768
    expected = 2 * (12 * per_layer + head) + 4 * 12 * 768 * 128
    assert MosaicBert.flops_per_token(zoo.build(NAME, device="meta"), 128) == expected
    assert c.d_ff == 3072


def test_dummy_inputs_have_uneven_padding(tiny):
    inputs = tiny.dummy_inputs(batch=3, seqlen=11, padded=True)
    lengths = inputs["attention_mask"].sum(1).tolist()
    assert lengths[0] == 11 and len(set(lengths)) == 3
    assert torch.all(inputs["input_ids"][inputs["attention_mask"] == 0] == 0)


# ---- chunked attention: equal to the whole-bias path, memory linear in T ------------------------

def chunked_and_plain(model: MosaicBert, run):
    """`run()`'s result with the default chunked attention, then with the whole-bias path."""
    results = []
    for chunked in (True, False):
        model.chunked_attention = chunked
        results.append(run())
    model.chunked_attention = True
    return results


@pytest.fixture
def no_dropout():
    torch.manual_seed(0)
    model = build_variant(NAME, "tiny", dropout=0.0, attn_dropout=0.0)
    model.attn_chunk_size = 4  # 13 queries: chunks of 4, 4, 4 and 1
    return model


def test_chunked_attention_runs_several_chunks_with_an_uneven_last_one(no_dropout):
    ids, mask, _ = padded_batch(no_dropout.config.vocab_size, LENGTHS, SEQLEN)
    spans = []
    rows = mosaic_bert.AlibiBias.rows
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mosaic_bert.AlibiBias, "rows",
                   lambda self, s, e: spans.append((s, e)) or rows(self, s, e))
        with torch.no_grad():
            no_dropout.eval()(ids, attention_mask=mask)
    per_layer = [(0, 4), (4, 8), (8, 12), (12, 13)]
    assert spans == per_layer * no_dropout.config.n_layer


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("unpad", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_chunked_attention_equals_the_whole_bias_path(no_dropout, padded, unpad, train):
    lengths = LENGTHS if padded else [SEQLEN] * len(LENGTHS)
    ids, mask, types = padded_batch(no_dropout.config.vocab_size, lengths, SEQLEN, seed=7)
    no_dropout.train(train)
    chunked, plain = chunked_and_plain(no_dropout, lambda: no_dropout(
        ids, attention_mask=mask, token_type_ids=types, unpad=unpad).logits.detach())
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("unpad", [False, True])
def test_chunked_attention_gradients_equal_the_whole_bias_path(no_dropout, unpad):
    ids, mask, types = padded_batch(no_dropout.config.vocab_size, LENGTHS, SEQLEN, seed=8)
    targets = torch.full_like(ids, -100)
    chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    targets[mask.bool() & chosen] = 7
    no_dropout.train()

    def grads():
        no_dropout.zero_grad()
        no_dropout(ids, attention_mask=mask, token_type_ids=types, targets=targets,
                   unpad=unpad).loss.backward()
        return {n: p.grad.clone() for n, p in no_dropout.named_parameters()}

    chunked, plain = chunked_and_plain(no_dropout, grads)
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], atol=1e-5, rtol=0, msg=name)


def test_default_chunks_keep_the_bias_near_64_mib():
    for T, nh, batch in [(8192, 8, 1), (8192, 12, 1), (4096, 8, 4), (2048, 8, 1)]:
        rows = mosaic_bert.attention_chunk_size(T, nh, batch)
        assert rows < T and rows % 64 == 0
        assert 4 * batch * nh * rows * T <= 64 * 2**20
    assert mosaic_bert.attention_chunk_size(8192, 12, 32) == 64  # the floor, past the budget
    assert mosaic_bert.attention_chunk_size(128, 12, 32) == 128  # short: one chunk, as before


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


LONG = 2048


@pytest.fixture
def long_inputs(monkeypatch):
    """A one-layer, two-head model and a padded batch of one LONG sequence; the chunk budget is
    cut to 1 MiB (64 query rows), as the 64 MiB default gives one chunk at this size."""
    monkeypatch.setattr(mosaic_bert, "ATTN_CHUNK_BYTES", 2**20)
    torch.manual_seed(0)
    model = build_variant(NAME, "tiny", vocab_size=128, n_layer=1, d_model=64, n_head=2, d_ff=128)
    ids, mask, _ = padded_batch(128, [LONG - 100], LONG)
    return model, ids, mask


def test_chunked_forward_never_creates_a_seqlen_squared_tensor(long_inputs):
    model, ids, mask = long_inputs
    model.eval()
    largest = []
    for chunked in (True, False):
        model.chunked_attention = chunked
        with torch.no_grad(), LargestTensor() as spy:
            model(ids, attention_mask=mask, unpad=True)
        largest.append(spy.largest)
    # The largest are the GeGLU's (nnz, 2 d_ff) and a chunk's (1, nh, 64, T) bias or scores.
    assert largest[0] <= LONG * LONG // 4
    assert largest[1] >= 2 * LONG * LONG  # the whole-bias path, so the spy does see such tensors


def test_chunked_training_keeps_no_seqlen_squared_activations(long_inputs):
    # What autograd saves for the backward pass: with several chunks each is checkpointed, so
    # neither a chunk's bias nor its attention weights are kept.
    model, ids, mask = long_inputs
    model.train()
    kept = []
    for chunked in (True, False):
        model.chunked_attention = chunked
        storages = {}

        def pack(t, storages=storages):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids, attention_mask=mask, unpad=True)
        kept.append(sum(storages.values()))
    # Everything kept (activations of all sizes) is less than one (nh, T, T) float32 tensor;
    # the whole-bias path keeps at least its bias (SDPA's backward needs it), that much alone.
    assert kept[0] < 4 * 2 * LONG * LONG
    assert kept[1] >= 4 * 2 * LONG * LONG + kept[0] // 2
