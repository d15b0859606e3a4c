"""The ``tune:`` stage end to end on a tiny config with validation sets and a 2-point grid.

One run up to ``metrics.csv`` and ``chosen.json`` (tests/configs/tune_tiny.py): the sweep covers
every grid point x distance on the validation sets, the tuned experiment and the one extending
it run with the chosen settings, and the choice does not change when every test score and test
baseline table is deleted or corrupted (the tune job never reads them; the planned-DAG half of
this is tests/workflow/test_tune_dag.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.tune_tiny import GRID, RUN, TUNE, tune_tiny_config, write_config  # noqa: E402

pytestmark = pytest.mark.slow

CHOSEN = f"data/processed/{RUN}/tune/{TUNE}/chosen.json"
SWEEP = f"data/processed/{RUN}/tune/{TUNE}/sweep.csv"
METRICS = f"data/processed/{RUN}/metrics.csv"


@pytest.fixture(scope="module")
def tune_run(e2e: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    work = e2e.copy_repo(tmp_path_factory.mktemp("tune-run"))
    config = write_config(tune_tiny_config(work), work / "tune_tiny.yaml")
    e2e.snakemake(work, "--cores", "2", METRICS, CHOSEN, configfiles=[str(config)])
    return SimpleNamespace(work=work, config=config)


def test_sweep_and_choice_cover_the_grid_on_val_sets(tune_run: SimpleNamespace) -> None:
    sweep = pd.read_csv(tune_run.work / SWEEP)
    chosen = json.loads((tune_run.work / CHOSEN).read_text())
    assert len(sweep) == len(GRID["cfg.guidance_scale"]) * 2  # x distances ssim, l2
    assert sorted(sweep["cfg.guidance_scale"].unique()) == GRID["cfg.guidance_scale"]
    assert {"auroc_val_near", "auroc_val_far", "objective"} <= set(sweep.columns)
    assert chosen["val_sets"] == ["val_id", "val_near", "val_far"]
    best = sweep.loc[sweep["objective"].idxmax()]  # first maximum: grid order
    assert chosen["settings"] == {"cfg.guidance_scale": best["cfg.guidance_scale"]}
    assert chosen["distance"] == best["distance"]
    assert chosen["combination_rule"] in ("cascade", "rank_average")
    assert chosen["objective"] == pytest.approx(best["objective"])


def test_tuned_experiments_run_with_the_choice(tune_run: SimpleNamespace) -> None:
    chosen = json.loads((tune_run.work / CHOSEN).read_text())
    value = chosen["settings"]["cfg.guidance_scale"]
    for exp in ("cfg_main", "cfg_oracle"):
        log = tune_run.work / f"data/logs/reconstruct/{RUN}/{exp}/test_id/seed-0/shard-000.log"
        text = log.read_text()
        assert f"applied tune {TUNE} settings {{'cfg.guidance_scale': {value}}}" in text, text
    grid_log = f"data/logs/reconstruct/{RUN}/cfg_main__tune00/val_id/seed-0/shard-000.log"
    assert "applied tune" not in (tune_run.work / grid_log).read_text()
    metrics = pd.read_csv(tune_run.work / METRICS)
    assert not metrics["experiment"].fillna("").str.contains("__tune").any()
    assert not metrics["dataset"].str.startswith("val_").any()


def test_choice_unchanged_without_test_scores(
    tune_run: SimpleNamespace, e2e: SimpleNamespace
) -> None:
    work = tune_run.work
    before = (work / CHOSEN).read_bytes(), (work / SWEEP).read_bytes()
    scores = sorted((work / f"data/processed/{RUN}/scores").glob("cfg_*/*/seed-*.csv"))
    tests = [p for p in scores if not p.parent.name.startswith("val_")]
    assert tests and len(tests) < len(scores)
    for i, path in enumerate(tests):
        path.unlink() if i % 2 else path.write_text("image_id,score_ssim\nx,not-a-number\n")
    for name in ("test_id", "near_digits"):
        (work / f"data/processed/{RUN}/baselines/{name}.csv").write_text("corrupted\n")
    rerun = e2e.snakemake(
        work, "--cores", "1", CHOSEN, "--forcerun", "tune", configfiles=[str(tune_run.config)]
    )
    assert rerun.job_counts() == {"tune": 1, "total": 1}  # nothing upstream reran
    assert ((work / CHOSEN).read_bytes(), (work / SWEEP).read_bytes()) == before
