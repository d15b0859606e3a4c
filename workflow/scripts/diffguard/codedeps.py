"""Code inputs of a rule: its script plus the ``diffguard`` modules it imports, transitively.

Computed from the source with :mod:`ast` (nothing is imported), so parsing the workflow stays
cheap and a rule reruns exactly when a module it can execute changes. Function-level (lazy)
imports count too: a module imported inside a function may run in the job.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterator
from functools import cache
from pathlib import Path

LOGGER = logging.getLogger(__name__)
PACKAGE = "diffguard"


def _module_file(package_root: Path, dotted: str) -> Path | None:
    """The source file of ``dotted`` (a module or package) under ``package_root``, if any."""
    base = package_root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(package_root: Path, path: Path) -> str:
    """Dotted name of ``path`` (``diffguard/convert/__init__.py``: ``diffguard.convert``)."""
    parts = list(path.relative_to(package_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


_BLOCK_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")
"""Fields of a statement that hold nested statements (except/match clauses included)."""


def _statements(body: list[ast.AST]) -> Iterator[ast.AST]:
    """Every statement in ``body`` and the blocks nested in it (functions, if, try, with, ...).

    Imports are statements, so this finds the same ones as :func:`ast.walk` without visiting the
    expressions, which are most of a module's nodes (this runs on every workflow parse).
    """
    for node in body:
        yield node
        for name in _BLOCK_FIELDS:
            nested = getattr(node, name, None)
            if isinstance(nested, list):
                yield from _statements(nested)


def _imported_names(tree: ast.Module, current: str | None, is_package: bool) -> set[str]:
    """Dotted names that ``tree`` may import (module-level and inside functions alike).

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule); relative
    imports resolve against ``current``, the module's own dotted name (None for a script).
    """
    names: set[str] = set()
    for node in _statements(tree.body):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if current is None:
                    raise ValueError(
                        f"relative import outside the {PACKAGE} package (level {node.level})"
                    )
                anchor = current.split(".") if is_package else current.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


@cache
def _package_imports(package_root: Path, path: Path) -> frozenset[Path]:
    """Package files that ``path`` imports directly, each with its parent packages' ``__init__``."""
    in_package = path.is_relative_to(package_root / PACKAGE)
    current = _module_name(package_root, path) if in_package else None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as err:
        raise ValueError(f"{path}: cannot parse for its imports: {err}") from err
    files: set[Path] = set()
    for name in _imported_names(tree, current, path.name == "__init__.py"):
        parts = name.split(".")
        if parts[0] != PACKAGE:
            continue
        # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
        for depth in range(1, len(parts) + 1):
            found = _module_file(package_root, ".".join(parts[:depth]))
            if found is not None:
                files.add(found)
    return frozenset(files)


@cache
def code_closure(script: Path, package_root: Path) -> tuple[Path, ...]:
    """``script`` and every ``diffguard`` source file it imports, transitively, sorted.

    ``package_root`` is the folder holding the ``diffguard`` package. Raises FileNotFoundError
    when the script is missing and ValueError when a file does not parse.
    """
    script = Path(script)
    package_root = Path(package_root)
    if not script.is_file():
        raise FileNotFoundError(f"rule script {script} not found")
    seen: set[Path] = {script}
    todo = [script]
    while todo:
        for found in _package_imports(package_root, todo.pop()):
            if found not in seen:
                seen.add(found)
                todo.append(found)
    LOGGER.debug("%s depends on %d files", script, len(seen))
    return tuple(sorted(seen))


def script_code(script: str | Path, scripts_dir: str | Path, relative_to: str | Path) -> list[str]:
    """Code inputs of the rule running ``scripts_dir/script``, as paths relative to ``relative_to``.

    ``scripts_dir`` also holds the ``diffguard`` package (the scripts import it from there).
    """
    root = Path(scripts_dir).resolve()
    base = Path(relative_to).resolve()
    return [str(p.relative_to(base)) for p in code_closure(root / script, root)]
