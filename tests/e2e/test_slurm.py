"""End-to-end run of the Snakemake workflow on a real single-node SLURM cluster.

A session fixture installs (``tests/slurm/setup_slurm.sh``: Debian ``slurm-wlm`` + ``munge``)
and starts (``tests/slurm/start_slurm.sh``) SLURM on this host; it needs root and is skipped
with the reason otherwise. The test copies the repository into a temporary folder and runs the
real workflow on ``config/tiny.yaml`` through ``--profile slurm`` (every job goes through
sbatch), with ``gpus_per_job=1`` so that the GPU rules ask SLURM for a GPU as on a real
cluster; the node's stand-in GPUs take those jobs and they run on the CPU. It builds one score
table from scratch (``SLURM_TARGETS``: 9 jobs, every rule up to the scores, each GPU rule among
them) rather than the whole metrics.csv DAG (32 jobs). It then checks that every job of that DAG
ran under SLURM (plugin log, per-job SLURM logs, ``squeue``, the job completion file, the GPU
requests read back with ``scontrol``) and that every output is byte-identical to the session's
local tiny run (``tiny_run``, shared with the resume and determinism tests), which built them
among its own.

``DIFFGUARD_SLURM_WORKFLOW=toy`` runs a small toy workflow written by the test instead (the
cluster and the profile alone, a local run of it as reference).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

LOGGER = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SLURM_SCRIPTS = REPO_ROOT / "tests" / "slurm"

# --- What the test runs ---------------------------------------------------------------------
# Config file (relative to the repository root) for the real workflow: must be a fast CPU
# config whose GPU count is 0, so that the GPU rules run on the CPU-only test node.
SLURM_CONFIGFILE = "config/tiny.yaml"
# Targets (files or rule names) to build; empty means the workflow's default target (rule all).
# One score table: benchmark, image lists, classifier, diffusion model, predictions, 2 shards and
# the gather (9 jobs, every GPU rule included); metrics.csv would submit 32 jobs of the same rules
# plus baseline_scores and evaluate, ~3 x the time. Each must be an output of ``tiny_run``.
SLURM_TARGETS: list[str] = ["data/processed/tiny/scores/gdm_main/far_photos/seed-0.csv"]
# Glob patterns (fnmatch, relative to the repository root) of outputs that must exist after
# both runs but whose bytes are not compared, e.g. executed notebooks, which store wall-clock
# timestamps. Keep this empty unless a format cannot be made deterministic.
SLURM_COMPARE_SKIP: tuple[str, ...] = ()
# Where the real Snakefile may live; the first one found is used. None found -> toy workflow.
SNAKEFILE_CANDIDATES = ("workflow/Snakefile", "Snakefile")
# Wall-clock limits for the two runs (the whole test must stay well under 10 min in CI).
SLURM_RUN_TIMEOUT_S = 540
LOCAL_RUN_TIMEOUT_S = 300
# The plugin waits this long before its first status check (40 s by default; the test cluster
# keeps finished jobs visible to squeue for MinJobAge=600 s, so short delays are safe here).
STATUS_CHECK_DELAY_S = 2

# GPUs each GPU rule asks for in the real-workflow run (gpus_per_job in the config). The test
# cluster announces stand-in GPUs (tests/slurm/start_slurm.sh), so these jobs are scheduled
# with `--gpus=1` and run on the CPU; config/tiny.yaml keeps `device: cpu`.
SLURM_GPUS_PER_JOB = 1
# Rules that must have asked SLURM for a GPU (those declaring resources gpu=gpus_per_job).
GPU_RULES = ("train_diffusion", "cache_predictions", "reconstruct")

# State folder of the test cluster (pid files, logs, job completion file).
STATE_DIR = Path(os.environ.get("DIFFGUARD_SLURM_DIR", "/tmp/diffguard-slurm"))
SLURM_DAEMONS = ("sbatch", "squeue", "sinfo", "scontrol", "slurmctld", "slurmd", "munged")

TOY_SNAKEFILE = r"""
# Toy workflow used by tests/e2e/test_slurm.py while the real Snakefile does not exist.
from pathlib import Path


configfile: "config/slurm_toy.yaml"

SAMPLES = [f"s{i}" for i in range(config["n_samples"])]


rule all:
    input:
        "results/toy/summary.txt",


rule make_sample:
    output:
        "results/toy/sample_{s}.txt",
    resources:
        gpu=config["gpus"],
    shell:
        "python -c \"import hashlib; s='{wildcards.s}'; "
        "print('\\n'.join(hashlib.sha256((s + str(i)).encode()).hexdigest() "
        "for i in range(200)))\" > {output}"


rule summarize:
    input:
        expand("results/toy/sample_{s}.txt", s=SAMPLES),
    output:
        "results/toy/summary.txt",
        "results/toy/digests.npz",
    resources:
        gpu=config["gpus"],
    run:
        import hashlib

        import numpy as np

        digests = {}
        with open(output[0], "w") as out:
            for path in input:
                digest = hashlib.sha256(open(path, "rb").read()).digest()
                digests[Path(path).stem] = np.frombuffer(digest, dtype=np.uint8)
                out.write(f"{path} {digest.hex()}\n")
        np.savez(output[1], **digests)
"""
TOY_CONFIG = "n_samples: 3\ngpus: 0\n"
TOY_SLURM_JOBS = 4  # 3 x make_sample + summarize; `all` runs on the submit host
TOY_OUTPUTS = sorted(["digests.npz", "summary.txt", *(f"sample_s{i}.txt" for i in range(3))])

SUBMIT_RE = re.compile(
    r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.?\s*$", re.MULTILINE
)
RUN_ID_RE = re.compile(r"SLURM run ID: (\S+)")


@dataclass(frozen=True)
class Cluster:
    """What the session fixture learned about the cluster it brought up."""

    started_here: bool
    setup_s: float
    start_s: float


@dataclass(frozen=True)
class WorkflowSpec:
    """Snakefile, config file and targets of one run, relative to the run folder."""

    snakefile: str
    configfile: str
    targets: tuple[str, ...]
    toy: bool


def _run(cmd: list[str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def _sinfo_answers() -> bool:
    """True when a SLURM controller answers (`scontrol ping` fails fast when none runs)."""
    if shutil.which("sinfo") is None or shutil.which("scontrol") is None:
        return False
    try:
        return all(
            _run(cmd, timeout=15).returncode == 0 for cmd in (["scontrol", "ping"], ["sinfo", "-h"])
        )
    except subprocess.TimeoutExpired:
        return False


def _impossible_reason() -> str | None:
    """Return why SLURM cannot be brought up here, or None when it can."""
    if _sinfo_answers():
        return None
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    missing = [c for c in SLURM_DAEMONS if shutil.which(c, path=path) is None]
    if os.geteuid() != 0:
        what = f"missing {', '.join(missing)}" if missing else "installed but not running"
        return f"SLURM is {what} and starting it needs root (euid={os.geteuid()})"
    if missing and shutil.which("apt-get") is None:
        return f"SLURM is not installed (missing {', '.join(missing)}) and apt-get is absent"
    return None


def _script(name: str, timeout: float) -> float:
    """Run tests/slurm/<name>; fail the test with its output on error; return seconds taken."""
    t0 = time.monotonic()
    try:
        proc = _run(["bash", str(SLURM_SCRIPTS / name)], timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{name} did not finish within {timeout}s: {exc.stdout!r} {exc.stderr!r}")
    if proc.returncode != 0:
        pytest.fail(f"{name} failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    LOGGER.info("%s: %s", name, proc.stdout.strip())
    return time.monotonic() - t0


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Cluster]:
    """Install and start the single-node cluster; stop it afterwards if it was started here."""
    reason = _impossible_reason()
    if reason is not None:
        pytest.skip(reason)
    already_up = _sinfo_answers()
    setup_s = 0.0 if already_up else _script("setup_slurm.sh", timeout=480)
    start_s = _script("start_slurm.sh", timeout=120)
    LOGGER.info("slurm setup %.1fs, start %.1fs (already up: %s)", setup_s, start_s, already_up)
    yield Cluster(started_here=not already_up, setup_s=setup_s, start_s=start_s)
    if not already_up:
        _script("stop_slurm.sh", timeout=60)


def _workflow_spec(work: Path) -> WorkflowSpec:
    """Pick the real workflow when its Snakefile exists, else write the toy workflow.

    DIFFGUARD_SLURM_WORKFLOW=toy forces the toy workflow (to check the cluster and the
    profile alone); =real makes a missing Snakefile an error; unset or =auto picks.
    """
    # Default: the real workflow on the tiny config (training is seeded, dropout included, and
    # no output records wall-clock time, so a SLURM run and a local run agree byte for byte).
    choice = os.environ.get("DIFFGUARD_SLURM_WORKFLOW", "real")
    assert choice in {"auto", "toy", "real"}, (
        f"DIFFGUARD_SLURM_WORKFLOW={choice!r}: expected 'auto', 'toy' or 'real'"
    )
    for candidate in SNAKEFILE_CANDIDATES if choice != "toy" else ():
        if (work / candidate).is_file():
            assert (work / SLURM_CONFIGFILE).is_file(), (
                f"{candidate} exists but SLURM_CONFIGFILE={SLURM_CONFIGFILE!r} does not; "
                "point SLURM_CONFIGFILE in tests/e2e/test_slurm.py at a fast CPU config"
            )
            return WorkflowSpec(candidate, SLURM_CONFIGFILE, tuple(SLURM_TARGETS), toy=False)
    assert choice != "real", f"no Snakefile at {SNAKEFILE_CANDIDATES} in {work}"
    (work / "slurm_toy").mkdir()
    (work / "slurm_toy" / "Snakefile").write_text(TOY_SNAKEFILE)
    (work / "config").mkdir(exist_ok=True)
    (work / "config" / "slurm_toy.yaml").write_text(TOY_CONFIG)
    return WorkflowSpec("slurm_toy/Snakefile", "config/slurm_toy.yaml", (), toy=True)


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Jobs inherit this environment (sbatch --export=ALL): put the venv's python first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(work / "workflow" / "scripts")
    env["DIFFGUARD_SHARED"] = str(work.parent / "shared")
    # Reproducible-build timestamp: matplotlib (PDF/SVG/PS) and pdfTeX embed this instead of the
    # wall-clock time. Both runs get the same value, so the comparison stays meaningful.
    env["SOURCE_DATE_EPOCH"] = "1700000000"
    return env


def _snakemake(work: Path, spec: WorkflowSpec, extra: list[str], timeout: float) -> str:
    """Run snakemake in work; fail with its log on error; return stdout+stderr."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        spec.snakefile,
        "--configfile",
        spec.configfile,
        "--nocolor",
        *extra,
        *spec.targets,
    ]
    t0 = time.monotonic()
    try:
        proc = _run(cmd, timeout=timeout, cwd=work, env=_env(work))
    except subprocess.TimeoutExpired as exc:
        log = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()
        # The killed snakemake cannot cancel its SLURM jobs: cancel them by run name here, so
        # they do not hold the cluster after the test.
        run_id = RUN_ID_RE.search(log)
        if run_id is not None and shutil.which("scancel"):
            _run(["scancel", "--name", run_id.group(1)], timeout=30)
        pytest.fail(f"{' '.join(cmd)} timed out after {timeout}s:\n{log[-6000:]}")
    output = proc.stdout + proc.stderr
    LOGGER.info("%s took %.1fs", " ".join(extra), time.monotonic() - t0)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed in {work}:\n{output[-6000:]}"
    return output


def _produced_files(work: Path, before: set[Path]) -> set[Path]:
    """Files under work that the run created, without snakemake's own bookkeeping."""
    return {
        p.relative_to(work)
        for p in work.rglob("*")
        if p.is_file() and ".snakemake" not in p.relative_to(work).parts
    } - before


def _declared_outputs(work: Path, spec: WorkflowSpec) -> list[tuple[str, str, list[str]]]:
    """Output file, rule and log files of the run's jobs, as listed by `snakemake --summary`."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", spec.snakefile, "--configfile"]
    cmd += [spec.configfile, "--summary", "--cores", "1", "--nocolor", *spec.targets]
    proc = _run(cmd, timeout=300, cwd=work, env=_env(work))
    assert proc.returncode == 0, f"snakemake --summary failed:\n{proc.stderr[-4000:]}"
    rows = [line.split("\t") for line in proc.stdout.splitlines() if "\t" in line]
    assert rows and rows[0][:4] == ["output_file", "date", "rule", "log-file(s)"], (
        f"unexpected --summary output:\n{proc.stdout}"
    )
    return [(row[0], row[2], [f for f in row[3].split(",") if f != "-"]) for row in rows[1:]]


def _check_gpu_requests(job_ids: set[str]) -> set[str]:
    """GPU rules' jobs were submitted with a GPU request (``TresPerJob=gres:gpu:N``), the
    others without: read back from SLURM itself (``scontrol show job``).

    Returns:
        The rules of the jobs.
    """
    gpu_jobs, cpu_jobs, rules = [], [], set()
    for job_id in sorted(job_ids):
        proc = _run(["scontrol", "show", "job", "-o", job_id], timeout=30)
        assert proc.returncode == 0, f"scontrol show job {job_id}: {proc.stderr}"
        fields = dict(re.findall(r"(\w+)=(\S*)", proc.stdout))
        rule = re.sub(r"^rule_|_wildcards_.*$", "", fields.get("Comment", ""))
        rules.add(rule)
        asked = fields.get("TresPerJob", "") + fields.get("TresPerNode", "")
        if rule in GPU_RULES:
            assert f"gpu:{SLURM_GPUS_PER_JOB}" in asked, f"job {job_id} ({rule}): {asked!r}"
            gpu_jobs.append(job_id)
        else:
            assert "gpu" not in asked, f"job {job_id} ({rule}) asked for a GPU: {asked!r}"
            cpu_jobs.append(job_id)
    assert gpu_jobs and cpu_jobs, (gpu_jobs, cpu_jobs)
    LOGGER.info("%d jobs asked SLURM for a GPU, %d did not", len(gpu_jobs), len(cpu_jobs))
    return rules


@pytest.mark.slurm
@pytest.mark.slow
def test_workflow_on_slurm_matches_local_run(
    slurm_cluster: Cluster,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    e2e: SimpleNamespace,
) -> None:
    """Jobs go through sbatch and produce byte-identical outputs to a local run.

    The real workflow's local reference is the session's uninterrupted tiny run (``tiny_run``
    in conftest.py, shared with the resume and determinism tests); the toy one runs here.
    """
    slurm_work = e2e.copy_repo(tmp_path / "slurm")
    spec = _workflow_spec(slurm_work)
    assert (slurm_work / "slurm" / "config.yaml").is_file(), "profile slurm/config.yaml missing"
    slurm_before = _produced_files(slurm_work, set())
    if not spec.toy:
        gres = _run(["sinfo", "-h", "-o", "%G"], timeout=30).stdout
        assert "gpu" in gres, (
            f"the running cluster announces no GPUs (sinfo %G: {gres.strip()!r}); restart it "
            "with tests/slurm/stop_slurm.sh and tests/slurm/start_slurm.sh"
        )
    if spec.toy:
        local_work = e2e.copy_repo(tmp_path / "local")
        assert _workflow_spec(local_work) == spec
        local_before = _produced_files(local_work, set())
        _snakemake(local_work, spec, ["--cores", "2"], LOCAL_RUN_TIMEOUT_S)
    else:
        local_work = request.getfixturevalue("tiny_run").work
        assert spec.configfile == "config/tiny.yaml" and spec.targets, spec
        assert all((local_work / t).is_file() for t in spec.targets), (
            f"the shared tiny_run reference (config/tiny.yaml) did not build {spec.targets}"
        )
        local_before = {local_work / p for p in e2e.repo_files(REPO_ROOT)}
        local_before = {p.relative_to(local_work) for p in local_before}
    t0 = time.monotonic()
    slurm_out = _snakemake(
        slurm_work,
        spec,
        [
            # GPU rules (resources gpu=gpus_per_job) ask for one GPU each, as on a real
            # cluster; the test node's stand-in GPUs take them and the CPU config runs there.
            *([] if spec.toy else ["--config", f"gpus_per_job={SLURM_GPUS_PER_JOB}"]),
            "--cores",
            "all",
            "--profile",
            "slurm",
            "--slurm-init-seconds-before-status-checks",
            str(STATUS_CHECK_DELAY_S),
            "--slurm-keep-successful-logs",
        ],
        SLURM_RUN_TIMEOUT_S,
    )
    slurm_s = time.monotonic() - t0

    # (1) Jobs went through sbatch: the plugin says so, and SLURM itself knows them.
    assert "Using profile slurm" in slurm_out
    run_id = RUN_ID_RE.search(slurm_out)
    assert run_id is not None, f"no 'SLURM run ID' in the snakemake log:\n{slurm_out[-4000:]}"
    submitted = SUBMIT_RE.findall(slurm_out)
    assert submitted, f"no job was submitted with sbatch:\n{slurm_out[-4000:]}"
    if spec.toy:
        assert len(submitted) == TOY_SLURM_JOBS, submitted
    LOGGER.info("%d SLURM jobs in %.1fs (%s)", len(submitted), slurm_s, run_id.group(1))
    job_ids = {job_id for job_id, _ in submitted}
    assert len(job_ids) == len(submitted), f"duplicate SLURM job ids: {submitted}"
    logs_dir = slurm_work / ".snakemake" / "slurm_logs"
    for job_id, log in submitted:
        log_path = Path(log)
        assert log_path.is_relative_to(logs_dir), f"job {job_id} logged outside {logs_dir}: {log}"
        assert log_path.is_file() and log_path.stat().st_size > 0, f"empty/missing {log_path}"
        assert log_path.name == f"{job_id}.log"
    assert {p.stem for p in logs_dir.rglob("*.log")} >= job_ids

    queue = _run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T", "--name", run_id.group(1)],
        timeout=30,
    )
    assert queue.returncode == 0, queue.stderr
    states = dict(line.split("|", 1) for line in queue.stdout.split())
    assert {j: states.get(j) for j in job_ids} == dict.fromkeys(job_ids, "COMPLETED"), states
    # Every job of the targets' DAG went through sbatch: its rules, read back from SLURM, are
    # the DAG's (so each GPU rule of GPU_RULES had its request checked).
    outputs = _declared_outputs(slurm_work, spec)
    assert outputs, "the workflow declared no output files"
    if not spec.toy:
        rules = _check_gpu_requests(job_ids)
        assert rules == {rule for _, rule, _ in outputs} and rules >= set(GPU_RULES), rules
    jobcomp = STATE_DIR / "log" / "jobcomp.txt"
    if slurm_cluster.started_here or jobcomp.is_file():
        records = {
            m.group(1): m.group(2)
            for m in re.finditer(
                rf"JobId=(\d+) .*?Name={re.escape(run_id.group(1))} JobState=(\S+)",
                jobcomp.read_text(),
            )
        }
        assert {j: records.get(j) for j in job_ids} == dict.fromkeys(job_ids, "COMPLETED")

    # (2) Same files, same bytes. The toy runs build the same targets; the real one builds
    # part of what tiny_run built: every file it made (outputs, logs, weights), tiny_run made
    # too, and every declared output and log of its jobs is there.
    local_files = _produced_files(local_work, local_before)
    slurm_files = _produced_files(slurm_work, slurm_before)
    only_slurm = slurm_files - local_files
    if spec.toy:
        assert local_files == slurm_files, (
            f"only local: {sorted(local_files - slurm_files)}; only slurm: {sorted(only_slurm)}"
        )
        assert sorted(Path(o).name for o, _, _ in outputs) == TOY_OUTPUTS, outputs
    assert not only_slurm, f"only slurm: {sorted(only_slurm)}"
    expected = {Path(f) for output, _, logs in outputs for f in (output, *logs)}
    missing = [p for p in expected - slurm_files if not (slurm_work / p).is_dir()]
    assert not missing, f"missing in the SLURM run: {sorted(missing)}"
    compared = 0
    for rel, _, _ in outputs:
        assert (local_work / rel).exists() and (slurm_work / rel).exists(), rel
        if any(fnmatch.fnmatch(rel, pattern) for pattern in SLURM_COMPARE_SKIP):
            continue
        if (local_work / rel).is_dir():
            # directory() outputs: the file lists were compared above; compare every file.
            files = sorted(p.relative_to(local_work) for p in (local_work / rel).rglob("*"))
            pairs = [(local_work / f, slurm_work / f) for f in files if (local_work / f).is_file()]
        else:
            pairs = [(local_work / rel, slurm_work / rel)]
        for local_path, slurm_path in pairs:
            assert local_path.read_bytes() == slurm_path.read_bytes(), (
                f"{local_path.relative_to(local_work)} differs between the SLURM and the local run"
            )
            compared += 1
    assert compared > 0, f"no output was compared (SLURM_COMPARE_SKIP={SLURM_COMPARE_SKIP})"
    LOGGER.info("%d output files byte-identical between SLURM and local runs", compared)


def test_profile_declares_required_settings() -> None:
    """The SLURM profile parses and sets the executor, limits and default resources."""
    profile = yaml.safe_load((REPO_ROOT / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-status-command"] in {"squeue", "sacct"}
    for key in ("jobs", "latency-wait", "retries"):
        assert isinstance(profile[key], int) and profile[key] > 0, key
    assert profile["rerun-incomplete"] is True
    assert profile["printshellcmds"] is True
    resources = profile["default-resources"]
    assert resources["runtime"] > 0 and resources["mem_mb"] > 0
    # A GPU model next to gpu=0 would request `--gpus=<model>:0`: it must stay per-rule only.
    assert "gpu_model" not in resources and "gpu" not in resources


def test_plugin_maps_gpu_count_to_sbatch_flags() -> None:
    """gpu=0 (the CPU test configs) asks SLURM for no GPU; gpu=N asks for N GPUs."""
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class _Resources(dict):
        __getattr__ = dict.__getitem__

    class _Job:
        def __init__(self, **resources: object) -> None:
            self.resources = _Resources(resources)

    assert set_gres_string(_Job(gpu=0)) == ""
    assert set_gres_string(_Job(gpu=2)).split() == ["--gpus=2"]
    assert set_gres_string(_Job(gpu=1, gpu_model="a100")).split() == ["--gpus=a100:1"]
    assert set_gres_string(_Job(gres="gpu:a100:1")).split() == ["--gres=gpu:a100:1"]
