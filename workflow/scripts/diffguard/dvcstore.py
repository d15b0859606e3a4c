"""Store a run's expensive outputs with DVC and restore them so that Snakemake reruns nothing.

``dvc pull`` writes files with the time of the pull as their mtime, in no particular order, and a
fresh ``git clone`` gives every source file (rule scripts, package modules: inputs of the rules)
the time of the clone. Snakemake reruns a job whose input is newer than its output, so a plain
pull would rerun reconstruction. This module records the mtime of every stored file and folder
when the run is stored and, after a pull, sets them again in their original *order*, packed
into the last moments before now (one microsecond per distinct recorded time): Snakemake's view
of which output came after which input is the original one, and everything restored is newer
than the sources checked out before the pull. (Keeping the original gaps would not do: a run
lasting days would put its first outputs days before a fresh checkout of the code they depend
on.) On a file system with coarser timestamps equal times may result, and Snakemake reruns a
job only for a strictly newer input.

Usage (from the repository root; ``dvc`` on PATH)::

    python -m diffguard.dvcstore add --run imagenet     # record mtimes, dvc add, then: dvc push
    dvc pull && python -m diffguard.dvcstore restore --run imagenet
    snakemake -n --configfile config/imagenet.yaml      # plans no reconstruction job

Store a run only when it is up to date (``snakemake -n`` plans nothing): the shift keeps the
relative order, so an output that was already stale when stored would look fresh.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from diffguard.io import atomic_path

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


def stored_paths(run: str, root: str | Path = ".") -> list[str]:
    """Folders of a run that DVC stores: downloads and extracted archives, the built benchmark,
    image lists, models, cached predictions, reconstruction shards (``data/interim/<run>``),
    per-image scores and baseline scores. Only those that exist are returned."""
    candidates = [
        "data/external/downloads",
        "data/external/extracted",
        "data/external/torch_hub",
        f"data/external/{run}",
        f"data/interim/{run}",
        f"data/processed/{run}/scores",
        f"data/processed/{run}/baselines",
    ]
    return [p for p in candidates if (Path(root) / p).is_dir()]


def manifest_path(run: str) -> Path:
    """Where the mtime manifest of a run lives (inside a stored folder, so DVC carries it)."""
    return Path("data/interim") / run / ".dvc_mtimes.json.gz"


def record_mtimes(paths: Sequence[str | Path], manifest: str | Path) -> int:
    """Write ``{relative path: [mtime_ns, size or -1 for folders]}`` of every file and folder
    under ``paths`` (symbolic links are skipped: DVC does not store them).

    Returns:
        The number of entries recorded.
    """
    manifest = Path(manifest)
    entries: dict[str, list[int]] = {}
    for top in paths:
        for folder, dirs, files in os.walk(top, followlinks=False):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
            stat = os.stat(folder)
            entries[os.path.normpath(folder)] = [stat.st_mtime_ns, -1]
            for name in files:
                path = os.path.join(folder, name)
                if os.path.islink(path) or Path(path) == manifest:
                    continue
                stat = os.stat(path)
                entries[os.path.normpath(path)] = [stat.st_mtime_ns, stat.st_size]
    payload = {"version": MANIFEST_VERSION, "paths": [str(p) for p in paths], "entries": entries}
    with atomic_path(manifest, suffix=".gz") as tmp, gzip.open(tmp, "wt") as handle:
        json.dump(payload, handle)
    log.info("recorded %d mtimes of %s in %s", len(entries), list(paths), manifest)
    return len(entries)


STEP_NS = 1_000
"""Time between consecutive distinct restored mtimes (1 µs: 1 s per million stored times)."""


def restore_mtimes(
    manifest: str | Path, now_ns: int | None = None, step_ns: int = STEP_NS
) -> tuple[int, list[str]]:
    """Set the recorded mtimes again in their order, the newest at ``now_ns`` and each earlier
    distinct time ``step_ns`` before the next (ties stay ties).

    Files first, then folders deepest first (setting a file's time does not touch its
    folder's). A file whose size differs from the recorded one is left alone and reported.

    Returns:
        How many entries were set, and the entries missing or changed.

    Raises:
        FileNotFoundError: No manifest (pull it first).
        ValueError: A manifest of another version.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest}: no mtime manifest; run `dvc pull` first (the manifest is stored with "
            "the run's data by `python -m diffguard.dvcstore add`)"
        )
    with gzip.open(manifest, "rt") as handle:
        payload = json.load(handle)
    if payload.get("version") != MANIFEST_VERSION:
        raise ValueError(
            f"{manifest}: manifest version {payload.get('version')!r}, expected {MANIFEST_VERSION}"
        )
    entries: dict[str, list[int]] = payload["entries"]
    if not entries:
        return 0, []
    now = time.time_ns() if now_ns is None else now_ns
    distinct = sorted({mtime for mtime, _ in entries.values()})
    rank = {mtime: i for i, mtime in enumerate(distinct)}
    packed = {mtime: now - (len(distinct) - 1 - i) * step_ns for mtime, i in rank.items()}
    problems: list[str] = []
    restored = 0
    files = [(p, e) for p, e in entries.items() if e[1] >= 0]
    folders = sorted(
        ((p, e) for p, e in entries.items() if e[1] < 0),
        key=lambda item: item[0].count(os.sep),
        reverse=True,
    )
    for path, (mtime, size) in [*files, *folders]:
        if not os.path.lexists(path):
            problems.append(f"{path}: missing")
            continue
        if size >= 0 and os.path.getsize(path) != size:
            problems.append(f"{path}: size {os.path.getsize(path)} != recorded {size}")
            continue
        os.utime(path, ns=(packed[mtime], packed[mtime]), follow_symlinks=False)
        restored += 1
    if problems:
        log.warning("%d entries not restored, e.g. %s", len(problems), problems[:5])
    log.info(
        "restored %d mtimes from %s (%d distinct, over the last %.3f s)",
        restored,
        manifest,
        len(distinct),
        (len(distinct) - 1) * step_ns / 1e9,
    )
    return restored, problems


def _dvc(*args: str) -> None:
    cmd = ["dvc", *args]
    log.info("%s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``add`` (record mtimes and ``dvc add``) or ``restore`` (after a pull)."""
    parser = argparse.ArgumentParser(prog="python -m diffguard.dvcstore", description=__doc__)
    parser.add_argument("action", choices=["add", "restore"])
    parser.add_argument("--run", required=True, help="run name (config key `run`)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    manifest = manifest_path(args.run)
    if args.action == "add":
        paths = stored_paths(args.run)
        if f"data/interim/{args.run}" not in paths:
            print(f"data/interim/{args.run} does not exist: nothing to store", file=sys.stderr)
            return 1
        # The manifest lies in a stored folder, so `dvc add` stores it with the data.
        record_mtimes(paths, manifest)
        _dvc("add", *paths)
        print(f"stored {paths}; now `dvc push` (and commit the .dvc files with git)")
        return 0
    _, problems = restore_mtimes(manifest)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
