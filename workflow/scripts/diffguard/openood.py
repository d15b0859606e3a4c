"""An OpenOOD benchmark on disk: image lists from ``benchmark_imglist`` plus mounted image folders.

The workflow reads every dataset through one image root (``benchmark.json``'s ``image_root``) and
one list per dataset. OpenOOD keeps its lists in ``benchmark_imglist/<id>/<split>.txt`` with paths
relative to a data folder (``images_largescale/`` or ``images_classic/``; the released DiffGuard
reads ImageNet itself from ``data/``). :func:`assemble_openood` links each downloaded (extracted)
or user-provided folder under the image root at the place the lists expect (a *mount*) and
rewrites each list with its folder as a path prefix, so that every path resolves under one root.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from diffguard.data import ImageRecord, read_imglist, write_imglist
from diffguard.io import write_text

log = logging.getLogger("diffguard")

MISSING_SHOWN = 5
"""Missing image paths quoted in the error of an incomplete folder."""


class BenchmarkLayoutError(FileNotFoundError):
    """A list or an image is not where the benchmark layout says; the message says what to fix."""


def _relink(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target.resolve(), target_is_directory=True)
    os.replace(tmp, link)


class _Resolver:
    """Find list paths under the image root, serving flat names from class-sorted folders.

    OpenOOD's lists address ImageNet val flat (``imagenet_1k/val/ILSVRC2012_val_00024235.JPEG``);
    many users hold val sorted into ``val/<wnid>/`` folders (valprep.sh, for torchvision's
    ImageFolder). File names are unique across the class folders, so a name missing from a
    folder is looked up one level down (one directory listing per folder, not a stat per image).
    """

    def __init__(self, images: Path) -> None:
        self.images = images
        self._files: dict[str, frozenset[str]] = {}
        self._sorted: dict[str, dict[str, str]] = {}
        self.relocated = 0

    def _listing(self, parent: str) -> frozenset[str]:
        if parent not in self._files:
            try:
                with os.scandir(self.images / parent) as entries:
                    self._files[parent] = frozenset(e.name for e in entries)
            except (FileNotFoundError, NotADirectoryError):
                self._files[parent] = frozenset()
        return self._files[parent]

    def _class_index(self, parent: str) -> dict[str, str]:
        if parent not in self._sorted:
            index: dict[str, str] = {}
            for sub in sorted(self._listing(parent)):
                folder = self.images / parent / sub
                if folder.is_dir():
                    for name in os.listdir(folder):
                        index.setdefault(name, sub)
            self._sorted[parent] = index
            if index:
                log.info("%s: class-sorted folder (%d files in sub-folders)", parent, len(index))
        return self._sorted[parent]

    def resolve(self, rel: str) -> str | None:
        """The path under the image root that serves ``rel``, or None when there is none."""
        posix = PurePosixPath(rel)
        parent = str(posix.parent)
        if posix.name in self._listing(parent):
            return rel
        sub = self._class_index(parent).get(posix.name)
        if sub is None:
            return None
        self.relocated += 1
        return str(posix.parent / sub / posix.name)


def assemble_openood(
    *,
    imglist_root: str | Path,
    lists: Mapping[str, Mapping[str, Any]],
    mounts: Mapping[str, str | Path],
    out_dir: str | Path,
) -> dict[str, Any]:
    """Write ``out_dir/imglists/<name>.txt``, ``out_dir/images/<mount>`` and ``benchmark.json``.

    Args:
        imglist_root: Extracted ``benchmark_imglist`` archive.
        lists: List name -> ``{file: path inside imglist_root, prefix: folder under the root}``.
        mounts: Folder under the image root -> existing folder (extracted or user-provided).
        out_dir: The run's benchmark folder.

    A list path missing from its folder but present in one class sub-folder of it is rewritten to
    that sub-folder (ImageNet val held class-sorted while OpenOOD lists it flat).

    Raises:
        BenchmarkLayoutError: A list file, a mount or any listed image is missing (names the
            list, the count of missing images and the first few paths).
    """
    root, out = Path(imglist_root), Path(out_dir)
    images = out / "images"
    for mount, source in mounts.items():
        posix = PurePosixPath(mount)
        if posix.is_absolute() or ".." in posix.parts:
            raise BenchmarkLayoutError(f"benchmark.openood.mounts: {mount!r} must be relative")
        if not Path(source).is_dir():
            raise BenchmarkLayoutError(
                f"benchmark.openood.mounts.{mount}: {source} is not a folder (download or manual "
                "step missing?)"
            )
        _relink(images / mount, Path(source))
    counts: dict[str, int] = {}
    resolver = _Resolver(images)
    for name, spec in lists.items():
        src = root / spec["file"]
        if not src.is_file():
            found = sorted(str(p.relative_to(root)) for p in root.rglob("*.txt"))[:20]
            raise BenchmarkLayoutError(
                f"benchmark.openood.lists.{name}.file: {src} not found in the extracted image "
                f"lists; files there include {found}"
            )
        prefix = str(spec.get("prefix", "") or "").strip("/")
        records: list[ImageRecord] = []
        missing: list[str] = []
        relocated = resolver.relocated
        for r in read_imglist(src):
            listed = f"{prefix}/{r.path}" if prefix else r.path
            found = resolver.resolve(listed)
            if found is None:
                missing.append(listed)
            else:
                records.append(ImageRecord(found, r.label, r.image_id, r.line))
        if missing:
            raise BenchmarkLayoutError(
                f"{name} ({src}): {len(missing)} of {len(records) + len(missing)} listed images "
                f"are missing under {images} (first: {missing[:MISSING_SHOWN]}); check "
                f"benchmark.openood.lists.{name}.prefix and the mounts {sorted(mounts)}"
            )
        if resolver.relocated > relocated:
            log.info(
                "%s: %d flat list paths served from class sub-folders",
                name,
                resolver.relocated - relocated,
            )
        write_imglist(out / "imglists" / f"{name}.txt", records)
        counts[name] = len(records)
        log.info("%s: %d images (prefix %r)", name, len(records), prefix)
    summary = {
        "kind": "openood",
        "image_root": "images",
        "lists": counts,
        "mounts": {m: str(Path(s).resolve()) for m, s in mounts.items()},
    }
    write_text(out / "benchmark.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def link_into_hub(files: Mapping[str, str | Path], hub_dir: str | Path) -> list[Path]:
    """Copy verified weight files to ``<hub_dir>/checkpoints/<name>`` (atomically).

    A copy, not a hard link: Snakemake touches an output that is not newer than its input, and
    through a shared inode that would touch the download too and make it look updated.
    """
    out: list[Path] = []
    for name, source in files.items():
        dest = Path(hub_dir) / "checkpoints" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{name}.tmp")
        tmp.unlink(missing_ok=True)
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
        out.append(dest)
    return out
