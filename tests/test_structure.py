"""The shape the architecture promises (docs/ARCHITECTURE.md): a short loop class, short
functions in the engine, and no configuration below the builder."""

from __future__ import annotations

import ast
from pathlib import Path

import robustreid.engine

ENGINE = Path(robustreid.engine.__file__).parent
MAX_FUNCTION_LINES = 80
MAX_LOOP_LINES = 250


def _definitions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node, node.end_lineno - node.lineno + 1


def test_the_loop_class_is_short():
    tree = ast.parse((ENGINE / "loop.py").read_text())
    sizes = {node.name: lines for node, lines in _definitions(tree)
             if isinstance(node, ast.ClassDef)}
    assert sizes["Trainer"] < MAX_LOOP_LINES, sizes


def test_no_engine_function_is_long():
    long = []
    for path in sorted(ENGINE.glob("*.py")):
        for node, lines in _definitions(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) and lines > MAX_FUNCTION_LINES:
                long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
