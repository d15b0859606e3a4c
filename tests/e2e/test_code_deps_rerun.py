"""Editing a package module replans exactly the jobs whose scripts import it (and their
downstream jobs); editing a module no rule imports plans nothing.

Continues from a clone of the session's finished tiny run (``tiny_run``), so it adds only a few
dry runs to the e2e time.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflow" / "scripts"))
from diffguard.codedeps import code_closure  # noqa: E402

pytestmark = pytest.mark.slow

SCRIPTS = Path("workflow/scripts")
# module -> whether no importer of it runs downstream of another importer in the tiny run, so
# that every importing rule is replanned for the edit itself (Snakemake names one reason per job)
MODULES = {
    SCRIPTS / "diffguard" / "schedules.py": False,  # cache_predictions, then reconstruct, ...
    SCRIPTS / "diffguard" / "reconstruction.py": True,  # reconstruct only
}


def rule_scripts(repo: Path) -> dict[str, str]:
    """Rule name -> the script named in its ``code=script_code(...)`` (``use rule`` inherits)."""
    scripts: dict[str, str] = {}
    for smk in (repo / "workflow" / "rules").glob("*.smk"):
        blocks = re.split(r"^\s*(?=(?:use )?rule \w+)", smk.read_text(), flags=re.M)
        for block in blocks:
            head = re.match(r"(?:use rule (\w+) as )?(?:rule )?(\w+)", block)
            if head is None or not block.startswith(("rule ", "use rule ")):
                continue
            code = re.search(r'code=(?:\w+\.)?script_code\("([^"]+)"\)', block)
            if code:
                scripts[head.group(2)] = code.group(1)
            elif head.group(1) in scripts:
                scripts[head.group(2)] = scripts[head.group(1)]
    return scripts


def planned_jobs(output: str) -> list[tuple[str, str]]:
    """``(rule, reason)`` of every job in a dry run's listing."""
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:)", output, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        reason = re.search(r"^\s*reason: (.*)$", block, flags=re.M)
        jobs.append((rule, reason.group(1) if reason else ""))
    return jobs


def edit(path: Path) -> None:
    # Snakemake ignores an mtime change without a content change, so change the content.
    path.write_text(path.read_text() + "\n# an edit\n")


@pytest.fixture
def clone(tiny_run, e2e, tmp_path: Path) -> Path:
    """A fresh copy of the finished tiny run per test (each test edits modules)."""
    return e2e.clone_run(tiny_run.work, tmp_path)


@pytest.mark.parametrize("deep_module", sorted(MODULES), ids=lambda p: p.name)
def test_deep_module_edit_replans_exactly_its_importers(
    deep_module: Path, clone: Path, tiny_run, e2e
) -> None:
    scripts = rule_scripts(clone)
    root = (clone / SCRIPTS).resolve()
    module = root / deep_module.relative_to(SCRIPTS)
    importers = {
        rule
        for rule in tiny_run.jobs
        if rule in scripts and module in code_closure(root / scripts[rule], root)
    }
    assert "reconstruct" in importers  # the edited module must matter to this run
    assert "Nothing to be done" in e2e.snakemake(clone, "-n", e2e.METRICS).output

    edit(clone / deep_module)
    dry = e2e.snakemake(clone, "-n", e2e.METRICS, "--rerun-triggers", "mtime", "code")
    jobs = planned_jobs(dry.output)
    counts = dry.job_counts()
    direct = {
        rule
        for rule, reason in jobs
        if "Updated input files: " in reason and str(deep_module) in reason
    }
    # Snakemake gives a job one reason: an importer downstream of another importer is listed
    # as "Input files updated by another job", so the directly replanned jobs are the importers
    # not downstream of another one (cache_predictions before reconstruct, for instance).
    assert direct and direct <= importers, (
        f"directly replanned {direct}, importers of {deep_module}: {importers}"
    )
    if MODULES[deep_module]:
        assert direct == importers, (direct, importers)
    for rule in importers:  # every job of an importing rule, not just some
        assert counts[rule] == tiny_run.jobs[rule], (rule, counts, tiny_run.jobs)
    for rule, reason in jobs:  # the rest only because an upstream job reruns
        if rule not in direct:
            assert reason.startswith("Input files updated by another job"), (rule, reason)
    assert not {"select_images", "train_classifier", "train_diffusion"} & set(counts), counts


def test_edit_of_unimported_module_plans_nothing(clone: Path, e2e) -> None:
    root = (clone / SCRIPTS).resolve()
    imported = set()
    for script in root.glob("*.py"):
        imported |= set(code_closure(script, root))
    unused = sorted(set((root / "diffguard").rglob("*.py")) - imported)
    assert unused, "every package module is imported by some rule script"
    for module in unused:
        edit(module)
    dry = e2e.snakemake(clone, "-n", e2e.METRICS, "--rerun-triggers", "mtime", "code")
    assert "Nothing to be done" in dry.output, dry.output[-3000:]
