"""The reference-fixture checks pass on every ATen CPU kernel, not only the one this CPU picks.

``ATEN_CPU_CAPABILITY`` is read when torch is imported, so each kernel runs in a subprocess. On a
CPU without AVX-512 (or AVX2) torch falls back silently; the capability that ran is logged.
Measured cost here: see the comment on CHEAP_FIXTURE_TESTS.
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
# The guided-sampling checks carry the tightest fixture bound (stage tolerance) and are the
# cheapest fixture tests; the end-to-end ones only add a longer inversion.
CHEAP_FIXTURE_TESTS = "tests/unit/test_gdm_fixture.py::test_guided_sampling_reproduced_batched"
RUNNER = (
    "import sys, torch, pytest; "
    "print('cpu capability:', torch.backends.cpu.get_cpu_capability(), flush=True); "
    "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', sys.argv[1]]))"
)


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_fixture_checks_pass_on_every_cpu_kernel(capability: str) -> None:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, CHEAP_FIXTURE_TESTS],
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
        f"{CHEAP_FIXTURE_TESTS} failed with ATEN_CPU_CAPABILITY={capability} ({ran}):\n"
        f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    )
