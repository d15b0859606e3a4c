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

import numpy as np

from diffguard.data import ImageRecord, read_imglist, write_imglist
from diffguard.io import write_text

log = logging.getLogger("diffguard")

CHECK_PER_LIST = 200
"""Images per list whose existence is checked at assembly (seeded sample; the rest at load)."""


class BenchmarkLayoutError(FileNotFoundError):
    """A list or an image is not where the benchmark layout says; the message says what to fix."""


def _relink(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target.resolve(), target_is_directory=True)
    os.replace(tmp, link)


def assemble_openood(
    *,
    imglist_root: str | Path,
    lists: Mapping[str, Mapping[str, Any]],
    mounts: Mapping[str, str | Path],
    out_dir: str | Path,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``out_dir/imglists/<name>.txt``, ``out_dir/images/<mount>`` and ``benchmark.json``.

    Args:
        imglist_root: Extracted ``benchmark_imglist`` archive.
        lists: List name -> ``{file: path inside imglist_root, prefix: folder under the root}``.
        mounts: Folder under the image root -> existing folder (extracted or user-provided).
        out_dir: The run's benchmark folder.
        seed: Seed of the sample of images checked for existence.

    Raises:
        BenchmarkLayoutError: A list file, a mount or sampled images are missing (names them).
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
    rng = np.random.default_rng(seed)
    for name, spec in lists.items():
        src = root / spec["file"]
        if not src.is_file():
            found = sorted(str(p.relative_to(root)) for p in root.rglob("*.txt"))[:20]
            raise BenchmarkLayoutError(
                f"benchmark.openood.lists.{name}.file: {src} not found in the extracted image "
                f"lists; files there include {found}"
            )
        prefix = str(spec.get("prefix", "") or "").strip("/")
        records = [
            ImageRecord(f"{prefix}/{r.path}" if prefix else r.path, r.label, r.image_id, r.line)
            for r in read_imglist(src)
        ]
        picks = rng.choice(len(records), size=min(CHECK_PER_LIST, len(records)), replace=False)
        missing = [
            records[int(i)].path for i in picks if not (images / records[int(i)].path).exists()
        ]
        if missing:
            raise BenchmarkLayoutError(
                f"{src}: {len(missing)} of {len(picks)} sampled images are missing under "
                f"{images} (e.g. {missing[:3]}); check benchmark.openood.lists.{name}.prefix and "
                f"the mounts {sorted(mounts)}"
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
