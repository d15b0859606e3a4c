"""The reproduction check: every published cell of the paper tables within its band.

The paper tables (:mod:`diffguard.paper_tables`, configured by :mod:`diffguard.report_config`)
write one comparison CSV each; the check compares every published cell with its reproduction
inside a band ``max(tolerance[metric], sd_factor * max(published SD, reproduced SD))`` and
labels it ``pass``, ``fail`` or ``missing`` (not reproduced by this run). A run without
configured paper tables gets one explicit ``not applicable`` row, never a pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffguard.io import write_csv, write_text
from diffguard.paper_tables import has_published
from diffguard.tables import FPR_CONVENTIONS
from diffguard.tabular import (
    LEFT,
    RIGHT,
    latex_escape,
    latex_float,
    latex_tabular,
    markdown_table,
    value_cell,
)

log = logging.getLogger(__name__)

STATUSES = ("pass", "fail", "missing", "not applicable")
"""Per-cell statuses of the check."""

DEFAULT_TOLERANCE = {"auroc": 1.0, "fpr95": 3.0}
"""Absolute tolerance in percentage points per published metric (``auroc``, ``fpr95``)."""

DEFAULT_SD_FACTOR = 2.0
"""Cells with a standard deviation (seeds or published ±) pass within this many SDs."""

CHECK_COLUMNS = [
    "table",
    "published_row",
    "dataset",
    "metric",
    "reproduced",
    "reproduced_sd",
    "n_seeds",
    "published",
    "published_sd",
    "delta",
    "band",
    "status",
]


# --------------------------------------------------------------------------- the check


def _metric_key(metric: str) -> str:
    return "auroc" if metric.upper().startswith("AUROC") else "fpr95"


def check_table(
    comparison: pd.DataFrame,
    table: str,
    *,
    tolerance: Mapping[str, float] | None = None,
    sd_factor: float = DEFAULT_SD_FACTOR,
) -> pd.DataFrame:
    """Pass/fail of every published cell of one table.

    A cell passes when ``|delta| <= band`` with ``band = max(tolerance[metric], sd_factor *
    max(published SD, reproduced SD))`` (missing SDs count as 0); a cell the run did not
    reproduce is ``missing``.
    """
    tol = {**DEFAULT_TOLERANCE, **dict(tolerance or {})}
    unknown = sorted(set(tol) - set(DEFAULT_TOLERANCE))
    if unknown:
        raise ValueError(
            f"report.check tolerance of {table}: unknown metric(s) {unknown}; expected "
            f"{sorted(DEFAULT_TOLERANCE)}"
        )
    rows = []
    for _, r in comparison.iterrows():
        sds = [r.get("published_sd"), r.get("reproduced_sd")]
        sd = max((float(s) for s in sds if s is not None and not pd.isna(s)), default=0.0)
        band = max(float(tol[_metric_key(str(r["metric"]))]), sd_factor * sd)
        if pd.isna(r["reproduced"]):
            status = "missing"
        else:
            status = "pass" if abs(float(r["delta"])) <= band + 1e-9 else "fail"
        convention = r.get("convention")
        # read back from CSV, an empty convention (AUROC) is NaN
        has_convention = isinstance(convention, str) and convention != ""
        metric = str(r["metric"]) + (f" ({convention})" if has_convention else "")
        rows.append(
            {
                "table": table,
                "published_row": r["published_row"],
                "dataset": r["dataset"],
                "metric": metric,
                "reproduced": r["reproduced"],
                "reproduced_sd": r.get("reproduced_sd", np.nan),
                "n_seeds": r.get("n_seeds", np.nan),
                "published": r["published"],
                "published_sd": r.get("published_sd", np.nan),
                "delta": r["delta"],
                "band": band,
                "status": status,
            }
        )
    return pd.DataFrame(rows, columns=CHECK_COLUMNS)


def not_applicable(reason: str) -> pd.DataFrame:
    """The check of a run without published counterpart: one explicit row, never a pass."""
    row = dict.fromkeys(CHECK_COLUMNS, np.nan)
    row.update(table="--", published_row=reason, dataset="", metric="", status="not applicable")
    return pd.DataFrame([row], columns=CHECK_COLUMNS)


def overall_status(check: pd.DataFrame) -> str:
    """``fail`` if any cell failed, else ``incomplete`` if any is missing, ``not applicable``
    when nothing was comparable, else ``pass``."""
    statuses = set(check["status"])
    unknown = statuses - set(STATUSES)
    if unknown:
        raise ValueError(f"check: unknown status(es) {sorted(unknown)}; expected {STATUSES}")
    if "fail" in statuses:
        return "fail"
    if "missing" in statuses:
        return "incomplete"
    if statuses <= {"not applicable"}:
        return "not applicable"
    return "pass"


def summary(check: pd.DataFrame) -> pd.DataFrame:
    """Cells per table and status, plus each table's overall status."""
    rows = []
    for table, group in check.groupby("table", sort=False):
        counts = group["status"].value_counts()
        rows.append(
            {
                "table": table,
                "cells": int((group["status"] != "not applicable").sum()),
                **{s: int(counts.get(s, 0)) for s in ("pass", "fail", "missing")},
                "status": overall_status(group),
            }
        )
    return pd.DataFrame(rows, columns=["table", "cells", "pass", "fail", "missing", "status"])


_SUMMARY_HEADER = ["Table", "Cells", "Pass", "Fail", "Missing", "Status"]


def _summary_cells(check: pd.DataFrame) -> list[list[str]]:
    """Per table: name, cells, pass, fail, missing, status (plain text)."""
    return [
        [str(r[c]) for c in ("table", "cells", "pass", "fail", "missing", "status")]
        for _, r in summary(check).iterrows()
    ]


def check_markdown(check: pd.DataFrame, run: str, settings: str) -> str:
    """Markdown report: overall verdict, per-table summary, then every non-passing cell."""
    verdict = overall_status(check)
    lines = [f"# Reproduction check ({run}): {verdict.upper()}", "", settings, ""]
    lines += markdown_table(
        _SUMMARY_HEADER, _summary_cells(check), [LEFT, RIGHT, RIGHT, RIGHT, RIGHT, LEFT]
    )
    if verdict == "not applicable":
        lines += ["", f"Not applicable: {check['published_row'].iloc[0]}"]
    shown = check[check["status"].isin(["fail", "missing"])]
    if not shown.empty:
        header = ["Table", "Row", "OOD set", "Metric", "Reproduced", "Published", "Delta"]
        rows = [
            [
                str(r["table"]),
                str(r["published_row"]).replace("|", "/"),
                str(r["dataset"]),
                str(r["metric"]),
                value_cell(r["reproduced"], r["reproduced_sd"]),
                value_cell(r["published"], r["published_sd"]),
                "--" if pd.isna(r["delta"]) else f"{r['delta']:+.2f}",
                f"±{r['band']:.2f}",
                str(r["status"]),
            ]
            for _, r in shown.iterrows()
        ]
        lines += ["", "## Cells outside their band or not reproduced", ""]
        lines += markdown_table(
            [*header, "Band", "Status"], rows, [LEFT] * 4 + [RIGHT] * 4 + [LEFT]
        )
    return "\n".join(lines) + "\n"


def check_latex(check: pd.DataFrame, run: str, settings: str) -> str:
    """LaTeX summary of the check for the paper (per table: cells, pass, fail, missing)."""
    verdict = overall_status(check)
    rows = [[latex_escape(c) for c in cells] for cells in _summary_cells(check)]
    tabular = latex_tabular("lrrrrl", [" & ".join(_SUMMARY_HEADER) + r" \\"], rows)
    notes = [latex_escape(str(check["published_row"].iloc[0]))]
    caption = (
        rf"Reproduction check of run \texttt{{{latex_escape(run)}}}: "
        rf"\textbf{{{latex_escape(verdict)}}}. {latex_escape(settings)}"
    )
    return latex_float(
        tabular,
        caption=caption,
        label="tab:check",
        box=None,
        notes=notes if verdict == "not applicable" else (),
        ragged=False,
    )


def reproduction_check_stage(
    comparisons: Mapping[str, str | Path],
    check_config: Mapping[str, Any],
    outputs: Mapping[str, str | Path],
    *,
    run: str,
) -> str:
    """Rule ``reproduction_check``: check every paper table's comparison CSV; write CSV,
    Markdown and LaTeX reports.

    Args:
        comparisons: Table name -> its comparison CSV (from
            :func:`diffguard.paper_tables.render_paper_tables_stage`); empty: the run has no
            published counterpart (``not applicable``).
        check_config: ``report.check``: ``tolerance`` ({auroc, fpr95}), ``sd_factor`` and
            per-table overrides under ``tables.<name>``.
        outputs: ``{"csv", "md", "tex"}`` paths.
        run: Run name.

    Returns:
        The overall status.
    """
    tolerance = {**DEFAULT_TOLERANCE, **dict(check_config.get("tolerance", {}))}
    sd_factor = float(check_config.get("sd_factor", DEFAULT_SD_FACTOR))
    per_table = dict(check_config.get("tables", {}))
    unknown = sorted(set(per_table) - set(comparisons))
    if unknown:
        raise ValueError(
            f"report.check.tables: {unknown} are not paper tables of this run "
            f"({sorted(comparisons)})"
        )
    frames = []
    unpublished = []
    for name, path in comparisons.items():
        override = per_table.get(name, {})
        comparison = pd.read_csv(path, keep_default_na=False, na_values=[""])
        if not has_published(comparison):
            unpublished.append(name)  # a reproduced-only table: nothing to compare
            continue
        frames.append(
            check_table(
                comparison,
                name,
                tolerance={**tolerance, **dict(override.get("tolerance", {}))},
                sd_factor=float(override.get("sd_factor", sd_factor)),
            )
        )
    if frames:
        check = pd.concat(frames, ignore_index=True)
    elif unpublished:
        check = not_applicable(
            f"nothing was published for this run's tables ({', '.join(unpublished)}); "
            "nothing is compared and nothing passes"
        )
    else:
        check = not_applicable(
            "this run has no published counterpart (no report.tables configured); "
            "nothing is compared and nothing passes"
        )
    settings = (
        f"A cell passes when |reproduced - published| <= max(tolerance, {sd_factor:g} x SD), "
        f"SD = the larger of the published and the over-seeds SD; tolerance "
        + ", ".join(f"{k} {v:g}" for k, v in tolerance.items())
        + " percentage points"
        + (f" (overrides: {', '.join(per_table)})" if per_table else "")
        + ". "
        + FPR_CONVENTIONS["fpr95_id_recall"]
        + "."
    )
    write_csv(outputs["csv"], check)
    write_text(outputs["md"], check_markdown(check, run, settings))
    write_text(outputs["tex"], check_latex(check, run, settings))
    status = overall_status(check)
    log.info(
        "reproduction check of %s: %s (%s)", run, status, check["status"].value_counts().to_dict()
    )
    return status


def reproduction_gate_stage(check_csv: str | Path, out: str | Path, *, allow: Sequence[str]) -> str:
    """Rule ``reproduction_gate``: write ``out`` when the check's overall status is allowed;
    raise (logged) otherwise.

    The paper depends on this file, so a failed reproduction stops the paper build (with
    ``--keep-going`` everything else is still built) while the check report itself exists.
    """
    check = pd.read_csv(check_csv, keep_default_na=False, na_values=[""])
    status = overall_status(check)
    if status not in allow:
        bad = check[check["status"].isin(["fail", "missing"])]
        listing = "; ".join(
            f"{r.table}/{r.published_row}/{r.dataset}/{r.metric}: {r.status}"
            for r in bad.head(10).itertuples()
        )
        message = (
            f"reproduction check {check_csv}: status {status!r} (allowed: {list(allow)}); "
            f"{len(bad)} cell(s) not within their band, e.g. {listing}. The report is "
            f"{Path(check_csv).with_suffix('.md')}."
        )
        log.error("reproduction check not passed: %s", message)
        raise RuntimeError(message)
    write_text(out, f"{status}\n")
    log.info("reproduction check status: %s", status)
    return status
