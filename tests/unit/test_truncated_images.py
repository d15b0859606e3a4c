"""Truncated files decode as far as they go when allowed (OpenOOD's loader); garbage still stops."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffguard.data import ImageLoadError, load_image, load_image_checked


def _jpeg(tmp_path: Path) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_truncated_jpeg_loads_only_when_allowed(tmp_path: Path) -> None:
    data = _jpeg(tmp_path)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])  # bytes cut off a real encoded JPEG
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(cut, 32, 3)
    image, truncated = load_image_checked(cut, 32, 3, load_truncated=True)
    assert truncated and image.shape == (3, 32, 32)
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(data)
    assert load_image_checked(whole, 32, 3, load_truncated=True)[1] is False


def test_garbage_file_stops_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.jpg"
    bad.write_bytes(b"not an image at all" * 10)
    with pytest.raises(ImageLoadError, match="garbage.jpg"):
        load_image_checked(bad, 32, 3, load_truncated=True)


def test_switch_records_truncated_paths_and_can_refuse(tmp_path: Path) -> None:
    from diffguard.data import ImageRecord
    from diffguard.runtime import load_experiment_images

    data = _jpeg(tmp_path)
    (tmp_path / "ok.jpg").write_bytes(data)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    records = [ImageRecord("ok.jpg", 0, "ok", 1), ImageRecord("cut.jpg", 1, "cut", 2)]
    benchmark = {"image_size": 32, "channels": 3}  # no key: the released default (decode)
    truncated: list[str] = []
    images = load_experiment_images(records, tmp_path, {}, benchmark, None, truncated)
    assert images.shape == (2, 3, 32, 32) and truncated == ["cut.jpg"]
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_experiment_images(records, tmp_path, {}, {**benchmark, "load_truncated_images": False})
