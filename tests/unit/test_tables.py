"""Result tables: layout and order, bold best, LaTeX escaping, both FPR@95 conventions named,
published-vs-reproduced arithmetic, files written by render_tables_stage, paper macros."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
from latex_doc import assert_compiles

from diffguard.metrics import METRIC_DEFINITIONS
from diffguard.paper import macro_name, paper_numbers
from diffguard.paper_tables import published_vs_reproduced
from diffguard.tables import (
    FPR_CONVENTIONS,
    NO_PUBLISHED_NOTE,
    metrics_table,
    render_tables_stage,
    to_latex,
    to_markdown,
)
from diffguard.tabular import latex_escape

SETS = (("near_a", "near"), ("far_b", "far"))


def _rows(
    method: str,
    kind: str,
    values: dict[str, tuple[float, float, float]],
    seed: str = "",
    experiment: str = "",
    distance: str = "",
) -> list[dict[str, object]]:
    """Long rows of one method: ``values[dataset] = (auroc, fpr_a, fpr_b)``; adds 'average'."""
    rows = []
    for dataset, role in SETS:
        auroc, fpr_a, fpr_b = values[dataset]
        rows.append(
            {
                "method": method,
                "kind": kind,
                "experiment": experiment,
                "distance": distance,
                "dataset": dataset,
                "role": role,
                "seed": seed,
                "auroc": auroc,
                "aupr_in": auroc - 1,
                "aupr_out": auroc - 2,
                "fpr95_id_recall": fpr_a,
                "fpr95_ood_recall": fpr_b,
            }
        )
    avg = {
        k: sum(r[k] for r in rows) / len(rows)
        for k in ("auroc", "aupr_in", "aupr_out", "fpr95_id_recall", "fpr95_ood_recall")
    }
    rows.append({**rows[0], "dataset": "average", "role": "all", **avg})
    return rows


@pytest.fixture()
def metrics() -> pd.DataFrame:
    """Hand-made long metrics; rows deliberately out of kind order."""
    rows = []
    for seed, values in (
        ("0", {"near_a": (80.0, 40.0, 50.0), "far_b": (90.0, 20.0, 30.0)}),
        ("1", {"near_a": (82.0, 38.0, 48.0), "far_b": (92.0, 22.0, 32.0)}),
    ):
        rows += _rows("DiffGuard (GDM: g, ssim)", "diffguard", values, seed, "g", "ssim")
    rows += _rows("MSP", "baseline", {"near_a": (85.0, 30.0, 60.0), "far_b": (88.0, 25.0, 35.0)})
    rows += _rows(
        "DiffGuard (GDM: g)+KNN [cascade]",
        "combined",
        {"near_a": (86.004, 35.0, 45.0), "far_b": (95.0, 10.0, 12.0)},
        "0",
        "g",
        "ssim",
    )
    rows += _rows(
        "Ours_50%&#", "baseline", {"near_a": (86.0, 29.0, 70.0), "far_b": (70.0, 60.0, 80.0)}
    )
    return pd.DataFrame(rows)


def test_layout_order_and_seed_mean(metrics: pd.DataFrame) -> None:
    table = metrics_table(metrics)
    assert list(table["kind"]) == ["baseline", "baseline", "diffguard", "combined"]
    assert list(table["method"])[:2] == ["MSP", "Ours_50%&#"]  # first appearance within a kind
    value_columns = [
        c for c in table.columns if c not in ("method", "kind", "n_seeds") and not c.endswith("_sd")
    ]
    assert value_columns == [
        "near_a_auroc",
        "near_a_fpr95_id_recall",
        "far_b_auroc",
        "far_b_fpr95_id_recall",
        "average_auroc",
        "average_fpr95_id_recall",
        "average_fpr95_ood_recall",
    ]
    dg = table.set_index("method").loc["DiffGuard (GDM: g, ssim)"]
    assert dg["near_a_auroc"] == pytest.approx(81.0)
    assert dg["near_a_auroc_sd"] == pytest.approx(math.sqrt(2.0))  # sample sd of 80, 82
    assert dg["average_fpr95_ood_recall"] == pytest.approx((50 + 30 + 48 + 32) / 4)
    assert dg["n_seeds"] == 2
    assert table.set_index("method").loc["MSP", "n_seeds"] == 1


def test_missing_average_row_is_computed(metrics: pd.DataFrame) -> None:
    without = metrics[metrics["dataset"] != "average"]
    table = metrics_table(without).set_index("method")
    assert table.loc["MSP", "average_auroc"] == pytest.approx((85 + 88) / 2)


def test_bad_input_names_the_problem(metrics: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="fpr95_ood_recall"):
        metrics_table(metrics.drop(columns="fpr95_ood_recall"))
    with pytest.raises(ValueError, match="'oracle'"):
        metrics_table(metrics.assign(kind="oracle"))


def _latex_rows(tex: str) -> dict[str, list[str]]:
    rows = {}
    for line in tex.splitlines():
        if line.endswith(r"\\") and "&" in line and not line.startswith(("Method", " &")):
            cells = [c.strip() for c in line[:-2].split(" & ")]
            rows[cells[0]] = cells[1:]
    return rows


def test_latex_bold_best_escape_and_conventions(metrics: pd.DataFrame) -> None:
    tex = to_latex(metrics_table(metrics), caption="Main", label="tab:x")
    rows = _latex_rows(tex)
    # escaped method name: one pass, no double escaping
    assert r"Ours\_50\%\&\#" in rows
    msp, ours = rows["MSP"], rows[r"Ours\_50\%\&\#"]
    combined = rows[r"DiffGuard (GDM: g)+KNN [cascade]"]
    # near_a AUROC: 86.004 and 86.0 tie at two decimals -> both bold; MSP's 85 not
    assert combined[0] == r"\textbf{86.00}" and ours[0] == r"\textbf{86.00}"
    assert msp[0] == "85.00"
    # near_a FPR (a): the minimum (29, Ours) is bold, a larger one is not
    assert ours[1] == r"\textbf{29.00}" and msp[1] == "30.00"
    # average FPR (b): minimum is the combination's (45+12)/2 = 28.5
    assert combined[-1] == r"\textbf{28.50}"
    # multi-seed cell: mean +- sd
    assert rows["DiffGuard (GDM: g, ssim)"][0] == r"81.00$\pm$1.41"
    # both conventions: header marks and their definitions
    assert r"FPR@95$^{a}$$\downarrow$" in tex and r"FPR@95$^{b}$$\downarrow$" in tex
    assert "95\\% ID recall" in tex and "95\\% OOD recall" in tex
    assert r"FPR@95TPR, ID positive" in tex and r"OpenOOD $\leq$ 8d44375" in tex
    assert r"FPR@95TPR, OOD positive" in tex and r"OpenOOD $\geq$ 873e8c2" in tex
    assert tex.count(r"\midrule") == 3  # header + two changes of kind
    assert r"\begin{tabular}{lrrrrrrr}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\caption{Main}" in tex and r"\label{tab:x}" in tex


def test_markdown_bold_and_conventions(metrics: pd.DataFrame) -> None:
    md = to_markdown(metrics_table(metrics), notes=["extra note"])
    header = md.splitlines()[0]
    assert "FPR@95 (a)" in header and "FPR@95 (b)" in header
    assert FPR_CONVENTIONS["fpr95_id_recall"] in md
    assert FPR_CONVENTIONS["fpr95_ood_recall"] in md
    assert "- extra note" in md
    msp = next(line for line in md.splitlines() if line.startswith("| MSP "))
    assert "| 85.00 |" in msp and "**" not in msp.split("|")[2]
    assert r"Ours\_50%&#" in md  # underscore escaped against emphasis


def test_aupr_columns_name_their_positive_class(metrics: pd.DataFrame) -> None:
    table = metrics_table(metrics, per_set_metrics=("auroc", "aupr_in", "aupr_out"))
    notes = table.attrs["notes"]
    assert METRIC_DEFINITIONS["aupr_in"] in notes and METRIC_DEFINITIONS["aupr_out"] in notes
    assert not any("AUPR" in note for note in metrics_table(metrics).attrs["notes"])


def test_latex_escape() -> None:
    assert latex_escape(r"a_b%c&d#e$f{g}h~i^j\k") == (
        r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    )
    assert latex_escape("w/o x̂0 ± 1") == r"w/o \^{x}0 $\pm$ 1"
    assert latex_escape("[cascade]").startswith("{}[")


def test_latex_compiles(metrics: pd.DataFrame, tmp_path: Path) -> None:
    """pdfLaTeX (a project requirement, see the Makefile) accepts the table as written."""
    tex = to_latex(metrics_table(metrics), caption="Main", label="tab:x")
    assert_compiles(tex, tmp_path)


def test_published_vs_reproduced_arithmetic(metrics: pd.DataFrame, tmp_path: Path) -> None:
    published = tmp_path / "table9_toy.csv"
    published.write_text(
        "method,near_a_auroc,near_a_auroc_std,near_a_fpr95,far_b_auroc,avg_auroc,avg_fpr95\n"
        "Ours(GDM),80.50,0.18,41.25,91.00,85.75,30.00\n"
        "MSP,84.00,,31.00,87.00,85.50,28.00\n"
    )
    table = metrics_table(metrics)
    out = published_vs_reproduced(
        table, published, {"Ours(GDM)": "DiffGuard (GDM: g, ssim)", "MSP": "MSP"}
    )
    ours = out[out["published_row"] == "Ours(GDM)"].set_index(["dataset", "metric"])
    assert ours.loc[("near_a", "AUROC"), "reproduced"] == pytest.approx(81.0)
    assert ours.loc[("near_a", "AUROC"), "published"] == pytest.approx(80.5)
    assert ours.loc[("near_a", "AUROC"), "delta"] == pytest.approx(0.5)
    assert ours.loc[("near_a", "AUROC"), "published_sd"] == pytest.approx(0.18)
    # FPR@95 is matched to convention (a)
    assert ours.loc[("near_a", "FPR@95"), "reproduced"] == pytest.approx(39.0)
    assert ours.loc[("near_a", "FPR@95"), "delta"] == pytest.approx(39.0 - 41.25)
    assert ours.loc[("near_a", "FPR@95"), "convention"] == "a"
    # avg -> average
    assert ours.loc[("average", "AUROC"), "reproduced"] == pytest.approx((81 + 91) / 2)
    assert ours.loc[("average", "AUROC"), "delta"] == pytest.approx(86.0 - 85.75)
    msp = out[out["published_row"] == "MSP"].set_index(["dataset", "metric"])
    assert msp.loc[("far_b", "AUROC"), "delta"] == pytest.approx(88.0 - 87.0)
    assert math.isnan(msp.loc[("near_a", "AUROC"), "published_sd"])
    # the long frame gives the same result as the wide table
    same = published_vs_reproduced(metrics, published, {"MSP": "MSP"})
    pd.testing.assert_frame_equal(
        same.reset_index(drop=True), out[out["published_row"] == "MSP"].reset_index(drop=True)
    )
    with pytest.raises(KeyError, match="no published row"):
        published_vs_reproduced(table, published, {"Nope": "MSP"})
    with pytest.raises(KeyError, match="not in the reproduced table"):
        published_vs_reproduced(table, published, {"MSP": "Nope"})


def test_published_sets_the_run_lacks_stay_empty(metrics: pd.DataFrame, tmp_path: Path) -> None:
    published = tmp_path / "table9_toy.csv"
    published.write_text("method,near_a_auroc,missing_set_auroc,avg_auroc\nMSP,84.00,70.00,77.00\n")
    out = published_vs_reproduced(metrics_table(metrics), published, {"MSP": "MSP"})
    out = out.set_index("dataset")
    assert out.loc["near_a", "delta"] == pytest.approx(1.0)
    # a set the run did not evaluate, and hence the average: nothing compared, nothing invented
    for dataset in ("missing_set", "average"):
        assert math.isnan(out.loc[dataset, "reproduced"])
        assert math.isnan(out.loc[dataset, "delta"])
        assert out.loc[dataset, "published"] > 0


def test_published_multi_key_rows(metrics: pd.DataFrame, tmp_path: Path) -> None:
    published = tmp_path / "table4_toy.csv"
    published.write_text(
        "psnr_threshold_paper_units,dists_threshold,near_a_auroc\n6.39,,70.0\n,0.37,71.0\n"
    )
    out = published_vs_reproduced(
        metrics_table(metrics), published, {"dists_threshold=0.37": "MSP"}
    )
    assert out["published"].tolist() == [71.0]
    assert out["delta"].tolist() == [pytest.approx(85.0 - 71.0)]


def test_render_tables_writes_every_format(metrics: pd.DataFrame, tmp_path: Path) -> None:
    """The main table in every format; without a note it says there is no published analogue
    (published-vs-reproduced numbers are the paper tables: test_reproduction.py)."""
    metrics_csv = tmp_path / "metrics.csv"
    metrics.to_csv(metrics_csv, index=False)
    written = render_tables_stage(
        metrics_csv, tmp_path / "csv", tmp_path / "tex", tmp_path / "md", run="toy_run"
    )
    names = sorted(p.relative_to(tmp_path).as_posix() for p in written)
    assert names == ["csv/main_results.csv", "md/main_results.md", "tex/main_results.tex"]
    main = pd.read_csv(tmp_path / "csv/main_results.csv")
    assert main.loc[main["method"] == "MSP", "average_auroc"].item() == pytest.approx(86.5)
    assert r"toy\_run" in (tmp_path / "tex/main_results.tex").read_text()
    assert not list(tmp_path.rglob(".*.tmp")) and not list(tmp_path.rglob(".main*"))
    assert NO_PUBLISHED_NOTE in (tmp_path / "md/main_results.md").read_text()
    assert "no published counterpart" in (tmp_path / "tex/main_results.tex").read_text()

    out = tmp_path / "noted"
    render_tables_stage(metrics_csv, out, out, out, note="See Table 2 of the paper.")
    assert "- See Table 2 of the paper." in (out / "main_results.md").read_text()
    assert NO_PUBLISHED_NOTE not in (out / "main_results.md").read_text()


def test_paper_numbers_macros(metrics: pd.DataFrame) -> None:
    text = paper_numbers(
        metrics,
        run="toy_run",
        figure_dir="../figures/toy_run",
        counts={"test_id": 10, "near_a": 4, "far_b": 6},
        runtime_s=300.0,
        settings={"g": ("gdm", {"uncond_aux": True, "psnr_peak": 255.0, "cam_cut": 0.2})},
        headline=("g", "ssim"),
    )
    macros = dict(re.findall(r"\\newcommand\{\\(\w+)\}\{([^\n]*)\}", text))
    assert macros["runName"] == r"toy\_run"
    assert macros["figdir"] == "../figures/toy_run"
    assert macros["bestDiffGuardAUROC"] == "86.00"  # mean over seeds of (85, 87)
    assert macros["bestBaselineMethod"] == "MSP"  # 86.5 > Ours_50%&#'s 78.0
    assert macros["bestBaselineAUROC"] == "86.50"
    assert macros["bestCombinedAUROC"] == "90.50"
    assert macros["bestDiffGuardNearAUROC"] == "81.00"
    assert macros["bestBaselineNearMethod"] == r"Ours\_50\%\&\#"
    assert macros["headlineAUROC"] == "86.00"
    assert macros["bestOracleAUROC"] == "--"  # no oracle experiment: defined, not invented
    assert macros["nImagesID"] == "10" and macros["nImagesOOD"] == "10"
    assert macros["nImagesNearA"] == "4"
    assert macros["totalRuntime"] == r"5.0\,min"
    assert macros["nSeeds"] == "2"
    assert NO_PUBLISHED_NOTE[:40] in text
    assert r"\texttt{gdm.\allowbreak{}uncond\_\allowbreak{}aux}" in text
    assert all(name.isalpha() for name in macros)


def test_macro_name() -> None:
    assert macro_name("near_digits") == "NearDigits"
    assert macro_name("cifar10") == "CifarOneZero"
    with pytest.raises(ValueError):
        macro_name("_-_")
