"""OpenOOD benchmark assembly: lists with prefixes, mounted folders, errors that say what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffguard.data import read_imglist
from diffguard.openood import BenchmarkLayoutError, assemble_openood, link_into_hub


def _layout(tmp_path: Path) -> dict[str, Path]:
    lists = tmp_path / "extracted" / "benchmark_imglist" / "imagenet"
    lists.mkdir(parents=True)
    (lists / "test_imagenet.txt").write_text("imagenet_1k/val/n01/a.JPEG 3\n")
    (lists / "test_species.txt").write_text("species_sub/x.jpg -1\nspecies_sub/y.jpg -1\n")
    val = tmp_path / "user" / "val" / "n01"
    val.mkdir(parents=True)
    (val / "a.JPEG").write_bytes(b"jpeg")
    species = tmp_path / "extracted_species"
    species.mkdir()
    for name in ("x.jpg", "y.jpg"):
        (species / name).write_bytes(b"jpg")
    return {"imglists": tmp_path / "extracted", "val": val.parent, "species": species}


LISTS = {
    "test_imagenet": {"file": "benchmark_imglist/imagenet/test_imagenet.txt", "prefix": ""},
    "test_species": {
        "file": "benchmark_imglist/imagenet/test_species.txt",
        "prefix": "images_largescale",
    },
}


def test_assemble_resolves_every_path_under_one_root(tmp_path: Path) -> None:
    paths = _layout(tmp_path)
    out = tmp_path / "benchmark"
    mounts = {"imagenet_1k/val": paths["val"], "images_largescale/species_sub": paths["species"]}
    summary = assemble_openood(
        imglist_root=paths["imglists"], lists=LISTS, mounts=mounts, out_dir=out
    )
    assert summary["lists"] == {"test_imagenet": 1, "test_species": 2}
    assert json.loads((out / "benchmark.json").read_text())["image_root"] == "images"
    species = read_imglist(out / "imglists" / "test_species.txt")
    assert [r.path for r in species] == [
        "images_largescale/species_sub/x.jpg",
        "images_largescale/species_sub/y.jpg",
    ]
    assert all((out / "images" / r.path).is_file() for r in species)
    imagenet = read_imglist(out / "imglists" / "test_imagenet.txt")
    assert imagenet[0].label == 3 and (out / "images" / imagenet[0].path).is_file()
    # idempotent: a rerun replaces the links
    assemble_openood(imglist_root=paths["imglists"], lists=LISTS, mounts=mounts, out_dir=out)


def test_missing_images_name_the_prefix_and_mounts(tmp_path: Path) -> None:
    paths = _layout(tmp_path)
    mounts = {"imagenet_1k/val": paths["val"], "images_largescale/wrong": paths["species"]}
    with pytest.raises(BenchmarkLayoutError, match=r"lists\.test_species\.prefix.*mounts"):
        assemble_openood(
            imglist_root=paths["imglists"], lists=LISTS, mounts=mounts, out_dir=tmp_path / "b"
        )


def test_missing_list_and_mount_are_named(tmp_path: Path) -> None:
    paths = _layout(tmp_path)
    bad_lists = {"test_x": {"file": "benchmark_imglist/imagenet/test_x.txt"}}
    with pytest.raises(BenchmarkLayoutError, match=r"lists\.test_x\.file.*test_species\.txt"):
        assemble_openood(
            imglist_root=paths["imglists"], lists=bad_lists, mounts={}, out_dir=tmp_path / "b"
        )
    with pytest.raises(BenchmarkLayoutError, match=r"mounts\.imagenet_1k/val.*not a folder"):
        assemble_openood(
            imglist_root=paths["imglists"],
            lists=LISTS,
            mounts={"imagenet_1k/val": tmp_path / "nowhere"},
            out_dir=tmp_path / "b",
        )


def test_link_into_hub(tmp_path: Path) -> None:
    source = tmp_path / "vgg16-standin.pth"
    source.write_bytes(b"weights")
    (dest,) = link_into_hub({"vgg16-397923af.pth": source}, tmp_path / "hub")
    assert dest == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert dest.read_bytes() == b"weights"


FLAT_LIST = (
    "imagenet_1k/val/ILSVRC2012_val_00000001.JPEG 65\n"
    "imagenet_1k/val/ILSVRC2012_val_00000002.JPEG 970\n"
)
WNIDS = {"ILSVRC2012_val_00000001.JPEG": "n01751748", "ILSVRC2012_val_00000002.JPEG": "n09193705"}


def _val_tree(tmp_path: Path, *, sorted_val: bool) -> tuple[Path, Path]:
    lists = tmp_path / "extracted" / "benchmark_imglist" / "imagenet"
    lists.mkdir(parents=True)
    (lists / "test_imagenet.txt").write_text(FLAT_LIST)
    val = tmp_path / "user" / "val"
    for name, wnid in WNIDS.items():
        folder = val / wnid if sorted_val else val
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode())
    return tmp_path / "extracted", val


@pytest.mark.parametrize("sorted_val", [False, True], ids=["flat", "class-sorted"])
def test_flat_list_paths_resolve_in_both_val_layouts(tmp_path: Path, sorted_val: bool) -> None:
    imglists, val = _val_tree(tmp_path, sorted_val=sorted_val)
    out = tmp_path / "benchmark"
    lists = {"test_imagenet": {"file": "benchmark_imglist/imagenet/test_imagenet.txt"}}
    assemble_openood(
        imglist_root=imglists, lists=lists, mounts={"imagenet_1k/val": val}, out_dir=out
    )
    records = read_imglist(out / "imglists" / "test_imagenet.txt")
    assert [r.label for r in records] == [65, 970]
    for record, name in zip(records, WNIDS, strict=True):
        assert (out / "images" / record.path).read_bytes() == name.encode()
    if sorted_val:
        assert records[0].path == "imagenet_1k/val/n01751748/ILSVRC2012_val_00000001.JPEG"


def test_any_missing_image_names_list_count_and_paths(tmp_path: Path) -> None:
    imglists, val = _val_tree(tmp_path, sorted_val=True)
    (val / "n09193705" / "ILSVRC2012_val_00000002.JPEG").unlink()
    lists = {"test_imagenet": {"file": "benchmark_imglist/imagenet/test_imagenet.txt"}}
    with pytest.raises(
        BenchmarkLayoutError,
        match=r"test_imagenet .*1 of 2 listed images.*ILSVRC2012_val_00000002\.JPEG",
    ):
        assemble_openood(
            imglist_root=imglists,
            lists=lists,
            mounts={"imagenet_1k/val": val},
            out_dir=tmp_path / "b",
        )
