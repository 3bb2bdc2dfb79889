"""The layout stays readable: no module of sweep/ over 350 lines, no function over 50 (the parser tables aside, which
read as data), the CLI's main under 150 lines; sweep/ imports train_core only through its public face."""

import ast
from pathlib import Path

SWEEP = Path(__file__).resolve().parent.parent / "sweep"
MODULE_LINES, FUNCTION_LINES, CLI_MAIN_LINES = 350, 50, 150


def _is_parser_table(path: Path, node: ast.FunctionDef) -> bool:
    """A function that only declares flags: a command's `register`, or a flag group of sweep/cli/flags.py."""
    return path.parent.name == "cli" and (node.name == "register" or node.name.startswith("add_"))


def test_no_module_of_sweep_is_over_350_lines():
    long = {str(p.relative_to(SWEEP)): n for p in SWEEP.rglob("*.py") if (n := len(p.read_text().splitlines())) > MODULE_LINES}
    assert not long, long


def test_no_function_of_sweep_is_over_50_lines():
    long = []
    for path in SWEEP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_parser_table(path, node):
                if (length := node.end_lineno - node.lineno + 1) > FUNCTION_LINES:
                    long.append(f"{path.relative_to(SWEEP)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_the_cli_main_is_small():
    assert len((SWEEP / "cli" / "main.py").read_text().splitlines()) < CLI_MAIN_LINES


def test_sweep_uses_only_train_cores_public_face():
    """train_core publishes what the sweep may use (train_core/__init__.py); its submodules are its own business."""
    inside = []
    for path in SWEEP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            inside += [f"{path.relative_to(SWEEP)}:{node.lineno} {n}" for n in names if n.startswith("train_core.")]
    assert not inside, inside
