"""Rule preflight on the tiny config: the summary's checks and cost estimates, and a failing
experiment reported as FAIL with a non-zero exit."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

TARGET = "data/processed/tiny/preflight.status"
SUMMARY = "data/processed/tiny/preflight.md"
COSTS = "data/processed/tiny/preflight.csv"


def list_length(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


@pytest.fixture(scope="module")
def preflight_run(tmp_path_factory: pytest.TempPathFactory, e2e: SimpleNamespace) -> Path:
    work = e2e.copy_repo(tmp_path_factory.mktemp("preflight"))
    e2e.snakemake(work, "--cores", "2", TARGET)
    return work


def test_preflight_summary_and_estimates(preflight_run: Path) -> None:
    work = preflight_run
    config = yaml.safe_load((work / "config/tiny.yaml").read_text())
    summary = (work / SUMMARY).read_text()
    assert "device: cpu" in summary and "dtype: float32" in summary and "batch_size: 2" in summary
    assert "FAIL" not in summary and "all checks OK" in summary
    assert len(summary.splitlines()) <= 30  # one screen
    costs = pd.read_csv(work / COSTS).set_index("rule")
    evals = [n for n, d in config["datasets"].items() if d["role"] != "train"]
    sizes = {n: list_length(work / f"data/interim/tiny/lists/{n}.txt") for n in evals}
    for exp in ("gdm_main", "cfg_main"):
        row = costs.loc[f"reconstruct {exp}"]
        assert row["s_per_image"] > 0
        assert row["images"] == sum(sizes.values())
        assert row["gpu_hours_per_seed"] == pytest.approx(
            row["s_per_image"] * row["images"] / 3600, rel=1e-6
        )
        assert row["gpu_hours"] == pytest.approx(row["gpu_hours_per_seed"] * row["seeds"])
        shards = sum(math.ceil(n / config["shard_size"]) for n in sizes.values())
        assert row["shard_jobs"] == shards * len(config["seeds"])
        assert f"experiment {exp} | OK" in summary
    assert costs.loc["classifier pass (cache_predictions)", "s_per_image"] > 0


def test_failing_experiment_is_reported(preflight_run: Path, e2e: SimpleNamespace) -> None:
    work = preflight_run
    config = yaml.safe_load((work / "config/tiny.yaml").read_text())
    # CFG needs a class-conditional model: reconstruct_shard refuses the unconditional one
    config["experiments"]["cfg_main"]["model"] = "unet_uncond"
    broken = work / "config/tiny_broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    result = e2e.snakemake(work, "--cores", "2", TARGET, configfiles=[str(broken)], check=False)
    assert result.returncode != 0
    assert "preflight failed: experiment cfg_main" in result.output
    summary = (work / SUMMARY).read_text()
    assert "| experiment cfg_main | FAIL | ValueError:" in summary
    assert "| experiment gdm_main | OK |" in summary
    assert "FAILED: experiment cfg_main" in summary
