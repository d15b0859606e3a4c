"""Robust image loading, and the image-list API of :mod:`diffguard.imglist` (re-exported).

Image decoding follows the released DiffGuard / OpenOOD test pipeline: ``Resize(pre_size)`` on the
shorter side with PIL bilinear resampling, then ``CenterCrop(size)``, then ``ToTensor`` (values in
[0, 1]). Colour modes are converted explicitly (see :func:`load_image`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from diffguard.imglist import (  # noqa: F401  (the list API is re-exported for the stages)
    OOD_LABEL,
    ImageListError,
    ImageRecord,
    image_id_for,
    num_shards,
    read_imglist,
    select_shard,
    subsample,
    validate_labels,
    write_imglist,
)

log = logging.getLogger(__name__)


class ImageLoadError(OSError):
    """An image file cannot be decoded; the message names the file."""


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
