"""Kill-and-resume: SIGKILL the tiny workflow mid-reconstruction, then finish it.

The fixture ``resumed_run`` (tests/e2e/conftest.py) starts the workflow in its own process
group, waits until some but not all reconstruction shards exist, kills the whole group with
SIGKILL, unlocks and reruns. These tests check that the kill left no partial file under a final
name, that finished shards were kept (not recomputed), and that the resumed run's results equal
those of the uninterrupted run ``tiny_run`` bit for bit.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

LOGGER = logging.getLogger(__name__)

pytestmark = pytest.mark.slow


def test_kill_leaves_no_partial_file_under_a_final_name(resumed_run: Any) -> None:
    run = resumed_run
    assert run.at_kill, "the kill came before any shard was final"
    assert len(run.at_kill) < len(run.expected_shards), "the kill came after the last shard"
    assert run.checked_at_kill > len(run.at_kill)
    assert run.unreadable_at_kill == {}, (
        f"partial files under final names: {run.unreadable_at_kill}"
    )
    # Leftover temp files are hidden (".name.XXXX.ext") and so never match an output pattern.
    for rel in run.hidden_temp_files:
        assert rel.name.startswith("."), rel
    LOGGER.info(
        "kill after %.1f s: %d outputs loaded fine, %d of %d shards final, %d hidden temp files "
        "left (%s), %d outputs marked incomplete",
        run.killed_after_s,
        run.checked_at_kill,
        len(run.at_kill),
        len(run.expected_shards),
        len(run.hidden_temp_files),
        [str(p) for p in run.hidden_temp_files],
        len(run.marked_incomplete),
    )


def test_unlock_after_kill_succeeds(resumed_run: Any) -> None:
    assert resumed_run.unlock.returncode == 0
    assert "Unlock" in resumed_run.unlock.output or "unlock" in resumed_run.unlock.output.lower()


def test_finished_shards_are_not_recomputed(resumed_run: Any, e2e: SimpleNamespace) -> None:
    run = resumed_run
    kept = run.complete_at_kill
    assert kept, "no shard was complete (final and unmarked) at the kill"
    for rel, state in kept.items():
        path = run.work / rel
        stat = path.stat()
        assert stat.st_mtime_ns == state.mtime_ns, f"{rel} was rewritten by the resumed run"
        assert e2e.sha256(path) == state.sha256, f"{rel} changed in the resumed run"
    assert e2e.recon_shards(run.work) == run.expected_shards
    jobs = run.rerun.job_counts()
    rerun_shards = jobs.get("reconstruct", 0)
    assert rerun_shards == len(run.expected_shards) - len(kept), (
        f"resumed run recomputed {rerun_shards} shards; expected "
        f"{len(run.expected_shards)} - {len(kept)} kept. Jobs: {jobs}"
    )
    LOGGER.info(
        "resume%s: %d jobs rerun (%s), %d of %d shards kept, %.1f s",
        f" with {' '.join(run.rerun_args)}" if run.rerun_args else "",
        sum(v for k, v in jobs.items() if k != "total"),
        jobs,
        len(kept),
        len(run.expected_shards),
        run.rerun.seconds,
    )


def test_resumed_results_equal_uninterrupted_run(
    resumed_run: Any, tiny_run: Any, e2e: SimpleNamespace
) -> None:
    tables = e2e.score_tables(tiny_run.work)
    assert len(tables) == 6, tables
    assert e2e.score_tables(resumed_run.work) == tables
    compared = e2e.compare_bytes(tiny_run.work, resumed_run.work, [*tables, e2e.METRICS])
    LOGGER.info("%d score tables + metrics.csv: %d bytes identical", len(tables), compared)
