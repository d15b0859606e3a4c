"""End to end: the whole workflow on the tiny config, continued from the session's tiny run.

Checks that every artifact exists and is well-formed, that a finished run plans nothing, and
that touching a plotting module reruns only plotting and paper rules (never reconstruction).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from snakemake_cli import local_env

pytestmark = pytest.mark.slow

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = ["--configfile", "config/tiny.yaml"]


def run(repo: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    env = {**local_env(), "SOURCE_DATE_EPOCH": "0"}
    result = subprocess.run(
        [SNAKEMAKE, *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def finished_run(tiny_run, e2e, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole tiny workflow, continued from a clone of the session's ``tiny_run`` (which
    stops at metrics.csv), so the expensive stages run once per test session."""
    repo = e2e.clone_run(tiny_run.work, tmp_path_factory.mktemp("e2e"))
    e2e.snakemake(repo, "--cores", "2")
    e2e.snakemake(repo, "--cores", "2", "--report", "report.html")
    return repo


def test_every_artifact_exists_and_is_well_formed(finished_run: Path) -> None:
    repo = finished_run
    for name in (
        "score_histograms",
        "roc_curves",
        "recon_grid",
        "psnr_inversion",
        "training_curves",
    ):
        pdf = repo / f"figures/tiny/{name}.pdf"
        png = repo / f"figures/tiny/{name}.png"
        assert pdf.read_bytes()[:4] == b"%PDF", pdf
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert (repo / "paper/ms.pdf").read_bytes()[:4] == b"%PDF"
    assert "\\begin{tabular}" in (repo / "paper/tables/main_results.tex").read_text()
    assert "\\newcommand{\\bestDiffGuardAUROC}" in (repo / "paper/numbers.tex").read_text()
    with open(repo / "data/processed/tiny/tables/main_results.csv") as handle:
        rows = list(csv.DictReader(handle))
    methods = {r["method"] for r in rows}
    assert {"MSP", "KNN", "ViM"} <= methods
    assert any(m.startswith("DiffGuard (GDM") for m in methods)
    assert any(m.startswith("DiffGuard (CFG") for m in methods)
    assert any("[cascade]" in m for m in methods)
    for row in rows:
        assert 0 <= float(row["average_auroc"]) <= 100
    notebook = json.loads((repo / "data/processed/tiny/exploration.ipynb").read_text())
    assert any(cell.get("outputs") for cell in notebook["cells"] if cell["cell_type"] == "code")
    assert (repo / "report.html").stat().st_size > 10_000


def test_every_table_number_traces_to_per_image_scores(finished_run: Path) -> None:
    scores = finished_run / "data/processed/tiny/scores/gdm_main/test_id/seed-0.csv"
    with open(scores) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and len({r["image_id"] for r in rows}) == 24
    assert {"image_id", "path", "label", "pred", "score_ssim", "rev_t"} <= set(rows[0])


def test_finished_run_plans_nothing_and_plot_edit_reruns_only_plots(finished_run: Path) -> None:
    repo = finished_run
    dry = run(repo, "-n", *TINY)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    # Snakemake skips inputs whose mtime changed but whose content did not, so edit the module.
    module = repo / "workflow/scripts/diffguard/plotting.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    dry = run(repo, "-n", *TINY)
    planned = dry.stdout
    assert "rule plot_figures" in planned or "localrule plot_figures" in planned
    assert "build_paper" in planned
    assert "rule reconstruct:" not in planned and "localrule reconstruct:" not in planned
    assert "train_diffusion" not in planned
