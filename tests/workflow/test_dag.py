"""The workflow itself: lint, formatting, and the DAG planned for each shipped config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake_cli import job_counts, snakemake

LINT = [("--lint", "--configfile", c) for c in ("config/config.yaml", "config/tiny.yaml")]
TINY_DAG = ("-n", "--forceall", "--configfile", "config/tiny.yaml")
DEFAULT_DAG = ("-n", "--forceall")  # no --configfile: the Snakefile loads config/config.yaml
# --config run=NAME overrides the default config's run, it does not replace the config (the
# report section, config/report/<run>.yaml by default, named so that the DAGs can be compared)
RENAMED = ("run=renamed", "report_config=config/report/embedded.yaml")
RENAMED_DAG = ("-n", "--forceall", "--config", *RENAMED)
CONFIG_TYPO = ("-n", "--config", "shard_sise=10")
NESTED_TYPO = ("-n", "--config", 'speed={"image": 4}')
EXPERIMENT_TYPO = ("-n", "--config", 'experiments={"gdm_main": {"modle": "unet_cond"}}')
WRONG_TYPE = ("-n", "--config", "shard_size=abc")
# Started in the background by the dry_runs fixture (conftest.py), shared with other modules.
DRY_RUNS = [*LINT, TINY_DAG, DEFAULT_DAG, RENAMED_DAG, CONFIG_TYPO, NESTED_TYPO, EXPERIMENT_TYPO]
DRY_RUNS += [WRONG_TYPE]
SCHEMA = "workflow/schemas/config.schema.yaml"


def test_lint_is_clean(dry_runs) -> None:
    for args in LINT:
        result = dry_runs.get(*args)
        assert result.returncode == 0, result.output
        assert "Lints for" not in result.output


def test_snakefmt_clean(repo_root: Path) -> None:
    snakefmt = str(Path(sys.executable).with_name("snakefmt"))
    result = subprocess.run(
        [snakefmt, "--check", "Snakefile", "workflow/rules"],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_tiny_dag_job_counts(dry_runs) -> None:
    result = dry_runs.get(*TINY_DAG)
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    # 2 experiments x (24 + 24 + 20 images in shards of 16 -> 2 + 2 + 2 shards) x 1 seed
    assert counts["reconstruct"] == 2 * 6
    assert counts["gather_scores"] == 2 * 3
    assert counts["select_images"] == 4 and counts["cache_predictions"] == 4
    assert counts["train_diffusion"] == 2 and counts["train_classifier"] == 1
    assert counts["evaluate"] == 1 and counts["baseline_scores"] == 1
    assert counts["inversion_trace"] == 1  # Fig. 4: one job for the 3 evaluation sets
    assert result.seconds < 120


def test_default_dag_plans_every_artifact(dry_runs) -> None:
    result = dry_runs.get(*DEFAULT_DAG)
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout)
    # test: 4 experiments x (300 + 150 + 150 + 150 images in shards of 300 -> 4 shards);
    # validation: 4 tune grid points x 3 val sets of <= 200 images (one shard each)
    assert counts["reconstruct"] == 4 * 4 + 4 * 3
    assert counts["tune"] == 1 and counts["check_claims"] == 1
    for rule in (
        "render_tables",
        "plot_figures",
        "build_paper",
        "explore_notebook",
        "speed_benchmark",
        "plot_tune_sweep",
        "baseline_scores_val",
    ):
        assert counts.get(rule) == 1, rule


def test_typo_in_config_fails_naming_the_key(repo_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (repo_root / "config/tiny.yaml").read_text().replace("shard_size:", "shard_sise:")
    bad.write_text(text)
    result = snakemake(repo_root, "-n", "--configfile", str(bad))
    assert result.returncode != 0
    assert "shard_sise" in result.stdout + result.stderr


@pytest.mark.parametrize("bad", ["kind: embeded", "role: near2"])
def test_invalid_value_fails(repo_root: Path, tmp_path: Path, bad: str) -> None:
    key, _ = bad.split(": ")
    original = {"kind": "kind: embedded", "role": "role: near"}[key]
    path = tmp_path / "bad.yaml"
    path.write_text((repo_root / "config/tiny.yaml").read_text().replace(original, bad, 1))
    result = snakemake(repo_root, "-n", "--configfile", str(path))
    assert result.returncode != 0
    assert bad.split(": ")[1] in result.stdout + result.stderr


def _description_start(repo_root: Path, *path: str) -> str:
    """First words of the schema's description of the property at ``path``."""
    node = yaml.safe_load((repo_root / SCHEMA).read_text())
    for part in path:
        node = node["properties"][part] if "properties" in node else node["additionalProperties"]
    return " ".join(node["description"].split()[:4])


@pytest.mark.parametrize(
    ("args", "where", "suggestion"),
    [
        (CONFIG_TYPO, "shard_sise", ("shard_size",)),
        (NESTED_TYPO, "speed.image", ("speed", "images")),
        (EXPERIMENT_TYPO, "experiments.gdm_main.modle", ("experiments", "gdm_main", "model")),
    ],
)
def test_config_typo_is_short_and_suggests_the_key(
    dry_runs, repo_root: Path, args: tuple[str, ...], where: str, suggestion: tuple[str, ...]
) -> None:
    result = dry_runs.get(*args)
    assert result.returncode != 0
    output = result.output
    assert len(output.splitlines()) < 30, output  # not the schema and config (~1,550 lines)
    assert f"{where}: unknown key {where.split('.')[-1]!r}" in output
    assert f"did you mean {suggestion[-1]!r}?" in output
    assert _description_start(repo_root, *suggestion) in " ".join(output.split())


def test_wrong_type_is_short_and_names_the_expected_type(dry_runs, repo_root: Path) -> None:
    result = dry_runs.get(*WRONG_TYPE)
    assert result.returncode != 0
    output = result.output
    assert len(output.splitlines()) < 30, output
    assert "shard_size: invalid value 'abc'" in output and "expected integer" in output
    assert _description_start(repo_root, "shard_size") in " ".join(output.split())


def test_config_run_keeps_the_default_config(dry_runs) -> None:
    renamed = dry_runs.get(*RENAMED_DAG)
    assert renamed.returncode == 0, renamed.output
    assert "data/interim/renamed/" in renamed.stdout
    assert job_counts(renamed.stdout) == job_counts(dry_runs.get(*DEFAULT_DAG).stdout)
