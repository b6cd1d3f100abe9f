"""The `catalog` command: parse the arguments, call one library function, render with rich.

One module per group of subcommands, all registered on the typer app of `common`:
  catalog_commands  list, show, validate, timeline
  bench             bench
  generate          generate (text from a published or trained decoder checkpoint)
  export            export (a checkpoint as a Hugging Face folder or an official RWKV .pth)
  quality           train, quality, eval
  report            report
"""

import importlib

from harness.cli.common import app

# Importing a module registers its commands; `catalog --help` lists them in this order.
for _module in ("catalog_commands", "bench", "generate", "export", "quality", "report",
                "results"):
    importlib.import_module(f"harness.cli.{_module}")

__all__ = ["app", "main"]


def main() -> None:
    app()
