"""zoo.model.decode, the generator under every model's `generate`: each step's tokens come out
before the model computes the next one (what `catalog generate` streams), and collected they are
`generate`'s."""

from __future__ import annotations

import torch

import zoo
from zoo.model import decode


def tiny_gpt():
    torch.manual_seed(0)
    return zoo.build("gpt", vocab_size=50, max_seq_len=32, n_layer=2, n_head=2, d_model=32,
                     d_ff=64).eval()


def test_each_token_comes_out_before_the_next_step_and_all_of_them_are_generates():
    model = tiny_gpt()
    prompt = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    fed = []

    def step(tokens, cache):
        fed.append(tokens.size(1))
        return model(tokens, cache=cache, use_cache=True)

    steps = decode(step, prompt, max_new_tokens=5)
    first = next(steps)
    assert first.shape == (2,) and fed == [6]  # the prompt only, so far
    rest = list(steps)
    assert fed == [6, 1, 1, 1, 1]  # no step after the last token
    tokens = torch.cat([prompt, first[:, None], *(ids[:, None] for ids in rest)], dim=1)
    assert torch.equal(tokens, model.generate(prompt, max_new_tokens=5))


def test_decoding_stops_once_every_sequence_has_its_eos():
    model = tiny_gpt()
    prompt = torch.randint(0, 50, (1, 4), generator=torch.Generator().manual_seed(2))
    greedy = model.generate(prompt, max_new_tokens=3)[0, 4:].tolist()
    eos = greedy[1]
    step = lambda tokens, cache: model(tokens, cache=cache, use_cache=True)  # noqa: E731
    out = [int(ids[0]) for ids in decode(step, prompt, max_new_tokens=3, eos_id=eos)]
    assert out == greedy[:greedy.index(eos) + 1]
