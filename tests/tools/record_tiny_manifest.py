"""Record the tiny run's output fingerprints (``tests/e2e/tiny_outputs.json``).

The manifest pins what the tiny workflow (``config/tiny.yaml``, target ``metrics.csv``, as the
e2e ``tiny_run`` fixture runs it) writes at one commit, on this machine's platform: a sha256 per
output (one per benchmark image folder) and numeric summaries (see ``output_manifest.py`` for
what is fingerprinted, what is left out and why). ``tests/e2e/test_redesign_identity.py``
compares every later tiny run against it.

    # run the tiny workflow from a checkout (default: this one) in a temporary folder
    .venv/bin/python tests/tools/record_tiny_manifest.py --checkout /work/wt-base
    # or fingerprint a run folder that already finished (made by copy_repo from --checkout)
    .venv/bin/python tests/tools/record_tiny_manifest.py --checkout /work/wt-base --run-dir DIR

Re-record only on purpose: when a change is *meant* to alter the tiny run's outputs (say so in
the commit), never to make a failing identity test pass.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
MANIFEST = TESTS / "e2e" / "tiny_outputs.json"
log = logging.getLogger("record_tiny_manifest")

sys.path[:0] = [str(TESTS), str(ROOT / "workflow" / "scripts")]
from tools import output_manifest as om  # noqa: E402


def e2e_helpers(checkout: Path) -> ModuleType:
    """``tests/e2e/conftest.py`` of ``checkout`` as a module (its copy and run helpers)."""
    spec = importlib.util.spec_from_file_location(
        "e2e_conftest", checkout / "tests/e2e/conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def manifest(work: Path, checkout: Path, helpers: ModuleType) -> dict[str, Any]:
    """The manifest of the finished run in ``work`` (copied from ``checkout``)."""
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        "version": om.MANIFEST_VERSION,
        "commit": commit,
        "config": helpers.TINY,
        "target": helpers.METRICS,
        "platform": om.platform_facts(om.job_threads(work), helpers.run_env(work)),
        "outputs": om.fingerprint_run(work, helpers.repo_files(checkout)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkout", type=Path, default=ROOT, help="repository to run (default: this)"
    )
    parser.add_argument("--run-dir", type=Path, help="a finished run folder to fingerprint instead")
    parser.add_argument("--output", type=Path, default=MANIFEST)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    checkout = args.checkout.resolve()
    helpers = e2e_helpers(checkout)
    if args.run_dir is None:
        dest = Path(tempfile.mkdtemp(prefix="tiny-manifest-"))
        work = helpers.copy_repo(dest, checkout)
        result = helpers.snakemake(work, "--cores", "2", helpers.METRICS)
        log.info("tiny run in %.1f s: %s", result.seconds, result.job_counts())
    else:
        work = args.run_dir.resolve()
    if not (work / helpers.METRICS).is_file():
        raise FileNotFoundError(
            f"{work / helpers.METRICS}: the run folder has no metrics; did it finish?"
        )
    data = manifest(work, checkout, helpers)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(args.output)
    log.info(
        "wrote %s: %d entries from %s (commit %s)",
        args.output,
        len(data["outputs"]),
        work,
        data["commit"][:7],
    )


if __name__ == "__main__":
    main()
