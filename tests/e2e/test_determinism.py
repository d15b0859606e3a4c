"""Determinism of the tiny workflow: same seed, same bytes; sharding never changes a score.

- Two independent runs (the uninterrupted ``tiny_run`` and the killed-then-resumed run, which
  trained its own models) produce the same bytes for every output, apart from wall-clock
  fields (training time stamps and durations).
- Per-image score tables do not depend on how a dataset is cut into shards: one shard per
  dataset (``shard_size`` 1000, a modified YAML copy) and shards of 7 (``--config``), which
  also changes which images share a reconstruction batch, give the tables of shards of 16.
  These runs clone the finished ``tiny_run`` with its snakemake metadata, so only the
  reconstruction, gathering and evaluation jobs rerun.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

LOGGER = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

# Outputs that record wall-clock facts; compared without those fields (never skipped).
TIMESTAMP_FILES = ("model.done",)
TIME_COLUMNS = {"train_log.csv": ("elapsed_s",)}
TIME_KEYS = {"diffguard.json": ("train_seconds",)}
# Maximum absolute difference allowed between per-image scores of differently sharded runs.
# Zero: every image is processed on its own arithmetic path, whatever its batch neighbours.
SHARD_SCORE_TOLERANCE = 0.0


def _without_time_fields(work: Path, rel: Path) -> Any:
    """Content of a file with its wall-clock fields removed, for comparison."""
    path = work / rel
    if rel.name in TIME_COLUMNS:
        return pd.read_csv(path).drop(columns=list(TIME_COLUMNS[rel.name])).to_csv(index=False)
    if rel.name in TIME_KEYS:
        data = json.loads(path.read_text())
        for key in TIME_KEYS[rel.name]:
            data.pop(key)
        return data
    return path.read_bytes()


def test_same_seed_two_runs_identical_outputs(
    tiny_run: Any, resumed_run: Any, e2e: SimpleNamespace
) -> None:
    files = e2e.output_files(tiny_run.work)
    assert e2e.output_files(resumed_run.work) == files
    compared_bytes = 0
    differing = []
    for rel in files:
        if rel.name in TIMESTAMP_FILES:
            assert (resumed_run.work / rel).read_text().startswith("trained "), rel
            continue
        if rel.name in TIME_COLUMNS or rel.name in TIME_KEYS:
            same = _without_time_fields(tiny_run.work, rel) == _without_time_fields(
                resumed_run.work, rel
            )
        else:
            left = (tiny_run.work / rel).read_bytes()
            same = left == (resumed_run.work / rel).read_bytes()
            compared_bytes += len(left)
        if not same:
            differing.append(str(rel))
    assert not differing, f"{len(differing)} outputs differ between two runs: {differing}"
    LOGGER.info("two runs: %d output files, %d bytes identical", len(files), compared_bytes)


def _compare_scores(base: Path, other: Path, tables: list[Path]) -> dict[str, float]:
    """Max abs difference of every score column over the tables; other columns must match."""
    worst: dict[str, float] = {}
    for rel in tables:
        left, right = pd.read_csv(base / rel), pd.read_csv(other / rel)
        assert list(left.columns) == list(right.columns), rel
        scores = [c for c in left.columns if c.startswith("score_")]
        assert scores, f"{rel} has no score columns"
        pd.testing.assert_frame_equal(left.drop(columns=scores), right.drop(columns=scores))
        for col in scores:
            diff = np.abs(left[col].to_numpy(float) - right[col].to_numpy(float))
            worst[col] = max(worst.get(col, 0.0), float(diff.max()))
    return worst


def _sharded_rerun(
    tiny_run: Any,
    e2e: SimpleNamespace,
    tmp_path: Path,
    *,
    shard_size: int,
    via_yaml: bool,
) -> tuple[Path, Any]:
    """Clone the finished run and rebuild its score tables with another shard size."""
    work = e2e.clone_run(tiny_run.work, tmp_path)
    tables = [str(p) for p in e2e.score_tables(tiny_run.work)]
    if via_yaml:
        config = yaml.safe_load((work / e2e.TINY).read_text())
        assert config["shard_size"] != shard_size
        config["shard_size"] = shard_size
        name = f"config/tiny_shard{shard_size}.yaml"
        (work / name).write_text(yaml.safe_dump(config, sort_keys=False))
        result = e2e.snakemake(work, "--cores", "2", *tables, configfiles=[name])
    else:
        result = e2e.snakemake(
            work, "--cores", "2", *tables, "--config", f"shard_size={shard_size}"
        )
    return work, result


@pytest.mark.parametrize(("shard_size", "via_yaml"), [(1000, True), (7, False)])
def test_shard_size_does_not_change_scores(
    tiny_run: Any, e2e: SimpleNamespace, tmp_path: Path, shard_size: int, via_yaml: bool
) -> None:
    work, result = _sharded_rerun(tiny_run, e2e, tmp_path, shard_size=shard_size, via_yaml=via_yaml)
    jobs = result.job_counts()
    lists = sorted((work / f"data/interim/{e2e.RUN}/lists").glob("*.txt"))
    sizes = {p.stem: sum(1 for line in p.read_text().splitlines() if line.strip()) for p in lists}
    tables = e2e.score_tables(tiny_run.work)
    expected_shards = sum(
        -(-sizes[rel.parent.name] // shard_size) for rel in tables
    )  # ceil per (experiment, dataset)
    # Only reconstruction and gathering reran: models and predictions were reused.
    assert jobs.get("reconstruct") == expected_shards, jobs
    assert jobs.get("gather_scores") == len(tables), jobs
    assert not {"train_classifier", "train_diffusion", "cache_predictions"} & set(jobs), jobs
    worst = _compare_scores(tiny_run.work, work, tables)
    identical = all(
        (tiny_run.work / rel).read_bytes() == (work / rel).read_bytes() for rel in tables
    )
    LOGGER.info(
        "shard_size %d (%d shards, %.1f s): max abs score diff vs shards of 16 %s; tables "
        "byte-identical: %s",
        shard_size,
        expected_shards,
        result.seconds,
        worst,
        identical,
    )
    assert max(worst.values()) <= SHARD_SCORE_TOLERANCE, worst
