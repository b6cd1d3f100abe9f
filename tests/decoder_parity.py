"""The checks a KV-cache decoder read from a Hugging Face folder must pass against the
transformers model that saved it (GPT-NeoX, BLOOM): logits and loss, a padded batch, cached
decoding in chunks, transformers' own cache step by step, and greedy tokens. Every function
takes the transformers model `hf` (eval mode, random weights) and the zoo model `model`."""

from __future__ import annotations

import torch

from harness.bench.hf import cache_kwargs, returned_cache

ATOL = 1e-4  # fp32 parity target on logits
LENGTH = 21  # tokens in padded_batch's rows
CHUNKS = [[5] + [1] * 16, [3, 1, 10, 1, 2, 4]]  # ways to feed LENGTH tokens on the cache


def padded_batch(vocab: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of 3 rows of LENGTH: one whole, one left-padded by 6, one right-padded
    from 14."""
    torch.manual_seed(2)
    ids = torch.randint(0, vocab, (3, LENGTH))
    mask = torch.ones(3, LENGTH, dtype=torch.long)
    mask[1, :6] = 0
    mask[2, 14:] = 0
    return ids, mask


@torch.no_grad()
def assert_logits_and_loss_match(hf, model) -> torch.Tensor:
    """The logits within ATOL and the loss within 1e-5; returns transformers' logits."""
    ids, _ = padded_batch()
    targets = torch.cat([ids[:, 1:], torch.full((3, 1), -100)], dim=1)  # HF shifts; we don't
    ref = hf(ids, labels=ids)
    out = model(ids, targets=targets)
    diff = (out.logits - ref.logits).abs().max().item()
    assert diff <= ATOL, diff
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    return ref.logits


@torch.no_grad()
def assert_padded_batch_matches(hf, model) -> None:
    """The real tokens' logits of a left- and a right-padded row within ATOL, finite
    everywhere."""
    ids, mask = padded_batch()
    ours = model(ids, attention_mask=mask).logits
    assert torch.isfinite(ours).all()
    diff = (ours - hf(ids, attention_mask=mask).logits)[mask.bool()].abs().max().item()
    assert diff <= ATOL, diff


def step_by_step(model, ids: torch.Tensor, sizes: list[int],
                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, object]:
    """(logits, the cache after them) of `ids` fed in chunks of `sizes` on top of the cache."""
    out, pieces, t = None, [], 0
    for size in sizes:
        kwargs = {} if mask is None else {"attention_mask": mask[:, : t + size]}
        out = model(ids[:, t : t + size], cache=out.cache if out else None, use_cache=True,
                    **kwargs)
        pieces.append(out.logits)
        t += size
    assert t == ids.size(1)
    return torch.cat(pieces, dim=1), out.cache


def assert_bands_equal_the_whole_masked_attention(model, band: int, layer: int) -> None:
    """A model whose windowed attention goes in bands of `model.band` queries (each band over
    the keys its window reaches): with `band` the same numbers as one masked attention over
    every key (band None, the oracle), unpadded and padded, in cached chunks (keys from the
    window cache in the first bands), and in the gradient of block `layer`'s query matrix (a
    windowed layer)."""
    ids, mask = padded_batch()
    targets = torch.roll(ids, -1, dims=1)
    results = {}
    for name, size in (("banded", band), ("whole", None)):
        model.band = size
        model.zero_grad()
        with torch.no_grad():
            plain = model(ids).logits
            padded = model(ids, attention_mask=mask).logits
            chunked = step_by_step(model, ids, [3, 13, 5], mask)[0]
        model(ids, targets=targets).loss.backward()
        grad = model.blocks[layer].attn.q_proj.weight.grad.clone()
        results[name] = plain, padded, chunked, grad
    for got, want in zip(results["banded"], results["whole"], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def assert_cached_decoding_equals_the_full_forward(hf, model, sizes: list[int]) -> None:
    """Chunks of `sizes` on the cache, with and without padding: transformers' full forward."""
    ids, mask = padded_batch()
    assert (step_by_step(model, ids, sizes)[0] - hf(ids).logits).abs().max() <= ATOL
    padded = step_by_step(model, ids, sizes, mask)[0]
    assert (padded - hf(ids, attention_mask=mask).logits)[mask.bool()].abs().max() <= ATOL


@torch.no_grad()
def assert_cached_steps_match_hugging_faces_own_cache(hf, model) -> None:
    """Ten tokens, then one at a time on each side's own cache: the same logits each step."""
    ids, _ = padded_batch()
    ref = hf(ids[:, :10], use_cache=True)
    ours = model(ids[:, :10], use_cache=True)
    for t in range(10, LENGTH):
        ref = hf(ids[:, t : t + 1], **cache_kwargs(hf, returned_cache(ref)), use_cache=True)
        ours = model(ids[:, t : t + 1], cache=ours.cache)
        assert (ours.logits - ref.logits).abs().max() <= ATOL, t


def assert_greedy_tokens_match(hf, model) -> None:
    """12 greedy tokens after a prompt of 5, as transformers' generate gives them."""
    prompt = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(4))
    ours = model.generate(prompt, max_new_tokens=12)
    ref = hf.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12,
                      pad_token_id=0)
    assert torch.equal(ours, ref)


def assert_transformers_reads_the_export(name: str, model, folder, hf_class):
    """zoo.save_pretrained's folder: `hf_class` loads it with the zoo model's logits, and
    zoo.from_pretrained reads it back to the same config and the same weights exactly. Returns
    the transformers model."""
    import zoo

    folder = zoo.save_pretrained(name, model, folder)
    hf = hf_class.from_pretrained(folder).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 12),
                        generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids).logits).abs().max() <= ATOL
    back = zoo.from_pretrained(name, folder)
    assert back.config == model.config
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    return hf


def checkpoint_error(name: str, folder) -> str:
    """The CheckpointError reading `folder` as zoo model `name` raises; it must be one line."""
    import pytest

    import zoo
    from zoo.convert import CheckpointError

    with pytest.raises(CheckpointError) as info:
        zoo.from_pretrained(name, folder)
    message = str(info.value)
    assert "\n" not in message
    return message


def assert_fast_routes_match_the_plain_path(name: str, folder, routes: tuple[str, ...]) -> None:
    """zoo.from_pretrained applies `routes` (and the plain load none), and both give the same
    logits for a prompt and for one decoding-sized step."""
    import zoo
    import zoo.fast

    fast, plain = zoo.from_pretrained(name, folder), zoo.from_pretrained(name, folder, fast=False)
    assert zoo.fast.applied(fast) == routes
    assert zoo.fast.applied(plain) == ()
    ids, _ = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(fast(ids).logits, plain(ids).logits, atol=2e-5, rtol=1e-5)
        one = ids[:, :1]  # a decoding step takes the split matrix-vector route
        torch.testing.assert_close(fast(one).logits, plain(one).logits, atol=2e-5, rtol=1e-5)


def assert_missing_and_misshaped_weights_are_named(name: str, folder, state: dict, key: str,
                                                   zoo_key: str, width: int,
                                                   tied_to: str | None = None) -> None:
    """`folder`'s model.safetensors rewritten from `state`: without `key`, the error names it;
    with it misshaped, the error names `zoo_key` and both shapes ((32,) against (width,)). With
    `tied_to` (the embedding of a tied head), a stored head that differs from it is refused."""
    from safetensors.torch import save_file

    path = folder / "model.safetensors"
    dropped = (key, "lm_head.weight") if tied_to else (key,)  # a tied head is stored or not
    state = {k: v for k, v in state.items() if k not in dropped}
    save_file(state, str(path))
    assert f"'{key}'" in checkpoint_error(name, folder)
    save_file({**state, key: torch.zeros(32)}, str(path))
    message = checkpoint_error(name, folder)
    assert zoo_key in message and "(32,)" in message and f"({width},)" in message
    if tied_to is not None:
        head = state[tied_to] + 1
        save_file({**state, key: torch.zeros(width), "lm_head.weight": head}, str(path))
        message = checkpoint_error(name, folder)
        assert "'lm_head.weight' differs from the token embedding" in message


# ---- encoder-decoders (T5, BART) --------------------------------------------------------------

def seq2seq_batch(V: int = 120, B: int = 3, S: int = 30, T: int = 26, first: int = 2):
    """(source ids, source mask, target ids, target mask) of ids from `first` up (below it: the
    special tokens): row 1's source padded from 20, row 2's target from 15 (masks 1 = token,
    as transformers')."""
    g = torch.Generator().manual_seed(3)
    src = torch.randint(first, V, (B, S), generator=g)
    tgt = torch.randint(first, V, (B, T), generator=g)
    src_mask, tgt_mask = torch.ones(B, S, dtype=torch.long), torch.ones(B, T, dtype=torch.long)
    src_mask[1, 20:] = 0
    tgt_mask[2, 15:] = 0
    return src, src_mask, tgt, tgt_mask


@torch.no_grad()
def assert_seq2seq_cached_decoding_equals_the_full_forward(model, src, src_mask, tgt) -> None:
    """The targets fed in chunks on the decoder's cache (the source encoded once): the logits
    of one forward over them all."""
    full = model(src, tgt, src_mask=src_mask).logits
    out, pieces, t = None, [], 0
    for size in (5, 1, 1, 12, 1, 6):
        out = model(src, tgt[:, t:t + size], src_mask=src_mask,
                    cache=out.cache if out else None, use_cache=True)
        pieces.append(out.logits)
        t += size
    assert t == tgt.size(1) and out.cache.length == t
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
