"""The package's shape, checked: module and function sizes, the one-way flow between
subpackages, and no monkey-patching (issue 23's bars; docs/architecture.md draws the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sstorch"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# What each part of the package may import from sstorch (its own part is always allowed).
# The flow is one way: cli → config → data / models → training → eval → experiments.
LOWER = {
    "functional": set(),
    "io": set(),
    "layers": {"functional", "io"},
    "structure": {"functional", "layers", "io", "pruning"},
    "pruning": {"functional", "layers", "io"},
    "attacks": {"functional", "io"},
    "config": {"io"},
    "data": {"config", "io"},
    "models": {"config", "functional", "layers", "structure", "pruning", "io", "data"},
    "eval": {"attacks", "config", "data", "functional", "io", "layers", "models", "pruning",
             "structure"},
    "training": {"attacks", "config", "data", "eval", "functional", "io", "layers", "models",
                 "pruning", "structure"},
    "export": {"attacks", "config", "data", "eval", "functional", "io", "layers", "models",
               "pruning", "structure"},
}


PARTS = {p.stem for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _part(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_no_module_is_over_the_size_bar():
    big = {str(p.relative_to(SRC)): n for p in _modules()
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert big == {}, f"modules over {MAX_MODULE_LINES} lines: split them by concept"


def test_no_function_is_over_the_size_bar():
    long = {}
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(SRC)}:{node.lineno} {node.name}"] = n
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines"


@pytest.mark.parametrize("needle", ["types.MethodType", "MethodType(", ".forward = ",
                                    "register_optimizer_step_post_hook"])
def test_no_monkey_patching(needle):
    hits = [str(p.relative_to(SRC)) for p in _modules() if needle in p.read_text()]
    assert hits == [], f"{needle!r} in {hits}: use parametrizations, hooks owned by the caller, " \
                       "or a module of its own"


def _sstorch_imports(path: Path) -> set[str]:
    """The sstorch parts a module imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names
                                      if node.module == "sstorch"]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "sstorch" and len(parts) > 1 and parts[1] in PARTS:
                out.add(parts[1])
    return out


def test_the_flow_is_one_way():
    wrong = {}
    for p in _modules():
        part = _part(p)
        if part not in LOWER:
            continue  # cli, __init__, __main__, experiments: the top may import anything
        bad = _sstorch_imports(p) - LOWER[part] - {part}
        if bad:
            wrong[str(p.relative_to(SRC))] = sorted(bad)
    assert wrong == {}, "a lower layer imports a higher one (see docs/architecture.md)"
