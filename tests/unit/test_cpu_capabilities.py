"""The reference-fixture checks pass on every ATen CPU kernel, not only the one this CPU picks.

``ATEN_CPU_CAPABILITY`` is read when torch is imported, so each kernel runs in a subprocess. On a
CPU without AVX-512 (or AVX2) torch falls back silently; the capability that ran is logged.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
# The checks with the least margin (tests/tools/measure_tolerances.py): guided sampling of both
# cases and the end-to-end early-stop case; one subprocess per kernel runs them together.
FIXTURE_TESTS = [
    "tests/unit/test_gdm_fixture.py::test_guided_sampling_reproduced_batched",
    "tests/unit/test_gdm_fixture.py::test_inversion_and_stop_steps_reproduced_batched"
    "[adaptive_early_stop]",
]
RUNNER = (
    "import sys, torch, pytest; "
    "print('cpu capability:', torch.backends.cpu.get_cpu_capability(), flush=True); "
    "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *sys.argv[1:]]))"
)


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_fixture_checks_pass_on_every_cpu_kernel(capability: str) -> None:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, *FIXTURE_TESTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    ran = next(
        (line for line in proc.stdout.splitlines() if line.startswith("cpu capability:")), "?"
    )
    log.info("ATEN_CPU_CAPABILITY=%s -> %s", capability, ran)
    assert proc.returncode == 0, (
        f"{FIXTURE_TESTS} failed with ATEN_CPU_CAPABILITY={capability} ({ran}):\n"
        f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    )
