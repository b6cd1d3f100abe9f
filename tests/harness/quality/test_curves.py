"""Quality against context length on tiny models and on stubs whose losses are known: the
per-position losses add up to the whole-window loss, the nonoverlapping evaluation is the
training-length score, a sliding window scores each target once, a learned-position model is
never run past its trained length, and windows never join documents."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import zoo
from harness.quality import tasks
from harness.quality.curves import (
    _sliding_batches,
    document_windows,
    extrapolation,
    length_limit,
    loss_by_position,
    seq2seq_extrapolation,
    stream_windows,
)
from harness.quality.scoring import lm_scores, seq2seq_scores
from harness.quality.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
V = TOK.vocab_size
BYTES = tasks.token_bytes(TOK)


def tiny(name: str, **fields) -> torch.nn.Module:
    sizes = {"gpt": dict(n_layer=1, d_model=32, n_head=2, max_seq_len=32),
             "rwkv": dict(n_layer=1, d_model=32),
             "pangu-pi": dict(n_layer=1, d_model=32, n_head=2, d_ff=64),
             "llama": dict(n_layer=1, d_model=32, n_head=2, d_ff=64),
             "gpt-neox": dict(n_layer=1, d_model=32, n_head=2, d_ff=64),
             "bloom": dict(n_layer=1, d_model=32, n_head=2),
             "opt": dict(n_layer=1, d_model=32, n_head=2, max_seq_len=32),
             "gpt-j": dict(n_layer=1, d_model=32, n_head=2, d_ff=64, rotary_dim=4),
             "gpt-neo": dict(n_layer=2, d_model=32, n_head=2, d_ff=64, max_seq_len=32, window=8),
             "ctrl": dict(n_layer=1, d_model=32, n_head=2, d_ff=64, max_seq_len=32),
             "mamba": dict(n_layer=1, d_model=32),
             "mamba2": dict(n_layer=1, d_model=32, head_dim=16, d_state=16)}[name]
    torch.manual_seed(0)
    return zoo.build(name, vocab_size=V, **{**sizes, **fields}).eval()


def byte_stream(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


class CurrentToken(torch.nn.Module):
    """Logits from the current token alone: context cannot change a prediction."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(V, V)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.table(input_ids))


class Sharpening(torch.nn.Module):
    """Bets on token 7 more confidently at each later position: loss falls with position
    (rises instead with `falling=False`)."""

    def __init__(self, falling: bool = True):
        super().__init__()
        self.falling = falling

    def forward(self, input_ids):
        T = input_ids.shape[1]
        logits = torch.zeros(*input_ids.shape, V)
        ramp = torch.arange(T, dtype=torch.float32) / T * 5
        logits[..., 7] = ramp if self.falling else ramp.flip(0)
        return SimpleNamespace(logits=logits)


def seen_lengths(model: torch.nn.Module) -> list[int]:
    """The input lengths `model` is called with from now on."""
    seen: list[int] = []
    model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    return seen


# ------------------------------------------------------------------------ loss by position


@torch.no_grad()
def test_per_position_losses_average_to_the_whole_window_loss():
    model, L = tiny("gpt"), 24
    windows = torch.randint(0, 256, (5, L + 1), generator=torch.Generator().manual_seed(1))
    windows[1, 10:] = tasks.IGNORE  # padding at a window's end: unscored from there on
    windows[3, -1] = tasks.IGNORE
    out = loss_by_position(model, windows, batch=2)

    assert out["seqlen"] == L and out["windows"] == 5
    assert out["bins"] == [[1, 2], [2, 4], [4, 8], [8, 16], [16, 25]]
    targets = windows[:, 1:]
    scored = targets != tasks.IGNORE
    assert sum(out["tokens"]) == int(scored.sum()) == 5 * L - 15 - 1
    pooled = sum(loss * n for loss, n in zip(out["loss"], out["tokens"], strict=True))
    assert pooled / sum(out["tokens"]) == pytest.approx(out["mean_loss"], rel=1e-6)
    logits = model(input_ids=windows[:, :-1].clamp(min=0)).logits
    direct = F.cross_entropy(logits[scored], targets[scored])
    assert out["mean_loss"] == pytest.approx(direct.item(), rel=1e-5)


def test_icl_score_is_negative_when_loss_falls_with_position():
    windows = torch.full((3, 65), 7)
    falling = loss_by_position(Sharpening(), windows)
    rising = loss_by_position(Sharpening(falling=False), windows)
    assert falling["icl_score"] < 0 < rising["icl_score"]
    assert falling["loss"] == sorted(falling["loss"], reverse=True)
    assert loss_by_position(Sharpening(), torch.full((3, 12), 7))["icl_score"] is None


# ---------------------------------------------------------------------------- extrapolation


@torch.no_grad()
def test_nonoverlapping_at_the_training_length_is_the_lm_score():
    model, stream = tiny("gpt"), byte_stream(5 * 32 + 9)
    [row] = extrapolation(model, stream, BYTES, lengths=[32], trained_length=32,
                          pad_id=TOK.pad_id, batch=2)
    reference = lm_scores(model, stream, 32, TOK, BYTES, "cpu")
    assert row["bits_per_byte"] == pytest.approx(reference["bits_per_byte"], rel=1e-6)
    assert row["loss"] == pytest.approx(reference["loss"], rel=1e-6)
    assert row | {"bits_per_byte": None, "loss": None} == {
        "eval_seqlen": 32, "mode": "nonoverlapping", "stride": None, "bits_per_byte": None,
        "loss": None, "tokens": stream.numel() - 1, "note": None}


@torch.no_grad()
def test_the_encoder_decoders_curve_scores_the_same_targets_at_every_length():
    """Every length scores the stream's ids after the longest length's first source; where
    the pairs tile those targets exactly, a length's score is the seq2seq task's own score of
    the same pairs, and a length that must pad its last pair scores the padding not at all."""
    torch.manual_seed(0)
    model = zoo.build("t5", vocab_size=V, d_model=32, d_kv=8, n_head=4, d_ff=64, n_layer=1,
                      dropout=0.0).eval()
    stream = byte_stream(32 + 6 * 32)  # after the longest source (32): 192 targets
    rows = seq2seq_extrapolation(model, stream, BYTES, lengths=[16, 64, 40], bos_id=TOK.bos_id,
                                 eos_id=TOK.eos_id, pad_id=TOK.pad_id, batch=3)
    assert [r["tokens"] for r in rows] == [192, 192, 192]
    assert [r["eval_seqlen"] for r in rows] == [16, 64, 40]
    for row, half in zip(rows[:2], (8, 32), strict=True):  # 192 is a multiple of 8 and of 32
        reference = seq2seq_scores(model, stream[32 - half:], half, TOK, BYTES, "cpu")
        assert row["bits_per_byte"] == pytest.approx(reference["bits_per_byte"], rel=1e-6)
    # 40: halves of 20 tile 180 of the 192 targets, and the last pair holds 12 and 8 padding:
    # written out pair by pair, the last one fed its 12 real targets alone
    nll, n_bytes = 0.0, 0
    for start in range(32, 32 + 192, 20):
        chunk = stream[start:start + 20]
        tgt_ids = torch.cat([torch.tensor([TOK.bos_id]), chunk[:-1]])[None]
        logits = model(stream[start - 20:start][None], tgt_ids).logits[0]
        nll += F.cross_entropy(logits, chunk, reduction="sum").item()
        n_bytes += int(BYTES[chunk].sum())
    assert rows[2]["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-6)
    assert rows[2]["loss"] == pytest.approx(nll / 192, rel=1e-6)


@pytest.mark.parametrize(("n", "L", "S"), [(100, 16, 5), (100, 16, 1), (100, 16, 16),
                                           (10, 16, 4), (17, 16, 3)])
def test_sliding_windows_score_each_target_once_with_enough_context(n, L, S):
    stream = torch.arange(n)  # an id is its position in the stream
    times_scored = torch.zeros(n, dtype=torch.long)
    for x, y in _sliding_batches(stream, L, S, pad_id=-1, batch=3):
        scored = y != tasks.IGNORE
        assert (y[scored] == x[scored] + 1).all()  # the stream's next id, never padding
        context = torch.arange(1, L + 1).expand_as(y)  # ids read before each prediction
        later = scored & (x[:, :1] > 0)  # windows after the first
        assert (context[later] >= L - S + 1).all()
        times_scored += torch.bincount(y[scored], minlength=n)
    assert times_scored[0] == 0 and (times_scored[1:] == 1).all()


@torch.no_grad()
def test_sliding_with_stride_l_is_nonoverlapping_and_smaller_strides_score_the_same_targets():
    model, stream = tiny("gpt"), byte_stream(4 * 16 + 5)
    args = dict(lengths=[8, 16], trained_length=32, pad_id=TOK.pad_id, batch=3)
    blocks = extrapolation(model, stream, BYTES, **args)
    for a in blocks:
        [b] = extrapolation(model, stream, BYTES, stride=a["eval_seqlen"],
                            **{**args, "lengths": [a["eval_seqlen"]]})
        assert (b["mode"], b["stride"], a["mode"]) == ("sliding", a["eval_seqlen"],
                                                       "nonoverlapping")
        assert b["bits_per_byte"] == pytest.approx(a["bits_per_byte"], rel=1e-6)
        assert b["tokens"] == a["tokens"] == stream.numel() - 1
    slid = extrapolation(model, stream, BYTES, stride=3, **args)
    assert [b["tokens"] for b in slid] == [a["tokens"] for a in blocks]
    assert all(math.isfinite(b["bits_per_byte"]) for b in slid)

    blind = CurrentToken().eval()  # context cannot help it: every stride gives one number
    reference = extrapolation(blind, stream, BYTES, **args)
    for stride in (1, 3):
        for a, b in zip(reference, extrapolation(blind, stream, BYTES, stride=stride, **args),
                        strict=True):
            assert b["tokens"] == a["tokens"]
            assert b["bits_per_byte"] == pytest.approx(a["bits_per_byte"], rel=1e-6)
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="stride"):
        extrapolation(blind, stream, BYTES, stride=9, **args)


@torch.no_grad()
@pytest.mark.parametrize("table", [32, 64])
@pytest.mark.parametrize("name", ["gpt", "opt", "gpt-neo"])
def test_learned_positions_are_not_scored_past_the_trained_length(name, table):
    model = tiny(name, max_seq_len=table)  # 64: a table lengthened past training
    seen = seen_lengths(model)
    rows = extrapolation(model, byte_stream(3 * 64 + 1), BYTES, lengths=[16, 32, 64],
                         trained_length=32, pad_id=TOK.pad_id)
    assert length_limit(model, 32) == 32
    assert [math.isfinite(r["bits_per_byte"]) for r in rows[:2]] == [True, True]
    assert rows[2] | {"eval_seqlen": 64} == {
        "eval_seqlen": 64, "mode": "nonoverlapping", "stride": None, "bits_per_byte": None,
        "loss": None, "tokens": 0, "note": "n/a: learned positions end at 32"}
    assert seen and max(seen) <= 32


@torch.no_grad()
@pytest.mark.parametrize("name", ["rwkv", "pangu-pi", "llama", "gpt-neox", "gpt-j", "bloom",
                                  "ctrl", "mamba", "mamba2"])
def test_models_without_learned_positions_are_scored_at_every_length(name):
    model = tiny(name)
    assert length_limit(model, 32) is None
    rows = extrapolation(model, byte_stream(2 * 64 + 1), BYTES, lengths=[32, 64],
                         trained_length=32, pad_id=TOK.pad_id)
    assert all(math.isfinite(r["bits_per_byte"]) and r["note"] is None for r in rows)


# ---------------------------------------------------------------------------------- windows


def test_document_windows_stay_inside_documents_and_drop_short_ones():
    sizes = [10, 40, 3, 25]  # (size - 1) // 8 whole windows: 1, 4, 0, 3
    documents = [1000 * i + torch.arange(size) for i, size in enumerate(sizes)]
    windows = document_windows(documents, 8)
    assert windows.shape == (8, 9) and windows.dtype == torch.long
    owner = windows // 1000
    assert (owner == owner[:, :1]).all()  # one document per window
    assert owner[:, 0].tolist() == [0, 1, 1, 1, 1, 3, 3, 3]  # in document order, none of doc 2
    assert windows[1:5, 0].tolist() == [1000, 1008, 1016, 1024]  # from the start, tiling
    assert torch.equal(document_windows(documents, 8, max_windows=3), windows[:3])
    assert document_windows(documents, 40).shape == (0, 41)
    assert torch.equal(stream_windows(torch.arange(30), 8), torch.arange(27).view(3, 9) -
                       torch.tensor([[0], [1], [2]]))
