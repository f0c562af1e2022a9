"""The layers hold: ``workers/`` is a library that never reaches up into ``pipeline/``,
and its own modules import each other without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKERS = REPO / "workers"


def _imports(path: Path) -> set[str]:
    """Every module an ``import`` anywhere in the file names (function-level ones too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_workers_never_import_pipeline():
    offenders = {
        path.name: sorted(name for name in _imports(path) if name == "pipeline" or name.startswith("pipeline."))
        for path in WORKERS.glob("*.py")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_workers_modules_form_no_import_cycle():
    graph = {
        f"workers.{path.stem}": {name for name in _imports(path) if name.startswith("workers.")}
        for path in WORKERS.glob("*.py")
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        assert module not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(module):] + [module])}"
        if module in done or module not in graph:
            return
        visiting.append(module)
        for target in sorted(graph[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
