"""Image lists (OpenOOD format): parsing, writing, label checks, sharding, seeded subsampling.

An image list is a text file with one ``relative/path label`` per line; label ``-1`` marks an
out-of-distribution image. Paths are relative to an image root directory. Blank lines and lines
starting with ``#`` are ignored. The path is everything before the last run of whitespace, so
paths may contain spaces.

Only the standard library and numpy: the rules that only touch lists (``select_images``,
``gather_scores``) run once per dataset and experiment, and importing torch would cost each of
them seconds of start-up. Image decoding lives in :mod:`diffguard.data`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

OOD_LABEL = -1
"""Label that marks an out-of-distribution image in an image list."""


class ImageListError(ValueError):
    """An image list is malformed; the message names the file and line."""


@dataclass(frozen=True)
class ImageRecord:
    """One entry of an image list.

    Attributes:
        path: Image path relative to the image root, with ``/`` separators.
        label: Class index in ``[0, K)`` for ID images, ``-1`` for OOD images.
        image_id: Stable identifier (the path without its extension), unique within a list.
        line: 1-based line number in the list file it came from (0 if built in memory);
            excluded from equality so records compare by content.
    """

    path: str
    label: int
    image_id: str
    line: int = field(default=0, compare=False, repr=False)


def image_id_for(path: str) -> str:
    """Return the image id used for ``path``: the relative path without its suffix."""
    name = path.rpartition("/")[2]
    dot = name.rfind(".")
    # string fast path for plain paths (lists hold ~10^5-10^6 lines); PurePosixPath otherwise
    plain = not ("//" in path or "/./" in path or path.startswith("./") or path.endswith("/"))
    if plain and 0 < dot < len(name) - 1:
        return path[: len(path) - len(name) + dot]
    return str(PurePosixPath(path).with_suffix(""))


def read_imglist(path: str | Path) -> list[ImageRecord]:
    """Parse an OpenOOD-style image list.

    Args:
        path: The list file.

    Returns:
        The records in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        ImageListError: A line lacks a label, has a non-integer label or a label below -1,
            an absolute or ``..`` path, a duplicate image id (path without suffix), or the
            file holds no records.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    records: list[ImageRecord] = []
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise ImageListError(
                    f"{path}:{lineno}: expected 'relative/path label', got {line!r} (missing field)"
                )
            rel, label_text = parts
            try:
                label = int(label_text)
            except ValueError:
                raise ImageListError(
                    f"{path}:{lineno}: label {label_text!r} is not an integer "
                    f"(expected a class index >= 0 or {OOD_LABEL} for OOD)"
                ) from None
            if label < OOD_LABEL:
                raise ImageListError(
                    f"{path}:{lineno}: label {label} is invalid "
                    f"(expected a class index >= 0 or {OOD_LABEL} for OOD)"
                )
            rel = rel.replace("\\", "/")
            if rel.startswith("/") or ".." in rel.split("/"):
                raise ImageListError(
                    f"{path}:{lineno}: path {rel!r} must be relative to the image root "
                    "(no leading '/' and no '..')"
                )
            image_id = image_id_for(rel)
            if image_id in first_line:
                # ids key per-image outputs, so 'a.png' and 'a.jpg' would collide as well
                raise ImageListError(
                    f"{path}:{lineno}: duplicate image {rel!r} (id {image_id!r} first on line "
                    f"{first_line[image_id]})"
                )
            first_line[image_id] = lineno
            records.append(ImageRecord(rel, label, image_id, lineno))
    if not records:
        raise ImageListError(f"{path}: image list is empty (expected 'relative/path label' lines)")
    return records


def write_imglist(path: str | Path, records: Sequence[ImageRecord]) -> None:
    """Write ``records`` as an image list, atomically (temp file in the same dir + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{r.path} {r.label}\n" for r in records)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def validate_labels(records: Sequence[ImageRecord], num_classes: int, file: str | Path) -> None:
    """Check that every record is an ID record with a label in ``[0, num_classes)``.

    Raises:
        ImageListError: Naming ``file`` and the offending line (or record index).
    """
    for index, record in enumerate(records):
        if not 0 <= record.label < num_classes:
            where = f"line {record.line}" if record.line else f"record {index}"
            raise ImageListError(
                f"{file}: {where} ({record.path}): label {record.label} is out of range "
                f"(expected an in-distribution class in [0, {num_classes}))"
            )


def num_shards(n: int, shard_size: int) -> int:
    """Return the number of shards of ``shard_size`` needed to cover ``n`` records."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return math.ceil(n / shard_size)


def select_shard(
    records: Sequence[ImageRecord], shard_index: int, shard_size: int
) -> list[ImageRecord]:
    """Return shard ``shard_index`` (contiguous slice of ``shard_size``; the last may be short).

    Raises:
        IndexError: ``shard_index`` is outside ``[0, num_shards(len(records), shard_size))``.
    """
    total = num_shards(len(records), shard_size)
    if not 0 <= shard_index < total:
        raise IndexError(
            f"shard_index {shard_index} out of range: {len(records)} records in "
            f"{total} shards of {shard_size}"
        )
    start = shard_index * shard_size
    return list(records[start : start + shard_size])


def subsample(records: Sequence[ImageRecord], n: int | None, seed: int) -> list[ImageRecord]:
    """Return a seeded random subset of ``n`` records, in their original order.

    Args:
        records: The full list.
        n: How many to keep; ``None`` keeps all.
        seed: Seed of the choice (same seed and list, same subset).

    Raises:
        ValueError: ``n`` is negative or larger than ``len(records)``.
    """
    if n is None:
        return list(records)
    if not 0 <= n <= len(records):
        raise ValueError(f"cannot subsample {n} of {len(records)} records (expected 0 <= n <= len)")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(records), size=n, replace=False))
    return [records[int(i)] for i in keep]
