"""lm-evaluation-harness model adapter for causal and encoder-decoder zoo checkpoints,
registered as `zoo`.

`ZooLM` wraps a checkpoint folder written by `harness.quality.checkpoint.save_checkpoint`
(GPT, RWKV, Pangu-pi, LLaMA, Mamba, Mamba-2: any zoo model with `causal_lm = True`; the
Transformer and T5, encoder-decoders), or a published decoder or T5 checkpoint with its own
tokenizer (a Hugging Face folder or hub id, see `harness.pretrained`), in lm-eval's `LM`
interface:

  - `loglikelihood`: log p(continuation | context) summed over the continuation's
    tokens, and whether greedy decoding would have produced exactly those tokens;
  - `loglikelihood_rolling`: log p(text | start) of a whole document, cut into windows of at
    most `max_length` tokens in which every token is predicted exactly once (lm-eval's own
    `get_rolling_token_windows`, so the windows are those of its Hugging Face model);
  - `generate_until`: greedy decoding on the model's KV cache or recurrent state, until a stop
    string, the EOS token or `max_gen_toks` new tokens.

"start" is the token that precedes every document: for a checkpoint trained here EOS, which is
what the trainer puts between documents (`harness.quality.tasks.token_stream`), and a context
is read after it too; for a published one its BOS (LLaMA's <s>), or its EOS where it has no BOS
(GPT-2's <|endoftext|> is both), and a context gets what its tokenizer adds (LLaMA's <s>,
nothing for GPT-2): lm-eval's Hugging Face model's choices, so that the two score a published
checkpoint alike (tests/harness/quality/test_lm_eval_adapter.py). `prefix_token` overrides the
start token. A model conditioned on a token it never saw in training scores worse. On a run's
`catalog export` folder, lm-eval's `hf` model gives the log-likelihoods of documents and empty
contexts this adapter gives the run (tests/harness/test_export.py).

An encoder-decoder is scored as lm-eval's Hugging Face model scores one (its `seq2seq`
backend): the encoder reads the context (at most max_length tokens, its oldest dropped) and
the decoder, from its start token (`harness.pretrained.decoder_start_id`), predicts the
continuation; the context and the continuation are tokenized apart, the context with what the
tokenizer adds (T5's </s> after it), the continuation without; a document is tokenized with
them (T5's </s> is its last token), and a rolling window's context (the start token, or the
tokens before the window) goes to the encoder. Generation decodes on the decoder's cache, the
encoder having read the context once.

Python use (the task YAMLs come from `harness.quality.lm_eval_tasks.write_tasks`):

    lm = ZooLM(pretrained="runs/gpt/checkpoint", batch_size=8)
    lm_eval.simple_evaluate(model=lm, tasks=["zoo_heldout"], task_manager=task_manager(folder),
                            bootstrap_iters=0, log_samples=False)

or `evaluate_checkpoint(...)` below, which does both steps and returns the metrics.

Command line: lm-eval 0.4.13 has no plugin mechanism for models (no entry-point group; its
`--include_path` indexes task YAMLs only), so a model is known to its CLI only once the module
that registers it is imported. Importing this module registers `zoo`; run lm-eval's own CLI
through it:

    python -m harness.quality.lm_eval_adapter run --model zoo \
        --model_args pretrained=runs/gpt/checkpoint,max_length=256 \
        --tasks zoo_heldout --include_path runs/gpt/lm_eval_tasks --batch_size 8

(every argument after the module name is lm-eval's). The same works from Python with
`simple_evaluate(model="zoo", model_args="pretrained=...")` after importing this module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import model_registry
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from harness.pretrained import decoder_start_id, load_for_scoring
from zoo.model import EncoderDecoderLM

logger = logging.getLogger(__name__)

MODEL_NAME = "zoo"  # the name lm-eval knows the adapter by (`--model zoo`)
DEFAULT_MAX_LENGTH = 2048  # for models without a position table (RWKV, Pangu-pi, LLaMA, Mamba)
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for generate_until tasks

# (context tokens, continuation tokens): the continuation is scored given the context.
TokenPair = tuple[list[int], list[int]]


class ZooLM(LM):
    """A causal zoo checkpoint as an lm-eval model.

    pretrained: checkpoint folder (config.json, model.safetensors, tokenizer.json) written by
        `catalog train`, or a published checkpoint: a Hugging Face folder or hub id;
    device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when available;
    batch_size: sequences per forward pass when scoring (generation runs one at a time);
    max_length: the longest token sequence fed to the model (to each of an encoder-decoder's
        stacks); None means the length the checkpoint was trained at (`seqlen` in its
        config.json, written by `catalog train`; half of it for a seq2seq run, whose encoder
        read one half and decoder wrote the other), else the model's `max_seq_len` where it has
        a position table (GPT), else 2048;
    dtype: "float32", "bfloat16" or "float16"; None keeps the checkpoint's (float32);
    rolling_context: tokens of context that every prediction of a rolling window after the
        first keeps at least (lm-eval's `context_len`). 1 = back-to-back windows as lm-eval's
        Hugging Face model uses; up to max_length = overlapping windows (more context for the
        first tokens of each window, more forward passes);
    prefix_token: "eos" or "bos", the token every text is conditioned on (see above); None:
        EOS for a checkpoint trained here (or its export), and for a published one its BOS
        where the tokenizer has one, else its EOS (lm-eval's Hugging Face model's rule:
        LLaMA's <s>, GPT-2's <|endoftext|>);
    max_batch_size: accepted because lm-eval's CLI passes it; unused (no automatic batch size).
    """

    def __init__(self, pretrained: str | Path, device: str | None = None,
                 batch_size: int | str = 8, max_length: int | str | None = None,
                 dtype: str | None = None, rolling_context: int | str = 1,
                 prefix_token: str | None = None, max_batch_size: int | None = None) -> None:
        super().__init__()
        if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
            # lm-eval's CLI asks for cuda:0 unless told otherwise; like its own Hugging Face
            # model, fall back to the CPU when there is no GPU.
            if device is not None:
                logger.warning("device %s is not available; using cpu", device)
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tokenizer, meta = load_for_scoring(pretrained, device=device)
        self.encoder_decoder = isinstance(model, EncoderDecoderLM)
        if not (getattr(model, "causal_lm", False) or self.encoder_decoder):
            raise ValueError(f"{pretrained}: zoo model {meta['zoo']!r} is an encoder alone; "
                             "lm-eval's scoring needs a causal language model (gpt, rwkv, "
                             "rwkv5, rwkv6, rwkv7, pangu-pi, llama, gpt-neox, gpt-j, gpt-neo, "
                             "ctrl, bloom, opt, "
                             "mamba, mamba2) or an encoder-decoder (transformer, t5, "
                             "bart)")
        if dtype is not None:
            if dtype not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"dtype must be float32, bfloat16 or float16, not {dtype!r}")
            model = model.to(getattr(torch, dtype))
        self.model = model
        self.text_tokenizer = tokenizer  # not `tokenizer`: lm-eval reads that one as a HF one
        self.trained_here = meta.get("after_eos", True)
        # a published checkpoint's tokenizer as it encodes a context, with its special tokens
        self.context_tokenizer = getattr(tokenizer, "with_special_tokens", lambda: tokenizer)()
        if prefix_token is None:
            prefix_token = "eos" if self.trained_here or tokenizer.bos_id is None else "bos"
        if prefix_token not in ("eos", "bos"):
            raise ValueError(f"prefix_token must be 'eos' or 'bos', not {prefix_token!r}")
        self.prefix_id = tokenizer.eos_id if prefix_token == "eos" else tokenizer.bos_id
        if self.prefix_id is None:
            raise ValueError(f"{pretrained}: its tokenizer has no {prefix_token.upper()} token "
                             "to put before every text; try prefix_token="
                             f"{'bos' if prefix_token == 'eos' else 'eos'}")
        if self.encoder_decoder:
            self.decoder_start = decoder_start_id(model, tokenizer, self.trained_here, pretrained)
        self.zoo_name = meta["zoo"]
        self.checkpoint = str(pretrained)
        self._device = torch.device(device)
        self.batch_size = _positive_int(batch_size, "batch_size")
        # Only a learned table limits the positions: LLaMA's `max_seq_len` (RoPE, no table) is
        # the trained context, not a limit, and RWKV, Pangu-pi and Mamba have none.
        table = type(model).position_table
        position_limit = getattr(model.config, table) if table else None
        trained = meta.get("seqlen")
        if trained and self.encoder_decoder:  # a seq2seq run's encoder read half, its decoder
            trained = max(1, trained // 2)  # wrote the other half
        if max_length is None:  # the length it was trained at, else what its positions allow
            self.max_length = trained or position_limit or DEFAULT_MAX_LENGTH
        else:
            self.max_length = _positive_int(max_length, "max_length")
            if position_limit is not None and self.max_length > position_limit:
                raise ValueError(f"max_length {self.max_length} exceeds the {position_limit} "
                                 f"positions of {self.zoo_name}'s position table")
        self.rolling_context = _positive_int(rolling_context, "rolling_context")
        if self.rolling_context > self.max_length:
            raise ValueError(f"rolling_context {self.rolling_context} exceeds max_length "
                             f"{self.max_length}")

    # --- lm-eval's three request types ---------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) for each (context, continuation).
        When the two exceed max_length + 1 tokens, the context loses its oldest tokens."""
        pairs = [self._truncated(*self._encode_pair(context, continuation))
                 for context, continuation in (request.args for request in requests)]
        results = self._score(pairs)
        for request, result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text | start) of each whole text, every token predicted exactly once."""
        windows, owner = [], []
        # an encoder-decoder's text as lm-eval's seq2seq model encodes it: with T5's </s>
        encode = self._encode_document if self.encoder_decoder else self.text_tokenizer.encode
        for index, request in enumerate(requests):
            (text,) = request.args
            for window in self.rolling_windows(encode(text)):
                windows.append(window)
                owner.append(index)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, self._score(windows), strict=True):
            totals[index] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut before the first stop string."""
        outputs = []
        for request in requests:
            context, gen_kwargs = request.args
            text = self._generate(context, **(gen_kwargs or {}))
            self.cache_hook.add_partial("generate_until", request.args, text)
            outputs.append(text)
        return outputs

    def get_model_info(self) -> dict[str, Any]:
        """Added by lm-eval to the results' `config`."""
        return {"zoo_model": self.zoo_name, "checkpoint": self.checkpoint,
                "params": self.model.num_params(), "max_length": self.max_length}

    # --- tokens ---------------------------------------------------------------------------------

    def _encode_context(self, text: str) -> list[int]:
        """A context's tokens as the model reads them: after the start token for a checkpoint
        trained here (its documents followed one); for a published one with the special tokens
        its tokenizer adds (LLaMA's <s>; none for GPT-2), as lm-eval's Hugging Face model
        encodes a context. Never empty: the start token alone stands for an empty text."""
        if self.trained_here:
            return [self.prefix_id, *self.text_tokenizer.encode(text)]
        return self.context_tokenizer.encode(text) or [self.prefix_id]

    def _encode_document(self, text: str) -> list[int]:
        """A whole text an encoder-decoder's decoder predicts (loglikelihood_rolling): for a
        published checkpoint with the special tokens its tokenizer adds (T5's </s> at the
        end), as lm-eval's seq2seq model encodes it; for one trained here its text alone."""
        tokenizer = self.text_tokenizer if self.trained_here else self.context_tokenizer
        return tokenizer.encode(text)

    def _encode_pair(self, context: str, continuation: str) -> TokenPair:
        """Context tokens (_encode_context; the start token alone for an empty context) and
        continuation tokens. Trailing whitespace of the context moves to the continuation (so
        it is scored), and the pair is tokenized as one text then split where the context
        ends, so that a subword tokenizer sees the continuation's leading space as in running
        text (lm-eval's convention)."""
        stripped = context.rstrip()
        context, continuation = stripped, context[len(stripped):] + continuation
        if not context:
            return [self.prefix_id], self.text_tokenizer.encode(continuation)
        if self.encoder_decoder:  # the encoder's text and the decoder's, tokenized apart
            return self._encode_context(context), self.text_tokenizer.encode(continuation)
        context_ids = self._encode_context(context)
        whole = self._encode_context(context + continuation)
        if whole[:len(context_ids)] == context_ids:
            continuation_ids = whole[len(context_ids):]
        else:  # a token straddles the boundary: tokenize the two parts separately
            continuation_ids = self.text_tokenizer.encode(continuation)
        return context_ids, continuation_ids

    def _truncated(self, context: list[int], continuation: list[int]) -> TokenPair:
        """The pair cut from the left so that the model reads at most max_length tokens (the
        last continuation token is never fed to it)."""
        if len(continuation) > self.max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens does not fit in "
                             f"max_length {self.max_length} (it needs at least one context token)")
        if self.encoder_decoder:  # the encoder reads the context, the decoder the continuation
            return context[-self.max_length:], continuation
        keep = self.max_length + 1 - len(continuation)
        return context[-keep:], continuation

    def rolling_windows(self, tokens: list[int]) -> list[TokenPair]:
        """(context, continuation) windows that predict each of `tokens` exactly once, the first
        from the start token: the continuations tile `tokens` in order; each window is at most
        max_length tokens long and, after the first, keeps at least `rolling_context` tokens of
        context."""
        windows = get_rolling_token_windows(tokens, prefix_token=self.prefix_id,
                                            max_seq_len=self.max_length,
                                            context_len=self.rolling_context)
        return [make_disjoint_window(window) for window in windows]

    # --- scoring --------------------------------------------------------------------------------

    @torch.no_grad()
    def _score(self, pairs: Sequence[TokenPair]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation token | everything before it), all tokens greedy?) for each
        pair, batched longest first (`_causal_logits`, `_encoder_decoder_logits`)."""
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)
        todo = sorted((i for i, (_, cont) in enumerate(pairs) if cont),
                      key=lambda i: -sum(map(len, pairs[i])))
        logits_of = self._encoder_decoder_logits if self.encoder_decoder else self._causal_logits
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            for i, logits in zip(batch, logits_of([pairs[i] for i in batch]), strict=True):
                continuation = torch.tensor(pairs[i][1], device=self._device)
                # float64: a document's score sums thousands of terms
                logprobs = logits.double().log_softmax(-1)
                picked = logprobs.gather(-1, continuation[:, None]).sum()
                greedy = bool((logprobs.argmax(-1) == continuation).all())
                results[i] = (picked.item(), greedy)
        return results

    def _causal_logits(self, pairs: Sequence[TokenPair]) -> list[torch.Tensor]:
        """Each pair's (len(continuation), V) logits that predict its continuation. The model
        reads context + continuation but its last token, right-padded: in a causal model no real
        token attends to a later position, so padding needs no mask."""
        inputs = [(context + continuation)[:-1] for context, continuation in pairs]
        ids = torch.full((len(pairs), max(map(len, inputs))), self.text_tokenizer.pad_id,
                         dtype=torch.long)
        for row, tokens in enumerate(inputs):
            ids[row, :len(tokens)] = torch.tensor(tokens)
        logits = self.model(ids.to(self._device)).logits  # (B, T, V)
        return [logits[row, len(tokens) - len(continuation):len(tokens)]
                for row, (tokens, (_, continuation)) in enumerate(zip(inputs, pairs, strict=True))]

    def _encoder_decoder_logits(self, pairs: Sequence[TokenPair]) -> list[torch.Tensor]:
        """`_causal_logits` for an encoder-decoder: the encoder reads each context (padded,
        masked), the decoder the start token and the continuation but its last token."""
        pad = self.text_tokenizer.pad_id
        sources = [context for context, _ in pairs]
        targets = [[self.decoder_start, *continuation[:-1]] for _, continuation in pairs]
        src = torch.full((len(pairs), max(map(len, sources))), pad, dtype=torch.long)
        tgt = torch.full((len(pairs), max(map(len, targets))), pad, dtype=torch.long)
        src_mask = torch.zeros(src.shape, dtype=torch.bool)
        for row, (source, target) in enumerate(zip(sources, targets, strict=True)):
            src[row, :len(source)], src_mask[row, :len(source)] = torch.tensor(source), True
            tgt[row, :len(target)] = torch.tensor(target)
        logits = self.model(src.to(self._device), tgt.to(self._device),
                            src_mask=src_mask.to(self._device)).logits  # (B, T, V)
        return [logits[row, :len(target)] for row, target in enumerate(targets)]

    # --- generation -----------------------------------------------------------------------------

    @torch.no_grad()
    def _generate(self, context: str, until: str | Iterable[str] | None = None,
                  max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, do_sample: bool = False,
                  temperature: float = 0.0, **ignored: Any) -> str:
        """Greedy decoding, one token per step on the model's cache (an encoder-decoder's
        decoder's, after its encoder read the context)."""
        if do_sample or temperature:
            raise ValueError("the zoo adapter decodes greedily: set do_sample false and "
                             "temperature 0 in the task's generation_kwargs")
        stops = [until] if isinstance(until, str) else [s for s in (until or []) if s]
        max_gen_toks = int(max_gen_toks)
        tok = self.text_tokenizer
        # Keep room for the new tokens, as lm-eval's own models do: the context loses its oldest
        # tokens first. A model reads prompt + new - 1 tokens (the last one is never fed back).
        prompt = self._encode_context(context) if context else [self.prefix_id]
        if self.encoder_decoder:  # the encoder's whole length, and max_gen_toks new tokens
            budget = max_gen_toks
            if budget <= 0:
                return ""
            step = self.model.decoding_step(torch.tensor([prompt[-self.max_length:]],
                                                         device=self._device))
            out = step(torch.tensor([[self.decoder_start]], device=self._device), None)
        else:
            prompt = prompt[-max(1, self.max_length - max_gen_toks):]
            budget = min(max_gen_toks, self.max_length + 1 - len(prompt))
            if budget <= 0:
                return ""

            def step(ids: torch.Tensor, cache: Any):
                return self.model(ids, cache=cache, use_cache=True)

            out = step(torch.tensor([prompt], device=self._device), None)
        new: list[int] = []
        while True:
            next_id = int(out.logits[0, -1].argmax())
            if next_id == tok.eos_id:
                break
            new.append(next_id)
            if len(new) >= budget or _first_stop(tok.decode(new), stops) is not None:
                break
            out = step(torch.tensor([[next_id]], device=self._device), out.cache)
        text = tok.decode(new)
        cut = _first_stop(text, stops)
        return text if cut is None else text[:cut]


def _first_stop(text: str, stops: list[str]) -> int | None:
    """Where the earliest stop string starts in `text` (None: none occurs)."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


def _positive_int(value: int | str, name: str) -> int:
    """A positive int from a Python value or an lm-eval CLI string ("8"; not "auto": the
    adapter has no automatic batch size)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return number


def evaluate_checkpoint(checkpoint: str | Path, documents: Sequence[str], folder: str | Path, *,
                        tasks: Sequence[str] | None = None, limit: int | float | None = None,
                        **model_args: Any) -> dict[str, dict[str, float]]:
    """Evaluate a checkpoint with lm-eval on the local tasks built from `documents` (held-out
    texts) in `folder`: {task: {metric: value}}, e.g. results["zoo_heldout"]["bits_per_byte"].
    `tasks`: names among those written (default: all); `model_args`: ZooLM's (device,
    batch_size, max_length, ...); `limit`: lm-eval's, examples per task.

    Runs offline as long as the caller has set HF_DATASETS_OFFLINE=1 (lm-eval reads only the
    JSONL files written here), as `harness.quality.evaluate.run_lm_eval` does for the call. No
    bootstrap standard errors, no logged samples."""
    import lm_eval

    from harness.quality.lm_eval_tasks import task_manager, write_tasks

    written = write_tasks(folder, documents)
    names = list(tasks) if tasks is not None else list(written)
    missing = [name for name in names if name not in written]
    if missing:
        raise ValueError(f"--tasks {', '.join(missing)}: not among the local tasks "
                         f"({', '.join(written) or 'none'}); this command runs lm-eval offline "
                         "on the tasks it writes from --corpus, not on the hub's data sets")
    lm = ZooLM(checkpoint, **model_args)
    # The seeds stay None: these tasks draw no random numbers, and lm-eval would otherwise
    # reseed the caller's global random, numpy and torch generators.
    # lm-eval runs `git describe` in the working directory for its results' git_hash, and git
    # writes "fatal: not a git repository" to the terminal outside one; that hash, of whatever
    # folder the command ran in, is not this evaluation's, and is not asked for.
    with mock.patch("lm_eval.evaluator.get_git_commit_hash", lambda: None):
        output = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=task_manager(folder),
                                         limit=limit, bootstrap_iters=0, log_samples=False,
                                         random_seed=None, numpy_random_seed=None,
                                         torch_random_seed=None)
    # lm-eval's keys are "<metric>,<filter>" ("bits_per_byte,none") beside "<metric>_stderr,..."
    # entries, which are "N/A" without bootstrapping.
    return {task: {key.partition(",")[0]: value for key, value in metrics.items()
                   if key.endswith(",none") and "_stderr," not in key}
            for task, metrics in output["results"].items()}


def register() -> None:
    """Make `zoo` known to lm-eval (`--model zoo`, `simple_evaluate(model="zoo")`); idempotent.

    Registered lazily by import path, so that running this module as `__main__` and importing
    it again from lm-eval resolve to one class. lm-eval's built-in models are registered first:
    its `get_model` registers them only while the registry is still empty."""
    import lm_eval.models  # noqa: F401  (registers lm-eval's built-in model names)

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target="harness.quality.lm_eval_adapter:ZooLM")


register()  # the one thing importing this module does


if __name__ == "__main__":  # lm-eval's own CLI, with `zoo` registered
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
