"""Imports run down the layers (docs/architecture.md): a room imports the rooms below it, never
one above, and no service imports its app's tasks (the tasks import the services)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Bottom to top. training.engine is pure Python: below every Django app.
LAYERS = ("core", "training.engine", "accounts", "annotate", "training", "rounds", "config")


def layer_of(module: str) -> int | None:
    for index in sorted(range(len(LAYERS)), key=lambda i: -len(LAYERS[i])):
        name = LAYERS[index]
        if module == name or module.startswith(name + "."):
            return index
    return None


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, at any depth (functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def source_files():
    for top in ("core", "accounts", "annotate", "training", "rounds", "config"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path, ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_no_import_runs_up_the_layers():
    upward = []
    for path, module in source_files():
        mine = layer_of(module)
        for line, imported in imports(path):
            theirs = layer_of(imported)
            if theirs is not None and mine is not None and theirs > mine:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert upward == []


def test_no_service_imports_its_tasks():
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {imported}"
        for path, module in source_files()
        if module.endswith(".services") or ".services." in module
        for line, imported in imports(path)
        if imported.endswith(".tasks")
    ]
    assert offending == []
