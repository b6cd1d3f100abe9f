"""The trainer: budgets, schedule, learning, determinism and resume."""

from __future__ import annotations

import math
import os
import signal
import time

import pytest
import torch

from harness.models import build_variant
from harness.quality.train import (
    Budget,
    TrainConfig,
    block_batches,
    lr_at,
    param_groups,
    parse_budget,
    train,
)


@pytest.mark.parametrize("text, budget", [
    ("20M-tokens", Budget(tokens=20_000_000)), ("500K-tokens", Budget(tokens=500_000)),
    ("4096-tokens", Budget(tokens=4096)), ("5m", Budget(seconds=300)), ("90s", Budget(seconds=90)),
    ("1.5h", Budget(seconds=5400)), ("2e14-flops", Budget(flops=2e14)),
    ("200T-flops", Budget(flops=2e14)), ("1.5e9 flops", Budget(flops=1.5e9)),
])
def test_parse_budget(text, budget):
    assert parse_budget(text) == budget


@pytest.mark.parametrize("bad", ["", "5", "tokens", "5 minutes", "-3m", "0s", "3x-tokens",
                                 "flops", "0-flops", "2e14", "1e400-flops", "9" * 400 + "s"])
def test_bad_budgets(bad):
    with pytest.raises(ValueError, match="--budget"):
        parse_budget(bad)


def test_warmup_then_cosine_decay():
    config = TrainConfig(budget=Budget(tokens=1), lr=1e-3, warmup=0.1, min_lr_ratio=0.1)
    assert lr_at(0.0, config) == 0 and lr_at(0.05, config) == pytest.approx(5e-4)
    assert lr_at(0.1, config) == pytest.approx(1e-3)
    assert lr_at(0.55, config) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(1.0, config) == pytest.approx(1e-4)
    values = [lr_at(p / 100, config) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(values[:-1], values[1:], strict=True))


def pattern_stream(n: int = 4000) -> torch.Tensor:
    """A learnable stream: a fixed random sequence of 50 tokens, repeated."""
    base = torch.randint(0, 64, (50,), generator=torch.Generator().manual_seed(1))
    return base.repeat(n // 50 + 1)[:n]


def run(steps: int, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = build_variant("gpt", "tiny", vocab_size=64, max_seq_len=32)
    batches, _ = block_batches(pattern_stream(), batch_size=4, seqlen=32, seed=seed)
    fields = {"budget": Budget(tokens=steps * 4 * 32), **kw.pop("config", {})}
    config = TrainConfig(batch_size=4, seqlen=32, lr=3e-3, seed=seed, **fields)
    return model, train(model, batches, config, **kw)


def test_training_learns_a_repeated_pattern():
    model, history = run(steps=60, evaluate=lambda m: {"steps_seen": 1.0},
                         config={"eval_every": 20})
    assert history.steps == 60 and history.tokens == 60 * 128
    assert history.losses[-1] < 0.5 * history.losses[0] and history.losses[0] > math.log(64) - 1
    assert [e["step"] for e in history.evals] == [20, 40, 60]


def test_a_time_budget_counts_training_not_validation_or_saves(tmp_path):
    """Each validation here sleeps 50 ms, one after every step (and a save follows it): a clock
    that ran through them would count every sleep but the last in history.seconds."""
    def slow_validation(model):
        time.sleep(0.05)
        return {"loss": 0.0}

    run(steps=1)  # the first step of a process compiles kernels: not this test's business
    began = time.monotonic()
    _, history = run(steps=0, evaluate=slow_validation, state_path=tmp_path / "state.pt",
                     config={"budget": Budget(seconds=0.5), "eval_every": 1,
                             "checkpoint_every": 1})
    wall = time.monotonic() - began
    assert history.seconds >= 0.5 and len(history.evals) >= 4, history
    assert wall - history.seconds >= 0.05 * (len(history.evals) - 1)


def test_same_seed_same_numbers_other_seed_other_numbers():
    _, a = run(steps=8)
    _, b = run(steps=8)
    _, c = run(steps=8, seed=1)
    assert a.losses == b.losses and a.losses != c.losses


def assert_resumes_to(straight, state, steps: int, checkpoint_every: int) -> None:
    """Resuming from `state` ends with the weights of the uninterrupted run `straight`."""
    resumed, history = run(steps=steps, state_path=state, resume=True,
                           config={"checkpoint_every": checkpoint_every})
    assert history.steps == steps
    resumed_state = resumed.state_dict()
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(tensor, resumed_state[name], rtol=0, atol=0, msg=name)


def test_resume_continues_to_the_same_result(tmp_path):
    straight, _ = run(steps=8)
    state = tmp_path / "trainer_state.pt"

    def stop_at_5(history, lr):
        if history.steps == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(steps=8, state_path=state, on_step=stop_at_5, config={"checkpoint_every": 4})
    assert_resumes_to(straight, state, steps=8, checkpoint_every=4)


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler, as `catalog` installs it: a test suite started in the
    background (CI) inherits SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_saves_the_step_it_lands_in_and_resume_goes_on_from_it(tmp_path, python_sigint):
    """SIGINT during a step (here from its progress callback, after the optimizer step) lets
    it end, saves it although no save was due, then raises; resuming from there ends where an
    uninterrupted run does. A second SIGINT raises at once, saving nothing new."""
    straight, _ = run(steps=8)
    state = tmp_path / "trainer_state.pt"

    def ctrl_c_at(step, times=1):
        def on_step(history, lr):
            if history.steps == step:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)
        return on_step

    with pytest.raises(KeyboardInterrupt):
        run(steps=8, state_path=state, on_step=ctrl_c_at(5), config={"checkpoint_every": 100})
    assert torch.load(state, weights_only=False)["history"]["steps"] == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert_resumes_to(straight, state, steps=8, checkpoint_every=100)

    def signals_at(step, *signums):
        def on_step(history, lr):
            if history.steps == step:
                for signum in signums:
                    os.kill(os.getpid(), signum)
        return on_step

    # SIGTERM (a launcher stopping its cells) asks the same; after a Ctrl-C it is no second one
    for signums in [(signal.SIGTERM,), (signal.SIGINT, signal.SIGTERM)]:
        state.unlink()
        with pytest.raises(KeyboardInterrupt):
            run(steps=8, state_path=state, on_step=signals_at(4, *signums),
                config={"checkpoint_every": 100})
        assert torch.load(state, weights_only=False)["history"]["steps"] == 4, signums
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    state.unlink()
    with pytest.raises(KeyboardInterrupt):
        run(steps=8, state_path=state, on_step=ctrl_c_at(3, times=2),
            config={"checkpoint_every": 2})
    assert torch.load(state, weights_only=False)["history"]["steps"] == 2  # the last due save


def test_resuming_from_a_damaged_or_foreign_state_says_which_file_and_why(tmp_path):
    state = tmp_path / "trainer_state.pt"
    state.write_text("garbage\n")
    with pytest.raises(ValueError, match=f"{state}: not a saved training state .*; delete it"):
        run(steps=2, state_path=state, resume=True)
    run(steps=2, state_path=state, config={"checkpoint_every": 1})  # a gpt tiny's state
    model = build_variant("gpt", "tiny", vocab_size=64, max_seq_len=32, n_layer=1)
    batches, _ = block_batches(pattern_stream(), batch_size=4, seqlen=32, seed=0)
    config = TrainConfig(budget=Budget(tokens=2 * 4 * 32), batch_size=4, seqlen=32, lr=3e-3,
                         checkpoint_every=1)
    with pytest.raises(ValueError, match=f"{state}: saved by a run of another model or "
                                         "configuration"):
        train(model, batches, config, state_path=state, resume=True)


def test_resuming_with_other_settings_or_data_is_refused_naming_what_differs(tmp_path):
    """A resume with another budget would splice two learning-rate schedules; one with another
    corpus two data sets. The state names what made the run, and the first difference is
    said."""
    state = tmp_path / "trainer_state.pt"
    run(steps=2, state_path=state, config={"checkpoint_every": 1}, run={"corpus": "a.txt"})
    with pytest.raises(ValueError, match=f"{state}: saved by a run whose budget was 256 tokens, "
                                         "this run's is 384 tokens; resume with the options"):
        run(steps=3, state_path=state, resume=True, run={"corpus": "a.txt"})
    with pytest.raises(ValueError, match="whose weight_decay was 0.1, this run's is 0.0"):
        run(steps=2, state_path=state, resume=True, config={"weight_decay": 0.0},
            run={"corpus": "a.txt"})
    with pytest.raises(ValueError, match="whose corpus was 'a.txt', this run's is 'b.txt'"):
        run(steps=2, state_path=state, resume=True, run={"corpus": "b.txt"})
    _, history = run(steps=2, state_path=state, resume=True, run={"corpus": "a.txt"})
    assert history.steps == 2  # the same run: nothing left to train


def test_block_batches_cover_the_stream_in_a_seeded_order():
    stream = torch.arange(1000)
    batches, n = block_batches(stream, batch_size=3, seqlen=10, seed=0)
    inputs, targets = batches(0)
    assert n == 99 and inputs["input_ids"].shape == (3, 10)
    assert torch.equal(targets, inputs["input_ids"] + 1)  # next-token targets
    firsts = {int(batches(s)[0]["input_ids"][i, 0]) for s in range(33) for i in range(3)}
    assert firsts == {10 * i for i in range(99)}
    with pytest.raises(ValueError, match="fewer than one batch"):
        block_batches(torch.arange(50), batch_size=8, seqlen=10, seed=0)


def test_bfloat16_trains_mixed_precision_over_float32_weights():
    """bfloat16: the matrix products run in bfloat16 (autocast), the weights, their gradients
    and the optimizer state stay float32, and the losses of 12 steps follow float32's within 5%
    (bfloat16 keeps 8 bits of mantissa)."""
    products = []
    torch.manual_seed(0)
    model = build_variant("gpt", "tiny", vocab_size=64, max_seq_len=32)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda module, args, out: products.append(out.dtype))
    batches, _ = block_batches(pattern_stream(), batch_size=4, seqlen=32, seed=0)
    config = TrainConfig(budget=Budget(tokens=12 * 128), batch_size=4, seqlen=32, lr=3e-3,
                         dtype="bfloat16")
    mixed = train(model, batches, config)
    _, full = run(steps=12)  # the same model, data and seed in float32
    assert products and set(products) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert mixed.losses != full.losses  # it did run in another precision
    for a, b in zip(mixed.losses, full.losses, strict=True):
        assert abs(a - b) < 0.05 * b


def test_an_unknown_training_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype 'float16': training takes float32 or bfloat16"):
        TrainConfig(budget=Budget(tokens=1), dtype="float16")


def test_a_flops_budget_stops_at_the_budget():
    """Each step costs batch x seqlen x the model's training FLOPs per token; training stops at
    the first step that reaches the budget, and the record knows the kind of budget."""
    per_token = 3 * 1000.0
    step_cost = 4 * 32 * per_token  # batch x seqlen x FLOPs per token
    budget = Budget(flops=10.5 * step_cost)
    _, history = run(steps=0, config={"budget": budget, "flops_per_token": per_token})
    assert history.steps == 11 and history.flops == pytest.approx(11 * step_cost)
    assert budget.kind == "flops" and "FLOPs" in str(budget)
    with pytest.raises(ValueError, match="FLOPs per token"):
        run(steps=0, config={"budget": budget})


def test_training_stops_early_once_validation_passes_the_target():
    scores = iter([0.5, 0.995, 1.0])
    _, history = run(steps=60, evaluate=lambda m: {"accuracy": next(scores)},
                     config={"eval_every": 10, "stop_at": ("accuracy", 0.99, "max")})
    assert history.stopped_early and history.steps == 20
    assert [e["accuracy"] for e in history.evals] == [0.5, 0.995]
    _, full = run(steps=30, evaluate=lambda m: {"accuracy": 0.5},
                  config={"eval_every": 10, "stop_at": ("accuracy", 0.99, "max")})
    assert not full.stopped_early and full.steps == 30


def test_weight_decay_skips_vectors_and_what_a_model_marks():
    model = build_variant("mamba", "tiny")
    decay, no_decay = param_groups(model, 0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    decayed = {id(p) for p in decay["params"]}
    mixer = model.layers[0].mixer
    assert id(mixer.in_proj.weight) in decayed and id(mixer.A_log) not in decayed  # as mamba_ssm
    assert mixer.A_log.dim() == 2 and id(mixer.D) not in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
