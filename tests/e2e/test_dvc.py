"""DVC restore path: store a finished tiny run (``python -m diffguard.dvcstore add``, git commit
of the .dvc files, ``dvc push`` to a temporary local remote), then make it a fresh clone
(``git clean -X``: outputs, DVC cache and Snakemake's metadata go), give the sources a fresh
checkout's mtimes, ``dvc pull`` + ``restore``: Snakemake then plans no reconstruction (nor any
job upstream of it), and the restored shards are the stored bytes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

LOGGER = logging.getLogger(__name__)
DVC = str(Path(sys.executable).with_name("dvc"))
# Jobs that must never run after a restore: everything up to and including the shards.
EXPENSIVE = {
    "build_embedded_benchmark",
    "select_images",
    "train_classifier",
    "train_diffusion",
    "cache_predictions",
    "reconstruct",
    "gather_scores",
    "baseline_scores",
}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_dvc_pull_restores_without_reconstruction(
    tiny_run, e2e: SimpleNamespace, tmp_path: Path
) -> None:
    start = time.monotonic()
    work = e2e.clone_run(tiny_run.work, tmp_path / "stored")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(work / "workflow" / "scripts")
    shards = e2e.recon_shards(work)
    assert shards, "the tiny run has no shards"
    stored_bytes = {rel: (work / rel).read_bytes() for rel in shards}

    # a git repository with DVC initialised (.dvc/ is part of the repository)
    assert (work / ".dvc" / "config").is_file(), ".dvc/config missing from the repository"
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    _run([*git, "init", "-q"], work, env)
    remote = tmp_path / "remote"
    _run([DVC, "remote", "add", "-d", "tmp", str(remote)], work, env)
    _run([sys.executable, "-m", "diffguard.dvcstore", "add", "--run", e2e.RUN], work, env)
    # git sees the .dvc files (to commit), not the data
    status = _run(["git", "status", "--porcelain", "-uall"], work, env)
    assert f"data/interim/{e2e.RUN}.dvc" in status, status
    # (data/README.md is a tracked source file of the layout, not data)
    visible = [
        line[3:]
        for line in status.splitlines()
        if line[3:].startswith("data/") and line[3:] != "data/README.md"
    ]
    assert visible and all(p.endswith((".dvc", ".gitignore")) for p in visible), visible
    _run([*git, "add", "-A"], work, env)
    _run([*git, "commit", "-q", "-m", "store"], work, env)
    _run([DVC, "push"], work, env)
    assert any(remote.rglob("*")), "dvc push wrote nothing to the remote"

    # a fresh clone: every ignored file goes (outputs, DVC cache, Snakemake's metadata)
    _run([*git, "clean", "-fdqX"], work, env)
    assert not (work / "data" / "interim" / e2e.RUN).exists()
    assert not (work / ".snakemake").exists() and not (work / ".dvc" / "cache").exists()
    assert (work / "data" / "interim" / f"{e2e.RUN}.dvc").is_file()
    _run([DVC, "pull"], work, env)
    assert e2e.recon_shards(work) == shards
    # ... whose sources were checked out (or updated) after the pull: newer than every output
    now = time.time_ns()
    for path in (work / "workflow").rglob("*"):
        if path.is_file():
            os.utime(path, ns=(now, now))
    control = e2e.snakemake(work, "-n", e2e.METRICS)
    LOGGER.info("after pull, before restore: %s", control.job_counts())
    # without the restore the mtimes make Snakemake redo the expensive part
    assert control.job_counts().get("reconstruct", 0) > 0

    time.sleep(0.01)  # the restore packs the stored order just before "now"
    _run([sys.executable, "-m", "diffguard.dvcstore", "restore", "--run", e2e.RUN], work, env)
    plan = e2e.snakemake(work, "-n", e2e.METRICS)
    counts = {k: v for k, v in plan.job_counts().items() if k != "total"}
    LOGGER.info("after restore: %s", counts)
    assert not EXPENSIVE & set(counts), f"restore still plans {counts}:\n{plan.output[-3000:]}"
    # metrics.csv is not stored (cheap): only the evaluation reruns
    assert set(counts) <= {"evaluate"}, counts
    assert e2e.recon_shards(work) == shards
    assert all((work / rel).read_bytes() == data for rel, data in stored_bytes.items())
    LOGGER.info("DVC store/restore test: %.1f s", time.monotonic() - start)
