"""Rule check_claims plans with test-split inputs only: the compared experiments' test score
tables, the baselines of the test sets, the tune's chosen.json (claims.tune) and code; never a
validation set's scores (tests/configs/tune_tiny.py has val sets and a tune)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

from snakemake_cli import snakemake

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.tune_tiny import RUN, TUNE, tune_tiny_config, write_config  # noqa: E402


def test_claims_rule_reads_only_test_scores(repo_root: Path, tmp_path: Path) -> None:
    from diffguard.plan import run_plan

    config = tune_tiny_config(repo_root)
    config["claims"] = {"diffguard": "cfg_main", "x0_ablation": None, "tune": TUNE}
    path = write_config(config, tmp_path / "claims.yaml")
    workflow = SimpleNamespace(
        basedir=str(repo_root), modifier=SimpleNamespace(skip_validation=False)
    )
    plan = run_plan(tune_tiny_config(repo_root) | {"claims": dict(config["claims"])}, workflow)
    test_sets = set(plan.eval_sets)  # evaluation_datasets: the ID and OOD TEST sets
    val_sets = {plan.val_sets[0], *plan.val_sets[1]}
    assert val_sets and not val_sets & test_sets
    result = snakemake(
        repo_root, "-n", f"data/processed/{RUN}/claims.csv", "--configfile", str(path)
    )
    assert result.returncode == 0, result.stderr
    block = result.stdout.split("rule check_claims:", 1)[1]
    inputs = re.search(r"input: (.*)", block).group(1).split(", ")
    data = [p for p in inputs if not p.startswith("workflow/scripts/")]
    assert plan.tune_outputs(TUNE)["chosen"] in data
    scores = [p for p in data if "/scores/" in p]
    baselines = [p for p in data if "/baselines/" in p]
    assert len(scores) + len(baselines) + 1 == len(data), data
    assert {p.split("/")[-2] for p in scores} == test_sets
    assert {Path(p).stem for p in baselines} == test_sets
    assert {p.split("/")[-3] for p in scores} == {"cfg_main", "cfg_oracle"}
    assert not [p for p in data for v in val_sets if f"/{v}/" in p or f"/{v}." in p]
