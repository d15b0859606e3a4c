"""Image lists (OpenOOD format), robust image loading, sharding and seeded subsampling.

An image list is a text file with one ``relative/path label`` per line; label ``-1`` marks an
out-of-distribution image. Paths are relative to an image root directory. Blank lines and lines
starting with ``#`` are ignored. The path is everything before the last run of whitespace, so
paths may contain spaces.

Image decoding follows the released DiffGuard / OpenOOD test pipeline: ``Resize(pre_size)`` on the
shorter side with PIL bilinear resampling, then ``CenterCrop(size)``, then ``ToTensor`` (values in
[0, 1]). Colour modes are converted explicitly (see :func:`load_image`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

log = logging.getLogger(__name__)

OOD_LABEL = -1
"""Label that marks an out-of-distribution image in an image list."""


class ImageListError(ValueError):
    """An image list is malformed; the message names the file and line."""


class ImageLoadError(OSError):
    """An image file cannot be decoded; the message names the file."""


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


# Modes whose samples are 16 bits wide: Pillow's own convert("L") clips them at 255 rather than
# rescaling, so they are scaled explicitly.
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_PLAIN_MODES = {"1", "L", "RGB", "CMYK", "YCbCr", "P"}


def _to_channels(img: Image.Image, channels: int, name: str | Path) -> Image.Image:
    """Convert any supported mode to 8-bit ``L`` (channels 1) or ``RGB`` (channels 3).

    Transparent images are composited on white: fully transparent pixels carry arbitrary colour
    values, and white is the neutral page background. (OpenOOD's ``convert("RGB")`` would drop
    alpha instead; the benchmark images have no alpha, so this choice never changes a score.)
    """
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr, 0.0, 65535.0) / 65535.0
        img = Image.fromarray(np.round(arr * 255.0).astype(np.uint8), mode="L")
    elif mode == "F":
        raise ImageLoadError(f"{name}: float images (mode F) have no defined range; convert first")
    elif mode not in _PLAIN_MODES | _ALPHA_MODES:
        raise ImageLoadError(f"{name}: unsupported image mode {mode!r}")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def load_image(
    path: str | Path, size: int, channels: int, pre_size: int | None = None
) -> torch.Tensor:
    """Decode an image fully and return a ``channels x size x size`` float tensor in [0, 1].

    Strict: a truncated file is an error (see :func:`load_image_checked` for OpenOOD's
    decode-as-far-as-it-goes behaviour).

    Raises:
        ImageLoadError: The file is missing, truncated, corrupt or of an unsupported mode.
        ValueError: ``channels`` is not 1 or 3, or a size is < 1.
    """
    return load_image_checked(path, size, channels, pre_size)[0]


def _decode(path: str | Path, channels: int, truncated_ok: bool) -> Image.Image:
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
    try:
        if not truncated_ok:
            with Image.open(path) as probe:
                probe.verify()  # structural check (chunk CRCs for PNG) before the full decode
        with Image.open(path) as opened:
            opened.load()  # full decode: a truncated stream raises here, not later
            return _to_channels(opened, channels, path)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def load_image_checked(
    path: str | Path,
    size: int,
    channels: int,
    pre_size: int | None = None,
    *,
    load_truncated: bool = False,
) -> tuple[torch.Tensor, bool]:
    """Like :func:`load_image`; also returns whether the file was truncated.

    Follows ``Resize(pre_size)`` (shorter side, bilinear) then ``CenterCrop(size)``.

    Args:
        path: Image file.
        size: Output side length.
        channels: 1 (luminance, ITU-R 601) or 3 (RGB; grayscale is replicated).
        pre_size: Shorter-side length before the crop; defaults to ``size``.
        load_truncated: Decode a truncated file as far as it goes, as OpenOOD's and DiffGuard's
            loaders do (``ImageFile.LOAD_TRUNCATED_IMAGES = True``); otherwise it is an error.

    Raises:
        ImageLoadError: The file is missing, corrupt (undecodable even when truncation is
            allowed), truncated while ``load_truncated`` is off, or of an unsupported mode.
        ValueError: ``channels`` is not 1 or 3, or a size is < 1.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size < 1 or (pre_size is not None and pre_size < size):
        raise ValueError(f"need size >= 1 and pre_size >= size, got {size}, {pre_size}")
    truncated = False
    try:
        try:
            img = _decode(path, channels, truncated_ok=False)
        except (OSError, SyntaxError) as err:
            if not load_truncated or isinstance(err, FileNotFoundError):
                raise
            img = _decode(path, channels, truncated_ok=True)
            truncated = True
            log.warning("%s: truncated or damaged, decoded as far as it goes (%s)", path, err)
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"{path}: cannot decode image ({err})") from err
    img = TF.resize(img, pre_size or size, interpolation=InterpolationMode.BILINEAR)
    img = TF.center_crop(img, [size, size])
    return TF.to_tensor(img), truncated


class ImageListDataset(Dataset[tuple[torch.Tensor, int, int]]):
    """Images of an image list: items are ``(image, label, index)``.

    ``index`` is the position in ``records``, so per-image outputs can be joined back to
    :attr:`ImageRecord.image_id`.
    """

    def __init__(
        self,
        root: str | Path,
        records: Sequence[ImageRecord],
        size: int,
        channels: int,
        pre_size: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.records = list(records)
        self.size = size
        self.channels = channels
        self.pre_size = pre_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        record = self.records[index]
        image = load_image(self.root / record.path, self.size, self.channels, self.pre_size)
        return image, record.label, index


def load_images_tensor(
    root: str | Path,
    records: Sequence[ImageRecord],
    size: int,
    channels: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load every record into memory: ``(images N x C x size x size in [0,1], labels N)``.

    Convenient for the small embedded benchmark, where the whole set fits in memory.
    """
    if not records:
        raise ValueError(f"no records to load from {root}")
    images = torch.stack([load_image(Path(root) / r.path, size, channels) for r in records])
    labels = torch.tensor([r.label for r in records], dtype=torch.long)
    return images, labels


def image_root(benchmark_json: str | Path) -> Path:
    """Folder the image-list paths are relative to (recorded in ``benchmark.json``)."""
    summary = json.loads(Path(benchmark_json).read_text())
    return (Path(benchmark_json).parent / summary.get("image_root", "images")).resolve()


def load_records_images(
    records: Sequence[ImageRecord],
    root: Path,
    size: int,
    channels: int,
    pre_size: int | None = None,
    *,
    load_truncated: bool = False,
    truncated: list[str] | None = None,
) -> torch.Tensor:
    """Images of ``records`` as N x C x H x W in [0, 1] (errors name the failing file).

    ``Resize(pre_size)`` (shorter side) then ``CenterCrop(size)``; ``pre_size`` None means
    ``size`` (e.g. ImageNet: 256 then a 224 crop for GDM, a 256 crop for the LDM).
    ``load_truncated`` decodes truncated files as far as they go (OpenOOD); their list paths
    are appended to ``truncated``.
    """
    images = []
    for r in records:
        image, cut = load_image_checked(
            root / r.path, size, channels, pre_size, load_truncated=load_truncated
        )
        images.append(image)
        if cut and truncated is not None:
            truncated.append(r.path)
    return torch.stack(images)
