"""Rule check_claims plans with test-split inputs only: the compared experiments' test score
tables, the baselines of the test sets, the tune's chosen.json (claims.tune) and code."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import yaml
from snakemake_cli import snakemake

RUN = "claimsplan"


def test_claims_rule_reads_only_test_scores(repo_root: Path, tmp_path: Path) -> None:
    from diffguard.plan import run_plan

    config = yaml.safe_load((repo_root / "config/tiny.yaml").read_text())
    config["run"] = RUN
    config["claims"].update(tune="t", sets="all")
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(config))
    workflow = SimpleNamespace(
        basedir=str(repo_root), modifier=SimpleNamespace(skip_validation=False)
    )
    plan = run_plan(yaml.safe_load(path.read_text()), workflow)
    test_sets = set(plan.eval_sets)  # evaluation_datasets: the ID and OOD TEST sets
    chosen = repo_root / f"data/processed/{RUN}/tune/t/chosen.json"
    chosen.parent.mkdir(parents=True, exist_ok=True)
    chosen.write_text('{"distance": "ssim", "combination_rule": "cascade"}\n')
    try:
        result = snakemake(
            repo_root, "-n", f"data/processed/{RUN}/claims.csv", "--configfile", str(path)
        )
    finally:
        shutil.rmtree(repo_root / f"data/processed/{RUN}")
    assert result.returncode == 0, result.stderr
    block = result.stdout.split("rule check_claims:", 1)[1]
    inputs = re.search(r"input: (.*)", block).group(1).split(", ")
    data = [p for p in inputs if not p.startswith("workflow/scripts/")]
    assert f"data/processed/{RUN}/tune/t/chosen.json" in data
    scores = [p for p in data if "/scores/" in p]
    baselines = [p for p in data if "/baselines/" in p]
    assert len(scores) + len(baselines) + 1 == len(data), data
    assert {p.split("/")[-2] for p in scores} == test_sets
    assert {Path(p).stem for p in baselines} == test_sets
    assert {p.split("/")[-3] for p in scores} == set(plan.claim_experiments())
