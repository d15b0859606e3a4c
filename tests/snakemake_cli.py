"""Running the workflow's snakemake from tests and reading its "Job stats" table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake(repo: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``snakemake *args`` in ``repo`` (output captured, never raises on failure)."""
    return subprocess.run(
        [SNAKEMAKE, *args], cwd=repo, capture_output=True, text=True, timeout=timeout, check=False
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
