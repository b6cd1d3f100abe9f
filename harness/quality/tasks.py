"""Quality tasks that need no download: MQAR (Zoology's multi-query associative recall) for
causal models; language modelling on the standard library's own documentation (or a user's
text, or `hf:NAME`) in bits per byte, so that tokenizers do not matter; masked LM for encoders;
continue-the-text pairs for the encoder-decoder.

Targets are aligned with positions: targets[t] labels the logits at t; -100 is ignored. In a
token stream every document ends with EOS, and every byte count here counts that mark as one
byte (the newline between documents): a byte-level model's bits per byte is its loss / ln 2.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import math
import pkgutil
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.quality.tokenizer import ByteTokenizer, Tokenizer

IGNORE = -100
Batches = Callable[[int], tuple[dict[str, torch.Tensor], torch.Tensor]]  # as in train.py


# ----------------------------------------------------------------------------------- MQAR


@dataclass(frozen=True)
class MQARConfig:
    """The parameters and defaults of Zoology's `multiquery_ar` (zoology/data/multiquery_ar.py),
    with the 100k train / 3k test examples of the paper's Figure 2 sweep."""

    vocab_size: int = 8192
    seqlen: int = 64
    num_kv_pairs: int = 8
    power_a: float = 0.01  # query slot i drawn with p(i) ~ a * i^(a-1): most come early
    random_non_queries: bool = True  # filler tokens random (True) or 0 (False)
    num_train: int = 100_000
    num_test: int = 3_000
    num_valid: int = 3_000  # held out from training to choose learning rates and stop early

    def __post_init__(self) -> None:
        if self.seqlen % 2:
            raise ValueError(f"MQAR seqlen must be even, got {self.seqlen}")
        if self.vocab_size <= self.seqlen:
            raise ValueError(f"MQAR vocab_size {self.vocab_size} must exceed seqlen {self.seqlen}")
        if 4 * self.num_kv_pairs > self.seqlen:
            raise ValueError(f"{self.num_kv_pairs} key-value pairs and their queries need "
                             f"seqlen >= {4 * self.num_kv_pairs}, got {self.seqlen}")


@dataclass(frozen=True)
class MQARData:
    train_inputs: torch.Tensor  # (num_train, seqlen)
    train_targets: torch.Tensor  # (num_train, seqlen): -100 but at the queries
    test_inputs: torch.Tensor
    test_targets: torch.Tensor
    valid_inputs: torch.Tensor  # (num_valid, seqlen): drawn after the training examples
    valid_targets: torch.Tensor


def make_mqar(config: MQARConfig = MQARConfig(), seed: int = 0) -> MQARData:
    """MQAR's train, test and validation sets, a pure function of (config, seed). As in Zoology
    train and test come from different seeds (here 2*seed and 2*seed + 1); the validation set
    (which Zoology does not have: it picks learning rates on the test set) continues the
    training seed's generator, so the training examples are the same with or without it."""
    generator = torch.Generator().manual_seed(2 * seed)
    train = mqar_examples(config.num_train, config, generator)
    valid = mqar_examples(config.num_valid, config, generator)
    test = mqar_examples(config.num_test, config, torch.Generator().manual_seed(2 * seed + 1))
    return MQARData(*train, *test, *valid)


def mqar_examples(n: int, config: MQARConfig, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` MQAR sequences (inputs, targets), each (n, seqlen), laid out as Zoology's:

        k1 v1 k2 v2 ... kK vK | then each key once more, at an even offset; filler elsewhere.
                                The target at a repeated key is its value; -100 elsewhere.

    Keys are distinct within a sequence, from [1, V/2); values from [V/2, V). Of the
    (seqlen - 2K) / 2 query slots, each key takes one, drawn without replacement with
    p(slot i) ~ a * i^(a-1), i = 1.. (a power law: soon after the pairs is likelier, as for
    repeats in real text). Differences from Zoology: a seeded torch generator instead of
    numpy's global seed (same seed, other sequences than Zoology's), and the filler comes from
    it too (Zoology's from torch's global state). As there, random filler is uniform over the
    whole vocabulary, so it may hold a key; the answer is still the value paired up front."""
    V, T, K = config.vocab_size, config.seqlen, config.num_kv_pairs
    keys = _distinct_rows(n, K, 1, V // 2, generator)  # (n, K)
    values = _distinct_rows(n, K, V // 2, V, generator)  # (n, K)
    slots = (T - 2 * K) // 2
    a = config.power_a
    weights = a * torch.arange(1, slots + 1, dtype=torch.float64) ** (a - 1)
    gaps = torch.multinomial(weights.expand(n, slots), K, replacement=False, generator=generator)

    inputs = torch.zeros(n, T, dtype=torch.long)
    inputs[:, 0:2 * K:2], inputs[:, 1:2 * K:2] = keys, values
    query_pos = 2 * K + 2 * gaps  # (n, K)
    inputs.scatter_(1, query_pos, keys)
    targets = torch.full((n, T), IGNORE, dtype=torch.long).scatter_(1, query_pos, values)
    if config.random_non_queries:  # 0 marks filler: keys start at 1
        inputs = torch.where(inputs == 0, torch.randint(0, V, (n, T), generator=generator), inputs)
    return inputs, targets


def _distinct_rows(rows: int, k: int, low: int, high: int, generator: torch.Generator
                   ) -> torch.Tensor:
    """(rows, k) integers from [low, high), distinct within a row, uniformly random (order too)."""
    size = high - low
    if k * k <= 2 * size:  # few rows collide: draw with replacement, redraw the rows that do
        out = torch.randint(low, high, (rows, k), generator=generator)
        while True:
            ordered = out.sort(dim=1).values
            clash = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
            if not clash.any():
                return out
            out[clash] = torch.randint(low, high, (int(clash.sum()), k), generator=generator)
    # the k largest of iid uniform noise are a uniformly random ordered k-subset
    chunk = max(1, 2**22 // size)
    return torch.cat([torch.rand(min(chunk, rows - r), size, generator=generator).topk(k).indices
                      for r in range(0, rows, chunk)]) + low


def masked_accuracy(logits_or_ids: torch.Tensor, targets: torch.Tensor) -> float:
    """Accuracy over the positions whose target is not -100 (MQAR's metric), from logits
    (..., T, V) or predicted ids (..., T)."""
    predicted = logits_or_ids
    if predicted.dim() == targets.dim() + 1:
        predicted = predicted.argmax(-1)
    scored = targets != IGNORE
    return (predicted[scored] == targets[scored]).float().mean().item()


# ------------------------------------------------------------------------------ corpora


@dataclass(frozen=True)
class Document:
    title: str
    text: str


@dataclass(frozen=True)
class Corpus:
    name: str
    train: list[Document]
    validation: list[Document]
    test: list[Document]


# Never imported for the stdlib corpus: they act on import (a browser, printing, the terminal,
# a display), are tests, are codec tables, or are swapped for setuptools' copy (distutils).
_STDLIB_SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test",
                "tests", "idle_test", "lib2to3", "distutils", "readline", "rlcompleter",
                "pydoc_data", "encodings"}
_TEXT_SUFFIXES = {".txt", ".md", ".rst"}


def load_corpus(spec: str | Path | None = None) -> Corpus:
    """The corpus `spec` names: None or "stdlib" (the default), "hf:NAME[:CONFIG]" (through
    `datasets`, online), or the path of a text file or a folder."""
    if spec is None or spec == "stdlib":
        return split_corpus("stdlib", stdlib_documents())
    if isinstance(spec, str) and spec.startswith("hf:"):
        return _hf_corpus(spec[3:])
    return path_corpus(Path(spec))


def corpus_name(spec: str | Path | None = None) -> str:
    """The name `load_corpus(spec)` gives its corpus, without loading it."""
    if spec is None or spec == "stdlib":
        return "stdlib"
    if isinstance(spec, str) and spec.startswith("hf:"):
        return f"hf:{spec[3:]}"
    return str(Path(spec))


def stdlib_documents() -> list[Document]:
    """The standard library's documentation in a fixed order: each pydoc topic
    (`pydoc_data.topics`), then per module, sorted, the docstrings of the module, its public
    functions and classes, and their public methods. The modules are the public names of
    `sys.stdlib_module_names` and their public submodules, less `_STDLIB_SKIP` and those that do
    not import here. A docstring seen before is not repeated, and no text depends on the hash
    seed or on what the calling process imported: the documents are read in a fresh interpreter
    (a library can patch the standard library it imports into: Ray replaces
    `inspect.isgenerator`), so the same Python build gives the same corpus."""
    import json
    import os
    import subprocess

    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
            "from harness.quality.tasks import documents_of_this_interpreter as read; "
            "json.dump([[d.title, d.text] for d in read()], sys.stdout)")
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "0"}, check=False)
    if done.returncode:
        tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output"
        raise RuntimeError(f"reading the standard library's documentation failed: {tail}")
    return [Document(title, text) for title, text in json.loads(done.stdout)]


def documents_of_this_interpreter() -> list[Document]:
    """`stdlib_documents`, read in this process (imports every standard module into it)."""
    from pydoc_data.topics import topics

    documents = [Document(f"topic:{name}", topics[name].strip()) for name in sorted(topics)]
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated modules warn on import and on access
        for module in _stdlib_modules():
            sections = []
            for qualname, doc in _docstrings(module):
                if doc not in seen:
                    seen.add(doc)
                    sections.append(f"{qualname}\n{doc}")
            if sections:
                documents.append(Document(f"module:{module.__name__}", "\n\n".join(sections)))
    return _unique(documents)


def _stdlib_modules() -> list:
    pending = sorted((n for n in sys.stdlib_module_names
                      if not n.startswith("_") and n not in _STDLIB_SKIP), reverse=True)
    modules = []
    while pending:  # depth first, in sorted order
        name = pending.pop()
        try:
            module = importlib.import_module(name)
        except Exception:  # another platform's module, or an optional part not built here
            continue
        modules.append(module)
        if hasattr(module, "__path__"):
            subs = [f"{name}.{info.name}" for info in pkgutil.iter_modules(module.__path__)
                    if not info.name.startswith("_") and info.name not in _STDLIB_SKIP]
            pending.extend(sorted(subs, reverse=True))
    return modules


def _docstrings(module) -> list[tuple[str, str]]:
    """(qualified name, cleaned docstring) of a module and of the public objects it defines."""
    found = [(module.__name__, module.__doc__)]
    namespace = vars(module)
    for name, obj in sorted(namespace.items()):
        obj = namespace.get(f"__{name}__", obj)  # sys keeps default hooks that tools replace
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isroutine(obj) or inspect.isclass(obj):
            found.append((f"{module.__name__}.{name}", obj.__doc__))
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                documented = inspect.isroutine(member) or isinstance(
                    member, (property, classmethod, staticmethod))
                # C methods have no __module__; a method patched in by a library has its own
                origin = getattr(getattr(member, "fget", member), "__module__", None)
                if documented and not attr.startswith("_") and origin in (None, module.__name__):
                    found.append((f"{module.__name__}.{name}.{attr}", member.__doc__))
    return [(q, inspect.cleandoc(d)) for q, d in found if isinstance(d, str) and d.strip()]


def path_corpus(path: Path) -> Corpus:
    """A user's corpus. A folder: each *.txt, *.md and *.rst file under it is a document (in
    path order), split by document as the stdlib is. One file: cut at line ends into its
    first 90% (train), next 5% (validation) and last 5% (test), as nanoGPT does."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in _TEXT_SUFFIXES and p.is_file())
        docs = [Document(p.relative_to(path).as_posix(), _read(p)) for p in files]
        docs = _unique([d for d in docs if d.text.strip()])
        if not docs:
            raise ValueError(f"--corpus {path}: no non-empty *.txt, *.md or *.rst file in it")
        return split_corpus(str(path), docs)
    if not path.is_file():
        raise FileNotFoundError(f"--corpus {path}: no such file or folder")
    text = _read(path)
    # cut just after the first newline at 90% and at 95% of the text
    cuts = [0, *(text.find("\n", int(len(text) * f)) + 1 or len(text) for f in (0.9, 0.95)),
            len(text)]
    parts = [text[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    if not all(part.strip() for part in parts):
        raise ValueError(f"--corpus {path}: too short to give train, validation and test text")
    return Corpus(str(path), *([Document(f"{path.name}[{split}]", part)] for split, part
                               in zip(("train", "validation", "test"), parts, strict=True)))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"--corpus: {path} is not UTF-8 text ({error})") from None


def _hf_corpus(spec: str) -> Corpus:
    """`hf:NAME[:CONFIG]`: one document per non-empty row of the `text` column; the dataset's
    own validation and test splits when it has both, else split from train by document."""
    try:
        import datasets
    except ImportError:
        raise RuntimeError(f"--corpus hf:{spec} needs the `datasets` library "
                           "(pip install datasets) and network access") from None
    name, _, config = spec.partition(":")
    # huggingface_hub logs each failed request to an unreachable hub as a warning; the error
    # below says it once. (Set after the import, which sets the loggers' levels.)
    loggers = [logging.getLogger(logger) for logger in ("huggingface_hub", "datasets")]
    levels = [logger.level for logger in loggers]
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(max(level, logging.ERROR))
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RuntimeError(f"--corpus hf:{spec}: could not load it from the Hugging Face Hub "
                           f"(offline? unknown name?): {reason}") from error
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    docs = {split: [Document(f"{split}/{i}", text) for i, text in enumerate(rows["text"])
                    if text.strip()] for split, rows in loaded.items()}
    if "validation" in docs and "test" in docs:
        return Corpus(f"hf:{spec}", docs.get("train", []), docs["validation"], docs["test"])
    return split_corpus(f"hf:{spec}", docs.get("train", []))


def split_of(title: str) -> str:
    """"train" (90%), "validation" (5%) or "test" (5%), from a stable hash of the title."""
    bucket = int(hashlib.sha256(title.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


def split_corpus(name: str, documents: Sequence[Document]) -> Corpus:
    parts: dict[str, list[Document]] = {"train": [], "validation": [], "test": []}
    for doc in documents:
        parts[split_of(doc.title)].append(doc)
    empty = [split for split, docs in parts.items() if not docs]
    if empty:
        raise ValueError(f"corpus {name}: {len(documents)} documents leave the "
                         f"{' and '.join(empty)} split empty; give more documents (or one "
                         "file, which is split by position)")
    return Corpus(name, **parts)


def _unique(documents: list[Document]) -> list[Document]:
    """The documents, less those whose text came before."""
    first: dict[str, Document] = {}
    for doc in documents:
        first.setdefault(doc.text, doc)
    return list(first.values())


# ------------------------------------------------------------------------ bits per byte


def text_bytes(documents: Sequence[Document]) -> int:
    """UTF-8 bytes of the documents, plus one per document for its end mark."""
    return sum(len(d.text.encode("utf-8")) + 1 for d in documents)


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """A total negative log-likelihood (nats) per byte of the text it scored, in bits."""
    return nll_nats / (math.log(2) * n_bytes)


def unigram_bits_per_byte(train: Sequence[Document], test: Sequence[Document]) -> float:
    """The baseline every LM must beat: the test text coded with the training split's byte
    frequencies (257 symbols: the bytes and the end-of-document mark; add-one smoothing)."""
    def counts(docs: Sequence[Document]) -> torch.Tensor:
        data = bytearray(b"".join(d.text.encode("utf-8") for d in docs))
        per_byte = torch.bincount(torch.frombuffer(data, dtype=torch.uint8).long(), minlength=256)
        return torch.cat([per_byte, torch.tensor([len(docs)])]).double()

    train_counts, test_counts = counts(train), counts(test)
    log2_p = torch.log2((train_counts + 1) / (train_counts.sum() + 257))
    return -(test_counts * log2_p).sum().item() / test_counts.sum().item()


def token_bytes(tokenizer: Tokenizer) -> torch.Tensor:
    """(vocab_size,) the bytes of text each token id stands for (EOS 1, BOS and PAD 0)."""
    if isinstance(tokenizer, ByteTokenizer):
        lengths = [1] * 256 + [0] * (tokenizer.vocab_size - 256)
    else:  # byte-level BPE: one character of the token's string per byte (no public API yet)
        lengths = [len(tokenizer._tok.id_to_token(i) or "") for i in range(tokenizer.vocab_size)]
    lengths = torch.tensor(lengths)
    lengths[[tokenizer.bos_id, tokenizer.pad_id]] = 0
    lengths[tokenizer.eos_id] = 1
    return lengths


def nll_and_bytes(logits: torch.Tensor, targets: torch.Tensor, byte_lengths: torch.Tensor
                  ) -> tuple[float, int]:
    """Summed NLL (nats) of the scored targets and the bytes of text they stand for
    (`byte_lengths` = `token_bytes(tokenizer)`). Add both up over the batches, then
    `bits_per_byte(nats, n_bytes)`."""
    scored = targets != IGNORE
    nll = F.cross_entropy(logits[scored].float(), targets[scored], reduction="sum")
    return nll.item(), int(byte_lengths.to(targets.device)[targets[scored]].sum())


# ------------------------------------------------------------------------ token streams


def token_stream(documents: Sequence[Document], tokenizer: Tokenizer) -> torch.Tensor:
    """One stream of ids: EOS, then each document followed by EOS (the leading EOS makes the
    first document's first token a prediction too)."""
    ids = [tokenizer.eos_id]
    for doc in documents:
        ids += tokenizer.encode(doc.text)
        ids.append(tokenizer.eos_id)
    return torch.tensor(ids, dtype=torch.long)


def lm_blocks(stream: torch.Tensor, seqlen: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (n, T), covering the stream: block i reads stream[iT : iT + T]
    and predicts stream[iT + 1 : iT + T + 1] (the blocks of `train.block_batches`), so each
    token after the first is a target once. The last block is padded (PAD in, -100 out)."""
    n = math.ceil((stream.numel() - 1) / seqlen)
    padded = torch.cat([stream, stream.new_full((n * seqlen + 1 - stream.numel(),), pad_id)])
    targets = padded[1:].clone()
    targets[stream.numel() - 1:] = IGNORE
    return padded[:-1].view(n, seqlen), targets.view(n, seqlen)


def example_batches(inputs: dict[str, torch.Tensor], targets: torch.Tensor, batch_size: int,
                    seed: int) -> Batches:
    """`batches(step) -> (inputs, targets)` over fixed examples (MQAR, seq2seq pairs) for
    `train.train`: a seeded order, the same each epoch, a pure function of the step."""
    rows_at = _seeded_rows(targets.shape[0], batch_size, seed)

    def batches(step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        picks = rows_at(step)
        return {k: v[picks] for k, v in inputs.items()}, targets[picks]

    return batches


def _seeded_rows(n: int, batch_size: int, seed: int) -> Callable[[int], torch.Tensor]:
    """Step s -> rows s*B .. (s+1)*B - 1 of one seeded permutation of range(n), cycling."""
    if n < batch_size:
        raise ValueError(f"{n} examples are fewer than one batch of {batch_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return lambda step: order[(torch.arange(batch_size) + step * batch_size) % n]


# -------------------------------------------------------------------------------- MLM

MLM_EVAL_RATE, MLM_EVAL_SEED = 0.15, 1234


def mask_tokens(ids: torch.Tensor, *, mask_id: int, vocab_size: int, generator: torch.Generator,
                rate: float = 0.15, special_ids: Sequence[int] = ()
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: each token not in `special_ids` is chosen with probability `rate`; a
    chosen one becomes `mask_id` (80%), a random ordinary id (10%) or stays (10%). Returns
    (input_ids, targets: the original id where chosen, -100 elsewhere); each call draws a new
    mask. Our tokenizers have no mask token: give the model one more id, e.g.
    mask_id = tokenizer.vocab_size with a model vocabulary of tokenizer.vocab_size + 1."""
    protected = torch.tensor([*special_ids, mask_id])
    chosen = (torch.rand(ids.shape, generator=generator) < rate) & ~torch.isin(ids, protected)
    action = torch.rand(ids.shape, generator=generator)
    ordinary = torch.arange(vocab_size)[~torch.isin(torch.arange(vocab_size), protected)]
    random_ids = ordinary[torch.randint(len(ordinary), ids.shape, generator=generator)]
    inputs = torch.where(chosen & (action < 0.8), mask_id, ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, ids, IGNORE)


def mlm_batches(blocks: torch.Tensor, batch_size: int, seed: int, **masking) -> Batches:
    """Encoder training batches over `blocks` (n, T) of ids (e.g. a stream's first n*T ids):
    a seeded order, masked anew at each step (dynamic masking, as RoBERTa) with a mask seeded
    by (seed, step), so a resumed run repeats it. `masking`: `mask_tokens`'s keywords."""
    rows_at = _seeded_rows(blocks.shape[0], batch_size, seed)

    def batches(step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        inputs, targets = mask_tokens(blocks[rows_at(step)], generator=generator, **masking)
        return {"input_ids": inputs}, targets

    return batches


def mlm_eval_set(blocks: torch.Tensor, **masking) -> tuple[torch.Tensor, torch.Tensor]:
    """The one masking every encoder is evaluated on: 15% of the tokens, seed 1234."""
    generator = torch.Generator().manual_seed(MLM_EVAL_SEED)
    return mask_tokens(blocks, generator=generator, rate=MLM_EVAL_RATE, **masking)


# ----------------------------------------------------------------------------- seq2seq


def seq2seq_pairs(stream: torch.Tensor, src_len: int, tgt_len: int, bos_id: int, eos_id: int
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Continue-the-text pairs for the encoder-decoder: target chunk i is the tgt_len stream
    ids from src_len + i * tgt_len, its source the src_len ids just before. Returns
    ({"src_ids" (n, S), "tgt_ids" (n, L+1) = BOS + chunk}, targets (n, L+1) = chunk + EOS);
    the chunks tile the stream after its first src_len ids (a partial last one is dropped)."""
    n = (stream.numel() - src_len) // tgt_len
    if n < 1:
        raise ValueError(f"a stream of {stream.numel()} ids gives no {src_len}+{tgt_len} pair")
    starts = src_len + tgt_len * torch.arange(n)[:, None]  # (n, 1)
    src = stream[starts - src_len + torch.arange(src_len)]  # (n, S)
    chunk = stream[starts + torch.arange(tgt_len)]  # (n, L)
    tgt_ids = torch.cat([chunk.new_full((n, 1), bos_id), chunk], dim=1)
    targets = torch.cat([chunk, chunk.new_full((n, 1), eos_id)], dim=1)
    return {"src_ids": src, "tgt_ids": tgt_ids}, targets


def seq2seq_nll_and_bytes(logits: torch.Tensor, targets: torch.Tensor,
                          byte_lengths: torch.Tensor) -> tuple[float, int]:
    """`nll_and_bytes` of the target text alone: the closing EOS ends a chunk, not a document,
    so it is left out, and the bits per byte compare with the decoders'."""
    return nll_and_bytes(logits[:, :-1], targets[:, :-1], byte_lengths)
