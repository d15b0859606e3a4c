"""Shared pytest fixtures: locations of the reference data and the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    env = os.environ.get("DIFFGUARD_SHARED")
    return Path(env) if env else REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``shared/reference`` beside the checkout (override with DIFFGUARD_SHARED)."""
    path = _shared_dir() / "reference"
    if not path.is_dir():
        raise FileNotFoundError(
            f"reference data not found at {path}; set DIFFGUARD_SHARED to the shared/ folder"
        )
    return path


@pytest.fixture(scope="session")
def checkpoints_dir(reference_dir: Path) -> Path:
    return reference_dir / "checkpoints"
