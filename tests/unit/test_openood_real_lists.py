"""The real OpenOOD v1.5 ImageNet-1K lists parse and assemble (flat and class-sorted val)."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import pytest
import yaml

from diffguard.data import read_imglist
from diffguard.openood import assemble_openood

REPO = Path(__file__).resolve().parents[2]
PREFIX = {"test_textures": "images_classic"}  # OpenOOD v1.5 DATA_INFO: Textures is classic


@pytest.fixture(scope="module")
def real_lists(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 9 gzipped v1.5 lists extracted as ``benchmark_imglist/imagenet/<name>.txt``."""
    src = reference_dir / "upstream" / "openood_v15_imagenet_imglist"
    root = tmp_path_factory.mktemp("imglists")
    dest = root / "benchmark_imglist" / "imagenet"
    dest.mkdir(parents=True)
    files = sorted(src.glob("*.txt.gz"))
    assert len(files) == 9, f"expected the 9 v1.5 ImageNet lists in {src}, found {files}"
    for gz in files:
        (dest / gz.name.removesuffix(".gz")).write_bytes(gzip.decompress(gz.read_bytes()))
    return root


def test_real_lists_parse_fast(real_lists: Path) -> None:
    total = 0
    start = time.perf_counter()
    for path in sorted((real_lists / "benchmark_imglist" / "imagenet").glob("*.txt")):
        records = read_imglist(path)
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        assert len(records) == len(lines), path.name
        labels = {r.label for r in records}
        if "imagenet" in path.name and "imagenet_o" not in path.name:
            assert all(r.path.startswith("imagenet_1k/val/ILSVRC2012_val_") for r in records)
            assert min(labels) >= 0 and max(labels) <= 999
        else:
            assert labels == {-1}, path.name
        total += len(records)
    elapsed = time.perf_counter() - start
    assert total > 100_000  # 139,671 lines in the 9 files (upstream README table)
    assert elapsed < 30, f"parsing {total} lines took {elapsed:.1f} s"


@pytest.mark.parametrize("sorted_val", [False, True], ids=["flat-val", "class-sorted-val"])
def test_real_lists_assemble(real_lists: Path, tmp_path: Path, sorted_val: bool) -> None:
    """Every line of all 9 lists resolves after assembly with the v1.5 config's prefixes/mounts."""
    config = yaml.safe_load((REPO / "config" / "imagenet_v15.yaml").read_text())
    mounts_cfg = config["benchmark"]["openood"]["mounts"]
    names = sorted(p.stem for p in (real_lists / "benchmark_imglist" / "imagenet").glob("*.txt"))
    lists = {
        n: {
            "file": f"benchmark_imglist/imagenet/{n}.txt",
            "prefix": PREFIX.get(n, "images_largescale"),
        }
        for n in names
    }
    for name, spec in config["benchmark"]["openood"]["lists"].items():
        if name in lists:
            assert spec["prefix"] == lists[name]["prefix"], name
    # the user's folders: one per mount, val flat or sorted by a (made-up) class folder
    user = tmp_path / "user"
    mounts = {m: user / m.replace("/", "_") for m in mounts_cfg}
    mounts["images_largescale/imagenet_o"] = user / "imagenet_o"
    mounts["images_largescale/openimage_o"] = user / "openimage_o"
    for folder in mounts.values():
        folder.mkdir(parents=True, exist_ok=True)
    by_mount = sorted(mounts, key=len, reverse=True)
    for spec in lists.values():
        for record in read_imglist(real_lists / spec["file"]):
            rel = f"{spec['prefix']}/{record.path}"
            mount = next(m for m in by_mount if rel.startswith(m + "/"))
            inner = Path(rel[len(mount) + 1 :])
            if sorted_val and mount.endswith("imagenet_1k/val"):
                inner = Path(f"n{record.label:08d}") / inner
            target = mounts[mount] / inner
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    out = tmp_path / "benchmark"
    summary = assemble_openood(imglist_root=real_lists, lists=lists, mounts=mounts, out_dir=out)
    for name, spec in lists.items():
        assembled = read_imglist(out / "imglists" / f"{name}.txt")
        original = read_imglist(real_lists / spec["file"])
        assert summary["lists"][name] == len(original)
        assert [r.label for r in assembled] == [r.label for r in original]
        assert all((out / "images" / r.path).is_file() for r in assembled)
