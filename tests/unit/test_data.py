"""Tests of diffguard.data: image lists, robust image loading, sharding and subsampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffguard.data import (
    ImageListDataset,
    ImageListError,
    ImageLoadError,
    ImageRecord,
    load_image,
    num_shards,
    read_imglist,
    select_shard,
    subsample,
    validate_labels,
    write_imglist,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_imglist_parses_paths_labels_and_ids(tmp_path: Path) -> None:
    lst = _write(
        tmp_path / "list.txt",
        "# comment\nimagenet/val/a.JPEG 3\n\nood/dir with space/b.png -1\n",
    )
    records = read_imglist(lst)
    assert [r.path for r in records] == ["imagenet/val/a.JPEG", "ood/dir with space/b.png"]
    assert [r.label for r in records] == [3, -1]
    assert [r.image_id for r in records] == ["imagenet/val/a", "ood/dir with space/b"]
    assert [r.line for r in records] == [2, 4]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("a.png 1\nb.png\n", 2, "missing field"),
        ("a.png 1\nb.png 2\nc.png x\n", 3, "not an integer"),
        ("a.png -2\n", 1, "invalid"),
        ("a.png 1\n/abs/b.png 1\n", 2, "relative"),
        ("a.png 1\n../b.png 1\n", 2, "relative"),
        ("a.png 1\nb.png 0\na.png 2\n", 3, "duplicate"),
        ("x/a.png 1\nx/a.jpg 1\n", 2, "duplicate"),
    ],
)
def test_read_imglist_errors_name_file_and_line(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    lst = _write(tmp_path / "bad.txt", text)
    with pytest.raises(ImageListError) as info:
        read_imglist(lst)
    message = str(info.value)
    assert f"{lst}:{line}:" in message
    assert fragment in message


def test_read_imglist_empty_is_an_error(tmp_path: Path) -> None:
    lst = _write(tmp_path / "empty.txt", "\n# only a comment\n")
    with pytest.raises(ImageListError, match="empty") as info:
        read_imglist(lst)
    assert str(lst) in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_imglist(tmp_path / "missing.txt")


def test_write_imglist_round_trip_and_atomic(tmp_path: Path) -> None:
    records = [ImageRecord("x/a.png", 0, "x/a"), ImageRecord("y/b.png", -1, "y/b")]
    out = tmp_path / "sub" / "list.txt"
    write_imglist(out, records)
    assert out.read_text() == "x/a.png 0\ny/b.png -1\n"
    assert read_imglist(out) == records
    assert sorted(p.name for p in out.parent.iterdir()) == ["list.txt"]  # no temp left


def test_validate_labels_names_file_and_line(tmp_path: Path) -> None:
    lst = _write(tmp_path / "id.txt", "a.png 0\nb.png 5\nc.png 6\n")
    records = read_imglist(lst)
    validate_labels(records[:2], 6, lst)
    with pytest.raises(ImageListError) as info:
        validate_labels(records, 6, lst)
    assert "line 3" in str(info.value) and str(lst) in str(info.value)
    ood = [ImageRecord("d.png", -1, "d")]
    with pytest.raises(ImageListError, match="record 0"):
        validate_labels(ood, 6, "mem")


@pytest.mark.parametrize("n", [0, 1, 7, 10, 23])
@pytest.mark.parametrize("shard_size", [1, 3, 5, 10, 50])
def test_shards_cover_every_record_exactly_once(n: int, shard_size: int) -> None:
    records = [ImageRecord(f"{i}.png", i % 3, str(i)) for i in range(n)]
    shards = [
        select_shard(records, k, shard_size) for k in range(num_shards(len(records), shard_size))
    ]
    assert [r for shard in shards for r in shard] == records
    assert all(1 <= len(s) <= shard_size for s in shards)
    with pytest.raises(IndexError):
        select_shard(records, len(shards), shard_size)


def test_num_shards_rejects_bad_sizes() -> None:
    assert num_shards(10, 3) == 4
    with pytest.raises(ValueError):
        num_shards(10, 0)


def test_subsample_is_seeded_sorted_and_checked() -> None:
    records = [ImageRecord(f"{i}.png", 0, str(i)) for i in range(100)]
    a = subsample(records, 10, seed=3)
    assert a == subsample(records, 10, seed=3)
    assert a != subsample(records, 10, seed=4)
    positions = [records.index(r) for r in a]
    assert positions == sorted(positions) and len(set(positions)) == 10
    assert subsample(records, None, seed=0) == records
    with pytest.raises(ValueError, match="101 of 100"):
        subsample(records, 101, seed=0)


def _save(path: Path, img: Image.Image, fmt: str = "PNG") -> Path:
    img.save(path, format=fmt)
    return path


def test_truncated_png_raises_image_load_error_naming_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = tmp_path / "full.png"
    _save(full, Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)))
    data = full.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as info:
        load_image(cut, 16, 3)
    assert str(cut) in str(info.value)
    junk = _write(tmp_path / "junk.png", "not an image")
    with pytest.raises(ImageLoadError, match="junk.png"):
        load_image(junk, 16, 3)
    with pytest.raises(ImageLoadError, match="absent.png"):
        load_image(tmp_path / "absent.png", 16, 3)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "CMYK", "P", "I;16", "1", "LA"])
def test_modes_load_to_requested_channels(tmp_path: Path, mode: str, channels: int) -> None:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (20, 30), dtype=np.uint16))
        assert img.mode.startswith("I;16")
    elif mode == "P":
        img = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        img = rgb.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"  # PNG cannot store CMYK
    path = _save(tmp_path / f"img.{fmt.lower()}", img, fmt)
    out = load_image(path, 16, channels)
    assert out.shape == (channels, 16, 16)
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out.std()) > 0.01  # real content, not a constant fill


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path: Path) -> None:
    # Pillow's convert("L") on I;16 clips at 255, so a mid-grey 16-bit image would turn white.
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    path = _save(tmp_path / "g16.png", Image.fromarray(arr))
    out = load_image(path, 8, 1)
    assert torch.allclose(out, torch.full_like(out, 128 / 255), atol=1 / 255)


def test_rgba_transparent_pixels_composite_on_white(tmp_path: Path) -> None:
    arr = np.zeros((8, 8, 4), dtype=np.uint8)  # black, fully transparent
    arr[:4, :, 3] = 255  # top half opaque black
    path = _save(tmp_path / "a.png", Image.fromarray(arr, "RGBA"))
    out = load_image(path, 8, 3)
    assert torch.all(out[:, :4] == 0.0)
    assert torch.all(out[:, 4:] == 1.0)


def test_resize_shorter_side_then_center_crop(tmp_path: Path) -> None:
    # 20 x 40 image: left half black, right half white; Resize(10) -> 10 x 20, crop 10 -> centre.
    arr = np.zeros((20, 40), dtype=np.uint8)
    arr[:, 20:] = 255
    arr[:, :5] = 255  # a white stripe at the far left that the centre crop must cut away
    path = _save(tmp_path / "wide.png", Image.fromarray(arr, "L"))
    out = load_image(path, 10, 1)
    assert out.shape == (1, 10, 10)
    assert float(out[0, :, 0].max()) < 0.05  # stripe cropped away
    assert float(out[0, :, -1].min()) > 0.95
    with pytest.raises(ValueError, match="channels"):
        load_image(path, 10, 2)


def test_dataset_returns_image_label_index(tmp_path: Path) -> None:
    for i in range(3):
        Image.fromarray(np.full((16, 16), 60 * i, dtype=np.uint8), "L").save(tmp_path / f"{i}.png")
    records = [ImageRecord(f"{i}.png", i - 1, str(i)) for i in range(3)]
    dataset = ImageListDataset(tmp_path, records, 16, 1)
    assert len(dataset) == 3
    image, label, index = dataset[2]
    assert image.shape == (1, 16, 16) and label == 1 and index == 2
    assert torch.allclose(image, torch.full_like(image, 120 / 255))
