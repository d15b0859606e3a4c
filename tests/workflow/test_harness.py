"""The test harness itself: local snakemake runs skip the SLURM plugin's scontrol probe, and
the shared dry runs run each command once."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from snakemake_cli import NO_SLURM_BIN, local_env


def test_local_runs_find_the_failing_scontrol_first() -> None:
    env = local_env({"PATH": "/usr/bin:/bin"})
    found = shutil.which("scontrol", path=env["PATH"])
    assert found is not None and Path(found) == NO_SLURM_BIN / "scontrol"
    start = time.monotonic()
    proc = subprocess.run([found], capture_output=True, text=True, timeout=10, check=False)
    assert proc.returncode != 0 and time.monotonic() - start < 5
    assert "hidden" in proc.stderr


def test_dry_runs_run_each_command_once(dry_runs) -> None:
    args = ("--version",)
    first = dry_runs.get(*args)
    assert first.returncode == 0 and first.stdout.strip()
    assert dry_runs.get(*args) is first


def test_a_queued_dry_run_is_taken_back_by_the_test(repo_root: Path, dry_runs) -> None:
    DryRuns = type(dry_runs)  # noqa: N806  (``from conftest import`` may find another conftest)
    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(release.wait, 60)  # the background worker is busy
        runs = DryRuns(repo_root, pool)
        runs.start("--version")
        queued = runs.runs[("--version",)]
        try:
            result = runs.get("--version")
            assert queued.cancelled() and result.returncode == 0 and result.stdout.strip()
            assert runs.get("--version") is result
        finally:
            release.set()
