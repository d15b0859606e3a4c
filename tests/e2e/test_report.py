"""The reproduction check on a real (tiny) run: a paper table configured against published
numbers written by the test (one row equal to the run's own EBO metrics, one 10 points off)
gives pass and fail cells; the gate stops the paper while --keep-going builds the tables."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

LOGGER = logging.getLogger(__name__)


def test_check_fails_gate_but_tables_build(tiny_run, e2e: SimpleNamespace, tmp_path: Path) -> None:
    work = e2e.clone_run(tiny_run.work, tmp_path / "check")
    metrics = pd.read_csv(work / e2e.METRICS, keep_default_na=False, na_values=[""])
    ebo = metrics[(metrics["kind"] == "baseline") & (metrics["baseline"] == "ebo")]
    sets = [d for d in ebo["dataset"] if not d.startswith("average")]
    values = ebo.set_index("dataset")
    published = {"method": ["EBO", "Ours (off by 10)"]}
    for d in sets:
        published[f"{d}_auroc"] = [values.loc[d, "auroc"], values.loc[d, "auroc"] - 10]
        published[f"{d}_fpr95"] = [values.loc[d, "fpr95_id_recall"]] * 2
    (work / "config/published").mkdir(exist_ok=True)
    pd.DataFrame(published).to_csv(work / "config/published/table_tiny.csv", index=False)
    report = work / "config/report/tiny_check.yaml"
    report.write_text(
        "report:\n"
        "  tables:\n"
        "    table_tiny:\n"
        "      rows:\n"
        "        EBO: {baseline: ebo}\n"
        "        Ours (off by 10): {baseline: ebo}\n"
        "  check: {allow: [pass]}\n"
    )
    check_md = f"data/processed/{e2e.RUN}/check/reproduction_check.md"
    table_md = f"data/processed/{e2e.RUN}/tables/table_tiny.md"
    gate = work / f"data/processed/{e2e.RUN}/check/gate.txt"
    result = e2e.snakemake(
        work,
        "--cores",
        "2",
        "--keep-going",
        check_md,
        table_md,
        str(gate.relative_to(work)),
        "--config",  # targets first: --config and --configfile take several values
        f"report_config={report.relative_to(work)}",
        check=False,
    )
    assert result.returncode != 0, "the gate should fail the run"
    assert "reproduction check" in result.output and "status 'fail'" in result.output
    assert not gate.exists()
    check = pd.read_csv(work / f"data/processed/{e2e.RUN}/check/reproduction_check.csv")
    statuses = check.groupby("published_row")["status"].agg(set).to_dict()
    LOGGER.info("check statuses: %s", statuses)
    assert statuses["EBO"] == {"pass"}
    # AUROC 10 points off fails; its FPR cells equal the published ones and pass
    off = check[check["published_row"] == "Ours (off by 10)"]
    assert set(off[off["metric"] == "AUROC"]["status"]) == {"fail"}
    assert set(off[off["metric"] != "AUROC"]["status"]) == {"pass"}
    assert (work / check_md).read_text().startswith("# Reproduction check (tiny): FAIL")
    table = (work / table_md).read_text()
    assert "| EBO |" in table and "+0.00)" in table and "+10.00)" in table
    assert (work / "paper/tables/table_tiny.tex").is_file()
