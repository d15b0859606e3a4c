"""Shared pytest fixtures: locations of the reference data and the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# ATEN_CPU_CAPABILITY lowers ATen's own kernels only; oneDNN (bf16/fp16 convolutions) still
# detects the hardware and then calls ATen helpers that refuse on a lowered ATen ("pack_vnni2 is
# only supported when avx512 is supported", seen with avx2 on an AVX-512 CPU). A real AVX2 (or
# pre-AVX2) machine lowers both, so cap oneDNN to match before torch is imported.
_ONEDNN_ISA_FOR_ATEN = {"default": "SSE41", "avx2": "AVX2"}
if os.environ.get("ATEN_CPU_CAPABILITY") in _ONEDNN_ISA_FOR_ATEN:
    os.environ.setdefault(
        "ONEDNN_MAX_CPU_ISA", _ONEDNN_ISA_FOR_ATEN[os.environ["ATEN_CPU_CAPABILITY"]]
    )


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
