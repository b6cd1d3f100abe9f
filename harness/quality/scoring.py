"""The scores of a model on an evaluation set, one function per kind of task: the periodic
validation during training and the final test use the same code. Each runs the model (in eval
mode, under `torch.no_grad`: the caller's job) in batches of `EVAL_BATCH` sequences on
`device`, and takes its logits to the CPU as float32 before scoring them, so that a bfloat16 or
CUDA run is summed the same way as a CPU one."""

from __future__ import annotations

import torch

from harness.quality import tasks
from harness.quality.tokenizer import Tokenizer

EVAL_BATCH = 16


def lm_scores(model, stream: torch.Tensor, T: int, tok: Tokenizer, byte_lengths: torch.Tensor,
              device: str) -> dict[str, float]:
    """Bits per byte and mean loss (nats per token) of next-token prediction over `stream`, cut
    into blocks of `T` tokens."""
    inputs, targets = tasks.lm_blocks(stream, T, tok.pad_id)
    nll, n_bytes, n_tokens = 0.0, 0, 0
    for start in range(0, inputs.shape[0], EVAL_BATCH):
        x, y = inputs[start:start + EVAL_BATCH].to(device), targets[start:start + EVAL_BATCH]
        logits = model(input_ids=x).logits.float().cpu()
        a, b = tasks.nll_and_bytes(logits, y, byte_lengths)
        nll, n_bytes, n_tokens = nll + a, n_bytes + b, n_tokens + int((y != tasks.IGNORE).sum())
    return {"bits_per_byte": tasks.bits_per_byte(nll, n_bytes), "loss": nll / n_tokens}


def seq2seq_scores(model, stream: torch.Tensor, half: int, tok: Tokenizer,
                   byte_lengths: torch.Tensor, device: str) -> dict[str, float]:
    """Bits per byte of what the decoder writes: `half` tokens of `stream` after the `half`
    the encoder reads."""
    inputs, targets = tasks.seq2seq_pairs(stream, half, half, tok.bos_id, tok.eos_id)
    nll, n_bytes = 0.0, 0
    for start in range(0, targets.shape[0], EVAL_BATCH):
        rows = slice(start, start + EVAL_BATCH)
        logits = model(**{k: v[rows].to(device) for k, v in inputs.items()}).logits.float().cpu()
        a, b = tasks.seq2seq_nll_and_bytes(logits, targets[rows], byte_lengths)
        nll, n_bytes = nll + a, n_bytes + b
    return {"bits_per_byte": tasks.bits_per_byte(nll, n_bytes)}


def mlm_scores(model, inputs: torch.Tensor, targets: torch.Tensor, device: str
               ) -> dict[str, float]:
    """Accuracy and mean loss at the masked positions."""
    correct, total, nll = scored_positions(model, inputs, targets, device)
    return {"mlm_accuracy": correct / total, "mlm_loss": nll / total}


def mqar_scores(model, inputs: torch.Tensor, targets: torch.Tensor, device: str
                ) -> dict[str, float]:
    """Accuracy at the queries."""
    correct, total, _ = scored_positions(model, inputs, targets, device)
    return {"accuracy": correct / total}


def scored_positions(model, inputs: torch.Tensor, targets: torch.Tensor, device: str
                     ) -> tuple[int, int, float]:
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
