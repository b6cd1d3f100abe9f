"""Quality against context length for a causal LM (`model(input_ids=x).logits`, (B, T, V)), or an
encoder-decoder's (`seq2seq_extrapolation`): bits per byte at several evaluation lengths (Press
et al.'s "train short, test long" protocol), and the mean loss at each token position of a
window, log-binned, with Olsson et al.'s in-context-learning score (RWKV's Fig. 6 and the
induction-heads paper). As in `scoring`, the model is in eval mode under `torch.no_grad` (the
caller's job), runs in batches of `batch` windows on `device`, and its logits come to the CPU as
float32 before they are scored."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from harness.quality import tasks
from harness.quality.scoring import EVAL_BATCH

ICL_MIN_LENGTH = 16  # shorter windows have no room for an early and a late neighbourhood


def length_limit(model, trained_length: int) -> int | None:
    """The longest input `model` can be scored on with trained weights, or None for no limit.

    A model class with a learned position table (`position_table` names the config field that
    sizes it, e.g. GPT's `max_seq_len`) has trained rows up to `trained_length` only: rows past
    it exist when the table was lengthened (`config_for_length`) but were never trained, so they
    do not count. The limit is the shorter of the two when the table is known. Models without
    learned positions (RWKV's recurrence, Pangu-pi's rotary positions) take any length."""
    field = getattr(type(model), "position_table", None)
    if not field:
        return None
    rows = getattr(getattr(model, "config", None), field, None)
    return min(trained_length, rows) if isinstance(rows, int) else trained_length


def extrapolation(model, stream: torch.Tensor, byte_lengths: torch.Tensor, *,
                  lengths: Sequence[int], trained_length: int, pad_id: int,
                  stride: int | None = None, device: str = "cpu", batch: int = EVAL_BATCH
                  ) -> list[dict[str, Any]]:
    """Bits per byte and mean loss (nats per token) of next-token prediction over `stream` at
    each evaluation length L of `lengths` (Press et al.). Every L scores the same targets, the
    stream's ids after its first (the caller trims the stream, e.g. to a fixed token count), so
    the numbers differ only in how much context each prediction had.

    - `stride` None, mode "nonoverlapping": windows of L ids tile the stream (`tasks.lm_blocks`,
      the last one padded with `pad_id`, its padded targets ignored); each target is scored once,
      and the first targets of every window have little context (the "early token curse").
    - `stride` S (1 <= S <= L), mode "sliding": the window of L ids moves by S; the first window
      scores all its targets, each later one only its last S, so every target is still scored
      exactly once, with at least L - S ids of context where the stream has them. The last window
      is padded past the end of the stream, as above. This runs about L / S times the windows of
      the nonoverlapping mode (stride 1: one window per target).

    Where L exceeds `length_limit(model, trained_length)`, the model is not run: bits_per_byte
    and loss are None, tokens 0, and the note says where the learned positions end.

    Returns one dict per L, in the order of `lengths`: {"eval_seqlen", "mode", "stride",
    "bits_per_byte", "loss", "tokens" (targets scored), "note" (None, or why n/a)}."""
    if stream.dim() != 1 or stream.numel() < 2:
        raise ValueError(f"need a 1-D stream of at least 2 ids, got shape {tuple(stream.shape)}")
    for L in lengths:
        if L < 1:
            raise ValueError(f"evaluation lengths must be >= 1, got {L}")
        if stride is not None and not 1 <= stride <= L:
            raise ValueError(f"stride {stride} must be in [1, L] for every length, L = {L}")
    limit = length_limit(model, trained_length)
    mode = "nonoverlapping" if stride is None else "sliding"
    rows = []
    for L in lengths:
        row: dict[str, Any] = {"eval_seqlen": L, "mode": mode, "stride": stride,
                               "bits_per_byte": None, "loss": None, "tokens": 0, "note": None}
        if limit is not None and L > limit:
            row["note"] = f"n/a: learned positions end at {limit}"
        else:
            windows = (_block_batches(stream, L, pad_id, batch) if stride is None
                       else _sliding_batches(stream, L, stride, pad_id, batch))
            nll, n_bytes, n_tokens = _sum_nll(model, windows, byte_lengths, device)
            row.update(bits_per_byte=tasks.bits_per_byte(nll, n_bytes), loss=nll / n_tokens,
                       tokens=n_tokens)
        rows.append(row)
    return rows


def seq2seq_extrapolation(model, stream: torch.Tensor, byte_lengths: torch.Tensor, *,
                          lengths: Sequence[int], bos_id: int, eos_id: int, pad_id: int,
                          device: str = "cpu", batch: int = EVAL_BATCH) -> list[dict[str, Any]]:
    """The encoder-decoder's length curve (`model(src_ids=, tgt_ids=).logits`): at each
    evaluation length L, the seq2seq task's split of it, L // 2 source ids the encoder reads
    and the next L // 2 the decoder writes, pair after pair (tasks.seq2seq_pairs). Every L
    scores the same targets, the stream's ids after its first max(L) // 2 (what the longest
    length's first source holds): a shorter length reads its first source from just before
    them, and pads its last pair, whose padded targets are not scored. Rows as `extrapolation`
    gives them (mode "nonoverlapping": each target is scored once)."""
    halves = [L // 2 for L in lengths]
    if min(halves, default=0) < 1:
        raise ValueError(f"evaluation lengths must be >= 2 for seq2seq, got {list(lengths)}")
    first = max(halves)
    usable = stream.numel() - first  # the targets
    if usable < 1:
        raise ValueError(f"a stream of {stream.numel()} ids leaves no target after the "
                         f"longest source ({first} ids)")
    rows = []
    for L, half in zip(lengths, halves, strict=True):
        pairs = math.ceil(usable / half)
        part = stream[first - half:]
        part = torch.cat([part, part.new_full((half + pairs * half - part.numel(),), pad_id)])
        inputs, targets = tasks.seq2seq_pairs(part, half, half, bos_id, eos_id)
        beyond = torch.arange(pairs * half).view(pairs, half) >= usable  # padding's targets
        targets[:, :-1] = targets[:, :-1].masked_fill(beyond, tasks.IGNORE)
        nll, n_bytes = 0.0, 0
        for start in range(0, pairs, batch):
            rows_ = slice(start, start + batch)
            logits = model(**{k: v[rows_].to(device) for k, v in inputs.items()}).logits
            a, b = tasks.seq2seq_nll_and_bytes(logits.float().cpu(), targets[rows_],
                                               byte_lengths)
            nll, n_bytes = nll + a, n_bytes + b
        rows.append({"eval_seqlen": L, "mode": "nonoverlapping", "stride": None,
                     "bits_per_byte": tasks.bits_per_byte(nll, n_bytes), "loss": nll / usable,
                     "tokens": usable, "note": None})
    return rows


def _block_batches(stream: torch.Tensor, L: int, pad_id: int, batch: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    inputs, targets = tasks.lm_blocks(stream, L, pad_id)
    for start in range(0, inputs.shape[0], batch):
        yield inputs[start:start + batch], targets[start:start + batch]


def _sliding_batches(stream: torch.Tensor, L: int, S: int, pad_id: int, batch: int
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) of the sliding windows, `batch` at a time. Window k reads
    stream[kS : kS + L] and predicts stream[kS + 1 : kS + L + 1]; it keeps all its targets when
    k = 0 and its last S otherwise, and none past the end of the stream. Built a batch at a time:
    with a small stride the windows together hold about L times the stream."""
    n = stream.numel()
    count = 1 + math.ceil(max(0, n - 1 - L) / S)
    padded = torch.cat([stream, stream.new_full(((count - 1) * S + L + 1 - n,), pad_id)])
    offsets = torch.arange(L + 1)
    early = torch.arange(L) < L - S  # the columns a later window leaves to the one before
    for first in range(0, count, batch):
        k = torch.arange(first, min(first + batch, count))[:, None]
        at = k * S + offsets  # (b, L + 1) positions in the stream
        ids = padded[at]
        ignored = (at[:, 1:] >= n) | ((k > 0) & early)
        yield ids[:, :-1], ids[:, 1:].masked_fill(ignored, tasks.IGNORE)


def _sum_nll(model, windows: Iterator[tuple[torch.Tensor, torch.Tensor]],
             byte_lengths: torch.Tensor, device: str) -> tuple[float, int, int]:
    """(summed NLL in nats, bytes, tokens) of the scored targets of every window. Only the
    columns from the first one scored in a batch onwards go to the CPU (sliding windows score
    their last S columns)."""
    nll, n_bytes, n_tokens = 0.0, 0, 0
    for x, y in windows:
        scored = (y != tasks.IGNORE).any(dim=0)
        if not scored.any():
            continue
        first = int(scored.int().argmax())
        logits = model(input_ids=x.to(device)).logits[:, first:].float().cpu()
        a, b = tasks.nll_and_bytes(logits, y[:, first:], byte_lengths)
        nll, n_bytes = nll + a, n_bytes + b
        n_tokens += int((y != tasks.IGNORE).sum())
    return nll, n_bytes, n_tokens


def loss_by_position(model, windows: torch.Tensor, *, device: str = "cpu",
                     batch: int = EVAL_BATCH) -> dict[str, Any]:
    """The mean loss (nats) at each token position of `windows`, (n, L + 1) ids: inputs
    [:, :-1], targets [:, 1:], targets equal to -100 not scored. Position p (1-based) is the
    prediction made after reading p ids of the window. -100 is meant as padding at a window's
    end: the model reads it as id 0, which changes only the (unscored) predictions after it.

    Losses are summed per position over the windows, then pooled into log-spaced bins of
    positions, [1, 2), [2, 4), [4, 8), ..., the last one cut at L + 1 (so it may be partial);
    each bin's loss weights every scored token in it equally (None for a bin with none).

    The in-context-learning score is Olsson et al.'s "loss at token 500 minus loss at token 50
    of a 512-token context", scaled to L: the mean loss over positions round(500/512 * L) ± h
    minus that over round(50/512 * L) ± h, with h = max(1, L // 64) (h = 8 at L = 512) and the
    neighbourhoods kept inside [1, L]. Negative: the model predicts better late in the window,
    so it uses its context. None when L < 16 or a neighbourhood has no scored token.

    Returns {"seqlen": L, "windows": n, "bins": [[start, end), ...], "loss": [per bin],
    "tokens": [scored tokens per bin], "mean_loss": over every scored token (None if none),
    "icl_score"}."""
    if windows.dim() != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise ValueError(f"need (n >= 1, L + 1 >= 2) windows of ids, got {tuple(windows.shape)}")
    n, L = windows.shape[0], windows.shape[1] - 1
    sums = torch.zeros(L, dtype=torch.float64)
    counts = torch.zeros(L, dtype=torch.long)
    for start in range(0, n, batch):
        rows = windows[start:start + batch]
        x, y = rows[:, :-1].masked_fill(rows[:, :-1] == tasks.IGNORE, 0), rows[:, 1:]
        logits = model(input_ids=x.to(device)).logits.float().cpu()
        nll = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=tasks.IGNORE,
                              reduction="none")  # (b, L), 0 where ignored
        sums += nll.double().sum(dim=0)
        counts += (y != tasks.IGNORE).sum(dim=0)

    def mean(first: int, end: int) -> float | None:  # 1-based positions [first, end)
        tokens = int(counts[first - 1:end - 1].sum())
        return sums[first - 1:end - 1].sum().item() / tokens if tokens else None

    edges = [2**i for i in range(L.bit_length())] + [L + 1]
    bins = [[a, b] for a, b in zip(edges[:-1], edges[1:], strict=True) if a < b]
    total = int(counts.sum())
    return {
        "seqlen": L,
        "windows": n,
        "bins": bins,
        "loss": [mean(a, b) for a, b in bins],
        "tokens": [int(counts[a - 1:b - 1].sum()) for a, b in bins],
        "mean_loss": sums.sum().item() / total if total else None,
        "icl_score": _icl_score(mean, L),
    }


def _icl_score(mean, L: int) -> float | None:
    if L < ICL_MIN_LENGTH:
        return None
    h = max(1, L // 64)

    def near(position: int) -> float | None:
        return mean(max(1, position - h), min(L, position + h) + 1)

    late, early = near(math.floor(500 / 512 * L + 0.5)), near(math.floor(50 / 512 * L + 0.5))
    return None if late is None or early is None else late - early


def document_windows(documents: Sequence[torch.Tensor], L: int,
                     max_windows: int | None = None) -> torch.Tensor:
    """(n, L + 1) windows for `loss_by_position`, cut from each document's ids (1-D tensors)
    from its start, as RWKV's Fig. 6 is measured: whole windows only (a document's tail shorter
    than a window is dropped, and so is a document shorter than one), never joining two
    documents, in document order, at most `max_windows`. Within a document the windows follow
    `tasks.lm_blocks`: window i holds ids [iL, iL + L], so each id after the first is a target
    once and a window's last target is the next one's first input. Give each document a leading
    start mark (EOS, as `tasks.token_stream` does) for position 1 to predict its first token.
    An empty (0, L + 1) tensor when no document holds a window: fall back to `stream_windows`."""
    if L < 1:
        raise ValueError(f"window length must be >= 1, got {L}")
    out: list[torch.Tensor] = []
    left = max_windows
    for ids in documents:
        if left is not None and left <= 0:
            break
        count = (ids.numel() - 1) // L
        if left is not None:
            count = min(count, left)
            left -= count
        if count > 0:
            at = L * torch.arange(count)[:, None] + torch.arange(L + 1)
            out.append(ids.reshape(-1)[at])
    if not out:
        return torch.empty((0, L + 1), dtype=torch.long)
    return torch.cat(out).long()


def stream_windows(stream: torch.Tensor, L: int, max_windows: int | None = None
                   ) -> torch.Tensor:
    """The whole (L + 1)-id windows of one stream, laid out as `document_windows` lays out one
    document. A stream joins documents, so a window may read across a document's end: the
    fallback when documents are too short."""
    return document_windows([stream], L, max_windows)
