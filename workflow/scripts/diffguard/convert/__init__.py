"""Converters from the original checkpoint formats to diffusers models."""

from __future__ import annotations

from collections.abc import Sequence


def mismatch_problems(
    missing: Sequence[str], mismatched: Sequence[str], leftover: Sequence[str]
) -> list[str]:
    """The phrases of a conversion error: tensors missing, of the wrong shape, or left over."""
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {list(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {list(mismatched)}")
    if leftover:
        problems.append(f"{len(leftover)} unconsumed tensor(s): {list(leftover)}")
    return problems
