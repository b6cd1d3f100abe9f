"""One quality run, end to end: data, model, equal-budget training, evaluation, checkpoint and
the record for the results store. `catalog train` runs one model, `catalog quality` several
on the same `Prepared` data, so every model of a comparison sees the same tokenizer, the same
examples in the same order and the same budget.

Tasks, and the models they take (by what the model is, not by name):

  lm       decoders: next-token prediction on the corpus, bits per byte on its test split.
           The encoder-decoder runs it as `seq2seq` (below), in the same bits per byte.
  seq2seq  the encoder-decoder: the encoder reads `seqlen / 2` tokens of the corpus, the
           decoder writes the next `seqlen / 2`; bits per byte of what it writes.
  mlm      encoders: masked-token prediction (BERT's 80/10/10 masking; BERT's masks are drawn
           once, RoBERTa's and MosaicBERT's anew each step, MosaicBERT at 30%); accuracy and
           loss on one common masking of the test split (15%, fixed seed).
  mqar     decoders: Zoology's multi-query associative recall; accuracy at the queries.

The text is tokenized with bytes (default) or a byte-level BPE trained on the training split;
models get the tokenizer's vocabulary (plus a [MASK] id for encoders) in place of their
variant's, and the other fields of the variant (`small`: parameter-matched) unchanged.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.quality import tasks
from harness.quality.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer
from harness.quality.train import Budget, History, TrainConfig, block_batches, train

if TYPE_CHECKING:
    from harness.catalog import Catalog
    from harness.results import QualityRecord

TASKS = ("lm", "seq2seq", "mlm", "mqar")
TOKENIZERS = ("bytes", "bpe")

# Per task: (seqlen, batch size, peak learning rate). Chosen so that a run of a few minutes on a
# 2-core CPU takes a few hundred optimizer steps with the `small` variants. MQAR's batch is
# large because its signal is sparse (one target per key-value pair, 4 in 64 tokens): at 32
# sequences a step GPT stayed at picking a random value from the context (25%) for 7,000 steps;
# at 256 it learned the lookup within 500 steps.
TASK_DEFAULTS = {"lm": (256, 8, 1e-3), "seq2seq": (256, 8, 1e-3), "mlm": (128, 16, 1e-3),
                 "mqar": (64, 256, 1e-3)}
# Config fields a synthetic recall task sets to 0: dropout on the attention probabilities blurs
# the exact lookup MQAR tests (GPT tiny, batch 256, after 400 steps: 30% without dropout and
# rising, 21% with 0.1). Zoology trains its attention with 0.1, but for 64 epochs, not minutes.
MQAR_NO_DROPOUT = ("dropout", "attn_dropout")
# Masked-LM recipes: (masking rate, masks drawn anew at every step).
MLM_RECIPES = {"bert": (0.15, False), "roberta": (0.15, True), "mosaic-bert": (0.30, True)}
DEFAULT_MLM_RECIPE = (0.15, True)


class QualityError(ValueError):
    """Bad input to a quality run: the message names what is wrong and what would be right."""


@dataclass(frozen=True)
class RunSpec:
    """Everything a comparison holds fixed across its models."""

    task: str
    budget: Budget
    variant: str = "small"
    seed: int = 0
    corpus: str | None = None  # None: the standard library's documentation
    tokenizer: str = "bytes"
    bpe_vocab: int = 8192
    seqlen: int | None = None  # None: TASK_DEFAULTS
    batch_size: int | None = None
    lr: float | None = None
    eval_every: int = 50  # steps between evaluations on (part of) the validation split
    eval_tokens: int = 16_384  # validation tokens per periodic evaluation (the test is whole)
    # Zoology's smallest setting (64 tokens, 4 pairs) with a vocabulary of 512 instead of 8192:
    # a 2-core CPU then computes the logits of 256 x 64 positions fast enough to learn the
    # lookup in minutes (GPT tiny: 94% in 5 min); --mqar-vocab 8192 gives Zoology's figure.
    mqar: tasks.MQARConfig = tasks.MQARConfig(seqlen=64, num_kv_pairs=4, vocab_size=512)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise QualityError(f"--task {self.task!r}: choose one of {', '.join(TASKS)}")
        if self.tokenizer not in TOKENIZERS:
            raise QualityError(f"--tokenizer {self.tokenizer!r}: choose bytes or bpe")
        for name in ("seqlen", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise QualityError(f"--{name.replace('_', '-')} must be at least 2, not {value}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise QualityError(f"--lr must be in (0, 1), not {self.lr}")
        if self.task == "seq2seq" and self.seqlen is not None and self.seqlen % 2:
            raise QualityError(f"--seqlen {self.seqlen}: seq2seq splits it in two halves; "
                               "give an even length")

    @property
    def train_config(self) -> TrainConfig:
        seqlen, batch, lr = TASK_DEFAULTS[self.task]
        if self.task == "mqar":
            seqlen = self.mqar.seqlen
        return TrainConfig(budget=self.budget, seqlen=self.seqlen or seqlen,
                           batch_size=self.batch_size or batch, lr=self.lr or lr, seed=self.seed,
                           eval_every=self.eval_every, checkpoint_every=self.eval_every)


def architecture(model: str) -> str:
    """"decoder", "encoder" or "encoder-decoder", from the zoo class itself."""
    import zoo

    cls = zoo.load_class(model)
    if getattr(cls, "causal_lm", False):
        return "decoder"
    if "src_ids" in inspect.signature(cls.forward).parameters:
        return "encoder-decoder"
    return "encoder"


def task_for(model: str, task: str) -> str:
    """The task `model` runs for the requested one (the encoder-decoder runs `lm` as seq2seq),
    or a QualityError saying which tasks it takes."""
    arch = architecture(model)
    allowed = {"decoder": ("lm", "mqar"), "encoder": ("mlm",),
               "encoder-decoder": ("seq2seq", "lm")}[arch]
    if task not in allowed:
        raise QualityError(f"{model} is {'an' if arch[0] == 'e' else 'a'} {arch}: it runs "
                           f"--task {' or '.join(allowed)}, not {task}")
    return "seq2seq" if arch == "encoder-decoder" else task


# ------------------------------------------------------------------------------- data


@dataclass
class Prepared:
    """The data of one task, built once and shared by every model of a comparison."""

    spec: RunSpec
    tokenizer: Tokenizer | None = None
    corpus_name: str | None = None
    train_stream: torch.Tensor | None = None
    validation_stream: torch.Tensor | None = None
    test_stream: torch.Tensor | None = None
    test_documents: list[str] = field(default_factory=list)
    baseline: float | None = None  # unigram bits per byte of the test split
    mqar: tasks.MQARData | None = None
    _cache: dict[str, Any] = field(default_factory=dict)


def prepare(spec: RunSpec, tasks_needed: set[str] | None = None) -> Prepared:
    """Load, split and tokenize the corpus (text tasks) and/or generate MQAR (`mqar`)."""
    needed = tasks_needed or {spec.task}
    out = Prepared(spec)
    if needed & {"lm", "seq2seq", "mlm"}:
        try:
            corpus = tasks.load_corpus(spec.corpus)
        except (OSError, ValueError, RuntimeError) as error:
            raise QualityError(str(error)) from None
        out.corpus_name = corpus.name
        texts = [d.text for d in corpus.train]
        out.tokenizer = (ByteTokenizer() if spec.tokenizer == "bytes"
                         else BPETokenizer.train(texts, spec.bpe_vocab))
        out.train_stream = tasks.token_stream(corpus.train, out.tokenizer)
        out.validation_stream = tasks.token_stream(corpus.validation, out.tokenizer)
        out.test_stream = tasks.token_stream(corpus.test, out.tokenizer)
        out.test_documents = [d.text for d in corpus.test]
        out.baseline = tasks.unigram_bits_per_byte(corpus.train, corpus.test)
        seqlen = spec.train_config.seqlen
        if out.train_stream.numel() < spec.train_config.batch_size * seqlen + 1:
            raise QualityError(f"corpus {corpus.name}: its training split has "
                               f"{out.train_stream.numel():,} tokens, fewer than one batch of "
                               f"{spec.train_config.batch_size} x {seqlen}")
    if "mqar" in needed:
        out.mqar = tasks.make_mqar(spec.mqar, seed=spec.seed)
    return out


# ------------------------------------------------------------------------------ model


def check_model(model: str, spec: RunSpec, catalog: Catalog | None = None) -> str:
    """The task `model` runs for the spec, after checking that `catalog` (default: the shipped
    one) has the spec's variant of it."""
    task = task_for(model, spec.task)
    _variant_fields(model, spec, catalog)
    return task


def _variant_fields(model: str, spec: RunSpec, catalog: Catalog | None) -> dict[str, Any]:
    from harness.catalog import CatalogError
    from harness.models import variant_fields

    try:
        return variant_fields(model, spec.variant, catalog)
    except CatalogError as error:  # the catalog's own message names the variants it has
        raise QualityError(str(error)) from None


def build_model(model: str, task: str, data: Prepared, catalog: Catalog | None = None):
    """The zoo model `model` at the spec's variant, sized for the task's vocabulary and
    length; seeded with the spec's seed, so every run of a comparison starts alike."""
    from harness.models import build, config_field_names

    spec = data.spec
    fields = _variant_fields(model, spec, catalog)
    overrides: dict[str, Any] = {}
    names = config_field_names(model)
    if task == "mqar":
        overrides["vocab_size"] = spec.mqar.vocab_size
        overrides.update({name: 0.0 for name in MQAR_NO_DROPOUT if name in names})
    else:
        tok = data.tokenizer
        overrides["vocab_size"] = tok.vocab_size + (task == "mlm")  # + [MASK] for encoders
        if "pad_token_id" in names:
            overrides["pad_token_id"] = tok.pad_id
    if "next_sentence_head" in names:
        overrides["next_sentence_head"] = False  # no sentence pairs here: MLM alone
    # Drawn on the CPU whatever the device, so that a seed gives the same initial weights on
    # every machine; then moved.
    built = build(model, overrides={**fields, **overrides}, seqlen=spec.train_config.seqlen,
                  seed=spec.seed, device="cpu")
    return built.model.to(spec.device)


# -------------------------------------------------------------------------- the tasks


@dataclass
class TaskSetup:
    batches: Callable
    evaluate: Callable  # on the validation split, during training
    test: Callable  # the final score
    metric: str  # the headline metric of `test`'s result
    notes: list[str] = field(default_factory=list)


def setup_task(model: str, task: str, data: Prepared, device: str) -> TaskSetup:
    config = data.spec.train_config
    T, B, seed = config.seqlen, config.batch_size, config.seed
    if task == "mqar":
        mq = data.mqar
        batches = tasks.example_batches({"input_ids": mq.train_inputs}, mq.train_targets, B, seed)
        val = max(1, data.spec.eval_tokens // mq.test_inputs.shape[1])
        return TaskSetup(
            batches,
            lambda m: _mqar_scores(m, mq.test_inputs[:val], mq.test_targets[:val], device),
            lambda m: _mqar_scores(m, mq.test_inputs, mq.test_targets, device), "accuracy")
    tok = data.tokenizer
    if task == "lm":
        batches, _ = block_batches(data.train_stream, B, T, seed)
        byte_lengths = tasks.token_bytes(tok)
        val = data.validation_stream[:data.spec.eval_tokens + 1]
        return TaskSetup(batches, lambda m: _lm_scores(m, val, T, tok, byte_lengths, device),
                         lambda m: _lm_scores(m, data.test_stream, T, tok, byte_lengths, device),
                         "bits_per_byte")
    if task == "seq2seq":
        half = T // 2
        inputs, targets = tasks.seq2seq_pairs(data.train_stream, half, half, tok.bos_id,
                                              tok.eos_id)
        batches = tasks.example_batches(inputs, targets, B, seed)
        byte_lengths = tasks.token_bytes(tok)
        val = data.validation_stream[:data.spec.eval_tokens + half]
        note = (f"seq2seq: the encoder reads {half} tokens, the decoder writes the next {half}; "
                f"the test's first {half} tokens are context only")
        return TaskSetup(
            batches, lambda m: _seq2seq_scores(m, val, half, tok, byte_lengths, device),
            lambda m: _seq2seq_scores(m, data.test_stream, half, tok, byte_lengths, device),
            "bits_per_byte", [note])
    # mlm: blocks of T tokens; a [MASK] id one past the tokenizer's vocabulary
    rate, dynamic = MLM_RECIPES.get(model, DEFAULT_MLM_RECIPE)
    masking = {"mask_id": tok.vocab_size, "vocab_size": tok.vocab_size,
               "special_ids": (tok.bos_id, tok.eos_id, tok.pad_id)}
    blocks = _blocks(data.train_stream, T)
    if dynamic:
        batches = tasks.mlm_batches(blocks, B, seed, rate=rate, **masking)
    else:  # BERT: one masking of the data, drawn once with the seed
        inputs, targets = tasks.mask_tokens(blocks, generator=torch.Generator().manual_seed(seed),
                                            rate=rate, **masking)
        batches = tasks.example_batches({"input_ids": inputs}, targets, B, seed)
    val = tasks.mlm_eval_set(_blocks(data.validation_stream, T)[:max(1, data.spec.eval_tokens
                                                                       // T)], **masking)
    test = tasks.mlm_eval_set(_blocks(data.test_stream, T), **masking)
    note = (f"trained at {rate:.0%} masking, {'dynamic' if dynamic else 'static'}; evaluated "
            f"at {tasks.MLM_EVAL_RATE:.0%} (fixed seed)")
    return TaskSetup(batches, lambda m: _mlm_scores(m, *val, device),
                     lambda m: _mlm_scores(m, *test, device), "mlm_accuracy", [note])


def _blocks(stream: torch.Tensor, T: int) -> torch.Tensor:
    n = stream.numel() // T
    if n == 0:
        raise QualityError(f"a split of {stream.numel()} tokens gives no block of {T}")
    return stream[:n * T].view(n, T)


EVAL_BATCH = 16


def _lm_scores(model, stream, T, tok, byte_lengths, device) -> dict[str, float]:
    inputs, targets = tasks.lm_blocks(stream, T, tok.pad_id)
    nll, n_bytes, n_tokens = 0.0, 0, 0
    for start in range(0, inputs.shape[0], EVAL_BATCH):
        x, y = inputs[start:start + EVAL_BATCH].to(device), targets[start:start + EVAL_BATCH]
        logits = model(input_ids=x).logits.float().cpu()
        a, b = tasks.nll_and_bytes(logits, y, byte_lengths)
        nll, n_bytes, n_tokens = nll + a, n_bytes + b, n_tokens + int((y != tasks.IGNORE).sum())
    return {"bits_per_byte": tasks.bits_per_byte(nll, n_bytes), "loss": nll / n_tokens}


def _seq2seq_scores(model, stream, half, tok, byte_lengths, device) -> dict[str, float]:
    inputs, targets = tasks.seq2seq_pairs(stream, half, half, tok.bos_id, tok.eos_id)
    nll, n_bytes = 0.0, 0
    for start in range(0, targets.shape[0], EVAL_BATCH):
        rows = slice(start, start + EVAL_BATCH)
        logits = model(**{k: v[rows].to(device) for k, v in inputs.items()}).logits.float().cpu()
        a, b = tasks.seq2seq_nll_and_bytes(logits, targets[rows], byte_lengths)
        nll, n_bytes = nll + a, n_bytes + b
    return {"bits_per_byte": tasks.bits_per_byte(nll, n_bytes)}


def _mlm_scores(model, inputs, targets, device) -> dict[str, float]:
    correct, total, nll = _scored_positions(model, inputs, targets, device)
    return {"mlm_accuracy": correct / total, "mlm_loss": nll / total}


def _mqar_scores(model, inputs, targets, device) -> dict[str, float]:
    correct, total, _ = _scored_positions(model, inputs, targets, device)
    return {"accuracy": correct / total}


def _scored_positions(model, inputs, targets, device) -> tuple[int, int, float]:
    """(correct argmax predictions, scored positions, summed NLL in nats) over the positions
    whose target is not -100."""
    correct, total, nll = 0, 0, 0.0
    for start in range(0, inputs.shape[0], EVAL_BATCH):
        x, y = inputs[start:start + EVAL_BATCH].to(device), targets[start:start + EVAL_BATCH]
        logits = model(input_ids=x).logits.float().cpu()
        scored = y != tasks.IGNORE
        correct += int((logits.argmax(-1)[scored] == y[scored]).sum())
        total += int(scored.sum())
        nll += torch.nn.functional.cross_entropy(logits[scored], y[scored], reduction="sum").item()
    return correct, total, nll


# ------------------------------------------------------------------------------ a run


@dataclass
class RunResult:
    record: QualityRecord | None  # None in a process other than the main one
    history: History
    checkpoint: Path | None


def run_one(model: str, data: Prepared, out: Path, *, resume: bool = False,
            on_step: Callable[[History, float], None] | None = None,
            is_main: bool = True, catalog: Catalog | None = None,
            command: str | None = None) -> RunResult:
    """Train `model` on the prepared task from scratch (or `resume` from `out/state.pt`), test
    it, save the checkpoint into `out` and return the quality record (written by the caller).
    In a multi-process run only the main process (`is_main`) saves."""
    from harness.quality.checkpoint import save_checkpoint
    from harness.results import QualityRecord

    spec = data.spec
    task = task_for(model, spec.task)
    net = build_model(model, task, data, catalog)
    setup = setup_task(model, task, data, spec.device)
    config = spec.train_config
    if task == "seq2seq" and config.seqlen % 2:
        raise QualityError(f"--seqlen {config.seqlen}: seq2seq needs an even length")
    started = time.monotonic()
    history = train(net, setup.batches, config, evaluate=setup.evaluate,
                    state_path=out / "state.pt", resume=resume, on_step=on_step)
    if not is_main:
        return RunResult(None, history, None)
    net.eval()
    with torch.no_grad():
        scores = setup.test(net)
    test_seconds = time.monotonic() - started - history.seconds
    params = net.num_params()
    notes = list(setup.notes)
    if task == "mlm" and model == "bert":
        notes.append("no next-sentence head (the corpus has no sentence pairs)")
    if task == "mqar":
        fields = {f.name for f in dataclasses.fields(net.config)}
        off = [n for n in MQAR_NO_DROPOUT if n in fields]  # build_model set them to 0
        if off:
            notes.append(f"{', '.join(off)} set to 0 for the recall task")
    meta = {"task": task, "variant": spec.variant, "seed": spec.seed, "seqlen": config.seqlen,
            "budget": str(spec.budget), "steps": history.steps, "tokens": history.tokens,
            "tokenizer_kind": spec.tokenizer, "corpus": data.corpus_name, "scores": scores,
            "params": params}
    if task == "mqar":
        meta["mqar"] = dataclasses.asdict(spec.mqar)
    checkpoint = save_checkpoint(out, model, net, _checkpoint_tokenizer(data, task), **meta)
    (out / "state.pt").unlink(missing_ok=True)  # finished: the optimizer state is not needed
    rec = QualityRecord(
        model=model, variant=spec.variant, impl="zoo", mode="train",
        seqlen=config.seqlen, batch=config.batch_size, dtype="float32", device=spec.device,
        threads=torch.get_num_threads(), status="ok", params=params, task=task,
        metric=setup.metric, value=scores[setup.metric], notes=notes,
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        budget=str(spec.budget), budget_tokens=spec.budget.tokens,
        budget_seconds=spec.budget.seconds, tokens=history.tokens, steps=history.steps,
        train_seconds=round(history.seconds, 1), test_seconds=round(test_seconds, 1),
        tokens_per_s=history.tokens / history.seconds if history.seconds else None,
        seed=spec.seed, lr=config.lr, tokenizer=spec.tokenizer,
        vocab_size=net.config.vocab_size, corpus=data.corpus_name, scores=scores,
        final_train_loss=_mean_tail(history.losses), baseline=data.baseline if task in (
            "lm", "seq2seq") else None, checkpoint=str(checkpoint), command=command,
        **machine(spec.device))
    if task == "mqar":
        rec.mqar = meta["mqar"]
        rec.chance = 1 / spec.mqar.num_kv_pairs
    return RunResult(rec, history, checkpoint)


def _checkpoint_tokenizer(data: Prepared, task: str) -> Tokenizer:
    # MQAR has no text: its checkpoint carries the byte tokenizer as a placeholder of the format
    return data.tokenizer if task != "mqar" else ByteTokenizer()


def _mean_tail(losses: list[float], n: int = 20) -> float | None:
    tail = [x for x in losses[-n:] if math.isfinite(x)]
    return sum(tail) / len(tail) if tail else None


def machine(device: str) -> dict[str, Any]:
    """Where a record was made: CPU, GPU, cores, memory, torch, package version and git
    revision."""
    from harness.bench import machine_info
    from harness.sweep import provenance

    info = machine_info(device)
    return {"cpu": info["cpu"], "gpu": info["gpu"], "cores": info["cores"],
            "ram_bytes": info["ram_bytes"], "torch": info["torch"], **provenance()}


# ---------------------------------------------------------------------- folders, processes


def run_folder(out: Path | None, model: str, spec: RunSpec, several: bool) -> Path:
    """Where a model's checkpoint goes: `out` itself for one model, `out/MODEL` for several;
    by default runs/MODEL-TASK-VARIANT-seedN, or runs/quality-TASK/MODEL."""
    if out is None:
        if several:
            return Path("runs") / f"quality-{spec.task}" / model
        return Path("runs") / f"{model}-{spec.task}-{spec.variant}-seed{spec.seed}"
    return out / model if several else out


def check_folder(folder: Path, *, resume: bool, force: bool) -> None:
    """Refuse to overwrite a finished checkpoint (unless `force`) and to resume from nothing."""
    if folder.exists() and not folder.is_dir():
        raise QualityError(f"--out {folder} is a file; give a folder")
    if resume:
        if not (folder / "state.pt").exists():
            raise QualityError(f"--resume: {folder} holds no interrupted run (no state.pt); "
                               "drop --resume to start one")
    elif (folder / "config.json").exists() and not force:
        raise QualityError(f"{folder} already holds a checkpoint; pass --force to overwrite it "
                           "or --out to write elsewhere")
    elif (folder / "state.pt").exists() and not force:
        raise QualityError(f"{folder} holds an interrupted run; pass --resume to continue it "
                           "or --force to start over")


def init_distributed(device: str, env: dict[str, str]) -> tuple[str, int]:
    """Join the process group that `torchrun` set up (its variables are in `env`): gloo on
    CPU, nccl on CUDA with one GPU per process. Returns (this process's device, its rank);
    (device, 0) outside torchrun."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return device, 0
    import torch.distributed as dist

    if device.startswith("cuda"):
        device = f"cuda:{int(env.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return device, dist.get_rank()


# ----------------------------------------------------------------------------- lm-eval


def evaluate_with_lm_eval(checkpoint: Path, task_names: list[str] | None = None,
                          corpus: str | None = None, limit: int | None = None,
                          **model_args: Any) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Run lm-eval's `simple_evaluate` with the `zoo` adapter on the local tasks built from the
    test split of the checkpoint's corpus (or `corpus`). Returns ({task: {metric: value}},
    the checkpoint's config.json). The task files go to CHECKPOINT/lm_eval_tasks."""
    import json

    config_file = Path(checkpoint) / "config.json"
    if not config_file.exists():
        raise QualityError(f"{checkpoint}: not a checkpoint (no config.json); give a folder "
                           "written by `catalog train`")
    meta = json.loads(config_file.read_text())
    if meta.get("task") == "mqar":
        raise QualityError(f"{checkpoint} was trained on mqar, which has no text; lm-eval's "
                           "text tasks need a model trained with --task lm")
    source = corpus or meta.get("corpus") or "stdlib"
    try:
        documents = [d.text for d in tasks.load_corpus(source).test]
    except (OSError, ValueError, RuntimeError) as error:
        raise QualityError(str(error)) from None
    from harness.quality.lm_eval_adapter import evaluate_checkpoint

    scores = evaluate_checkpoint(checkpoint, documents, Path(checkpoint) / "lm_eval_tasks",
                                 tasks=task_names, limit=limit, **model_args)
    return scores, meta
