"""Shared helpers of the end-to-end tests: temporary repository copies and snakemake runs.

Workflow runs never happen in the checkout itself: every run gets a copy of the repository's
tracked and untracked-but-not-ignored files (so no outputs, ``.venv`` or ``.snakemake``), with
``../shared`` linked beside it. The session fixture :func:`tiny_run` builds
``data/processed/tiny/metrics.csv`` once on the tiny config; the fault-injection and
determinism tests compare against it or clone it (with its ``.snakemake`` metadata) to rerun
only part of the workflow.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from snakemake_cli import job_counts, local_env

LOGGER = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = "config/tiny.yaml"
RUN = "tiny"
METRICS = f"data/processed/{RUN}/metrics.csv"
# Folder or file names never copied into a run folder, wherever they appear.
EXCLUDED_PARTS = frozenset(
    {".git", ".venv", ".snakemake", ".pytest_cache", ".ruff_cache", "__pycache__", "results"}
)
RUN_TIMEOUT_S = 900


# Generated folders skipped when the checkout is not a git repository (no .gitignore to ask).
GENERATED = ("data/external", "data/interim", "data/processed", "data/logs", "data/benchmarks")


def repo_files(repo: Path) -> list[Path]:
    """Tracked and untracked-but-not-ignored files of ``repo``, relative to it.

    Without git (an unpacked archive), every file except caches and generated outputs.
    """
    if (repo / ".git").exists() and shutil.which("git") is not None:
        proc = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        names = [Path(n) for n in proc.stdout.split("\0") if n]
    else:
        names = [
            p.relative_to(repo)
            for p in repo.rglob("*")
            if (p.is_file() or p.is_symlink())
            and not any(p.relative_to(repo).is_relative_to(g) for g in GENERATED)
        ]
    return [
        n
        for n in names
        if not EXCLUDED_PARTS.intersection(n.parts)
        and ((repo / n).is_file() or (repo / n).is_symlink())
    ]


def copy_repo(dest: Path, src: Path = REPO_ROOT) -> Path:
    """Copy the repository's source files to ``dest/repo``; link ``dest/shared`` to shared data.

    Returns:
        The run folder ``dest/repo``.
    """
    work = dest / "repo"
    for rel in repo_files(src):
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target, follow_symlinks=False)
    # Configs may point at ../shared (the reference data beside the checkout).
    shared = Path(os.environ.get("DIFFGUARD_SHARED", src.parent / "shared"))
    if shared.is_dir() and not (dest / "shared").exists():
        (dest / "shared").symlink_to(shared.resolve(), target_is_directory=True)
    return work


def clone_run(run_dir: Path, dest: Path) -> Path:
    """Copy a finished run folder (outputs and ``.snakemake`` metadata, mtimes kept).

    Snakemake then sees the clone as up to date and reruns only what a change invalidates.
    """
    work = dest / "repo"
    shutil.copytree(run_dir, work, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    shared = run_dir.parent / "shared"
    if shared.is_symlink() and not (dest / "shared").exists():
        (dest / "shared").symlink_to(shared.resolve(), target_is_directory=True)
    return work


def run_env(work: Path) -> dict[str, str]:
    """Environment of a workflow run: the venv first on PATH, fixed build timestamp, and
    ``scontrol`` hidden (``tests/no_slurm``: ~9 s per snakemake start saved)."""
    env = local_env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["DIFFGUARD_SHARED"] = str(work.parent / "shared")
    env["SOURCE_DATE_EPOCH"] = "1700000000"
    return env


def snakemake_cmd(*args: str, configfiles: Sequence[str] = (TINY,)) -> list[str]:
    """The snakemake command line; targets go before ``--configfile`` (it takes several)."""
    return [SNAKEMAKE, "--nocolor", *args, "--configfile", *configfiles]


@dataclass(frozen=True)
class SnakemakeResult:
    """Outcome of one snakemake call."""

    returncode: int
    output: str
    seconds: float

    def job_counts(self) -> dict[str, int]:
        """Jobs per rule from snakemake's "Job stats" table (empty when nothing ran)."""
        if "Job stats:" not in self.output:
            return {}
        return job_counts(self.output)


def snakemake(
    work: Path,
    *args: str,
    configfiles: Sequence[str] = (TINY,),
    check: bool = True,
    timeout: float = RUN_TIMEOUT_S,
) -> SnakemakeResult:
    """Run snakemake in ``work``; with ``check``, fail the test with its log on error."""
    cmd = snakemake_cmd(*args, configfiles=configfiles)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd,
            cwd=work,
            env=run_env(work),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} timed out after {timeout}s in {work}:\n{exc.stderr!r}")
    result = SnakemakeResult(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start)
    LOGGER.info("%s: rc %d in %.1f s", " ".join(cmd[1:]), result.returncode, result.seconds)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(cmd)} failed (rc {result.returncode}) in {work}:\n{result.output[-6000:]}"
        )
    return result


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_files(work: Path, under: str = "data") -> list[Path]:
    """Final-named files under ``work/under`` (relative), without logs and hidden temp files."""
    root = work / under
    return sorted(
        p.relative_to(work)
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and "logs" not in p.relative_to(work).parts
    )


def _check_readable(path: Path) -> None:
    """Read ``path`` fully with the loader of its type; raise if it is truncated or corrupt."""
    suffix = path.suffix
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            assert data.files, "no arrays"
            for key in data.files:
                data[key]  # noqa: B018  (decompresses and checks the member's CRC)
    elif suffix == ".csv":
        frame = pd.read_csv(path)
        assert len(frame.columns) > 0, "no columns"
    elif suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".txt":
        from diffguard.data import read_imglist

        read_imglist(path)
    elif suffix == ".safetensors":
        from safetensors.numpy import load_file

        assert load_file(str(path)), "no tensors"
    elif suffix in {".png", ".jpg", ".jpeg"}:
        with Image.open(path) as image:
            image.load()
    else:
        assert path.stat().st_size > 0, "empty file"


def unreadable_outputs(work: Path) -> tuple[int, dict[Path, str]]:
    """Check every final-named output under ``work/data`` (logs and hidden temp files aside).

    Returns:
        How many files were checked, and the error of each file that failed to load.
    """
    problems: dict[Path, str] = {}
    files = output_files(work)
    for rel in files:
        try:
            _check_readable(work / rel)
        except Exception as err:  # any failure to load is the finding
            problems[rel] = f"{type(err).__name__}: {err}"
    return len(files), problems


def incomplete_outputs(work: Path) -> set[str]:
    """Outputs snakemake marked as being written when it stopped (``.snakemake/incomplete``)."""
    folder = work / ".snakemake" / "incomplete"
    names = set()
    for marker in folder.rglob("*") if folder.is_dir() else ():
        if not marker.is_file() or marker.name == "migration_underway":
            continue
        # Long ids are split into folders whose names start with "@" (persistence/file.py).
        encoded = "".join(part.removeprefix("@") for part in marker.relative_to(folder).parts)
        try:
            names.add(base64.urlsafe_b64decode(encoded).decode())
        except ValueError:
            LOGGER.warning("cannot decode incomplete marker %s", marker)
    return names


@dataclass(frozen=True)
class FinishedRun:
    """A completed tiny run: its folder and how long it took."""

    work: Path
    seconds: float
    jobs: dict[str, int]

    def files(self, pattern: str) -> list[Path]:
        """Relative paths of files under the run folder that match a glob pattern."""
        return sorted(p.relative_to(self.work) for p in self.work.glob(pattern))


def score_tables(work: Path) -> list[Path]:
    """Per-image score CSVs of a run, relative to it."""
    return sorted(p.relative_to(work) for p in work.glob(f"data/processed/{RUN}/scores/**/*.csv"))


def recon_shards(work: Path) -> list[Path]:
    """Final-named reconstruction shards of a run, relative to it."""
    return sorted(
        p.relative_to(work)
        for p in work.glob(f"data/interim/{RUN}/recon/*/*/seed-*/shard-*.npz")
        if not p.name.startswith(".")
    )


def compare_bytes(a: Path, b: Path, names: Iterable[Path]) -> int:
    """Assert that every file in ``names`` is byte-identical under ``a`` and ``b``.

    Returns:
        The number of bytes compared.
    """
    compared = 0
    for rel in names:
        left, right = (a / rel).read_bytes(), (b / rel).read_bytes()
        assert left == right, f"{rel} differs between {a} and {b}"
        compared += len(left)
    return compared


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """One uninterrupted run of the tiny config up to ``metrics.csv`` (shared by the session)."""
    work = copy_repo(tmp_path_factory.mktemp("tiny-run"))
    result = snakemake(work, "--cores", "2", METRICS)
    LOGGER.info("uninterrupted tiny run: %.1f s, jobs %s", result.seconds, result.job_counts())
    assert (work / METRICS).is_file()
    return FinishedRun(work, result.seconds, result.job_counts())


# -------------------------------------------------------------- comparing two runs' outputs
def comparable_content(work: Path, rel: Path) -> bytes:
    """Bytes of an output. No output records wall-clock time (training logs, ``model.done``
    and ``diffguard.json`` were made deterministic), so nothing is masked."""
    return (work / rel).read_bytes()


def differing_outputs(reference: Path, work: Path, names: Iterable[Path]) -> list[Path]:
    """Outputs of ``work`` whose bytes differ from those of ``reference``."""
    return [
        rel for rel in names if comparable_content(reference, rel) != comparable_content(work, rel)
    ]


# ------------------------------------------------------------------------ kill and resume
KILL_POLL_S = 0.05
KILL_WAIT_LIMIT_S = 600
# Kill 1 comes this long after a training job started (its outputs were marked incomplete):
# the tiny config trains each model for about 10 s, imports included.
TRAINING_KILL_AFTER_S = 5.0


@dataclass(frozen=True)
class FileState:
    """An output as found right after a kill."""

    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Kill:
    """What one SIGKILL of the whole run left behind.

    Attributes:
        phase: ``training`` or ``reconstruction``: what the run was doing.
        after_s: Seconds from the (re)start of the run to the kill.
        complete: Final-named outputs snakemake had recorded as finished -> their state.
        marked_incomplete: Outputs snakemake had marked as being written.
        checked: How many final-named outputs were loaded after the kill.
        unreadable: Those that failed to load (path -> error).
        differing: Final-named outputs whose content differs from the uninterrupted run's
            (bytes): partial, or not deterministic.
        hidden_temp_files: Leftover hidden temp files (``.name.XXXX.ext``) under ``data/``.
        shards: Final-named reconstruction shards.
        unlock: The ``--unlock`` call after the kill.
    """

    phase: str
    after_s: float
    complete: dict[Path, FileState]
    marked_incomplete: set[str]
    checked: int
    unreadable: dict[Path, str]
    differing: list[Path]
    hidden_temp_files: list[Path]
    shards: list[Path]
    unlock: SnakemakeResult


@dataclass(frozen=True)
class ResumedRun:
    """A tiny run killed twice with SIGKILL (in training, then in reconstruction) and resumed.

    Attributes:
        work: The run folder.
        expected_shards: Every shard of the workflow (from the uninterrupted run).
        kills: The two kills, in order.
        restarts: The snakemake call after each kill: the second run (killed too; its log
            holds the jobs it planned) and the call that finishes the run.
        rerun_args: Extra arguments each of those calls needed.
    """

    work: Path
    expected_shards: list[Path]
    kills: list[Kill]
    restarts: list[SnakemakeResult]
    rerun_args: list[tuple[str, ...]]

    @property
    def rerun(self) -> SnakemakeResult:
        """The call that finished the run."""
        return self.restarts[-1]


def _processes_in(work: Path) -> list[int]:
    """Pids of live processes whose working directory is inside ``work`` (Linux /proc)."""
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc_dir / "cwd"))
            state = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cwd.is_relative_to(work):
            pids.append(int(proc_dir.name))
    return pids


def _kill_group(proc: subprocess.Popen[bytes], work: Path) -> None:
    """SIGKILL snakemake's whole process group (it and every job), then reap it."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while (left := _processes_in(work)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes of the killed run survived SIGKILL of its group: {left}"


def _training_running(work: Path, since: dict[str, float]) -> bool:
    """True once a training job's outputs have been marked incomplete for a while."""
    now = time.monotonic()
    marked = {m for m in incomplete_outputs(work) if f"/{RUN}/models/" in m}
    for name in marked:
        since.setdefault(name, now)
    return any(now - since[name] >= TRAINING_KILL_AFTER_S for name in marked)


def _shard_finished(work: Path, expected: int) -> bool:
    """True once a shard is final *and* recorded as finished, while others are still missing.

    A shard without an incomplete marker had its job fully booked by snakemake: it must
    survive the kill untouched.
    """
    present = recon_shards(work)
    return len(present) < expected and bool(set(map(str, present)) - incomplete_outputs(work))


def _run_until(
    work: Path, log_path: Path, args: Sequence[str], condition: Callable[[], bool]
) -> float:
    """Start snakemake in its own process group, SIGKILL the group once ``condition`` holds.

    Returns:
        Seconds from the start to the kill.
    """
    start = time.monotonic()
    with open(log_path, "wb") as log_handle:
        proc = subprocess.Popen(
            snakemake_cmd(*args),
            cwd=work,
            env=run_env(work),
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: the kill reaches every job
        )
        try:
            while not condition():
                if proc.poll() is not None or time.monotonic() - start > KILL_WAIT_LIMIT_S:
                    pytest.fail(
                        f"run ended (rc {proc.returncode}) or timed out before the kill:\n"
                        f"{log_path.read_text()[-4000:]}"
                    )
                time.sleep(KILL_POLL_S)
        finally:
            if proc.poll() is None:
                _kill_group(proc, work)
    return time.monotonic() - start


def _inspect_kill(phase: str, after_s: float, work: Path, reference: Path) -> Kill:
    """Check what the kill left, then unlock the run folder."""
    marked = incomplete_outputs(work)
    files = output_files(work)
    checked, unreadable = unreadable_outputs(work)
    # An unfinished training job may already have renamed its weights into its model folder
    # (they are not declared outputs; model.done is): they belong to that job, which reruns.
    unfinished_models = [Path(m).parent for m in marked if Path(m).name == "model.done"]
    kill = Kill(
        phase=phase,
        after_s=after_s,
        complete={
            rel: FileState((work / rel).stat().st_mtime_ns, sha256(work / rel))
            for rel in files
            if str(rel) not in marked
            and not any(Path(rel).is_relative_to(folder) for folder in unfinished_models)
        },
        marked_incomplete=marked,
        checked=checked,
        unreadable=unreadable,
        differing=differing_outputs(reference, work, [f for f in files if f not in unreadable]),
        hidden_temp_files=sorted(
            p.relative_to(work) for p in (work / "data").rglob(".*") if p.is_file()
        ),
        shards=recon_shards(work),
        unlock=snakemake(work, "--unlock", METRICS),
    )
    LOGGER.info(
        "kill in %s after %.1f s: %d outputs (%d final, %d unreadable, %d differ from the "
        "uninterrupted run), %d marked incomplete, %d shards, %d hidden temp files",
        phase,
        after_s,
        checked,
        len(kill.complete),
        len(unreadable),
        len(kill.differing),
        len(marked),
        len(kill.shards),
        len(kill.hidden_temp_files),
    )
    return kill


def _resume_args(work: Path, kill: Kill) -> tuple[str, ...]:
    """``--rerun-incomplete`` when a final-named output is still marked incomplete.

    That happens when a job was killed after its atomic rename but before snakemake booked
    it, or when a job writes an output in place; snakemake then stops without the flag.
    """
    racy = [p for p in output_files(work) if str(p) in kill.marked_incomplete]
    if racy:
        LOGGER.info("final-named outputs marked incomplete after the kill: %s", racy)
    return ("--rerun-incomplete",) if racy else ()


@pytest.fixture(scope="session")
def resumed_run(tiny_run: FinishedRun, tmp_path_factory: pytest.TempPathFactory) -> ResumedRun:
    """Start the tiny workflow, SIGKILL it in training, restart it, SIGKILL it again once some
    but not all shards exist, then resume it to the end."""
    expected = recon_shards(tiny_run.work)
    assert len(expected) >= 2, f"the tiny run has {len(expected)} shards; need >= 2 to interrupt"
    dest = tmp_path_factory.mktemp("resume")
    work = copy_repo(dest)
    kills: list[Kill] = []
    rerun_args: list[tuple[str, ...]] = []

    since: dict[str, float] = {}
    after = _run_until(
        work, dest / "run1.log", ["--cores", "2", METRICS], lambda: _training_running(work, since)
    )
    kills.append(_inspect_kill("training", after, work, tiny_run.work))

    rerun_args.append(_resume_args(work, kills[-1]))
    after = _run_until(
        work,
        dest / "run2.log",
        ["--cores", "2", *rerun_args[-1], METRICS],
        lambda: _shard_finished(work, len(expected)),
    )
    second_log = (dest / "run2.log").read_text()
    kills.append(_inspect_kill("reconstruction", after, work, tiny_run.work))

    rerun_args.append(_resume_args(work, kills[-1]))
    final = snakemake(work, "--cores", "2", *rerun_args[-1], METRICS)
    restarts = [SnakemakeResult(-9, second_log, kills[-1].after_s), final]
    LOGGER.info("resumed in %.1f s %s: jobs %s", final.seconds, rerun_args, final.job_counts())
    return ResumedRun(work, expected, kills, restarts, rerun_args)


@pytest.fixture(scope="session")
def e2e() -> SimpleNamespace:
    """This module's helpers for the test files (``from conftest import`` breaks when another
    folder's conftest.py is loaded first)."""
    return SimpleNamespace(
        RUN=RUN,
        TINY=TINY,
        METRICS=METRICS,
        REPO_ROOT=REPO_ROOT,
        repo_files=repo_files,
        run_env=run_env,
        copy_repo=copy_repo,
        clone_run=clone_run,
        snakemake=snakemake,
        sha256=sha256,
        output_files=output_files,
        score_tables=score_tables,
        recon_shards=recon_shards,
        compare_bytes=compare_bytes,
        unreadable_outputs=unreadable_outputs,
        comparable_content=comparable_content,
        differing_outputs=differing_outputs,
        incomplete_outputs=incomplete_outputs,
    )
