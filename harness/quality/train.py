"""The equal-budget trainer: the same tokens (or seconds), schedule, seed and data order for
every model of a comparison.

A budget is a number of training tokens ("20M-tokens", deterministic) or of seconds ("5m",
"90s", "1h": as fair as the machine is quiet). The learning rate warms up linearly, then
decays along a cosine to `min_lr_ratio` of its peak over the budget; gradients are clipped to
`grad_clip`. Every `checkpoint_every` steps the model, the optimizer, the step, the data
position and the random states are saved, and `resume=True` continues from there to the
same numbers an uninterrupted run would give (on the same machine). Ctrl-C (or SIGTERM)
during training lets the step it lands in finish (a half-applied optimizer step is no state
to save), saves that step and then raises KeyboardInterrupt; a second Ctrl-C interrupts at
once.

Data parallel: when `torch.distributed` is initialised (`torchrun`; gloo on CPU, nccl on GPU),
the model is wrapped in DistributedDataParallel and each of the W processes takes every W-th
row of the step's batch, so the global batch, the data order and the budget are those of a
single-process run. Rank 0 alone evaluates and saves; the others wait for it.

On CPU the trainer flushes denormal floats to zero while it runs: RWKV's decays drive some
gradients below 1e-38, where x86 arithmetic slows down by 10x or more (measured: an RWKV
`small` step took 44 s instead of 4.6 s); values that small change no result in float32. The
process also keeps the memory it frees for reuse (harness.bench.memory.keep_freed_memory), so
that a step's large temporaries do not fault in fresh pages every step.
"""

from __future__ import annotations

import contextlib
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.bench.memory import keep_freed_memory
from harness.optim import adamw

_BUDGET_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMB]?)-?tokens$|^(\d+(?:\.\d+)?)\s*([smh])$"
                        r"|^(\d+(?:\.\d+)?(?:e\+?\d+)?)\s*([KMGTP]?)-?flops$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """One of: training tokens, seconds, or training FLOPs (each model's analytic cost of a
    training step at its training length: 3x the forward's `flops_per_token`, so that a model
    whose cost per token grows with the context pays for it)."""

    tokens: int | None = None
    seconds: float | None = None
    flops: float | None = None

    def __str__(self) -> str:
        if self.flops:
            return f"{self.flops:.3g} FLOPs"
        return f"{self.tokens:,} tokens" if self.tokens else f"{self.seconds:g} s"

    @property
    def kind(self) -> str:
        """"tokens", "seconds" or "flops": what the budget counts."""
        return "flops" if self.flops else "tokens" if self.tokens else "seconds"


def parse_budget(text: str) -> Budget:
    """"20M-tokens" / "500K-tokens" / "1e6 tokens" -> tokens; "5m" / "90s" / "1h" -> seconds;
    "2e14-flops" / "200T-flops" -> training FLOPs."""
    match = _BUDGET_RE.match(text.strip().replace(" ", "-"))
    if not match:
        raise ValueError(f"--budget {text!r}: give a time (90s, 5m, 1h), a number of tokens "
                         "(500K-tokens, 20M-tokens) or of training FLOPs (2e14-flops)")
    if match.group(5):
        scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
        flops = float(match.group(5)) * scale[match.group(6).upper()]
        if not math.isfinite(flops) or flops <= 0:
            raise ValueError(f"--budget {text!r} must be positive and finite")
        return Budget(flops=flops)
    if match.group(1):
        scale = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9}[match.group(2).upper()]
        value = int(float(match.group(1)) * scale)
        budget = Budget(tokens=value)
    else:
        scale = {"s": 1, "m": 60, "h": 3600}[match.group(4).lower()]
        value = float(match.group(3)) * scale
        budget = Budget(seconds=value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"--budget {text!r} must be positive and finite")
    return budget


# Training precisions: float32, or bfloat16 as mixed precision (torch.autocast: matrix products
# in bfloat16, weights, gradients, optimizer state and reductions in float32; no loss scaling
# needed, bfloat16 having float32's range). float16 would need a gradient scaler: not offered.
PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    budget: Budget
    batch_size: int = 16
    seqlen: int = 256
    lr: float = 1e-3
    warmup: float = 0.05  # fraction of the budget spent warming up
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100  # steps
    checkpoint_every: int = 100  # steps
    dtype: str = "float32"  # or "bfloat16": autocast over float32 master weights
    # Training FLOPs of one token at `seqlen` (3x the forward): what a FLOPs budget counts.
    flops_per_token: float | None = None
    # Stop once the validation scores pass this: (metric, threshold, "max" or "min").
    stop_at: tuple[str, float, str] | None = None

    def __post_init__(self) -> None:
        if self.dtype not in PRECISIONS:
            raise ValueError(f"dtype {self.dtype!r}: training takes {' or '.join(PRECISIONS)}")


def lr_at(progress: float, config: TrainConfig) -> float:
    """Learning rate at `progress` in [0, 1] of the budget: linear warm-up, cosine decay."""
    if progress < config.warmup:
        return config.lr * (progress / config.warmup) if config.warmup else config.lr
    decay = (progress - config.warmup) / max(1e-12, 1 - config.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(decay, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


@dataclass
class History:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    flops: float = 0.0  # training FLOPs spent (when the config knows the model's cost)
    stopped_early: bool = False  # the validation passed `stop_at` before the budget ran out


Batches = Callable[[int], tuple[dict[str, torch.Tensor], torch.Tensor]]


class UnusableState(ValueError):
    """A state file a run cannot resume from: damaged, or saved by another run."""


def train(model, batches: Batches, config: TrainConfig, *,
          evaluate: Callable[[Any], dict[str, float]] | None = None,
          state_path: Path | None = None, resume: bool = False,
          on_step: Callable[[History, float], None] | None = None,
          run: dict[str, Any] | None = None) -> History:
    """Train `model` on `batches(step) -> (inputs, targets)` until the budget is spent (a
    time budget counts the training steps: not the validations and saves between them).

    `batches` must be a pure function of the step (it owns the seeded data order), so a resumed
    run sees the batches the interrupted one would have. The state saved holds `config` and
    `run` (what else made the run: model, data, ...): a resume with other ones is refused
    (UnusableState). `evaluate(model)` runs every `eval_every` steps and at the end;
    `on_step(history, lr)` reports progress. Batches are built on the CPU and moved to the
    model's device."""
    if config.budget.flops and not config.flops_per_token:
        raise ValueError("a FLOPs budget needs the model's training FLOPs per token")
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    rank, world = _distributed()
    if config.batch_size % world:
        raise ValueError(f"batch size {config.batch_size} does not split over {world} processes; "
                         f"give a multiple of {world}")
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    flushed = device.type == "cpu" and torch.set_flush_denormal(True)
    if device.type == "cpu":
        keep_freed_memory()  # large temporaries reuse pages instead of faulting in new ones
    try:
        return _train(model, net, batches, config, evaluate, state_path, resume, on_step,
                      device, rank, world, _made_of(config, run))
    finally:
        if flushed:
            torch.set_flush_denormal(False)


@contextlib.contextmanager
def _interrupt_between_steps() -> Iterator[Callable[[], bool]]:
    """A check of whether the run was asked to stop since the block began, by Ctrl-C (SIGINT)
    or SIGTERM (a launcher stopping its cells, a scheduler's preemption): either sets it
    instead of stopping the process mid-step. A second SIGINT raises KeyboardInterrupt at
    once. Each signal only where its default is in place (Python's KeyboardInterrupt, the
    system's termination), and in the main thread; else the check is always False."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    sigints: list[int] = []
    asked: list[int] = []

    def on_sigint(signum, frame) -> None:
        if sigints:
            raise KeyboardInterrupt
        sigints.append(signum)
        asked.append(signum)

    def on_sigterm(signum, frame) -> None:
        asked.append(signum)

    ours = {}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        ours[signal.SIGINT] = on_sigint
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        ours[signal.SIGTERM] = on_sigterm
    previous = {signum: signal.signal(signum, handler) for signum, handler in ours.items()}
    try:
        yield lambda: bool(asked)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _made_of(config: TrainConfig, run: dict[str, Any] | None) -> dict[str, Any]:
    """What a resume must share with the run it continues: the settings that shape training
    (how often it is saved does not) and the caller's `run`."""
    settings = {k: v for k, v in asdict(config).items() if k != "checkpoint_every"}
    return {**settings, **(run or {})}


def _distributed() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless torch.distributed is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's two groups: the matrices with `weight_decay`; vectors (biases, norm gains) and
    the parameters a model marks with `_no_weight_decay` (Mamba's A_log and D, as mamba_ssm
    trains them) without."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 and not getattr(p, "_no_weight_decay", False)
         else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _train(model, net, batches, config, evaluate, state_path, resume, on_step, device, rank,
           world, run) -> History:
    optimizer = adamw(param_groups(model, config.weight_decay), lr=config.lr,
                      betas=config.betas)
    history = History()
    if resume and state_path is not None and state_path.exists():
        history = _load_state(state_path, model, optimizer, run)
    tokens_per_step = config.batch_size * config.seqlen
    saved_at = history.steps  # the step state_path holds (a resumed run's, or none yet)
    model.train()
    start = time.monotonic() - history.seconds
    with _interrupt_between_steps() as interrupted:
        def stop_asked() -> bool:  # Ctrl-C came during the last step (every process agrees)
            asked = interrupted()
            return _broadcast_flag(asked, device) if world > 1 else asked

        while True:
            if stop_asked():  # save the last step, then stop
                break
            progress = _progress(history, config)
            if progress >= 1:
                break
            lr = lr_at(progress, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs, targets = batches(history.steps)
            if world > 1:  # this process's rows of the global batch
                inputs = {k: v[rank::world] for k, v in inputs.items()}
                targets = targets[rank::world]
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with _precision(config.dtype, device):
                loss = net(**inputs, targets=targets.to(device)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            history.steps += 1
            history.tokens += tokens_per_step
            history.flops += tokens_per_step * (config.flops_per_token or 0.0)
            history.seconds = time.monotonic() - start
            loss_value = loss.detach()
            if world > 1:
                loss_value, history.seconds = _agree(loss_value, history.seconds, world)
            history.losses.append(loss_value.item())
            if on_step is not None and rank == 0:
                on_step(history, lr)
            # A time budget's clock stops while the model is validated and saved: the budget
            # buys training alone, and tokens_per_s is the training's throughput.
            paused = time.monotonic()
            evaluating = evaluate is not None and history.steps % config.eval_every == 0
            saving = state_path is not None and history.steps % config.checkpoint_every == 0
            if evaluating and rank == 0:
                history.evals.append({"step": history.steps, **_evaluate(model, evaluate)})
                history.stopped_early = _passed(history.evals[-1], config.stop_at)
            if world > 1 and config.stop_at is not None:  # every process takes rank 0's decision
                history.stopped_early = _broadcast_flag(history.stopped_early, device)
            if history.stopped_early:
                break
            if saving and rank == 0:
                _save_state(state_path, model, optimizer, history, run)
                saved_at = history.steps
            if world > 1 and (evaluating or saving):  # the others wait here, clocks stopped
                _barrier()
            start += time.monotonic() - paused
        if stop_asked():  # also when it came during the step that ended training
            if state_path is not None and rank == 0 and saved_at != history.steps:
                _save_state(state_path, model, optimizer, history, run)
            raise KeyboardInterrupt
    if evaluate is not None and rank == 0 and (not history.evals
                                               or history.evals[-1]["step"] != history.steps):
        history.evals.append({"step": history.steps, **_evaluate(model, evaluate)})
    if state_path is not None and rank == 0 and saved_at != history.steps:
        # the trained state, whole: what fails after training (testing out of memory) loses
        # none of it (--resume tests it again)
        _save_state(state_path, model, optimizer, history, run)
    if world > 1:
        _barrier()
    return history


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _precision(dtype: str, device: torch.device):
    """The context a training forward runs in: autocast for bfloat16, nothing for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def _agree(loss: torch.Tensor, seconds: float, world: int) -> tuple[torch.Tensor, float]:
    """The mean loss over the processes, and the slowest one's clock: every process must take
    the same decision to stop when the budget is a time."""
    import torch.distributed as dist

    values = torch.stack([loss.float().cpu(), torch.tensor(seconds, dtype=torch.float32)])
    if dist.get_backend() == "nccl":
        values = values.to(loss.device)
    losses, clocks = values[:1].clone(), values[1:].clone()
    dist.all_reduce(losses)
    dist.all_reduce(clocks, op=dist.ReduceOp.MAX)
    return losses[0].cpu() / world, clocks.item()


def _passed(scores: dict[str, float], stop_at: tuple[str, float, str] | None) -> bool:
    """Whether validation `scores` pass the early-stopping target."""
    if stop_at is None:
        return False
    metric, threshold, direction = stop_at
    value = scores.get(metric)
    if value is None:
        return False
    return value >= threshold if direction == "max" else value <= threshold


def _broadcast_flag(flag: bool, device: torch.device) -> bool:
    import torch.distributed as dist

    value = torch.tensor([float(flag)], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(value, src=0)
    return bool(value.item())


def _progress(history: History, config: TrainConfig) -> float:
    if config.budget.flops:
        return history.flops / config.budget.flops
    if config.budget.tokens:
        return history.tokens / config.budget.tokens
    return history.seconds / config.budget.seconds


def _evaluate(model, evaluate) -> dict[str, float]:
    model.eval()
    try:
        with torch.no_grad():
            return evaluate(model)
    finally:
        model.train()


def _save_state(path: Path, model, optimizer, history: History, run: dict[str, Any]) -> None:
    """Everything a resumed run needs, and what made the run, written whole (a crash mid-write
    keeps the last one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "history": asdict(history), "rng": torch.get_rng_state(), "run": run}, tmp)
    tmp.replace(path)


def _load_state(path: Path, model, optimizer, run: dict[str, Any]) -> History:
    """The run saved at `path`, into `model` and `optimizer`; a ValueError that says so when
    the file is not a state `_save_state` wrote, or one of another model or configuration (its
    `run` differs: states saved before it was kept are not checked)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # copied to the device
        history = History(**state["history"])
    except Exception as error:  # noqa: BLE001 - whatever unpickling a damaged file raises
        raise UnusableState(f"{path}: not a saved training state ({_first_line(error)}); delete it "
                         "to start the run again") from None
    saved = state.get("run")
    differs = [key for key in {**(saved or {}), **run}
               if saved is not None and saved.get(key) != run.get(key)]
    if differs:
        key = differs[0]
        was, now = (_shown(key, saved.get(key)), _shown(key, run.get(key)))
        raise UnusableState(f"{path}: saved by a run whose {key} was {was}, this run's is {now}; "
                         "resume with the options it was started with, or delete it to start "
                         "again")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise UnusableState(f"{path}: saved by a run of another model or configuration "
                         f"({_first_line(error)}); resume with the options it was started "
                         "with, or delete it to start again") from None
    torch.set_rng_state(state["rng"])
    return history


def _shown(key: str, value: Any) -> str:
    if key == "budget" and isinstance(value, dict):
        return str(Budget(**value))
    return repr(value)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def block_batches(stream: torch.Tensor, batch_size: int, seqlen: int, seed: int
                  ) -> tuple[Batches, int]:
    """Batches of a causal LM over one token stream: the stream is cut into blocks of
    seqlen + 1 tokens, shuffled once with `seed`, and step s takes the blocks
    s*batch_size .. (s+1)*batch_size (cycling through epochs in the same order). Returns the
    batch function and the number of blocks."""
    n_blocks = (stream.numel() - 1) // seqlen
    if n_blocks < batch_size:
        raise ValueError(f"the training text gives {n_blocks} blocks of {seqlen} tokens, fewer "
                         f"than one batch of {batch_size}")
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed))

    def batches(step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        picks = order[(torch.arange(batch_size) + step * batch_size) % n_blocks]
        rows = torch.stack([stream[i * seqlen: i * seqlen + seqlen + 1] for i in picks.tolist()])
        return {"input_ids": rows[:, :-1]}, rows[:, 1:]

    return batches, n_blocks
