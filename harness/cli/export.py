"""`catalog export`: a trained (or any readable) checkpoint written as a Hugging Face folder or an
official RWKV .pth, with its tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from harness.cli.common import app, one_line_errors, stdout
from harness.cli.generate import CheckpointArg


@app.command()
def export(
    checkpoint: CheckpointArg,
    out: Annotated[Path, typer.Argument(
        metavar="OUT", help="Folder to write the checkpoint into (new, or empty).")],
    format: Annotated[str | None, typer.Option(
        "--format", metavar="hf|official",
        help="hf: a Hugging Face folder transformers loads (gpt, bert, roberta, rwkv, llama, "
             "gpt-neox, bloom, opt, gpt-j, gpt-neo, ctrl, mamba, mamba2, t5, bart, albert); "
             "official: an "
             "official RWKV .pth, OUT/model.pth (rwkv, rwkv5, rwkv6, rwkv7). Default: hf where "
             "transformers has the model, else official.",
        show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        help="Zoo model to read the checkpoint as (default: the one it is).",
        show_default=False)] = None,
    dtype: Annotated[str | None, typer.Option(
        metavar="float32|bfloat16|float16",
        help="Store the weights in this dtype (default: as the checkpoint holds them).",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Write into OUT although it holds files (those of the same names are "
                        "replaced).")] = False,
) -> None:
    """Write a checkpoint in a form other tools load: a `catalog train` folder as a Hugging Face
    folder (config.json, model.safetensors, tokenizer.json) that transformers' class for the
    model and AutoTokenizer read with the same logits and ids, or as an official RWKV .pth.
    Examples:

    \b
      catalog export runs/quality-lm/gpt out/gpt-hf
      catalog export runs/quality-lm/rwkv7 out/rwkv7     # out/rwkv7/model.pth
    """
    from harness.export import export_checkpoint

    with one_line_errors():
        exported = export_checkpoint(checkpoint, out, format=format, model=model, dtype=dtype,
                                     force=force)
    from zoo.registry import load_class

    console = stdout()
    console.print(f"wrote {escape(str(exported.folder))}: zoo model {exported.name} as "
                  f"{'an official RWKV .pth' if exported.format == 'official' else 'Hugging Face'}"
                  f" ({', '.join(exported.files)})")
    path = escape(repr(str(exported.path)))
    commands = ("catalog generate, eval or bench --checkpoint"
                if getattr(load_class(exported.name), "causal_lm", False)
                else "catalog bench --checkpoint")
    if exported.architecture:
        console.print(f"read it with transformers.{exported.architecture}.from_pretrained({path}),"
                      f" or {commands}")
    else:
        console.print(f"read it with zoo.from_pretrained({exported.name!r}, {path}), the rwkv "
                      f"package, or {commands}")
