"""What a quality comparison holds fixed across its models (`RunSpec`), the tasks it can run,
and the per-task defaults and training recipes.

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
`--set FIELD=VALUE` changes one more config field of every model compared (Zoology's sweeps
of Mamba's d_state, say); the records name the variant with it ("tiny d_state=128"), so such
runs are told apart from the variant's own in the results, the tables and the rate choice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.machine import check_device
from harness.models import variant_label
from harness.quality.tasks import MQARConfig
from harness.quality.tokenizer import BPETokenizer
from harness.quality.train import PRECISIONS, Budget, TrainConfig, parse_budget

TASKS = ("lm", "seq2seq", "mlm", "mqar")
TOKENIZERS = ("bytes", "bpe")

# Per task: (seqlen, batch size, peak learning rate). Chosen so that a run of a few minutes on a
# 2-core CPU takes a few hundred optimizer steps with the `small` variants. MQAR's batch
# follows its length (MQAR_TOKENS_PER_STEP below).
TASK_DEFAULTS = {"lm": (256, 8, 1e-3), "seq2seq": (256, 8, 1e-3), "mlm": (128, 16, 1e-3),
                 "mqar": (64, 32, 1e-3)}
# MQAR's default batch: this many tokens per step (32 sequences of 64, 8 of 256). Zoology uses
# 32K-64K (512 x 64 ... 128 x 512) for up to 64 epochs; a CPU budget of 16M tokens buys few
# steps, and steps are what the lookup needs. Measured with this recipe (width 64, lr 3e-3,
# 16M-token budget, one core; reports/mqar-cpu-2k): at 8,192 tokens a step (the default until
# 2026-12-05) a mixer-only GPT stayed on the plateau at (256, 16) for seeds 0 and 1 (0.128 /
# 0.127 after 1,954 steps), at 4,096 seed 1 left it late (0.733) and seed 0 did not (0.130), at
# 2,048 both stopped early at 0.99 (steps 4,050 / 3,700); at (64, 4) and (128, 8) 2,048 reached
# 0.99 in fewer tokens than 8,192 did (850 x 2,048 against 450 x 8,192). Small batches are also
# cheaper per token on a CPU core: RWKV-4's cells ran 16M tokens in 95-120 s against 195-280 s.
# (Larger batches measured better before the MQAR init was PyTorch's default scale: 8K beat 16K
# a step, and, with feed-forward layers and dropout still in, 256 sequences of 64 beat 32.)
MQAR_TOKENS_PER_STEP = 2_048
# lm's batch is counted in tokens: 8 sequences at the default 256, 16 at 128, 2 at 1024, so that
# training length as an axis changes the context a step sees, not the tokens a step holds (with
# 8 sequences at every length, an equal FLOPs budget gave T = 1024 8x fewer steps than T = 128,
# and every model got worse with T: reports/lm-train-length-cpu, before).
LM_TOKENS_PER_STEP = TASK_DEFAULTS["lm"][0] * TASK_DEFAULTS["lm"][1]
# Zoology's smallest setting (64 tokens, 4 pairs) with a vocabulary of 512 instead of 8192: a
# 2-core CPU then computes the logits of 256 x 64 positions fast enough to learn the lookup in
# minutes (GPT tiny: 94% in 5 min); --mqar-vocab 8192 gives Zoology's figure.
DEFAULT_MQAR = MQARConfig(seqlen=64, num_kv_pairs=4, vocab_size=512)
# Config fields a synthetic recall task sets to 0: dropout on the attention probabilities blurs
# the exact lookup MQAR tests (GPT tiny, batch 256, after 400 steps: 30% without dropout and
# rising, 21% with 0.1). Zoology trains its attention with 0.1, but for 64 epochs, not minutes.
MQAR_NO_DROPOUT = ("dropout", "attn_dropout")
# Zoology's blocks hold the sequence mixer alone (its state mixer is the identity): MQAR cells
# drop each model's feed-forward layer (d_ff = 0; for Pangu-π this removes its series-informed
# activation too), so that recall is compared mixer against mixer. With the feed-forward kept,
# a 2-layer GPT at width 64 was still at chance (25%) after 1,000 steps on (64, 4) where the
# mixer-only one reached 80% in 375 (batch 128, lr 3e-3, one seed each).
MQAR_MIXER_ONLY = {"d_ff": 0}
# ... and Zoology's attention has one head.
MQAR_ONE_HEAD = {"n_head": 1, "n_kv_head": 1}  # (grouped-query attention: one kv head)


def mqar_init_std(d_model: int) -> float:
    """The MQAR recipe's weight scale: PyTorch's default for a linear layer, uniform in
    +-1/sqrt(fan_in), whose std is 1/sqrt(3 d) (0.072 at width 64). A departure from Zoology,
    whose `_init_weights` (zoology/model.py) starts attention's linears and embeddings at
    N(0, 0.02), GPT-2's scale, and then trains up to 64 epochs. At width 64, 0.02 is 3.6x
    smaller: attention logits start near 0 and training sits on the plateau before the lookup
    forms, longer than a CPU budget. Measured on (128, 8), width 64, lr 3e-3, seed 0: at 0.02 a
    mixer-only GPT was at chance (0.12) after 1,954 steps; at 0.072 it reached 0.998 in 750.
    Models with their own initialisation scheme (RWKV, Mamba) keep it."""
    return (3 * d_model) ** -0.5
# Zoology's training recipe for MQAR (zoology/train.py and the figure's configs): the learning
# rate decays along a cosine to 0, weight decay 0.1 (the trainer's default), and training stops
# once the validation accuracy passes 0.99.
MQAR_RECIPE = {"min_lr_ratio": 0.0, "stop_at": ("accuracy", 0.99, "max")}
# Masked-LM recipes: (masking rate, masks drawn anew at every step).
MLM_RECIPES = {"bert": (0.15, False), "roberta": (0.15, True), "mosaic-bert": (0.30, True)}
DEFAULT_MLM_RECIPE = (0.15, True)


# a byte-level BPE's vocabulary before any merge: the 256 bytes and its special tokens
BYTE_LEVEL_BASE = 256 + len(BPETokenizer.SPECIALS)


class QualityError(ValueError):
    """Bad input to a quality run: the message names what is wrong and what would be right."""


class OutOfMemory(QualityError):
    """A quality run's allocation refused: the message says doing what, and what to shrink (a
    grid records the cell as `oom`)."""


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
    mqar: MQARConfig = DEFAULT_MQAR
    device: str = "cpu"
    dtype: str = "float32"  # training precision: float32, or bfloat16 mixed precision
    width: int | None = None  # d_model in place of the variant's (its other fields kept)
    # lm: after training, bits per byte of the test text at T, 2T, 4T ... up to this length
    # (Press et al.), and the loss by token position; None: at the training length only.
    extrapolate: int | None = None
    stride: int | None = None  # also score with sliding windows moved by this many tokens
    curve_tokens: int = 65_536  # test tokens scored at each evaluation length (same for all)
    notes: tuple[str, ...] = ()  # said in every record of the run (e.g. how the size was chosen)
    depth: bool = False  # with `width`: scale the variant's layers with it (a sized model)
    # --set: config fields set on top of the variant's and the task's, as (name, value) pairs
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def variant_label(self) -> str:
        """The variant as records name it: "tiny", or "tiny d_state=128" with --set fields."""
        return variant_label(self.variant, self.overrides)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise QualityError(f"--task {self.task!r}: choose one of {', '.join(TASKS)}")
        if self.dtype not in PRECISIONS:
            raise QualityError(f"--dtype {self.dtype!r}: training takes "
                               f"{' or '.join(PRECISIONS)} (bfloat16: mixed precision)")
        if self.tokenizer not in TOKENIZERS:
            raise QualityError(f"--tokenizer {self.tokenizer!r}: choose bytes or bpe")
        for name in ("seqlen", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise QualityError(f"--{name.replace('_', '-')} must be at least 2, not {value}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise QualityError(f"--lr must be in (0, 1), not {self.lr}")
        if self.corpus not in (None, "stdlib") and not str(self.corpus).startswith("hf:") \
                and not Path(self.corpus).exists():  # before any model is sized or trained
            raise QualityError(f"--corpus {self.corpus}: no such file or folder")
        if self.width is not None and self.width < 1:
            raise QualityError(f"--width must be at least 1, not {self.width}")
        if self.extrapolate is not None or self.stride is not None:
            if self.task not in ("lm", "seq2seq"):
                raise QualityError("--extrapolate and --stride evaluate language models: they "
                                   "go with --task lm (or seq2seq, without --stride)")
            if self.task == "seq2seq" and self.stride is not None:
                raise QualityError("--stride slides a decoder's window; seq2seq is scored in "
                                   "pairs that tile the text: leave --stride out, or give "
                                   "--task lm")
            seqlen = self.train_config.seqlen
            longest = seqlen if self.extrapolate is None else self.extrapolate
            if longest < seqlen:
                raise QualityError(f"--extrapolate {longest} is shorter than the training "
                                   f"length {seqlen}")
            if self.stride is not None and not 1 <= self.stride <= seqlen:
                raise QualityError(f"--stride {self.stride}: give 1 to the training length "
                                   f"({seqlen})")
        if self.task == "seq2seq" and self.seqlen is not None and self.seqlen % 2:
            raise QualityError(f"--seqlen {self.seqlen}: seq2seq splits it in two halves; "
                               "give an even length")
        # The trainer evaluates and saves when the step is a multiple of it: 0 would divide
        # by zero mid-run, after the data was prepared.
        if self.eval_every < 1:
            raise QualityError(f"--eval-every must be at least 1, not {self.eval_every}")
        try:  # caught here rather than when the model is moved, after the data is prepared
            check_device(self.device, here=False)  # the command checks this machine has it
        except ValueError as error:
            raise QualityError(str(error)) from None
        if self.tokenizer == "bpe" and self.bpe_vocab <= BYTE_LEVEL_BASE:
            raise QualityError(f"--bpe-vocab {self.bpe_vocab}: byte-level BPE starts from "
                               f"{BYTE_LEVEL_BASE} tokens (the 256 bytes and its special ones) "
                               "and would learn no merge; give more, e.g. 8192")

    @classmethod
    def from_options(cls, *, task: str, budget: str, mqar_seqlen: int = DEFAULT_MQAR.seqlen,
                     mqar_kv_pairs: int = DEFAULT_MQAR.num_kv_pairs,
                     mqar_vocab: int = DEFAULT_MQAR.vocab_size, **fields: Any) -> RunSpec:
        """The spec of command-line option values: the budget as its text ("5m",
        "500K-tokens"), MQAR as its three options, every other option as the field of the same
        name. A bad value is a QualityError that names the option."""
        try:
            parsed_budget = parse_budget(budget)
        except ValueError as error:  # parse_budget's message already names --budget
            raise QualityError(str(error)) from None
        if mqar_kv_pairs < 1:
            raise QualityError(f"--mqar-kv-pairs must be at least 1, not {mqar_kv_pairs}")
        try:
            mqar = MQARConfig(seqlen=mqar_seqlen, num_kv_pairs=mqar_kv_pairs,
                              vocab_size=mqar_vocab)
        except ValueError as error:  # MQARConfig's own rule, said in its field names
            raise QualityError(f"--mqar-seqlen {mqar_seqlen}, --mqar-kv-pairs {mqar_kv_pairs}, "
                               f"--mqar-vocab {mqar_vocab}: {error}") from None
        spec = cls(task=task, budget=parsed_budget, mqar=mqar, **fields)
        config = spec.train_config  # a budget of tokens buys whole steps: at least one
        step = config.batch_size * config.seqlen
        if parsed_budget.tokens is not None and parsed_budget.tokens < step:
            raise QualityError(f"--budget {parsed_budget} is less than one step of "
                               f"{config.batch_size} x {config.seqlen} = {step:,} tokens; give "
                               f"at least {step}-tokens")
        return spec

    @property
    def train_config(self) -> TrainConfig:
        seqlen, batch, lr = TASK_DEFAULTS[self.task]
        recipe = {}
        if self.task == "mqar":
            seqlen = self.mqar.seqlen
            recipe = MQAR_RECIPE
        if self.task == "mqar":  # as Zoology's grid: fewer sequences per step as they grow
            batch = max(1, MQAR_TOKENS_PER_STEP // seqlen)
        elif self.task == "lm" and self.seqlen:  # the batch is counted in tokens (see above)
            batch = max(1, LM_TOKENS_PER_STEP // self.seqlen)
        return TrainConfig(budget=self.budget, seqlen=self.seqlen or seqlen,
                           batch_size=self.batch_size or batch, lr=self.lr or lr, seed=self.seed,
                           eval_every=self.eval_every, checkpoint_every=self.eval_every,
                           dtype=self.dtype, **recipe)

    def eval_lengths(self) -> list[int]:
        """The evaluation lengths of the length curves: T, 2T, 4T ... up to --extrapolate (and
        that length itself when it is not a doubling of T)."""
        T = self.train_config.seqlen
        lengths = [T]
        while self.extrapolate and lengths[-1] * 2 <= self.extrapolate:
            lengths.append(lengths[-1] * 2)
        if self.extrapolate and lengths[-1] != self.extrapolate:
            lengths.append(self.extrapolate)
        return lengths

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready fields (the budget as its parts), for a cell's process."""
        fields = dataclasses.asdict(self)
        fields["budget"] = dataclasses.asdict(self.budget)
        return fields

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> RunSpec:
        """The spec of `to_dict`'s fields."""
        return cls(**{**fields, "budget": Budget(**fields["budget"]),
                      "mqar": MQARConfig(**fields["mqar"]),
                      "notes": tuple(fields.get("notes", ())),
                      "overrides": tuple(tuple(pair) for pair in fields.get("overrides", ()))})


# Fields --set may not change: the task, --width and --mqar-vocab decide them.
SET_BY_OPTIONS = {"vocab_size": "the task (its tokenizer, or --mqar-vocab)",
                  "d_model": "--width", "pad_token_id": "the tokenizer"}
