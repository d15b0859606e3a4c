"""Atomic file output, hashing and resumable, verified downloads.

Every writer goes through a temporary file in the destination folder followed by ``os.replace``,
so an interrupted job never leaves a partial file under a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def setup_file_logging(log_file: str | Path | None) -> None:
    """Log to the rule's log file (and stderr), with timestamps; no torch import."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp"
    )
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.8g")


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Load an npz written by :func:`write_npz`, with an error naming a damaged file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise OSError(f"cannot read {path}: {err}") from err


def sha256sum(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ChecksumError(RuntimeError):
    """A file's sha256 does not match the pinned value."""


def verify_sha256(path: str | Path, expected: str | None) -> str:
    """Return the file's sha256; raise naming the file and both hashes on mismatch."""
    actual = sha256sum(path)
    if expected and actual.lower() != expected.lower():
        raise ChecksumError(
            f"sha256 mismatch for {path}: expected {expected.lower()}, got {actual}. "
            "The file is corrupt or not the published one; delete it and download again."
        )
    return actual


def download(url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60) -> str:
    """Resumable, atomic, verified download of ``url`` to ``dest``; returns the sha256.

    Bytes accumulate in ``dest.part`` (an HTTP Range request resumes it after an interruption);
    the part file is renamed onto ``dest`` only after its hash matched ``sha256`` (when given).
    ``file://`` URLs are supported, which is how the tests exercise this code offline.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url)
    if offset and url.startswith(("http://", "https://")):
        request.add_header("Range", f"bytes={offset}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = getattr(response, "status", None)
            if offset and status != 206:
                offset = 0  # server ignored the range: start over
            if url.startswith("file://") and offset:
                response.read(offset)
            with open(part, "ab" if offset else "wb") as handle:
                while block := response.read(1 << 20):
                    handle.write(block)
    except OSError as err:
        raise OSError(
            f"download of {url} to {dest} failed after "
            f"{part.stat().st_size if part.exists() else 0} bytes ({err}); rerun to resume"
        ) from err
    try:
        digest = verify_sha256(part, sha256)
    except ChecksumError:
        part.unlink()
        raise
    os.replace(part, dest)
    log.info("downloaded %s -> %s (sha256 %s)", url, dest, digest)
    return digest
