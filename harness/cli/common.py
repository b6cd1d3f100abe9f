"""What every `catalog` subcommand shares: the typer app, the consoles, one-line errors and
the catalog and model-name look-ups."""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from harness.catalog import (
    Catalog,
    CatalogError,
    load_catalog,
)

app = typer.Typer(
    name="catalog",
    help="The Transformer model family (Amatriain's catalog plus the models this project runs): "
    "browse and validate the catalog, benchmark and train the runnable models, evaluate them "
    "with lm-eval and write comparison reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


USAGE_ERROR = 2  # bad input (unknown id, bad filter value): as click does for usage errors


def stdout() -> Console:
    # A pipe gets a wide table rather than rich's default of 80 columns.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def stderr() -> Console:
    # soft_wrap: an error stays one line however long, so it can be grepped and parsed.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def note_busy(records: list, what: str, again: str) -> None:
    """A note on stderr when some of `records` (bench or quality) shared their cores with other
    work (their `contention`, from harness.machine.LoadMeter, at BUSY_CORES or more)."""
    from harness.machine import BUSY_CORES

    busy = [r.contention for r in records
            if getattr(r, "contention", None) is not None and r.contention >= BUSY_CORES]
    if busy:
        stderr().print(f"[yellow]note:[/] {len(busy)} of the {len(records)} {what} shared "
                       f"their cores with other work (up to {max(busy):.2f} cores' worth, the "
                       f"records' contention): {again}")


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn the library's errors, and a failed allocation, into `error: ...` on stderr and a
    non-zero exit."""
    from harness.machine import out_of_memory

    try:
        yield
    except (CatalogError, ValueError, OSError) as exc:
        stderr().print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(USAGE_ERROR) from None
    except (RuntimeError, MemoryError) as exc:
        refused = out_of_memory(exc)
        if refused is None:
            raise
        stderr().print(f"[bold red]error:[/] out of memory ({refused} refused): give shorter "
                       "inputs or smaller batches")
        raise typer.Exit(USAGE_ERROR) from None


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt inside the block, even where the process was
    started with SIGINT ignored (a shell's background job: Python then installs no handler of
    its own), so that an interrupted sweep always stops cleanly and says what it kept."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@app.callback()
def _options(
    ctx: typer.Context,
    catalog_dir: Annotated[
        Path | None,
        typer.Option(
            "--catalog-dir",
            envvar="TRANSFORMER_CATALOG_DIR",
            help="Folder of catalog YAML files to read instead of the shipped catalog.",
        ),
    ] = None,
) -> None:
    ctx.obj = catalog_dir


def load_catalog_for(ctx: typer.Context, warn: bool = True) -> Catalog:
    from harness.models import shipped_catalog

    with one_line_errors():
        catalog = load_catalog(ctx.obj) if ctx.obj else shipped_catalog()
    if warn and catalog.problems:
        files = sorted({p.file.name for p in catalog.problems})
        stderr().print(
            f"[yellow]warning:[/] {len(catalog.problems)} problem(s) in {', '.join(files)}; "
            "malformed entries are left out. Run `catalog validate` for details."
        )
    return catalog



def zoo_names(catalog: Catalog, names: list[str], all_models: bool) -> list[str]:
    """Zoo model names from zoo names or catalog ids (gpt-2 -> gpt), in the order given."""
    import zoo

    if all_models:
        return sorted(zoo.REGISTRY)
    out = []
    for name in names:
        if name not in zoo.REGISTRY:
            try:
                entry = catalog.get(name)
            except CatalogError:
                entry = None
            if entry is None or not entry.zoo:
                raise CatalogError(f"unknown model {name!r}; runnable models: "
                                   f"{', '.join(sorted(zoo.REGISTRY))} (or --all)")
            name = entry.zoo
        if name not in out:
            out.append(name)
    return out

def command_line(ctx: typer.Context) -> str:
    """The command that is running, as the user would type it again: `catalog`, the command's
    name, then every argument and option given on the command line or through the environment
    (not the defaults), from click's parsed parameters. Records carry it."""
    parts = ["catalog"]
    chain = []
    while ctx is not None:
        chain.append(ctx)
        ctx = ctx.parent
    for level in reversed(chain):
        if level.parent is not None:
            parts.append(level.info_name)
        parts += _given_parameters(level)
    return shlex.join(str(p) for p in parts)


def _given_parameters(ctx: typer.Context) -> list[str]:
    # By name, not by class: typer carries its own copy of click, whose classes are not
    # click's.
    out: list[str] = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if getattr(source, "name", None) not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        value = ctx.params.get(param.name)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        values = [v.value if isinstance(v, Enum) else v for v in values]
        if param.param_type_name == "argument":
            out += values
        elif getattr(param, "is_flag", False) and isinstance(value, bool):
            flags = param.opts if value else param.secondary_opts
            out += flags[:1]
        else:
            for v in values:
                out += [param.opts[0], v]
    return out


def resolve_device(device: str, *, here: bool = True) -> str:
    """--device as the machine it runs on: auto is cuda where there is one, else cpu; a device
    this machine lacks is a ValueError (not checked for cells launched elsewhere: `here`)."""
    from harness.machine import check_device

    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(device, here=here)




# --- where a sweep's cells run (harness.launch) ------------------------------------------------

LauncherOpt = Annotated[str, typer.Option(
    help="Where the cells run: local (this machine) or ray (a Ray cluster; pip install "
         "'transformer-catalog[ray]').")]
JobsOpt = Annotated[int | None, typer.Option(
    help="Cells at once. local: default 1, one after another with the whole machine; N > 1 "
         "pins each CPU cell to its own share of the cores, or gives each CUDA cell a GPU, and "
         "marks the timings as taken beside other cells. ray: default, what the cluster holds.",
    show_default=False)]
AddressOpt = Annotated[str | None, typer.Option(
    help="ray: the cluster to join (e.g. auto, or ray://HOST:10001); default: start a local "
         "one for this sweep.", show_default=False)]


def launcher_for(name: str, jobs: int | None, address: str | None, device: str,
                 threads: int | None):
    """The launcher of --launcher/--jobs/--address, and the threads each cell will use (None:
    the cell's default, when it has the machine to itself). Cells that share a CPU get an
    explicit thread count so that their records and MFU peaks say what they ran with."""
    from harness import launch

    made = launch.make(name, jobs, device, threads, address)
    if device == "cpu" and threads is None:
        if isinstance(made, launch.Ray):
            threads = 1
        elif made.jobs > 1:
            threads = launch.cores_per_job(made.jobs)
    return made, threads
