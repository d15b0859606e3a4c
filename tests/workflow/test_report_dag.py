"""The report layer in the DAG: which paper tables, figures and check rules each shipped config
plans (driven by config/report/<run>.yaml), and report-section errors named at parse time."""

from __future__ import annotations

from pathlib import Path

import pytest
from snakemake_cli import job_counts, snakemake

REPORT_RULES = (
    "render_tables",
    "render_paper_tables",
    "reproduction_check",
    "reproduction_gate",
    "plot_figures",
    "plot_sweeps",
    "plot_ablation_grid",
    "plot_psnr_inversion",
    "write_paper_numbers",
    "build_paper",
)


def _dry_run(repo: Path, *args: str) -> tuple[int, str]:
    proc = snakemake(repo, "-n", "--forceall", *args)
    return proc.returncode, proc.stdout + proc.stderr


def _config_args(configfile: str) -> tuple[str, ...]:
    """Dry-run arguments for a shipped config; the default one is loaded by the Snakefile
    itself (the same call as test_dag.py's default DAG, so the run is shared)."""
    if configfile == "config/config.yaml":
        return ("-n", "--forceall")
    return ("-n", "--forceall", "--configfile", configfile)


EMBEDDED_REPORT_RULES = {
    "render_tables",
    "reproduction_check",
    "reproduction_gate",
    "plot_figures",
    "plot_ablation_grid",
    "plot_psnr_inversion",
    "write_paper_numbers",
    "build_paper",
}
"""Report rules of the tiny config (and of the digits config, the embedded default before
issue 15)."""
# config -> report rules planned once (the others: not at all)
EXPECTED = {
    # the mnist default: no Fig. 4 (its GDM runs a fixed depth, no inversion trace)
    "config/config.yaml": EMBEDDED_REPORT_RULES - {"plot_psnr_inversion"},
    "config/tiny.yaml": EMBEDDED_REPORT_RULES,
    "config/imagenet.yaml": set(REPORT_RULES),
    # CIFAR-10 has no GDM (DiffNB's CFG only): no Fig. 4
    "config/cifar10.yaml": set(REPORT_RULES)
    - {"plot_sweeps", "plot_ablation_grid", "plot_psnr_inversion"},
}


# Started in the background by the dry_runs fixture (conftest.py), shared with other modules.
DRY_RUNS = [_config_args(c) for c in sorted(EXPECTED)]


@pytest.mark.parametrize("configfile", sorted(EXPECTED))
def test_report_rules_per_config(dry_runs, configfile: str) -> None:
    result = dry_runs.get(*_config_args(configfile))
    rc, output = result.returncode, result.output
    assert rc == 0, output[-4000:]
    counts = job_counts(output)
    planned = {rule for rule in REPORT_RULES if counts.get(rule)}
    assert planned == EXPECTED[configfile], (planned, counts)
    assert all(counts[rule] == 1 for rule in planned)
    # the paper waits for the reproduction gate
    build = output.split("rule build_paper:")[1].split("\n\n")[0]
    assert "check/gate.txt" in build


def test_imagenet_paper_tables_and_figures_are_targets(dry_runs) -> None:
    result = dry_runs.get(*_config_args("config/imagenet.yaml"))
    rc, output = result.returncode, result.output
    assert rc == 0, output[-4000:]
    for name in ("table2_imagenet", "table3_clean_grad_ablation", "table4_early_stop_ablation"):
        for path in (f"paper/tables/{name}.tex", f"data/processed/imagenet/tables/{name}.md"):
            assert path in output, path
    for path in (
        "figures/imagenet/sweeps.pdf",
        "figures/imagenet/ablation_grid.pdf",
        "figures/imagenet/psnr_inversion.pdf",
    ):
        assert path in output, path
    assert "figures/imagenet/training_curves.pdf" not in output  # no trained model


def test_report_section_errors_name_the_key(repo_root: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.yaml"
    report.write_text(
        "report:\n  figures:\n    sweeps:\n      s: {experiment: nope, setting: cfg.x}\n"
    )
    rc, output = _dry_run(
        repo_root, "--configfile", "config/tiny.yaml", "--config", f"report_config={report}"
    )
    assert rc != 0 and "'nope' does not exist" in output
    report.write_text("report:\n  tables:\n    t: {rowz: {}}\n")
    rc, output = _dry_run(
        repo_root, "--configfile", "config/tiny.yaml", "--config", f"report_config={report}"
    )
    assert rc != 0 and "rowz" in output
    rc, output = _dry_run(
        repo_root, "--configfile", "config/tiny.yaml", "--config", "report_config=missing.yaml"
    )
    assert rc != 0 and "missing.yaml does not exist" in output
    report.write_text("report:\n  figures:\n    psnr_inversion: {experiment: gdm_main}\n")
    rc, output = _dry_run(
        repo_root, "--configfile", "config/tiny.yaml", "--config", f"report_config={report}"
    )
    assert rc != 0 and "psnr_inversion.experiment: 'gdm_main' is not an experiment" in output
