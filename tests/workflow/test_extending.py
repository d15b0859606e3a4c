"""README "Extending": a dataset is one config entry, a published-vs-reproduced table is a
report entry plus its published CSV. Each is added here exactly as README says, and the dry run
must plan its jobs and outputs (the baseline and method paths: tests/unit/test_extending_baseline.py
and tests/unit/test_methods.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml
from snakemake_cli import job_counts
from test_paper_dag import dry_run, job_block, sized_config

SIZES = {"train": 5000, "cifar10_test": 2500, "cifar100": 1000, "tin": 900}


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_dataset_is_one_config_entry(repo_root: Path, tmp_path: Path) -> None:
    base = sized_config(repo_root, tmp_path, "cifar10.yaml", SIZES)
    before, _, _ = dry_run(repo_root, base)
    config = yaml.safe_load(base.read_text())
    # README: one entry under datasets (its list key names an OpenOOD image list)
    config["datasets"]["tin_far"] = {"role": "far", "list": "test_tin", "n": 900}
    after, stdout, _ = dry_run(repo_root, _write(tmp_path / "extended.yaml", config))
    experiments = before["gather_scores"] // 3  # 3 evaluation sets before
    assert after["gather_scores"] == before["gather_scores"] + experiments
    assert after["reconstruct"] == before["reconstruct"] + experiments  # 900 images: one shard
    assert after["select_images"] == before["select_images"] + 1
    assert after["cache_predictions"] == before["cache_predictions"] + 1
    assert "lists/tin_far.txt" in stdout and "predictions/tin_far.npz" in stdout
    assert "scores/diffnb_main/tin_far/seed-0.csv" in stdout  # gathered for the evaluation


def test_a_published_table_is_a_report_entry_and_a_csv(repo_root: Path, tmp_path: Path) -> None:
    report = yaml.safe_load((repo_root / "config/report/cifar10.yaml").read_text())
    published = tmp_path / "published"
    shutil.copytree(repo_root / "config/published", published)
    # README: a report.tables entry plus config/published/<name>.csv (here in a copy)
    shutil.copy(published / "table1_cifar10.csv", published / "table9_extra.csv")
    report["report"]["published_dir"] = str(published)
    report["report"]["tables"]["table9_extra"] = {
        "title": "An added table",
        "rows": {"EBO": {"baseline": "ebo"}, "Ours (DiffGuard)": {"experiment": "diffnb_main"}},
    }
    config = yaml.safe_load(sized_config(repo_root, tmp_path, "cifar10.yaml", SIZES).read_text())
    config["report_config"] = str(_write(tmp_path / "report.yaml", report))
    counts, stdout, _ = dry_run(repo_root, _write(tmp_path / "extended.yaml", config))
    block = job_block(stdout, "paper/tables/table9_extra.tex")
    assert "table9_extra.csv" in block, block
    assert counts == job_counts(stdout) and counts["build_paper"] == 1
