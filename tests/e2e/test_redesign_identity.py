"""Behaviour kept: the tiny run's outputs equal those recorded before the redesign (issue 14).

``tiny_outputs.json`` holds the fingerprints of every output of the tiny run (``tiny_run``:
``config/tiny.yaml`` up to ``metrics.csv``) recorded at commit 5d3390f, the last commit before
the issue-14 redesign, by ``tests/tools/record_tiny_manifest.py``: the benchmark, lists, trained
models, prediction caches, reconstruction shards, per-image score tables and metrics (what is
left out and why: ``tests/tools/output_manifest.py``). This test reuses the session's
``tiny_run``, so it costs no workflow run of its own.

Bytes are only reproducible on the platform that recorded them: torch's CPU kernels (ATen
capability AVX2 / AVX-512, thread count) round floats differently (~1e-5 per op, see
``tests/tools/measure_tolerances.py``), and training and DDIM grow that. So:

- same platform (torch and numpy version, ATen CPU capability, the jobs' thread count, CPU
  model, machine, Python: ``platform`` in the manifest): every output must match by sha256;
- another platform: numeric CSV / NPZ / safetensors content must lie within
  :data:`CROSS_PLATFORM_TOL` of the recorded values (compared through summaries that bound
  element-wise differences), and everything else (images, lists, JSON, text columns) must
  match exactly.

A failure lists each differing output. Re-record the manifest only for a change that is meant
to alter the outputs, and say so in its commit.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools import output_manifest as om  # noqa: E402

LOGGER = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

MANIFEST = Path(__file__).with_name("tiny_outputs.json")
SCORE_TABLE = "data/processed/tiny/scores/gdm_main/test_id/seed-0.csv"

# Per-element bounds |new - recorded| <= atol + rtol * |recorded| on another platform, by the
# first path fragment that matches ("*": the rest). Measured like END_TO_END_TOL and
# SCORE_DIFF_TOL (test_gdm_fixture.py, test_speed.py): the tiny run at 5d3390f with
# ATEN_CPU_CAPABILITY=avx2 (ONEDNN_MAX_CPU_ISA=AVX2) against the recorded AVX-512 run, both 1
# thread per job, 2026-12-05 (max |diff| per kind):
#   trained weights 1.1e-6, training losses 1.8e-8, classifier logits/features 1.4e-6,
#   baseline scores 1.7e-6                                         -> 1e-5 (5.9x margin)
#   reconstructions 0.026 and per-image scores 0.032 (score_logits; l2 6.1e-3, ssim 1.3e-4):
#   one gdm_main ID image whose guided sampling diverged; the rest <= 4.9e-4 (float16 storage)
#                                                                  -> 0.1 (3.1x margin)
#   metrics 0.21 percentage points (one ID/OOD pair swapped order: 100 / (24 * 20))
#                                                                  -> 1.0 (about 5 pairs)
# Training and DDIM amplify rounding, so these bounds are wide for the scores and metrics: on
# another platform the comparison catches a changed procedure (every score moves), not a
# change of a single image's score; the same platform compares bytes.
CROSS_PLATFORM_TOL: dict[str, om.Tolerance] = {
    "/recon/": om.Tolerance(atol=0.1, rtol=0.0),
    "/scores/": om.Tolerance(atol=0.1, rtol=0.0),
    "metrics.csv": om.Tolerance(atol=1.0, rtol=0.0),
    "*": om.Tolerance(atol=1e-5, rtol=0.0),
}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def current(tiny_run, e2e: SimpleNamespace) -> dict[str, Any]:
    """Platform facts and output fingerprints of this session's tiny run."""
    work = tiny_run.work
    return {
        "platform": om.platform_facts(om.job_threads(work), e2e.run_env(work)),
        "outputs": om.fingerprint_run(work, e2e.repo_files(e2e.REPO_ROOT)),
    }


def test_tiny_run_outputs_equal_the_recorded_ones(
    manifest: dict[str, Any], current: dict[str, Any]
) -> None:
    same_platform = manifest["platform"] == current["platform"]
    tolerance = None if same_platform else CROSS_PLATFORM_TOL
    problems = om.identity_problems(manifest["outputs"], current["outputs"], tolerance)
    assert not problems, (
        f"{len(problems)} difference(s) from the outputs recorded at {manifest['commit'][:7]} "
        f"({'bytes' if same_platform else 'within CROSS_PLATFORM_TOL'}; recorded on "
        f"{manifest['platform']}, this run on {current['platform']}):\n" + "\n".join(problems)
    )
    LOGGER.info(
        "%d outputs equal to those of %s (%s)",
        len(current["outputs"]),
        manifest["commit"][:7],
        "byte for byte" if same_platform else "within tolerance, another platform",
    )


def _with_table(outputs: dict[str, Any], work: Path, tmp_path: Path, change: Any) -> dict[str, Any]:
    """``outputs`` with the score table's entry replaced by that of ``change(table)``."""
    frame = pd.read_csv(work / SCORE_TABLE)
    change(frame)
    path = tmp_path / Path(SCORE_TABLE).name
    frame.to_csv(path, index=False, float_format="%.8g")
    return {**outputs, SCORE_TABLE: om.fingerprint(path)}


def test_identity_check_fails_on_a_wrong_procedure(
    current: dict[str, Any], tiny_run, tmp_path: Path
) -> None:
    """A changed score, or two swapped scores, fail both comparisons; jitter within the
    tolerance passes the cross-platform one."""
    reference = current["outputs"]
    assert SCORE_TABLE in reference, sorted(reference)
    tol = om.tolerance_for(SCORE_TABLE, CROSS_PLATFORM_TOL)
    n = len(pd.read_csv(tiny_run.work / SCORE_TABLE))

    def shift_one(frame: pd.DataFrame) -> None:
        # far beyond what all elements' bounds together allow on another platform
        x = frame.loc[0, "score_ssim"]
        frame.loc[0, "score_ssim"] = x + 10 * n * (tol.atol + tol.rtol * abs(x) + 1e-3)

    def swap_two(frame: pd.DataFrame) -> None:
        column = frame["score_ssim"].to_numpy().copy()
        i, j = int(np.argmin(column)), int(np.argmax(column))
        column[[i, j]] = column[[j, i]]
        frame["score_ssim"] = column

    for name, change in (("one score changed", shift_one), ("two scores swapped", swap_two)):
        wrong = _with_table(reference, tiny_run.work, tmp_path, change)
        for mode, tolerance in (("bytes", None), ("tolerance", CROSS_PLATFORM_TOL)):
            if mode == "tolerance" and name == "two scores swapped":
                # a swap moves two elements by |max - min|; caught when that exceeds the bound
                values = pd.read_csv(tiny_run.work / SCORE_TABLE)["score_ssim"]
                if values.max() - values.min() <= 2 * n * (
                    tol.atol + tol.rtol * values.abs().max()
                ):
                    continue
            problems = om.identity_problems(reference, wrong, tolerance)
            assert any(SCORE_TABLE in p for p in problems), (name, mode, problems)

    def jitter(frame: pd.DataFrame) -> None:
        # every number moved by a quarter of its bound: a platform's rounding, not a new procedure
        for column in frame.columns:
            if frame[column].dtype.kind == "f":
                frame[column] = frame[column] + 0.25 * (tol.atol + tol.rtol * frame[column].abs())

    jittered = _with_table(reference, tiny_run.work, tmp_path, jitter)
    assert om.identity_problems(reference, jittered, CROSS_PLATFORM_TOL) == []
    assert om.identity_problems(reference, jittered, None) != []
