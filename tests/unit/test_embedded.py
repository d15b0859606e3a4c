"""Tests of diffguard.embedded: the offline benchmark built from package-bundled images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffguard.data import load_image, read_imglist, validate_labels
from diffguard.embedded import (
    SET_NAMES,
    build_embedded_benchmark,
    far_photo_patches,
    upsample_digits,
)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("emb_a")
    return out, build_embedded_benchmark(out, seed=7, n_near=40, n_far=30)


def test_build_is_byte_identical_for_the_same_seed(
    built: tuple[Path, dict], tmp_path: Path
) -> None:
    first, summary = built
    second = tmp_path / "emb_b"
    summary_b = build_embedded_benchmark(second, seed=7, n_near=40, n_far=30)
    assert summary == summary_b
    a, b = _tree_bytes(first), _tree_bytes(second)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)
    other = build_embedded_benchmark(tmp_path / "emb_c", seed=8, n_near=40, n_far=30)
    assert other["sha256"] != summary["sha256"]


def test_sizes_labels_and_layout(built: tuple[Path, dict]) -> None:
    out, summary = built
    counts = summary["counts"]
    assert counts["near_digits"] == 40 and counts["far_photos"] == 30
    from sklearn.datasets import load_digits

    # every sklearn digit of classes 0-5, split 2/3 : 1/3 within each class
    assert counts["train"] + counts["test_id"] == int((load_digits().target < 6).sum())
    assert abs(counts["train"] - 2 * counts["test_id"]) <= 6
    seen: set[str] = set()
    for name in SET_NAMES:
        records = read_imglist(out / "imglists" / f"{name}.txt")
        assert len(records) == counts[name]
        assert all(r.path.startswith(f"{name}/") for r in records)
        if name in ("train", "test_id"):
            validate_labels(records, 6, name)
            assert {r.label for r in records} == set(range(6))
        else:
            assert {r.label for r in records} == {-1}
        for r in records:
            image = load_image(out / "images" / r.path, 16, 1)
            assert image.shape == (1, 16, 16)
        ids = {r.image_id for r in records}
        if name in ("train", "test_id"):
            # the same digit never appears in both ID splits
            digits = {i.split("/")[1] for i in ids}
            assert not digits & seen
            seen |= digits
    assert (out / "LICENSES.md").read_text().count("CC BY") >= 2
    assert (out / "benchmark.json").is_file()


def test_near_ood_holds_only_held_out_digits(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    targets = load_digits().target
    summary = build_embedded_benchmark(tmp_path, seed=0, n_near=None, n_far=0, id_classes=(0, 1))
    assert summary["near_classes"] == list(range(2, 10))
    near = read_imglist(tmp_path / "imglists" / "near_digits.txt")
    assert len(near) == int(np.isin(targets, range(2, 10)).sum())
    indices = [int(r.image_id.rsplit("digit", 1)[1]) for r in near]
    assert set(targets[indices]) == set(range(2, 10))
    train = read_imglist(tmp_path / "imglists" / "train.txt")
    for r in train:
        assert targets[int(r.image_id.rsplit("digit", 1)[1])] == [0, 1][r.label]
    assert not (tmp_path / "imglists" / "far_photos.txt").exists()


def test_bad_configuration_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_near"):
        build_embedded_benchmark(tmp_path, seed=0, n_near=10_000, n_far=1)
    with pytest.raises(ValueError, match="id_classes"):
        build_embedded_benchmark(tmp_path, seed=0, n_near=1, n_far=1, id_classes=range(10))
    with pytest.raises(ValueError, match="id_classes"):
        build_embedded_benchmark(tmp_path, seed=0, n_near=1, n_far=1, id_classes=(1, 1))


def test_upsample_digits_range_and_shape() -> None:
    digits = np.zeros((2, 8, 8))
    digits[0] = 16
    digits[1, 3:5, 3:5] = 16
    up = upsample_digits(digits)
    assert up.shape == (2, 16, 16) and up.dtype == np.uint8
    assert np.all(up[0] == 255)
    assert up[1].max() == 255 and up[1, 0, 0] == 0
    assert up[1, 7, 7] == 255  # the centre of the bright 2x2 block


def test_far_patches_are_seeded_and_varied() -> None:
    a = far_photo_patches(12, seed=3)
    b = far_photo_patches(12, seed=3)
    c = far_photo_patches(12, seed=4)
    assert all(sa == sb and np.array_equal(pa, pb) for (sa, pa), (sb, pb) in zip(a, b, strict=True))
    assert any(not np.array_equal(pa, pc) for (_, pa), (_, pc) in zip(a, c, strict=True))
    assert len({source for source, _ in a}) > 1
    assert all(p.shape == (16, 16) and p.dtype == np.uint8 for _, p in a)
