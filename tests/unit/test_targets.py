"""The registry of targets (diffguard.targets): every figure and table declared once, and what
reads it (rules, report captions, the paper's floats, plot_all) agrees with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diffguard import targets
from diffguard.paper import FIGURE_CAPTIONS, figure_blocks
from diffguard.settings import FIGURE_A, FIGURE_B

REPO = Path(__file__).resolve().parents[2]
RULE = re.compile(r"^\s*(?:rule|checkpoint) (\w+):", re.MULTILINE)


def defined_rules() -> set[str]:
    return {m for p in (REPO / "workflow/rules").glob("*.smk") for m in RULE.findall(p.read_text())}


def test_every_figure_names_an_existing_rule_script_and_caption() -> None:
    rules = defined_rules()
    assert len(targets.FIGURE) == len(targets.FIGURES)  # stems are unique
    for figure in targets.FIGURES:
        assert figure.rule in rules, figure
        assert (REPO / "workflow/scripts" / figure.script).is_file(), figure
        assert (REPO / "workflow/report" / figure.report_caption).is_file(), figure
        assert figure.paper_caption and figure.width.endswith(r"\linewidth"), figure
    for table in targets.TABLES:
        assert table.rule in rules, table
        if table.report_caption is not None:
            assert (REPO / "workflow/report" / table.report_caption).is_file(), table


def test_every_report_caption_file_belongs_to_a_target() -> None:
    used = {f.report_caption for f in targets.FIGURES}
    used |= {t.report_caption for t in targets.TABLES if t.report_caption}
    # the workflow's own caption (Snakefile) and the paper's (rule build_paper)
    used |= {"workflow.rst", "paper.rst"}
    assert {p.name for p in (REPO / "workflow/report").glob("*.rst")} == used


def test_paper_captions_and_plot_all_come_from_the_registry() -> None:
    from diffguard import plotting

    assert list(FIGURE_CAPTIONS) == [f.stem for f in targets.FIGURES]
    assert targets.rule_figures("plot_figures") == plotting.FIGURES
    assert (FIGURE_A, FIGURE_B) == (targets.FIG2_PANEL_A, targets.FIG2_PANEL_B)
    assert set(targets.rule_figures("plot_fig2")) == {FIGURE_A, FIGURE_B}


def test_paper_floats_name_the_script_and_rule() -> None:
    text = figure_blocks(["sweeps", "training_curves"])
    assert r"\figscript{plot\_report\_figures.py}{plot\_sweeps}" in text
    assert r"\figscript{plot\_figures.py}{plot\_figures}" in text
    assert text.count(r"\figscript") == 2
    assert r"\newcommand{\figscript}" in (REPO / "paper/ms.tex").read_text().replace(
        "DeclareRobustCommand", "newcommand"
    )


@pytest.mark.parametrize(
    ("trains", "report", "noisy", "expected"),
    [
        (True, {}, None, ["score_histograms", "roc_curves", "recon_grid", "training_curves"]),
        (False, {}, None, ["score_histograms", "roc_curves", "recon_grid"]),
        (
            False,
            {
                "sweeps": {"a": {}},
                "psnr_inversion": {"experiment": "x"},
                "ablation_grid": {"rows": {"a": "x"}},
            },
            False,
            [
                "score_histograms",
                "roc_curves",
                "recon_grid",
                "ablation_grid",
                "psnr_inversion",
                "sweeps",
                "accuracy_over_timesteps",
            ],
        ),
        (True, {}, True, None),
    ],
)
def test_run_figures(trains: bool, report: dict, noisy: bool | None, expected) -> None:
    got = targets.run_figures(trains_models=trains, report_figures=report, fig2_noisy=noisy)
    if expected is None:  # both Fig. 2 panels, in registry order
        expected = [f.stem for f in targets.FIGURES if f.rule in ("plot_figures", "plot_fig2")]
    assert got == expected


def test_table_files() -> None:
    assert targets.TABLE["speed"].files("r") == {
        "csv": "data/processed/r/speed.csv",
        "md": "data/processed/r/speed.md",
        "tex": "paper/tables/speed.tex",
    }
    assert targets.TABLE["paper_table"].files("r", "table2")["csv"] == (
        "data/processed/r/tables/table2.csv"
    )
    assert targets.figure_files("r", ["sweeps"]) == ["figures/r/sweeps.pdf", "figures/r/sweeps.png"]
