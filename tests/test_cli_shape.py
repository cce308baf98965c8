"""The CLI stays thin: no function in lmgauge/cli/ runs over 60 lines (signature and docstring
included), so a command reads as parse, call the library, render."""

import ast
from pathlib import Path

import lmgauge.cli

LIMIT = 60
CLI = Path(lmgauge.cli.__file__).parent


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_the_cli_is_a_package_of_modules():
    assert CLI.name == "cli" and (CLI / "__init__.py").is_file()
    assert len(list(CLI.glob("*.py"))) > 5


def test_no_cli_function_is_over_60_lines():
    too_long = [
        f"{path.name}:{line} {name} ({length} lines)"
        for path in sorted(CLI.glob("*.py"))
        for name, line, length in functions(path)
        if length > LIMIT
    ]
    assert not too_long, too_long


def test_the_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n")
    assert [length for _, _, length in functions(tmp_path / "long.py")] == [LIMIT + 1]
