"""Published-versus-reproduced paper tables and the reproduction check.

A paper table is configured under ``report.tables.<name>`` (see config/report/*.yaml):

.. code-block:: yaml

    table2_imagenet:
      published: table2_imagenet          # config/published/<stem>.csv (default: the name)
      best_of_distances: []               # Table 4: best AUROC over these distances per set
      rows:                               # published row -> which metrics rows reproduce it
        EBO: {baseline: ebo}
        Ours(GDM): {experiment: gdm_main}                  # headline distance
        Ours(GDM)+KNN: {experiment: gdm_main, baseline: knn}  # a combination

Selectors read the columns the ``evaluate`` rule writes (``kind, experiment, distance,
baseline``), never the display names, so renaming a method does not break a table. Several
seeds of a selected experiment become mean ± sample SD.

The check compares every published cell with its reproduction inside a band
``max(tolerance[metric], sd_factor * max(published SD, reproduced SD))`` and labels it
``pass``, ``fail`` or ``missing`` (not reproduced by this run). A run without configured paper
tables gets one explicit ``not applicable`` row, never a pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffguard.io import write_csv, write_text
from diffguard.report_config import (  # noqa: F401  (re-exported; torch-free for parsing)
    load_report_section,
)
from diffguard.tables import (
    FPR_CONVENTIONS,
    NO_PUBLISHED_NOTE,
    comparison_notes,
    latex_escape,
    metric_columns,
    metrics_table,
    published_vs_reproduced,
    read_metrics,
    split_column,
)

log = logging.getLogger(__name__)

STATUSES = ("pass", "fail", "missing", "not applicable")
"""Per-cell statuses of the check."""

DEFAULT_TOLERANCE = {"auroc": 1.0, "fpr95": 3.0}
"""Absolute tolerance in percentage points per published metric (``auroc``, ``fpr95``)."""

DEFAULT_SD_FACTOR = 2.0
"""Cells with a standard deviation (seeds or published ±) pass within this many SDs."""

SELECTOR_KEYS = ("experiment", "distance", "baseline", "method")

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


# --------------------------------------------------------------------------- row selection


def _text(frame: pd.DataFrame, column: str) -> pd.Series:
    """A metrics column as strings, missing cells as ''."""
    if column not in frame:
        return pd.Series([""] * len(frame), index=frame.index)
    return frame[column].fillna("").astype(str)


def select_rows(
    metrics: pd.DataFrame,
    selector: Mapping[str, Any],
    *,
    headline_distance: str,
    best_of_distances: Sequence[str] = (),
) -> pd.DataFrame:
    """Long metrics rows that reproduce one published row.

    Args:
        metrics: Long metrics frame (the ``evaluate`` rule's CSV).
        selector: ``{baseline}`` (a baseline), ``{experiment[, distance]}`` (DiffGuard; the
            headline distance by default), ``{experiment, baseline}`` (their combination) or
            ``{method}`` (an exact method string).
        headline_distance: Distance of a DiffGuard selector without ``distance``.
        best_of_distances: For DiffGuard selectors: best value per OOD set, seed and metric
            over these distances (the paper's Table 4); the average is the mean of those bests.

    Returns:
        The selected rows (possibly empty: the run did not evaluate them).

    Raises:
        ValueError: A selector with unknown keys or none of the known ones.
    """
    unknown = sorted(set(selector) - set(SELECTOR_KEYS))
    if unknown or not selector:
        raise ValueError(
            f"report table selector {dict(selector)}: unknown key(s) {unknown}; "
            f"expected some of {SELECTOR_KEYS}"
        )
    if "method" in selector:
        return metrics[_text(metrics, "method") == str(selector["method"])].copy()
    kind = _text(metrics, "kind")
    experiment = str(selector.get("experiment", ""))
    baseline = str(selector.get("baseline", ""))
    if experiment and baseline:
        mask = (
            (kind == "combined")
            & (_text(metrics, "experiment") == experiment)
            & (_text(metrics, "baseline") == baseline)
        )
        return metrics[mask].copy()
    if baseline:
        return metrics[(kind == "baseline") & (_text(metrics, "baseline") == baseline)].copy()
    mask = (kind == "diffguard") & (_text(metrics, "experiment") == experiment)
    if best_of_distances and "distance" not in selector:
        rows = metrics[mask & _text(metrics, "distance").isin(list(best_of_distances))]
        return best_over_distances(rows)
    distance = str(selector.get("distance", headline_distance))
    return metrics[mask & (_text(metrics, "distance") == distance)].copy()


def best_over_distances(rows: pd.DataFrame) -> pd.DataFrame:
    """Best value per OOD set, seed and metric over the distances of ``rows`` (optimistic, as
    the paper's Table 4); ``average`` is recomputed as the mean of the per-set bests."""
    from diffguard.metrics import HIGHER_IS_BETTER, METRIC_KEYS

    if rows.empty:
        return rows.copy()
    frame = rows.copy()
    frame["seed"] = _text(frame, "seed")
    per_set = frame[~frame["dataset"].astype(str).str.startswith("average")]
    metrics = [m for m in METRIC_KEYS if m in frame]
    agg = {m: ("max" if HIGHER_IS_BETTER[m] else "min") for m in metrics}
    best = per_set.groupby(["seed", "dataset"], sort=False).agg(agg).reset_index()
    first = per_set.drop_duplicates(["seed", "dataset"]).set_index(["seed", "dataset"])
    keep = [c for c in frame.columns if c not in metrics and c not in ("seed", "dataset")]
    for column in keep:
        pairs = zip(best["seed"], best["dataset"], strict=True)
        best[column] = [first.loc[(s, d), column] for s, d in pairs]
    best["distance"] = "best of " + "/".join(dict.fromkeys(_text(per_set, "distance")))
    averages = best.groupby("seed", sort=False)[metrics].mean().reset_index()
    averages["dataset"] = "average"
    for column in keep:
        averages[column] = best.groupby("seed", sort=False)[column].first().to_numpy()
    averages["distance"] = best["distance"].iloc[0]
    if "role" in averages:
        averages["role"] = "all"
    return pd.concat([best, averages], ignore_index=True)[list(frame.columns)]


def _wide(selected: Mapping[str, pd.DataFrame], **table_kwargs: Any) -> pd.DataFrame:
    """Wide table (as :func:`metrics_table`) with one row per published row label."""
    frames = []
    for label, rows in selected.items():
        if rows.empty:
            continue
        rows = rows.copy()
        rows["method"] = label
        frames.append(rows)
    if not frames:
        return pd.DataFrame({"method": list(selected)})
    wide = metrics_table(
        pd.concat(frames, ignore_index=True), convention_note=False, **table_kwargs
    )
    missing = [label for label in selected if label not in set(wide["method"])]
    if missing:
        wide = pd.concat([wide, pd.DataFrame({"method": missing})], ignore_index=True)
    return wide


def _select_all(
    metrics: pd.DataFrame,
    rows: Mapping[str, Mapping[str, Any]],
    headline_distance: str,
    best_of_distances: Sequence[str],
) -> dict[str, pd.DataFrame]:
    """Row label -> the metrics rows its selector picks (:func:`select_rows`)."""
    return {
        str(label): select_rows(
            metrics,
            selector,
            headline_distance=headline_distance,
            best_of_distances=best_of_distances,
        )
        for label, selector in rows.items()
    }


def paper_table(
    metrics: pd.DataFrame,
    published_csv: str | Path,
    rows: Mapping[str, Mapping[str, Any]],
    *,
    headline_distance: str,
    best_of_distances: Sequence[str] = (),
) -> pd.DataFrame:
    """Published next to reproduced values of every configured row of one paper table.

    Returns:
        The :func:`diffguard.tables.published_vs_reproduced` frame (``reproduced_sd`` and
        ``n_seeds`` included); rows the run did not evaluate have an empty ``reproduced``.
    """
    if not rows:
        raise ValueError(f"report table of {published_csv}: no rows configured")
    selected = _select_all(metrics, rows, headline_distance, best_of_distances)
    for label, frame in selected.items():
        if frame.empty:
            log.warning(
                "%s: row %r selects no metrics rows (%s)", published_csv, label, rows[label]
            )
    wide = _wide(selected)
    return published_vs_reproduced(wide, published_csv, {label: label for label in selected})


REPRODUCED_METRICS = ("auroc", "fpr95_id_recall")
"""Default metrics of a reproduced-only table (``published: null``)."""

_CONVENTION = {"auroc": "", "fpr95_id_recall": "a", "fpr95_ood_recall": "b"}


def reproduced_table(
    metrics: pd.DataFrame,
    rows: Mapping[str, Mapping[str, Any]],
    *,
    headline_distance: str,
    best_of_distances: Sequence[str] = (),
    shown: Sequence[str] = REPRODUCED_METRICS,
) -> pd.DataFrame:
    """Reproduced values of every configured row where nothing was published.

    A benchmark the paper never reported (e.g. OpenOOD v1.5): the cells are every OOD set, the
    near-OOD and far-OOD averages (when the run has both) and the average, in the long layout
    of :func:`paper_table` with empty ``published``, ``published_sd`` and ``delta``.

    Raises:
        ValueError: No rows, or a metric outside :data:`_CONVENTION`.
    """
    if not rows:
        raise ValueError("reproduced-only report table: no rows configured")
    unknown = [m for m in shown if m not in _CONVENTION]
    if unknown:
        raise ValueError(f"report table metrics {unknown}: expected some of {list(_CONVENTION)}")
    selected = _select_all(metrics, rows, headline_distance, best_of_distances)
    wide = _wide(
        selected, per_set_metrics=shown, average_metrics=shown, group_averages=True
    ).set_index("method")
    out = []
    for label in selected:
        for column in metric_columns(wide.reset_index()):
            dataset, metric = split_column(column)
            value = wide.at[label, column]
            sd = wide.at[label, f"{column}_sd"] if f"{column}_sd" in wide else np.nan
            out.append(
                {
                    "published_row": label,
                    "method": label,
                    "dataset": dataset,
                    "metric": "AUROC" if metric == "auroc" else "FPR@95",
                    "convention": _CONVENTION[metric],
                    "reproduced": value,
                    "published": np.nan,
                    "published_sd": np.nan,
                    "delta": np.nan,
                    "reproduced_sd": sd,
                    "n_seeds": wide.at[label, "n_seeds"] if "n_seeds" in wide else np.nan,
                }
            )
    columns = ["published_row", "method", "dataset", "metric", "convention", "reproduced"]
    columns += ["published", "published_sd", "delta", "reproduced_sd", "n_seeds"]
    return pd.DataFrame(out, columns=columns)


def has_published(comparison: pd.DataFrame) -> bool:
    """Whether a paper table's comparison holds any published value (else reproduced-only)."""
    return bool(pd.to_numeric(comparison["published"], errors="coerce").notna().any())


# --------------------------------------------------------------------------- rendering


def _cell(value: float, sd: float, decimals: int = 2, pm: str = " ± ") -> str:
    if value is None or pd.isna(value):
        return "--"
    text = f"{value:.{decimals}f}"
    if sd is not None and not pd.isna(sd):
        text += f"{pm}{sd:.{decimals}f}"
    return text


def _set_name(dataset: str) -> str:
    return {"average": "Average", "average_near": "Near avg.", "average_far": "Far avg."}.get(
        dataset, dataset
    )


def _columns(comparison: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(dataset, metric, convention) columns in published order."""
    keys = comparison[["dataset", "metric", "convention"]].astype(str)
    return list(dict.fromkeys(map(tuple, keys.to_numpy().tolist())))


def _by_cell(comparison: pd.DataFrame) -> dict[tuple[str, str, str, str], pd.Series]:
    return {
        (str(r["published_row"]), str(r["dataset"]), str(r["metric"]), str(r["convention"])): r
        for _, r in comparison.iterrows()
    }


def wide_markdown(comparison: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """Paper-shaped Markdown: one row per published row, each cell
    ``reproduced (published, delta)``."""
    columns = _columns(comparison)
    cells = _by_cell(comparison)
    published = has_published(comparison)
    header = ["Published row" if published else "Method"] + [
        f"{_set_name(d)} {m}{f' ({c})' if c else ''}" for d, m, c in columns
    ]
    lines = [
        f"# {title}",
        "",
        "Each cell: reproduced (published, delta = reproduced - published)."
        if published
        else "Reproduced values only: nothing was published for this table.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---", *["---:"] * len(columns)]) + "|",
    ]
    for row in dict.fromkeys(comparison["published_row"].astype(str)):
        out = [row.replace("|", "\\|")]
        for d, m, c in columns:
            r = cells.get((row, d, m, c))
            if r is None:
                out.append("")
                continue
            delta = "--" if pd.isna(r["delta"]) else f"{r['delta']:+.2f}"
            reproduced = _cell(r["reproduced"], r.get("reproduced_sd"))
            if not published:
                out.append(reproduced)
                continue
            out.append(f"{reproduced} ({_cell(r['published'], r['published_sd'])}, {delta})")
        lines.append("| " + " | ".join(out) + " |")
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def wide_latex(
    comparison: pd.DataFrame, caption: str, label: str, notes: Sequence[str] = ()
) -> str:
    """Paper-shaped booktabs LaTeX: reproduced value over ``(published, delta)`` per cell."""
    columns = _columns(comparison)
    cells = _by_cell(comparison)
    published_any = has_published(comparison)
    top = ["Published row" if published_any else "Method"]
    for d, m, c in columns:
        name = latex_escape(_set_name(d))
        arrow = r"$\downarrow$" if m.startswith("FPR") else r"$\uparrow$"
        top.append(rf"\shortstack{{{name}\\{latex_escape(m)}{f'$^{c}$' if c else ''}{arrow}}}")
    body = [
        r"\begin{table}[tbp]",
        r"\centering\small",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        r"\begin{tabular}{l" + "c" * len(columns) + "}",
        r"\toprule",
        " & ".join(top) + r" \\",
        r"\midrule",
    ]
    for row in dict.fromkeys(comparison["published_row"].astype(str)):
        out = [latex_escape(row)]
        for d, m, c in columns:
            r = cells.get((row, d, m, c))
            if r is None:
                out.append("")
                continue
            reproduced = _cell(r["reproduced"], r.get("reproduced_sd"), pm=r"$\pm$")
            if not published_any:
                out.append(reproduced)
                continue
            published = _cell(r["published"], r["published_sd"], pm=r"$\pm$")
            delta = "--" if pd.isna(r["delta"]) else f"{r['delta']:+.2f}"
            out.append(rf"\shortstack{{{reproduced}\\{{\scriptsize ({published}, {delta})}}}}")
        body.append(" & ".join(out) + r" \\")
    body += [r"\bottomrule", r"\end{tabular}", "}"]
    if notes:
        text = " ".join(latex_escape(n) for n in notes)
        body.append(r"\par\smallskip{\footnotesize\raggedright " + text + r"\par}")
    body.append(r"\end{table}")
    return "\n".join(body) + "\n"


def render_paper_tables(
    metrics_csv: str | Path,
    tables: Mapping[str, Mapping[str, Any]],
    outputs: Mapping[str, Mapping[str, str | Path]],
    *,
    published_dir: str | Path,
    headline_distance: str,
    run: str,
) -> None:
    """Write each configured paper table as CSV (long, one row per cell), Markdown and LaTeX.

    Args:
        metrics_csv: The run's long metrics CSV.
        tables: ``report.tables`` of the config.
        outputs: Table name -> ``{"csv": ..., "md": ..., "tex": ...}``.
        published_dir: Folder of the published CSVs.
        headline_distance: Distance of DiffGuard rows without their own.
        run: Run name (captions).
    """
    metrics = read_metrics(metrics_csv)
    for name, spec in tables.items():
        if "published" in spec and spec["published"] is None:
            comparison = reproduced_table(
                metrics,
                spec["rows"],
                headline_distance=headline_distance,
                best_of_distances=spec.get("best_of_distances", ()),
                shown=spec.get("metrics", REPRODUCED_METRICS),
            )
            notes = [
                NO_PUBLISHED_NOTE,
                *(
                    FPR_CONVENTIONS[m]
                    for m in spec.get("metrics", REPRODUCED_METRICS)
                    if m in FPR_CONVENTIONS
                ),
            ]
        else:
            published_csv = Path(published_dir) / f"{spec.get('published', name)}.csv"
            if not published_csv.is_file():
                raise FileNotFoundError(
                    f"report.tables.{name}: published numbers {published_csv} do not exist"
                )
            comparison = paper_table(
                metrics,
                published_csv,
                spec["rows"],
                headline_distance=headline_distance,
                best_of_distances=spec.get("best_of_distances", ()),
            )
            notes = [*comparison_notes(published_csv, comparison)]
        if spec.get("best_of_distances"):
            notes.append(
                "DiffGuard cells: best value per OOD set over the distances "
                f"{', '.join(spec['best_of_distances'])} (as the paper; optimistic)."
            )
        if "reproduced_sd" in comparison and comparison["reproduced_sd"].notna().any():
            notes.append("Reproduced ± : sample SD over seeds; published ± as printed.")
        if spec.get("note"):
            notes.append(str(spec["note"]))
        title = spec.get("title", name)
        paths = outputs[name]
        write_csv(paths["csv"], comparison)
        write_text(paths["md"], wide_markdown(comparison, f"{title} ({run})", notes))
        caption = latex_escape(str(title)) + (
            rf": reproduced (run \texttt{{{latex_escape(run)}}}) with published value and"
            r" $\Delta$ = reproduced $-$ published in brackets."
            if has_published(comparison)
            else rf": reproduced (run \texttt{{{latex_escape(run)}}}); nothing was published."
        )
        write_text(paths["tex"], wide_latex(comparison, caption, f"tab:{name}", notes))
        log.info(
            "%s: %d published cells, %d reproduced",
            name,
            len(comparison),
            int(comparison["reproduced"].notna().sum()),
        )


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


def check_markdown(check: pd.DataFrame, run: str, settings: str) -> str:
    """Markdown report: overall verdict, per-table summary, then every non-passing cell."""
    verdict = overall_status(check)
    lines = [
        f"# Reproduction check ({run}): {verdict.upper()}",
        "",
        settings,
        "",
        "| Table | Cells | Pass | Fail | Missing | Status |",
        "|:---|---:|---:|---:|---:|:---|",
    ]
    for _, r in summary(check).iterrows():
        lines.append(
            f"| {r['table']} | {r['cells']} | {r['pass']} | {r['fail']} | {r['missing']} "
            f"| {r['status']} |"
        )
    if verdict == "not applicable":
        lines += ["", f"Not applicable: {check['published_row'].iloc[0]}"]
    shown = check[check["status"].isin(["fail", "missing"])]
    if not shown.empty:
        lines += [
            "",
            "## Cells outside their band or not reproduced",
            "",
            "| Table | Row | OOD set | Metric | Reproduced | Published | Delta | Band | Status |",
            "|:---|:---|:---|:---|---:|---:|---:|---:|:---|",
        ]
        for _, r in shown.iterrows():
            delta = "--" if pd.isna(r["delta"]) else f"{r['delta']:+.2f}"
            lines.append(
                f"| {r['table']} | {str(r['published_row']).replace('|', '/')} | {r['dataset']} "
                f"| {r['metric']} | {_cell(r['reproduced'], r['reproduced_sd'])} "
                f"| {_cell(r['published'], r['published_sd'])} | {delta} | ±{r['band']:.2f} "
                f"| {r['status']} |"
            )
    return "\n".join(lines) + "\n"


def check_latex(check: pd.DataFrame, run: str, settings: str) -> str:
    """LaTeX summary of the check for the paper (per table: cells, pass, fail, missing)."""
    verdict = overall_status(check)
    lines = [
        r"\begin{table}[tbp]",
        r"\centering\small",
        rf"\caption{{Reproduction check of run \texttt{{{latex_escape(run)}}}: "
        rf"\textbf{{{latex_escape(verdict)}}}. {latex_escape(settings)}}}",
        r"\label{tab:check}",
        r"\begin{tabular}{lrrrrl}",
        r"\toprule",
        r"Table & Cells & Pass & Fail & Missing & Status \\",
        r"\midrule",
    ]
    for _, r in summary(check).iterrows():
        lines.append(
            f"{latex_escape(r['table'])} & {r['cells']} & {r['pass']} & {r['fail']} & "
            f"{r['missing']} & {latex_escape(r['status'])} \\\\"
        )
    lines += [r"\bottomrule", r"\end{tabular}"]
    if verdict == "not applicable":
        lines.append(
            r"\par\smallskip{\footnotesize "
            + latex_escape(str(check["published_row"].iloc[0]))
            + r"\par}"
        )
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def run_check(
    comparisons: Mapping[str, str | Path],
    check_config: Mapping[str, Any],
    outputs: Mapping[str, str | Path],
    *,
    run: str,
) -> str:
    """Check every paper table's comparison CSV; write CSV, Markdown and LaTeX reports.

    Args:
        comparisons: Table name -> its comparison CSV (from :func:`render_paper_tables`);
            empty: the run has no published counterpart (``not applicable``).
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


def gate(check_csv: str | Path, out: str | Path, *, allow: Sequence[str]) -> str:
    """Write ``out`` when the check's overall status is allowed; raise otherwise.

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
        raise RuntimeError(
            f"reproduction check {check_csv}: status {status!r} (allowed: {list(allow)}); "
            f"{len(bad)} cell(s) not within their band, e.g. {listing}. The report is "
            f"{Path(check_csv).with_suffix('.md')}."
        )
    write_text(out, f"{status}\n")
    return status
