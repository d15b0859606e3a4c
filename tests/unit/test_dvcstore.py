"""DVC store helpers: mtimes recorded at store time come back in the same order after a
restore, packed just before now (newer than freshly checked-out sources); changed files are
reported."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from diffguard.dvcstore import manifest_path, record_mtimes, restore_mtimes, stored_paths


def _tree(root: Path) -> dict[str, Path]:
    files = {
        "list": root / "data/interim/r/lists/id.txt",
        "model": root / "data/interim/r/models/m/weights.bin",
        "shard": root / "data/interim/r/recon/e/id/seed-0/shard-000.npz",
        "scores": root / "data/processed/r/scores/e/id/seed-0.csv",
    }
    for i, path in enumerate(files.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x" * (i + 1))
        # DAG order: list < model < shard < scores, one hour apart, long ago
        t = 1_600_000_000_000_000_000 + i * 3_600_000_000_000
        os.utime(path, ns=(t, t))
    return files


def test_stored_paths_only_existing(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert stored_paths("r", tmp_path) == ["data/interim/r", "data/processed/r/scores"]
    assert manifest_path("r") == Path("data/interim/r/.dvc_mtimes.json.gz")


def test_restore_keeps_order_and_gaps_shifted_to_now(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    files = _tree(tmp_path)
    manifest = manifest_path("r")
    n = record_mtimes(stored_paths("r"), manifest)
    assert n >= len(files)
    # what a pull does: every file gets a fresh mtime, in the wrong order
    for i, path in enumerate(reversed(list(files.values()))):
        t = 1_700_000_000_000_000_000 + i
        os.utime(path, ns=(t, t))
    source = tmp_path / "workflow/scripts/diffguard/plotting.py"  # a fresh checkout's source
    source.parent.mkdir(parents=True)
    source.write_text("")
    now = 1_800_000_000_000_000_000
    os.utime(source, ns=(now - 10**9, now - 10**9))  # checked out a second before
    restored, problems = restore_mtimes(manifest, now_ns=now)
    assert problems == [] and restored == n
    after = {k: p.stat().st_mtime_ns for k, p in files.items()}
    # the original order, packed 1 µs apart just before now; the newest entry (here a
    # folder, written last) gets `now`
    assert sorted(after, key=after.get) == ["list", "model", "shard", "scores"]
    stored = [Path(top) for top in stored_paths("r")]
    entries = [*stored, *(p for top in stored for p in top.rglob("*") if p != manifest)]
    assert len(entries) == n
    times = sorted(p.stat().st_mtime_ns for p in entries)
    assert times[-1] == now and times[0] >= now - (n - 1) * 1_000
    # restored outputs are newer than a source checked out before the restore, although
    # they were written hours apart long ago
    assert min(after.values()) > source.stat().st_mtime_ns
    # folders too (a directory output is judged by its own time)
    folder = tmp_path / "data/interim/r/recon"
    assert folder.stat().st_mtime_ns <= now


def test_changed_or_missing_files_are_reported(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    files = _tree(tmp_path)
    manifest = manifest_path("r")
    record_mtimes(stored_paths("r"), manifest)
    files["shard"].write_text("a different length")
    files["list"].unlink()
    old = files["shard"].stat().st_mtime_ns
    _, problems = restore_mtimes(manifest, now_ns=2_000_000_000_000_000_000)
    assert any("shard-000.npz: size" in p for p in problems)
    assert any("id.txt: missing" in p for p in problems)
    assert files["shard"].stat().st_mtime_ns == old  # a changed file keeps its own time
    with pytest.raises(FileNotFoundError, match="dvc pull"):
        restore_mtimes(tmp_path / "nope.json.gz")


def test_data_folder_is_described_and_its_outputs_ignored(repo_root: Path) -> None:
    """data/README.md is tracked and names every data/ sub-folder the rules write; outputs under
    them stay ignored, the .dvc files DVC writes there do not."""
    readme = (repo_root / "data/README.md").read_text()
    rules = "".join(p.read_text() for p in sorted((repo_root / "workflow/rules").glob("*.smk")))
    written = set(re.findall(r"data/([a-z_]+)/", rules))
    assert written and {"external", "interim", "processed", "logs"} <= written
    for folder in written:
        assert f"`{folder}/" in readme, folder

    def ignored(path: str) -> bool:
        check = subprocess.run(["git", "check-ignore", "-q", path], cwd=repo_root, check=False)
        return check.returncode == 0

    assert not ignored("data/README.md")
    assert ignored("data/processed/some_run/metrics.csv")
    assert ignored("data/interim/some_run/recon/e/id/seed-0/shard-000.npz")
    assert not ignored("data/interim/some_run.dvc")
