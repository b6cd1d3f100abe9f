"""Every `catalog` command the README shows parses: its subcommand and options exist and its
values have the types the options take. A renamed option fails here, not in a reader's shell."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from harness.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[str]:
    """The `catalog ...` lines of the README's code blocks, continuations joined, comments and
    the `...` that stands for options shown above dropped."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            found = re.match(r"(?:catalog|\S.*/bin/catalog) (.*)$", line.strip())
            if found:
                commands.append(re.sub(r"\s+#.*$", "", found.group(1)).strip())
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_every_subcommand():
    shown = {shlex.split(c)[0] for c in COMMANDS}
    group = typer.main.get_command(app)
    assert set(group.commands) <= shown, set(group.commands) - shown


@pytest.mark.parametrize("line", COMMANDS)
def test_a_readme_command_parses(line: str):
    args = [a for a in shlex.split(line) if a != "..."]
    group = typer.main.get_command(app)
    parent = click.Context(group, info_name="catalog")
    command = group.get_command(parent, args[0])
    assert command is not None, f"no subcommand {args[0]!r}"
    try:
        command.make_context(args[0], args[1:], parent=parent)
    except click.exceptions.Exit:  # an eager option such as --help
        pass
    except click.UsageError as exc:
        pytest.fail(f"catalog {line}: {exc.format_message()}")


def test_the_readme_counts_the_catalog_right():
    from harness.catalog import load_catalog

    stated = re.search(r"one YAML file per model \((\d+) entries\)",
                       README.read_text(encoding="utf-8"))
    assert stated, "the README no longer says how many entries the catalog holds"
    assert int(stated.group(1)) == len(load_catalog().entries)
