"""The tune stage never reads a test image or score (issue 15): the planned DAG says so.

The dry run of ``chosen.json`` plans the tune job and everything upstream of it. Every input of
every one of those jobs may name validation or training datasets only: no test list, image
list, prediction cache, reconstruction shard, score or baseline table. The behavioural half
(test scores corrupted, the choice unchanged) is tests/e2e/test_tune.py.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from test_paper_dag import dry_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.tune_tiny import RUN, TUNE, tune_tiny_config, write_config  # noqa: E402

CHOSEN = f"data/processed/{RUN}/tune/{TUNE}/chosen.json"


def job_inputs(stdout: str) -> dict[str, list[list[str]]]:
    """Rule -> the input file lists of each of its planned jobs (``snakemake -n`` output)."""
    jobs: dict[str, list[list[str]]] = {}
    for block in re.split(r"\n(?=\[\w{3} \w{3} )", stdout):
        rule = re.search(r"^(?:local)?(?:rule|checkpoint) (\w+):", block, re.M)
        if rule is None:
            continue
        inputs = re.search(r"^\s+input: (.*)$", block, re.M)
        files = inputs.group(1).split(", ") if inputs else []
        jobs.setdefault(rule.group(1), []).append(files)
    return jobs


def names_of_test_sets(config: dict[str, Any]) -> set[str]:
    """Test datasets and the image lists they read (the names a test-data path holds)."""
    tests = {n: s for n, s in config["datasets"].items() if s.get("split", "test") == "test"}
    return {n for n, s in tests.items() if s["role"] != "train"} | {
        s["list"] for s in tests.values() if s["role"] != "train"
    }


def inputs_naming(jobs: dict[str, list[list[str]]], names: set[str]) -> list[str]:
    """``rule: path`` of each planned input whose path has a test dataset's name in it."""
    found = []
    for rule, lists in jobs.items():
        for files in lists:
            for path in files:
                parts = {Path(p).stem for p in Path(path).parts}
                if parts & names:
                    found.append(f"{rule}: {path}")
    return found


def test_tune_dag_reads_validation_data_only(repo_root: Path, tmp_path: Path) -> None:
    config = tune_tiny_config(repo_root)
    counts, stdout, _ = dry_run(
        repo_root, write_config(config, tmp_path / "tune.yaml"), "--", CHOSEN
    )
    jobs = job_inputs(stdout)
    assert inputs_naming(jobs, names_of_test_sets(config)) == []
    assert counts["tune"] == 1 and counts["reconstruct"] == 2 * 3  # 2 points x 3 val sets
    tune_inputs = jobs["tune"][0]
    assert any("/scores/cfg_main__tune01/val_near/" in f for f in tune_inputs), tune_inputs
    assert any(f.endswith("/baselines/val_id.csv") for f in tune_inputs), tune_inputs


def test_the_check_finds_test_data(repo_root: Path, tmp_path: Path) -> None:
    """The check can fail: a test set turned into a validation set (the tune then scores
    it) is found in the tune DAG."""
    config = tune_tiny_config(repo_root)
    config["datasets"]["far_photos"] = {"role": "far", "list": "far_photos", "n": 8}
    names = names_of_test_sets(config)
    config["datasets"]["near_digits"]["split"] = "val"  # far_photos stays the test OOD set
    config.pop("claims", None)  # its default sets (near) would have no test set left
    _, stdout, _ = dry_run(repo_root, write_config(config, tmp_path / "leak.yaml"), "--", CHOSEN)
    leaks = inputs_naming(job_inputs(stdout), names)
    assert any(leak.startswith("tune: ") for leak in leaks), leaks
    assert any("lists/near_digits.txt" in leak for leak in leaks), leaks
