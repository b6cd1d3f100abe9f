"""The original Transformer (zoo/transformer.py) against the paper's equations.

The reference below is written from Vaswani et al. 2017, section 3, with plain tensor algebra:
softmax(Q K^T / sqrt(d_k)) V written out (zoo.layers.math_attention) in h heads with explicit
masks, the sinusoid formula in a Python loop, LayerNorm from its definition and the post-LN
wiring LN(x + Sublayer(x)). It reads its weights from the zoo model, so any difference is in the
computation, not the parameters.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.models import build_variant
from zoo.layers import math_attention
from zoo.transformer import Transformer, TransformerConfig, sinusoidal_positions

TINY = dict(vocab_size=97, n_layer=2, d_model=48, n_head=4, d_ff=80, dropout=0.0)


def tiny_model(**overrides) -> Transformer:
    """A tiny random model whose biases and LayerNorm affine parameters are random too (they
    start at 0 and 1, which would hide wiring mistakes)."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
            if isinstance(module, (nn.LayerNorm, nn.Linear)) and module.bias is not None:
                module.bias.uniform_(-0.5, 0.5)
    return model


def batch_with_padding(V: int, B: int = 3, S: int = 11, T: int = 9):
    """Source lengths 11, 7 and 5 (right padding); target lengths 9, 9 and 6."""
    g = torch.Generator().manual_seed(1)
    src = torch.randint(0, V, (B, S), generator=g)
    tgt = torch.randint(0, V, (B, T), generator=g)
    src_mask = torch.arange(S)[None, :] < torch.tensor([S, 7, 5])[:, None]
    tgt_mask = torch.arange(T)[None, :] < torch.tensor([T, T, 6])[:, None]
    return src, tgt, src_mask, tgt_mask


# ---------------------------------------------------------------- the paper, written out


def reference_logits(model: Transformer, src, tgt, src_mask, tgt_mask=None) -> torch.Tensor:
    c = model.config
    d, h = c.d_model, c.n_head
    dk = d // h
    P = dict(model.named_parameters())
    E = P["tok_emb.weight"]  # the one shared matrix (section 3.4)

    def positions(T):  # section 3.5, one value at a time
        pe = torch.zeros(T, d)
        for pos in range(T):
            for i in range(d // 2):
                pe[pos, 2 * i] = math.sin(pos / 10000 ** (2 * i / d))
                pe[pos, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / d))
        return pe

    def linear(x, prefix):
        return x @ P[prefix + ".weight"].T + P[prefix + ".bias"]

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        normalised = (x - mean) / torch.sqrt(var + c.layer_norm_eps)
        return normalised * P[prefix + ".weight"] + P[prefix + ".bias"]

    def attention(xq, xkv, allowed, prefix):  # allowed: (B, Tq, Tk) bool
        q, k, v = (linear(xq, prefix + ".q_proj"), linear(xkv, prefix + ".k_proj"),
                   linear(xkv, prefix + ".v_proj"))
        heads = lambda t: t.view(*t.shape[:2], h, dk).transpose(1, 2)  # noqa: E731 (B, h, T, dk)
        y = math_attention(heads(q), heads(k), heads(v), attn_mask=allowed[:, None])
        return linear(y.transpose(1, 2).flatten(2), prefix + ".out_proj")  # Concat(heads) W^O

    def ffn(x, prefix):
        return linear(torch.relu(linear(x, prefix + ".fc_in")), prefix + ".fc_out")

    (B, S), T = src.shape, tgt.shape[1]
    src_keys = src_mask[:, None, :]  # (B, 1, S)
    x = E[src] * math.sqrt(d) + positions(S)
    for i in range(c.n_layer):
        p = f"encoder.{i}"
        x = layer_norm(x + attention(x, x, src_keys.expand(B, S, S), p + ".self_attn"), p + ".ln1")
        x = layer_norm(x + ffn(x, p + ".ffn"), p + ".ln2")
    self_allowed = torch.tril(torch.ones(T, T, dtype=torch.bool)).expand(B, T, T)
    if tgt_mask is not None:
        self_allowed = self_allowed & tgt_mask[:, None, :]
    y = E[tgt] * math.sqrt(d) + positions(T)
    for i in range(c.n_layer):
        p = f"decoder.{i}"
        y = layer_norm(y + attention(y, y, self_allowed, p + ".self_attn"), p + ".ln1")
        y = layer_norm(y + attention(y, x, src_keys.expand(B, T, S), p + ".cross_attn"), p + ".ln2")
        y = layer_norm(y + ffn(y, p + ".ffn"), p + ".ln3")
    return y @ E.T  # no final LayerNorm; the pre-softmax projection is E itself


def test_logits_match_the_papers_equations():
    model = tiny_model()
    src, tgt, src_mask, tgt_mask = batch_with_padding(model.config.vocab_size)
    with torch.no_grad():
        ours = model(src, tgt, src_mask=src_mask).logits
        ours_tgt_padded = model(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask).logits
        ref = reference_logits(model, src, tgt, src_mask)
        ref_tgt_padded = reference_logits(model, src, tgt, src_mask, tgt_mask)
    assert ours.shape == (3, 9, model.config.vocab_size)
    assert (ours - ref).abs().max() <= 1e-4
    assert (ours_tgt_padded - ref_tgt_padded).abs().max() <= 1e-4


# ---------------------------------------------------------------- torch.nn.Transformer


def torch_transformer_like(model: Transformer) -> nn.Transformer:
    """torch.nn.Transformer with our weights (it has no embeddings, positions or head)."""
    c = model.config
    ref = nn.Transformer(c.d_model, c.n_head, c.n_layer, c.n_layer, c.d_ff, dropout=0.0,
                         layer_norm_eps=c.layer_norm_eps, batch_first=True, norm_first=c.pre_ln)
    ref.eval()

    def attn(theirs, ours):
        projections = (ours.q_proj, ours.k_proj, ours.v_proj)  # torch stacks them as in_proj
        theirs.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        theirs.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        theirs.out_proj.load_state_dict(ours.out_proj.state_dict())

    with torch.no_grad():
        for theirs, ours in zip(ref.encoder.layers, model.encoder, strict=True):
            attn(theirs.self_attn, ours.self_attn)
            theirs.linear1.load_state_dict(ours.ffn.fc_in.state_dict())
            theirs.linear2.load_state_dict(ours.ffn.fc_out.state_dict())
            theirs.norm1.load_state_dict(ours.ln1.state_dict())
            theirs.norm2.load_state_dict(ours.ln2.state_dict())
        for theirs, ours in zip(ref.decoder.layers, model.decoder, strict=True):
            attn(theirs.self_attn, ours.self_attn)
            attn(theirs.multihead_attn, ours.cross_attn)
            theirs.linear1.load_state_dict(ours.ffn.fc_in.state_dict())
            theirs.linear2.load_state_dict(ours.ffn.fc_out.state_dict())
            for n in (1, 2, 3):
                getattr(theirs, f"norm{n}").load_state_dict(getattr(ours, f"ln{n}").state_dict())
        if c.pre_ln:
            ref.encoder.norm.load_state_dict(model.enc_norm.state_dict())
            ref.decoder.norm.load_state_dict(model.dec_norm.state_dict())
    return ref


def torch_logits(model, ref, src, tgt, src_mask):
    T = tgt.size(1)
    future = ~torch.tril(torch.ones(T, T, dtype=torch.bool))  # torch: True = may NOT attend
    out = ref(model.embed(src), model.embed(tgt), tgt_mask=future, src_key_padding_mask=~src_mask,
              memory_key_padding_mask=~src_mask)
    return out @ model.tok_emb.weight.T


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_torch_transformer_matches_only_without_its_final_norms():
    """torch.nn.Transformer always ends both stacks with a LayerNorm; the paper's post-LN stacks
    do not. With those two norms replaced by the identity, its layers compute ours."""
    model = tiny_model()
    src, tgt, src_mask, _ = batch_with_padding(model.config.vocab_size)
    ref = torch_transformer_like(model)
    with torch.no_grad():
        ours = model(src, tgt, src_mask=src_mask).logits
        with_final_norms = torch_logits(model, ref, src, tgt, src_mask)
        ref.encoder.norm, ref.decoder.norm = nn.Identity(), nn.Identity()
        without = torch_logits(model, ref, src, tgt, src_mask)
    assert (ours - without).abs().max() <= 1e-4
    assert (ours - with_final_norms).abs().max() > 1e-2


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_pre_ln_equals_torch_norm_first_with_its_final_norms():
    model = tiny_model(pre_ln=True)
    assert isinstance(model.enc_norm, nn.LayerNorm) and isinstance(model.dec_norm, nn.LayerNorm)
    src, tgt, src_mask, _ = batch_with_padding(model.config.vocab_size)
    ref = torch_transformer_like(model)
    with torch.no_grad():
        ours = model(src, tgt, src_mask=src_mask).logits
        theirs = torch_logits(model, ref, src, tgt, src_mask)
    assert (ours - theirs).abs().max() <= 1e-4


# ---------------------------------------------------------------- formulas and wiring


def test_sinusoidal_positions_formula():
    d = 16
    pos = torch.tensor([0, 1, 5, 37])
    pe = sinusoidal_positions(pos, d)
    assert pe.shape == (4, d)
    assert torch.equal(pe[0, 0::2], torch.zeros(d // 2))  # sin(0)
    assert torch.equal(pe[0, 1::2], torch.ones(d // 2))  # cos(0)
    for row, p in enumerate(pos.tolist()):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert pe[row, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    # Dimension 0 has wavelength 2 pi; the last pair has wavelength 10000^((d-2)/d) * 2 pi.
    assert pe[3, 0].item() == pytest.approx(math.sin(37), abs=1e-6)


def test_embeddings_are_scaled_shared_and_tied():
    model = tiny_model()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    E = model.tok_emb.weight
    expected = E[ids] * math.sqrt(48) + sinusoidal_positions(torch.arange(2, 7), 48)
    torch.testing.assert_close(model.embed(ids, offset=2), expected)
    # One (V, d) matrix in the whole model: source, target and output projection.
    matrices = [n for n, p in model.named_parameters() if p.shape == (97, 48)]
    assert matrices == ["tok_emb.weight"]
    assert model.num_params() - model.num_params(exclude_embeddings=True) == 97 * 48


def test_post_ln_has_no_final_norm_and_normalised_layer_outputs():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**TINY)).eval()  # LayerNorms at init: gain 1, bias 0
    assert isinstance(model.enc_norm, nn.Identity) and isinstance(model.dec_norm, nn.Identity)
    assert not any(isinstance(m, nn.LayerNorm) for m in (model.enc_norm, model.dec_norm))
    src, _, src_mask, _ = batch_with_padding(97)
    memory = model.encode(src, src_mask)  # the last layer's ln2 output, unnormalised afterwards
    torch.testing.assert_close(memory.mean(-1), torch.zeros(memory.shape[:2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(memory.var(-1, unbiased=False), torch.ones(memory.shape[:2]),
                               atol=1e-3, rtol=0)


def test_source_padding_is_ignored_and_decoder_is_causal():
    model = tiny_model()
    src, tgt, src_mask, _ = batch_with_padding(97)
    with torch.no_grad():
        padded = model(src, tgt, src_mask=src_mask).logits
        alone = model(src[2:, :5], tgt[2:]).logits  # row 2 has 5 source tokens
        changed_tgt = tgt.clone()
        changed_tgt[:, 6] = (tgt[:, 6] + 1) % 97
        later_changed = model(src, changed_tgt, src_mask=src_mask).logits
    torch.testing.assert_close(padded[2:], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(later_changed[:, :6], padded[:, :6], atol=1e-6, rtol=0)
    assert (later_changed[:, 6:] - padded[:, 6:]).abs().max() > 1e-3


def test_initialisation():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**{**TINY, "vocab_size": 2000}))
    assert model.tok_emb.weight.std().item() == pytest.approx(48**-0.5, rel=0.05)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert model.lm_head.bias is None  # the output projection is E alone
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias))
               for m in linears if m is not model.lm_head)
    bound = math.sqrt(6 / (48 + 80))  # Xavier-uniform bound of the (80, 48) fc_in
    assert model.encoder[0].ffn.fc_in.weight.abs().max() <= bound


def test_dropout_only_in_training():
    model = tiny_model(dropout=0.3)
    inputs = model.dummy_inputs(2, 7, padded=True)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, model(**inputs).logits)
        model.train()
        assert not torch.equal(model(**inputs).logits, model(**inputs).logits)


def test_dummy_inputs_have_equal_lengths_and_source_padding():
    model = tiny_model()
    inputs = model.dummy_inputs(batch=4, seqlen=13, padded=True)
    assert inputs["src_ids"].shape == inputs["tgt_ids"].shape == (4, 13)
    assert inputs["src_mask"].all(1)[0::2].all() and not inputs["src_mask"].all(1)[1::2].any()
    assert inputs["src_mask"].any(1).all()


def test_loss_is_mean_cross_entropy_with_ignored_positions():
    model = tiny_model()
    src, tgt, src_mask, _ = batch_with_padding(97)
    targets = torch.randint(0, 97, tgt.shape)
    targets[2, 6:] = -100  # padded target positions
    out = model(src, tgt, src_mask=src_mask, targets=targets)
    keep = targets != -100
    expected = F.cross_entropy(out.logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, expected)


# ---------------------------------------------------------------- incremental decoding


def test_incremental_decoding_equals_the_full_forward():
    model = tiny_model()
    src, tgt, src_mask, _ = batch_with_padding(97, T=13)
    calls = []
    hooks = [layer.cross_attn.k_proj.register_forward_hook(lambda *a: calls.append(1))
             for layer in model.decoder]
    with torch.no_grad():
        full = model(src, tgt, src_mask=src_mask).logits
        calls.clear()
        out = model(src, tgt[:, :5], src_mask=src_mask, use_cache=True)
        steps = [out.logits]
        for t in range(5, 13):
            out = model(src, tgt[:, t : t + 1], cache=out.cache)
            steps.append(out.logits)
        assert len(calls) == model.config.n_layer  # memory K/V projected once per layer
        prefix = model(src, tgt[:, :5], src_mask=src_mask, use_cache=True)
        chunked = model(src, tgt[:, 5:], cache=prefix.cache).logits
        # encode() + decode() with a cache is the same path, one token at a time.
        cache = model.new_cache(model.encode(src, src_mask), src_mask)
        stepwise = model.logits(torch.cat([
            model.decode(tgt[:, t : t + 1], cache.memory, src_mask, cache=cache)
            for t in range(13)], dim=1))
    for h in hooks:
        h.remove()
    assert out.cache.length == 13
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked, full[:, 5:], atol=1e-5, rtol=0)
    torch.testing.assert_close(stepwise, full, atol=1e-5, rtol=0)


def test_incremental_decoding_with_a_target_mask():
    model = tiny_model()
    src, tgt, src_mask, tgt_mask = batch_with_padding(97)
    with torch.no_grad():
        full = model(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask).logits
        out = model(src, tgt[:, :4], src_mask=src_mask, tgt_mask=tgt_mask[:, :4], use_cache=True)
        rest = model(src, tgt[:, 4:], tgt_mask=tgt_mask, cache=out.cache).logits
    torch.testing.assert_close(torch.cat([out.logits, rest], dim=1), full, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="tgt_mask covers 4 positions; expected 9"):
        model(src, tgt, src_mask=src_mask, tgt_mask=tgt_mask[:, :4])


def test_generate_greedy_and_sampled():
    model = tiny_model()
    src, _, src_mask, _ = batch_with_padding(97)
    encoder_calls = []
    hook = model.encoder[0].register_forward_hook(lambda *a: encoder_calls.append(1))
    greedy = model.generate(src, max_new_tokens=6, bos_id=1, src_mask=src_mask)
    hook.remove()
    assert len(encoder_calls) == 1  # the step closure reuses the encoder output
    assert greedy.shape == (3, 7) and torch.equal(greedy[:, 0], torch.ones(3, dtype=torch.long))
    assert torch.equal(greedy, model.generate(src, 6, bos_id=1, src_mask=src_mask))
    # Greedy decoding picks the argmax of the full forward at every step.
    with torch.no_grad():
        full = model(src, greedy[:, :-1], src_mask=src_mask).logits
    assert torch.equal(full.argmax(-1), greedy[:, 1:])

    def sample(seed):
        return model.generate(src, 6, bos_id=1, src_mask=src_mask, temperature=1.0, top_k=5,
                              generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(1), sample(1)) and sample(1).shape == (3, 7)
    eos = int(greedy[0, 2])
    stopped = model.generate(src, 6, bos_id=1, src_mask=src_mask, eos_id=eos)
    assert stopped[0, 2] == eos and (stopped[0, 2:] == eos).all()


# ---------------------------------------------------------------- sizes and FLOPs


def reference_count(V, N, d, d_ff, final_norms=0):
    """zoo_specs.md section 1: shared embedding + N encoder layers (attention with biases, FFN,
    2 LayerNorms) + N decoder layers (two attentions, FFN, 3 LayerNorms); no final LayerNorm."""
    encoder_layer = (4 * d * d + 4 * d) + (2 * d * d_ff + d_ff + d) + 2 * 2 * d
    decoder_layer = (8 * d * d + 8 * d) + (2 * d * d_ff + d_ff + d) + 3 * 2 * d
    return V * d + N * encoder_layer + N * decoder_layer + final_norms * 2 * d


@pytest.mark.parametrize(("variant", "exact", "published"), [
    ("base", 63_082_496, 65e6), ("big", 214_245_376, 213e6)])
def test_published_sizes(variant, exact, published):
    model = build_variant("transformer", variant, device="meta")
    c = model.config
    assert reference_count(c.vocab_size, c.n_layer, c.d_model, c.d_ff) == exact
    # The model has exactly the spec's parts: no head of its own (tied), no final LayerNorm.
    assert model.num_params() == exact
    assert abs(model.num_params() / published - 1) <= 0.05  # the paper rounds, V is "about" 37000
    if variant == "big":
        assert (c.d_model, c.n_head, c.d_ff, c.dropout) == (1024, 16, 4096, 0.3)


def test_pre_ln_adds_exactly_two_final_norms():
    model = build_variant("transformer", "base", device="meta", pre_ln=True)
    assert model.num_params() == 63_082_496 + 2 * 2 * 512


def test_small_and_tiny_variants():
    small = build_variant("transformer", "small", device="meta")
    assert small.num_params() == reference_count(8192, 3, 512, 2304) == 27_837_952
    assert 26.5e6 <= small.num_params() <= 29.0e6
    assert reference_count(8192, 3, 512, 2048) == 26_263_552  # why d_ff is not the base 2048
    assert build_variant("transformer", "tiny").num_params() < 1e6


def test_flops_per_target_token():
    model = build_variant("transformer", "base", device="meta")
    d, N, ff, V, T = 512, 6, 2048, 37000, 100
    encoder = 2 * N * (4 * d * d + 2 * d * ff) + 4 * N * d * T
    decoder = 2 * N * (8 * d * d + 2 * d * ff) + 4 * N * d * (T + 1) / 2 + 4 * N * d * T
    assert model.flops_per_token(T) == pytest.approx(encoder + decoder + 2 * V * d)
    # A source twice as long charges twice the encoder (and cross-attention K/V) per target token.
    S = 2 * T
    encoder_per_source = 2 * N * (6 * d * d + 2 * d * ff) + 4 * N * d * S
    decoder_per_target = 2 * N * (6 * d * d + 2 * d * ff) + 4 * N * d * (T + 1) / 2 + 4 * N * d * S
    assert model.flops_per_token(T, src_len=S) == pytest.approx(
        decoder_per_target + 2 * V * d + encoder_per_source * S / T)
