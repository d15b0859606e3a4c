"""No function of the ``diffguard`` package is over 80 lines without a comment saying why.

A function's length is the number of source lines from its first decorator (or its ``def``)
to its last line, docstring and comments included: what a reader has to take in at once.

The marker: a comment ``# long: <why>`` either in the comment block directly above the
function (above its decorators, if any) or at the end of one of its signature lines (``def``
to the colon). ``<why>`` must be a reason of a few words, e.g.
``# long: mirrors guided_diffusion.unet.UNetModel.__init__ block by block (port)``. A port of
released code names the upstream function it mirrors.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "diffguard"
MAX_LINES = 80
MARKER = re.compile(r"#\s*long:\s*(?P<why>\S.{9,})")


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[int, int]:
    """(first line, line count) of a function, decorators included (1-based lines)."""
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    assert node.end_lineno is not None
    return start, node.end_lineno - start + 1


def has_reason(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """True if a ``# long: <why>`` comment sits above the function or on its signature."""
    start, _ = function_lines(node)
    row = start - 2  # 0-based index of the line above
    while row >= 0 and lines[row].lstrip().startswith("#"):
        if MARKER.search(lines[row]):
            return True
        row -= 1
    signature_end = node.body[0].lineno - 1  # the body's first statement follows the colon
    return any(MARKER.search(line) for line in lines[node.lineno - 1 : signature_end])


def long_functions_without_reason(source: str, name: str) -> list[str]:
    """``file:line name (N lines)`` of each function over MAX_LINES lines without a marker."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start, count = function_lines(node)
            if count > MAX_LINES and not has_reason(lines, node):
                found.append(f"{name}:{start} {node.name} ({count} lines)")
    return found


def test_no_long_function_without_a_reason() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10, f"package not found under {PACKAGE}"
    offenders = [
        entry
        for path in files
        for entry in long_functions_without_reason(
            path.read_text(), str(path.relative_to(PACKAGE.parent))
        )
    ]
    assert not offenders, (
        f"functions over {MAX_LINES} lines without a '# long: <why>' comment (split them, or say "
        "why they are long; see this test's docstring):\n" + "\n".join(offenders)
    )


def _function(lines: int, above: str = "", on_def: str = "") -> str:
    body = "".join(f"    x{i} = {i}\n" for i in range(lines - 2))
    return f"{above}def f(a: int) -> int:{on_def}\n    '''Doc.'''\n{body}"


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        (_function(MAX_LINES), False),
        (_function(MAX_LINES + 1), True),
        (_function(MAX_LINES + 1, above="# long: mirrors upstream f() step by step\n"), False),
        (_function(MAX_LINES + 1, on_def="  # long: one table of cases, kept together"), False),
        # a bare marker gives no reason; a marker separated by code does not count
        (_function(MAX_LINES + 1, above="# long:\n"), True),
        (_function(MAX_LINES + 1, above="# long: kept whole for a reason\nY = 1\n"), True),
        (
            "import functools\n"
            "# long: decorated; the marker sits above the decorator\n"
            "@functools.cache\n" + _function(MAX_LINES + 1),
            False,
        ),
    ],
)
def test_the_check_sees_length_and_marker(source: str, flagged: bool) -> None:
    assert bool(long_functions_without_reason(source, "example.py")) is flagged
