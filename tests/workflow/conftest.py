"""Snakemake calls shared by the workflow tests: each distinct command runs once per session.

A test module lists the fixed commands its tests run (no temporary paths) in ``DRY_RUNS``; the
session fixture :func:`dry_runs` runs those of every module with a selected test one after the
other in a background thread, while the tests run their other snakemake calls: two
single-threaded processes (parse + DAG, ~6 s each) for two cores, so timed calls are not slowed
by a third. ``get(*args)`` returns the finished call; a call still queued is taken back and run
by the test itself, as is any other command. Tests that call the same command (the tiny and
ImageNet DAGs) share one run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from snakemake_cli import snakemake

LOGGER = logging.getLogger(__name__)
WORKERS = 1  # background processes; the test's own calls are the second


@dataclass(frozen=True)
class DryRun:
    """One finished snakemake call."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float  # of the call itself (it may have shared the CPU with the tests)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class DryRuns:
    """Snakemake calls in the checkout, each distinct argument list run once."""

    def __init__(self, repo: Path, pool: ThreadPoolExecutor) -> None:
        self.repo = repo
        self.pool = pool
        self.runs: dict[tuple[str, ...], Future[DryRun]] = {}
        self.used: set[tuple[str, ...]] = set()

    def _call(self, args: tuple[str, ...]) -> DryRun:
        start = time.perf_counter()
        proc = snakemake(self.repo, *args)
        return DryRun(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)

    def start(self, *args: str) -> None:
        """Queue ``snakemake *args`` unless it was queued before."""
        if args not in self.runs:
            self.runs[args] = self.pool.submit(self._call, args)

    def get(self, *args: str) -> DryRun:
        """The finished ``snakemake *args``: run here unless the background already started it."""
        self.used.add(args)
        queued = self.runs.get(args)
        if queued is None or queued.cancel():
            done: Future[DryRun] = Future()
            done.set_result(self._call(args))
            self.runs[args] = done
        return self.runs[args].result()


@pytest.fixture(scope="session")
def dry_runs(repo_root: Path, request: pytest.FixtureRequest) -> Iterator[DryRuns]:
    """Session cache of snakemake calls; prefetches the ``DRY_RUNS`` of the selected modules."""
    modules = {item.module for item in request.session.items if item.module is not None}
    wanted = [
        tuple(args)
        for module in sorted(modules, key=lambda m: m.__name__)
        for args in getattr(module, "DRY_RUNS", ())
    ]
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="dry-run") as pool:
        runs = DryRuns(repo_root, pool)
        for args in wanted:
            runs.start(*args)
        yield runs
        unused = sorted(set(wanted) - runs.used)
        if unused:  # a stale DRY_RUNS entry only costs time; say so
            LOGGER.warning("prefetched snakemake calls no test asked for: %s", unused)
