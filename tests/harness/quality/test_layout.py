"""The quality package's modules import one another in one direction only: each imports only
the modules listed above it in the package's docstring (so no two import each other). The
project-wide layering is tests/test_layering.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import harness.quality

QUALITY = Path(harness.quality.__file__).resolve().parent
# The module map of the package docstring: "  name   what it holds", in dependency order.
ORDER = re.findall(r"^  (\w+)\s", harness.quality.__doc__, flags=re.MULTILINE)


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function, as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def quality_modules() -> dict[str, Path]:
    files = {p.stem: p for p in QUALITY.glob("*.py") if p.stem != "__init__"}
    files.update({p.parent.name: p for p in QUALITY.glob("*/__init__.py")})
    return files


def test_the_docstring_lists_every_module():
    assert sorted(ORDER) == sorted(quality_modules())


def test_each_module_imports_only_those_listed_above_it():
    for name, path in quality_modules().items():
        uses = {n.split(".")[2] for n in imported(path)
                if n.startswith("harness.quality.") and n.split(".")[2] in ORDER}
        later = {other for other in uses if ORDER.index(other) >= ORDER.index(name)}
        assert not later, f"{name} imports {sorted(later)}, listed after it (or itself)"
