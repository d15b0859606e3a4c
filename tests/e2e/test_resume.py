"""Kill and resume: SIGKILL the tiny workflow in training and in reconstruction, then rerun it.

The ``resumed_run`` fixture (``conftest.py``) starts the tiny workflow from scratch, SIGKILLs
its whole process group 5 s into a training job, restarts it, SIGKILLs it again once some but
not all reconstruction shards are final, and resumes it to the end. The tests check, with the
uninterrupted ``tiny_run`` as reference, that:

- right after each kill, every final-named output loads and equals the reference's bytes (no
  partial file under a final name);
- the restarts recompute nothing that was finished (same mtime and sha256 at the end) and the
  last rerun runs exactly the missing shards;
- every output of the resumed run equals the uninterrupted run's, bit for bit (CPU).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

LOGGER = logging.getLogger(__name__)

pytestmark = pytest.mark.slow


def test_kills_leave_no_partial_file_under_a_final_name(resumed_run, e2e: SimpleNamespace) -> None:
    training, reconstruction = resumed_run.kills
    assert training.phase == "training" and reconstruction.phase == "reconstruction"
    for kill in resumed_run.kills:
        assert kill.unlock.returncode == 0, kill.unlock.output[-2000:]
        assert kill.checked > 0, f"nothing was written before the kill in {kill.phase}"
        assert not kill.unreadable, f"kill in {kill.phase}: unreadable outputs {kill.unreadable}"
        assert not kill.differing, (
            f"kill in {kill.phase}: final-named outputs differ from the uninterrupted run "
            f"(partial or nondeterministic): {kill.differing}"
        )
        LOGGER.info(
            "kill in %s after %.1f s: %d final outputs loaded and byte-equal to the reference, "
            "%d marked incomplete, %d hidden temp files left",
            kill.phase,
            kill.after_s,
            kill.checked,
            len(kill.marked_incomplete),
            len(kill.hidden_temp_files),
        )
    # The first kill hit a running training job: its outputs were being written.
    assert any("/models/" in name for name in training.marked_incomplete), (
        training.marked_incomplete
    )
    assert not training.shards, "the training kill came after reconstruction had started"
    # The second kill came with some shards final and others missing.
    assert 0 < len(reconstruction.shards) < len(resumed_run.expected_shards)


def test_resume_recomputes_nothing_that_was_finished(resumed_run, tiny_run) -> None:
    work = resumed_run.work
    for kill in resumed_run.kills:
        changed = [
            rel
            for rel, state in kill.complete.items()
            if not (work / rel).is_file() or (work / rel).stat().st_mtime_ns != state.mtime_ns
        ]
        assert not changed, f"outputs finished before the kill in {kill.phase} were rewritten"
    # The last call runs exactly the shards that were missing (or final-named but not yet
    # booked by snakemake when it died), and trains only models that were not finished.
    final_kill = resumed_run.kills[-1]
    jobs = resumed_run.rerun.job_counts()
    kept = [s for s in final_kill.shards if str(s) not in final_kill.marked_incomplete]
    missing = len(resumed_run.expected_shards) - len(kept)
    assert jobs.get("reconstruct", 0) == missing, (jobs, missing)
    trained = {p.parent.name for p in final_kill.complete if p.name == "model.done"}
    models = tiny_run.files("data/interim/*/models/*/model.done")
    assert jobs.get("train_diffusion", 0) == len(models) - len(trained), (jobs, trained)
    LOGGER.info(
        "resume after the reconstruction kill: %d of %d shards kept, %d recomputed, "
        "%.1f s, jobs %s",
        len(kept),
        len(resumed_run.expected_shards),
        missing,
        resumed_run.rerun.seconds,
        jobs,
    )


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(
    resumed_run, tiny_run, e2e: SimpleNamespace
) -> None:
    reference = e2e.output_files(tiny_run.work)
    resumed = e2e.output_files(resumed_run.work)
    assert resumed == reference, (
        f"only in the resumed run: {sorted(set(resumed) - set(reference))}; "
        f"only in the uninterrupted run: {sorted(set(reference) - set(resumed))}"
    )
    scores = e2e.score_tables(tiny_run.work)
    assert scores and e2e.METRICS in map(str, reference)
    compared = e2e.compare_bytes(tiny_run.work, resumed_run.work, reference)
    checked, unreadable = e2e.unreadable_outputs(resumed_run.work)
    assert not unreadable, unreadable
    LOGGER.info(
        "resumed == uninterrupted: %d files (%d score tables), %d bytes identical",
        len(reference),
        len(scores),
        compared,
    )
    assert checked == len(reference)
    assert (
        Path(resumed_run.work / e2e.METRICS).read_bytes()
        == (tiny_run.work / e2e.METRICS).read_bytes()
    )
