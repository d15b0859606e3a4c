"""Kill-and-resume: SIGKILL the tiny workflow mid-training and mid-reconstruction, then finish.

The fixture ``resumed_run`` (tests/e2e/conftest.py) starts the workflow in its own process
group and kills the whole group with SIGKILL twice: 5 s into a training job, and, after a
restart, once some but not all reconstruction shards are final. After each kill it unlocks the
folder; the last call runs the workflow to the end. These tests check that no kill left a
partial file under a final name, that finished outputs (shards included) were kept rather than
recomputed, and that the results equal those of the uninterrupted run ``tiny_run`` bit for bit.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

LOGGER = logging.getLogger(__name__)

pytestmark = pytest.mark.slow


def test_kills_hit_training_and_reconstruction(resumed_run: Any) -> None:
    training, reconstruction = resumed_run.kills
    assert training.phase == "training" and reconstruction.phase == "reconstruction"
    assert any("/models/" in m for m in training.marked_incomplete), training.marked_incomplete
    assert not training.shards
    assert 0 < len(reconstruction.shards) < len(resumed_run.expected_shards)


@pytest.mark.parametrize("which", [0, 1], ids=["training", "reconstruction"])
def test_kill_leaves_no_partial_file_under_a_final_name(resumed_run: Any, which: int) -> None:
    kill = resumed_run.kills[which]
    assert kill.checked > 0
    assert kill.unreadable == {}, f"unreadable files under final names: {kill.unreadable}"
    # Complete files only: whatever exists under a final name equals the finished run's file.
    assert kill.differing == [], (
        f"files under final names differ from the uninterrupted run (partial content, or a "
        f"run that is not deterministic): {[str(p) for p in kill.differing]}"
    )
    # Leftover temp files are hidden (".name.XXXX.ext") and so never match an output pattern.
    assert all(p.name.startswith(".") for p in kill.hidden_temp_files)
    assert kill.unlock.returncode == 0
    LOGGER.info(
        "kill in %s after %.1f s: %d files loaded and matched the uninterrupted run; "
        "%d hidden temp files left %s; marked incomplete: %s",
        kill.phase,
        kill.after_s,
        kill.checked,
        len(kill.hidden_temp_files),
        [str(p) for p in kill.hidden_temp_files],
        sorted(kill.marked_incomplete),
    )


def test_resuming_needs_no_rerun_incomplete_after_a_training_kill(resumed_run: Any) -> None:
    """Atomic outputs: a job killed mid-way leaves nothing under a final name to re-vet.

    (After the reconstruction kill the flag may be needed: a shard whose rename happened but
    whose job snakemake had not yet booked is complete and still marked; it is recomputed.)
    """
    assert resumed_run.rerun_args[0] == (), (
        "a training job killed mid-way left final-named outputs that snakemake marks "
        f"incomplete: {sorted(resumed_run.kills[0].marked_incomplete)}"
    )


def test_finished_outputs_are_not_recomputed(resumed_run: Any, e2e: SimpleNamespace) -> None:
    run = resumed_run
    kept = 0
    for kill in run.kills:
        assert kill.complete, f"nothing was complete at the {kill.phase} kill"
        for rel, state in kill.complete.items():
            path = run.work / rel
            assert path.stat().st_mtime_ns == state.mtime_ns, f"{rel} was rewritten"
            assert e2e.sha256(path) == state.sha256, f"{rel} changed"
            kept += 1
    assert e2e.recon_shards(run.work) == run.expected_shards
    finished_shards = [
        p for p in run.kills[1].shards if p in run.kills[1].complete
    ]  # final and booked at the reconstruction kill
    assert finished_shards
    final_jobs = run.rerun.job_counts()
    assert final_jobs.get("reconstruct", 0) == len(run.expected_shards) - len(finished_shards), (
        f"the resume recomputed {final_jobs.get('reconstruct', 0)} shards; expected "
        f"{len(run.expected_shards)} - {len(finished_shards)} kept. Jobs: {final_jobs}"
    )
    second_jobs = run.restarts[0].job_counts()
    LOGGER.info(
        "restart after the training kill planned %d jobs %s; resume after the reconstruction "
        "kill ran %d jobs %s (%s, %.1f s); %d of %d shards kept; %d file states unchanged",
        second_jobs.get("total", 0),
        second_jobs,
        final_jobs.get("total", 0),
        final_jobs,
        run.rerun_args,
        run.rerun.seconds,
        len(finished_shards),
        len(run.expected_shards),
        kept,
    )


def test_resumed_results_equal_uninterrupted_run(
    resumed_run: Any, tiny_run: Any, e2e: SimpleNamespace
) -> None:
    tables = e2e.score_tables(tiny_run.work)
    assert len(tables) == 6, tables
    assert e2e.score_tables(resumed_run.work) == tables
    compared = e2e.compare_bytes(tiny_run.work, resumed_run.work, [*tables, e2e.METRICS])
    LOGGER.info("%d score tables + metrics.csv: %d bytes identical", len(tables), compared)
