"""Running the workflow's snakemake from tests and reading its "Job stats" table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# Its scontrol fails at once: see the script. Put first on PATH of local (non-SLURM) runs only.
NO_SLURM_BIN = Path(__file__).resolve().parent / "no_slurm"


def local_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with ``NO_SLURM_BIN`` first on ``PATH``.

    Saves ~9 s per snakemake start where SLURM is installed but not running.
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(NO_SLURM_BIN), env.get("PATH", "")])
    return env


def snakemake(repo: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``snakemake *args`` in ``repo`` (output captured, never raises on failure)."""
    return subprocess.run(
        [SNAKEMAKE, *args],
        cwd=repo,
        env=local_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def job_counts(output: str) -> dict[str, int]:
    """Parse snakemake's "Job stats" table."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    counts = {}
    for line in table.splitlines():
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match:
            counts[match.group(1)] = int(match.group(2))
    return counts
