"""Parsing the workflow (``snakemake -n``) imports no heavy library.

Every snakemake start parses the workflow (a SLURM job parses it twice, CI starts snakemake
dozens of times), so what the Snakefile imports must stay light: torch alone costs ~2 s of CPU,
matplotlib + seaborn + sklearn another ~1.5 s, and jsonschema's optional rfc3987_syntax ~2.5 s.
The rules import the torch-free modules (``diffguard.config``, ``diffguard.settings``,
``diffguard.report_config``, ``diffguard.schema``); the job scripts import the rest.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from snakemake_cli import local_env

CONFIGS = ("config/config.yaml", "config/imagenet.yaml")
# -X importtime logs failed imports too: jsonschema tries rfc3987_syntax, which diffguard.schema
# makes fail; its grammar module (the ~2.5 s) loads only when that import goes through.
HEAVY = ("torch", "matplotlib", "seaborn", "sklearn", "rfc3987_syntax.syntax_helpers")
# -X importtime: "import time: <self us> | <cumulative us> | <two spaces per level><module>"
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| (?P<indent> *)(?P<module>\S+)$")


def import_log(stderr: str) -> list[tuple[int, str]]:
    """``(depth, module)`` of every first import, children before their importer."""
    entries = []
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            entries.append((len(match["indent"]) // 2, match["module"]))
    return entries


def import_chain(entries: list[tuple[int, str]], index: int) -> str:
    """``top > ... > entries[index]``: who imported that module (the first time)."""
    depth, module = entries[index]
    chain = [module]
    for later_depth, later in entries[index + 1 :]:
        if later_depth < depth:
            chain.append(later)
            depth = later_depth
    return " > ".join(reversed(chain))


def test_import_chain_reads_the_importtime_tree() -> None:
    stderr = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       5 |          5 |     torch._C",
            "import time:       7 |         12 |   torch",
            "import time:       1 |          1 |   numpy",
            "import time:       2 |         15 | diffguard.gdm",
            "some snakemake output",
        ]
    )
    entries = import_log(stderr)
    assert entries == [(2, "torch._C"), (1, "torch"), (1, "numpy"), (0, "diffguard.gdm")]
    assert import_chain(entries, 0) == "diffguard.gdm > torch > torch._C"
    assert import_chain(entries, 2) == "diffguard.gdm > numpy"


def imports_of(repo_root: Path, *args: str) -> list[tuple[int, str]]:
    """``import_log`` of ``python -X importtime *args`` run in ``repo_root`` (must succeed)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=repo_root,
        env=local_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return import_log(proc.stderr)


def heavy_chains(entries: list[tuple[int, str]], heavy: tuple[str, ...]) -> list[str]:
    """Who imported each module of ``heavy`` (``import_chain``), in import order."""
    return [import_chain(entries, i) for i, (_, module) in enumerate(entries) if module in heavy]


@pytest.mark.parametrize("config", CONFIGS)
def test_parsing_imports_no_heavy_library(repo_root: Path, config: str) -> None:
    entries = imports_of(repo_root, "-m", "snakemake", "-n", "-q", "--configfile", config)
    modules = {module for _, module in entries}
    # the log covers the workflow's own imports (else the check below would prove nothing)
    assert {"snakemake", "diffguard.config", "diffguard.schema", "jsonschema"} <= modules
    heavy = heavy_chains(entries, HEAVY)
    assert not heavy, f"parsing with {config} imports: " + "; ".join(heavy)


# The rules that only touch lists and score tables run once per dataset (select_images) and per
# experiment x dataset x seed (gather_scores: 28 jobs in the default run); torch + torchvision
# add ~3-4 s to each job's start-up (a script job: ~1.4 s bare, ~5.2 s importing them).
LIST_ONLY_SCRIPTS = ("workflow/scripts/select_images.py", "workflow/scripts/gather_scores.py")


@pytest.mark.parametrize("script", LIST_ONLY_SCRIPTS)
def test_list_only_rules_import_no_torch(repo_root: Path, script: str) -> None:
    source = (repo_root / script).read_text()
    imports = "\n".join(line for line in source.splitlines() if line.startswith("from diffguard"))
    assert imports, f"{script} imports nothing from diffguard"
    entries = imports_of(repo_root, "-c", imports)
    assert "diffguard.list_stages" in {module for _, module in entries}
    heavy = heavy_chains(entries, ("torch", "torchvision", "sklearn"))
    assert not heavy, f"{script} imports: " + "; ".join(heavy)
