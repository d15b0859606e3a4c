"""Atomic writes, hashing and verified, resumable downloads (offline: file:// URLs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from diffguard import io


def test_atomic_write_leaves_no_partial_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_npz_round_trip_and_damaged_file_error(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    io.write_npz(path, x=np.arange(3))
    assert io.read_npz(path)["x"].tolist() == [0, 1, 2]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(OSError, match="a.npz"):
        io.read_npz(path)


def test_download_verifies_and_renames(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "w.bin"
    assert io.download(src.as_uri(), dest, digest) == digest
    assert dest.read_bytes() == src.read_bytes()
    assert not dest.with_name("w.bin.part").exists()


def test_download_resumes_from_part_file(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = bytes(range(256)) * 100
    src.write_bytes(payload)
    dest = tmp_path / "w.bin"
    dest.with_name("w.bin.part").write_bytes(payload[:1000])  # an interrupted earlier attempt
    io.download(src.as_uri(), dest, hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload


def test_download_rejects_wrong_hash_naming_file_and_both_hashes(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"corrupted")
    dest = tmp_path / "w.bin"
    wrong = "0" * 64
    with pytest.raises(io.ChecksumError) as info:
        io.download(src.as_uri(), dest, wrong)
    message = str(info.value)
    assert str(dest.with_name("w.bin.part")) in message
    assert wrong in message and hashlib.sha256(b"corrupted").hexdigest() in message
    assert not dest.exists() and not dest.with_name("w.bin.part").exists()
