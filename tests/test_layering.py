"""The project's layers import one way (DESIGN.md): catalog YAML -> typed entry -> zoo config ->
model -> harness record -> report, the CLI on top. Read from the source (every import, those
inside functions too), so that a lazy import cannot hide a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("zoo", "harness", "catalog")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports(name: str) -> set[str]:
    """Every module `name` imports, by name: project modules resolved to the module file they
    name (`from harness.bench import cell` -> harness.bench.cell), others as written."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
    return out


GRAPH = {name: {m for m in imports(name) if m in MODULES and m != name} for name in MODULES}


def test_the_graph_is_read():
    assert "zoo.gpt" in GRAPH and "harness.sweep" in GRAPH["harness.cli.bench"]


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.split(".")[0] == "zoo"))
def test_the_zoo_imports_neither_the_harness_nor_yaml(name):
    bad = {m for m in imports(name) if m.split(".")[0] in ("harness", "yaml", "pydantic",
                                                           "typer", "rich")}
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("harness")
                                        and not m.startswith("harness.cli")))
def test_the_library_imports_no_cli_and_does_not_print(name):
    bad = {m for m in imports(name) if m.startswith("harness.cli") or m.split(".")[0] in (
        "typer", "rich")}
    assert not bad, f"{name} imports {sorted(bad)}"
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
              and isinstance(n.func, ast.Name) and n.func.id == "print"]
    assert not prints, f"{name} prints (line {prints[0]}); only the CLI renders"


def test_no_module_imports_one_that_imports_it_back():
    """No circle of any length in the import graph (depth-first search for a back edge)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], path[len(path):] = 1, [node]
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(GRAPH):
        if start not in state and (circle := visit(start)):
            pytest.fail("import circle: " + " -> ".join(circle))
