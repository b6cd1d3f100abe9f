"""`catalog generate`: text from a published (or trained) decoder or encoder-decoder checkpoint,
streamed."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from harness.cli.common import app, one_line_errors, resolve_device, stderr

CheckpointArg = Annotated[str, typer.Argument(
    metavar="CHECKPOINT",
    help="A checkpoint folder (Hugging Face layout, or one written by `catalog train`), an "
         "official RWKV .pth (its tokenizer.json beside it; or the folder `catalog export` "
         "wrote it into), a GGUF file (llama.cpp's; llama "
         "and mistral, quantized or not), or a Hugging Face hub id (gpt2, owner/name): read "
         "from the local Hugging Face cache, downloaded when not there (HF_HUB_OFFLINE=1: the "
         "cache only).")]


@app.command()
def generate(
    checkpoint: CheckpointArg,
    prompt: Annotated[str, typer.Option(
        help="Text to continue (an encoder-decoder's source); empty: start from the "
             "checkpoint's start-of-text token.")] = "",
    model: Annotated[str | None, typer.Option(
        help="Zoo model to load the checkpoint as (default: the one its config.json or keys "
             "say): gpt, gpt-neox, gpt-j, gpt-neo, ctrl, bloom, opt, llama, mamba, mamba2, rwkv, "
             "rwkv5, rwkv6, rwkv7, t5, bart.",
        show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 50,
    temperature: Annotated[float, typer.Option(
        help="0: greedy (the most likely token each step); above 0: sampled from the "
             "softmax of logits / temperature.")] = 0.0,
    top_k: Annotated[int | None, typer.Option(
        help="Sample among the k most likely tokens only.", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the sampling, for a repeatable run.", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto (cuda when present), cpu, cuda or cuda:N.")
                      ] = "auto",
    chat: Annotated[bool, typer.Option(
        "--chat", help="Send --prompt as the user's turn of a chat, laid out by the checkpoint's "
                       "chat template (instruction-tuned models; rendered by transformers), and "
                       "print the reply.")] = False,
) -> None:
    """Continue a prompt with a decoder checkpoint and its own tokenizer, printing the text as
    it is decoded (greedy by default; --temperature samples). An encoder-decoder (T5, Flan-T5,
    BART, or a transformer, t5 or bart run of this project) reads the prompt as its source, and its
    decoder's text is printed.

    The prompt and its continuation go to stdout (an encoder-decoder's or a --chat reply
    alone), notes to stderr. Stops after --max-new-tokens or at the checkpoint's end-of-text
    token.
    """
    from harness.pretrained import (
        check_sampling,
        load_pretrained,
        model_of,
        require_generator,
        stream_text,
    )

    out = sys.stdout
    with one_line_errors():
        device = resolve_device(device)
        check_sampling(max_new_tokens, temperature, top_k)
        name, path = model_of(checkpoint, model)  # a hub id: fetched once, here
        require_generator(checkpoint, name, "catalog generate")  # before the weights are read
        loaded = load_pretrained(path, model=name, device=device)
        if loaded.tokenizer is None:
            raise ValueError(f"{checkpoint}: no tokenizer files (tokenizer.json, vocab.json + "
                             "merges.txt, or vocab.txt) beside the weights; catalog generate "
                             "needs the checkpoint's own tokenizer (copy its files into the "
                             "folder)")
        pieces = stream_text(loaded, prompt, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_k=top_k, seed=seed, chat=chat)
        first = next(pieces, "")  # a prompt too long fails here, before anything is printed
        reads = "; the encoder reads the prompt" if loaded.is_encoder_decoder else ""
        stderr().print(f"{escape(checkpoint)}: zoo model {name}, "
                       f"{loaded.model.num_params():,} parameters, on "
                       f"{next(loaded.model.parameters()).device}{reads}")
        # a chat's reply and an encoder-decoder's text are printed alone
        out.write(first if chat or loaded.is_encoder_decoder else prompt + first)
        out.flush()
        for piece in pieces:
            out.write(piece)
            out.flush()
    out.write("\n")
