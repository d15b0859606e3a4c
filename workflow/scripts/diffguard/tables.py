"""The main results table from the long metrics CSV: CSV, Markdown and LaTeX (booktabs).

The wide table has one row per method (baselines, then DiffGuard, then combinations) and flat
column names ``<dataset>_<metric>`` (``average`` for the mean over OOD sets), so that the CSV
stays machine readable; :func:`to_markdown` and :func:`to_latex` turn them into readable
two-level headers (drawn by :mod:`diffguard.tabular`, the renderer every table shares). Both
FPR@95 conventions are named wherever an FPR is shown. Published-versus-reproduced tables:
:mod:`diffguard.paper_tables`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from diffguard.io import write_csv, write_text
from diffguard.metrics import HIGHER_IS_BETTER, METRIC_DEFINITIONS, METRIC_KEYS, METRIC_TITLES
from diffguard.tabular import (
    LEFT,
    RIGHT,
    fmt,
    latex_escape,
    latex_float,
    latex_notes,
    latex_tabular,
    markdown_notes,
    markdown_table,
    md_escape,
)

log = logging.getLogger(__name__)

KIND_ORDER = ("baseline", "diffguard", "combined")
"""Row groups of the main table, in order."""

METRICS = METRIC_KEYS
"""Metric columns of the long metrics CSV (percent)."""

FPR_MARK = {"fpr95_id_recall": "a", "fpr95_ood_recall": "b"}
"""Superscript of each FPR@95 convention in table headers, pointing at its note."""

FPR_CONVENTIONS = {
    metric: f"FPR@95 ({mark}) = {METRIC_DEFINITIONS[metric]}" for metric, mark in FPR_MARK.items()
}
"""Plain-text definitions of the two FPR@95 conventions (notes of every table with an FPR):
``FPR@95 (a) = FPR@95TPR, ID positive: ... (DiffGuard; OpenOOD ≤ 8d44375, incl. its v1.5 tag)``."""

PER_SET_METRICS = ("auroc", "fpr95_id_recall")
"""Metrics shown for each OOD set (the paper's Table 1/2 layout)."""

AVERAGE_METRICS = ("auroc", "fpr95_id_recall", "fpr95_ood_recall")
"""Metrics shown for the average over OOD sets (both FPR conventions)."""

GROUP_AVERAGES = ("average_near", "average_far")
"""Metrics rows averaging the near-OOD / far-OOD sets (written by the ``evaluate`` rule)."""

REQUIRED_COLUMNS = ("method", "kind", "dataset", *PER_SET_METRICS, "fpr95_ood_recall")

NO_PUBLISHED_NOTE = (
    "This benchmark has no published counterpart in the DiffGuard paper; compare the methods "
    "within this table, not with the paper's numbers."
)


# --------------------------------------------------------------------------------------------
# the main table


def _match_column(column: str) -> tuple[str, str] | None:
    for metric in sorted(METRICS, key=len, reverse=True):
        suffix = "_" + metric
        if column.endswith(suffix) and len(column) > len(suffix):
            return column[: -len(suffix)], metric
    return None


def split_column(column: str) -> tuple[str, str]:
    """``"near_digits_fpr95_id_recall"`` -> ``("near_digits", "fpr95_id_recall")``."""
    match = _match_column(column)
    if match is None:
        raise ValueError(f"column {column!r} is not <dataset>_<metric> with a metric in {METRICS}")
    return match


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The ``<dataset>_<metric>`` value columns of a wide table, in table order."""
    return [c for c in table.columns if not c.endswith("_sd") and _match_column(c) is not None]


def _checked_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    """A copy of the long metrics with string datasets and seeds; missing columns or unknown
    kinds raise, naming them."""
    missing = [c for c in REQUIRED_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(
            f"metrics table: missing column(s) {missing}; expected at least {REQUIRED_COLUMNS}"
        )
    unknown_kinds = sorted(set(metrics["kind"].astype(str)) - set(KIND_ORDER))
    if unknown_kinds:
        raise ValueError(
            f"metrics table: unknown kind(s) {unknown_kinds} in column 'kind'; "
            f"expected one of {KIND_ORDER}"
        )
    frame = metrics.copy()
    frame["dataset"] = frame["dataset"].astype(str)
    if "seed" not in frame:
        frame["seed"] = ""
    # Baselines have no seed (empty cell): one group, not dropped by groupby.
    frame["seed"] = frame["seed"].astype(str).replace({"nan": "", "None": ""})
    return frame


def _averages(frame: pd.DataFrame, per_set: pd.DataFrame, value_cols: list[str]) -> pd.DataFrame:
    """The ``average`` rows of ``frame``, plus the mean over the OOD sets of each
    method/seed that has none."""
    average = frame[frame["dataset"] == "average"]
    keys = ["kind", "method", "seed"]
    have_average = set(map(tuple, average[keys].to_numpy().tolist()))
    computed = []
    for key, group in per_set.groupby(keys, sort=False):
        if tuple(key) not in have_average:
            row = dict(zip(keys, key, strict=True), dataset="average")
            row.update(group[value_cols].mean(numeric_only=True).to_dict())
            computed.append(row)
    if computed:
        log.info("metrics table: computed %d missing 'average' rows", len(computed))
        average = pd.concat([average, pd.DataFrame(computed)], ignore_index=True)
    return average


def _table_notes(columns: Sequence[str], convention_note: bool, multi_seed: bool) -> list[str]:
    notes: list[str] = []
    if convention_note and any(split_column(c)[1].startswith("fpr95") for c in columns):
        notes += [
            "Values in percent. AUROC: higher is better; FPR@95: lower is better.",
            *(FPR_CONVENTIONS[m] for m in ("fpr95_id_recall", "fpr95_ood_recall")),
        ]
    shown = {split_column(c)[1] for c in columns}
    if convention_note:
        # AUPR's positive class differs between OpenOOD commits too: name it where shown
        notes += [METRIC_DEFINITIONS[m] for m in ("aupr_in", "aupr_out") if m in shown]
    if multi_seed:
        notes.append("Methods with several seeds: mean ± sample sd over seeds.")
    return notes


def metrics_table(
    metrics: pd.DataFrame,
    convention_note: bool = True,
    *,
    per_set_metrics: Sequence[str] = PER_SET_METRICS,
    average_metrics: Sequence[str] = AVERAGE_METRICS,
    group_averages: bool = False,
) -> pd.DataFrame:
    """Wide results table: one row per method, AUROC / FPR@95 per OOD set and on average.

    Rows are ordered baselines, DiffGuard, combinations (first appearance within a group).
    Several seeds of one method are averaged; then ``<column>_sd`` (sample sd) and ``n_seeds``
    columns are added. A missing ``average`` row of a method/seed is computed as the mean over
    its OOD sets (as :func:`diffguard.metrics.evaluate` does).

    Args:
        metrics: Long metrics frame (columns ``method, kind, dataset, auroc, ...``).
        convention_note: Put notes naming both FPR@95 conventions into ``table.attrs["notes"]``
            (rendered below the Markdown and LaTeX tables).
        per_set_metrics: Metrics shown for each OOD set.
        average_metrics: Metrics shown for the average.
        group_averages: Also show the near-OOD and far-OOD averages (``average_near_<metric>``,
            ``average_far_<metric>``, OpenOOD v1.5's layout) of the metrics rows that have them.

    Returns:
        Frame with columns ``method, kind, <set>_<metric>..., [average_near_<metric>...,
        average_far_<metric>...,] average_<metric>...`` (+ sd).

    Raises:
        ValueError: Missing columns, an unknown ``kind`` or no OOD-set rows.
    """
    frame = _checked_frame(metrics)
    per_set = frame[~frame["dataset"].str.startswith("average")]
    if per_set.empty:
        raise ValueError("metrics table: no per-OOD-set rows (every dataset starts with 'average')")
    datasets = list(dict.fromkeys(per_set["dataset"]))
    value_cols = list(dict.fromkeys([*per_set_metrics, *average_metrics]))
    average = _averages(frame, per_set, value_cols)
    groups = [g for g in GROUP_AVERAGES if group_averages and (frame["dataset"] == g).any()]
    long = pd.concat([per_set, *(frame[frame["dataset"] == g] for g in groups), average])
    long = long.reset_index(drop=True)
    grouped = long.groupby(["kind", "method", "dataset"], sort=False)[value_cols]
    mean = grouped.mean()
    sd = grouped.std(ddof=1)
    n = long.groupby(["kind", "method"], sort=False)["seed"].nunique()

    methods = list(dict.fromkeys(zip(long["kind"], long["method"], strict=True)))
    methods.sort(key=lambda km: KIND_ORDER.index(km[0]))  # stable: keeps first appearance
    columns = [f"{d}_{m}" for d in datasets for m in per_set_metrics]
    columns += [f"{g}_{m}" for g in groups for m in average_metrics]
    columns += [f"average_{m}" for m in average_metrics]
    multi_seed = bool((n > 1).any())
    rows = []
    for kind, method in methods:
        row: dict[str, object] = {"method": method, "kind": kind}
        for column in columns:
            dataset, metric = split_column(column)
            key = (kind, method, dataset)
            row[column] = mean[metric].get(key, np.nan)
            if multi_seed:
                row[f"{column}_sd"] = sd[metric].get(key, np.nan)
        if multi_seed:
            row["n_seeds"] = int(n[(kind, method)])
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["notes"] = _table_notes(columns, convention_note, multi_seed)
    return table


def best_values(table: pd.DataFrame, decimals: int = 2) -> dict[str, float]:
    """Best value of each metric column at display precision (max AUROC/AUPR, min FPR)."""
    best = {}
    for column in metric_columns(table):
        _, metric = split_column(column)
        values = pd.to_numeric(table[column], errors="coerce").round(decimals).dropna()
        if values.empty:
            continue
        best[column] = values.max() if HIGHER_IS_BETTER[metric] else values.min()
    return best


def _is_best(value: float, best: float | None, decimals: int) -> bool:
    return best is not None and not math.isnan(value) and round(value, decimals) == best


def _header_parts(column: str) -> tuple[str, str, str | None]:
    """(dataset, metric title, FPR mark or None) of a value column."""
    dataset, metric = split_column(column)
    return dataset, METRIC_TITLES[metric], FPR_MARK.get(metric)


def _value_cells(
    table: pd.DataFrame, decimals: int, pm: str, bold: str
) -> list[tuple[pd.Series, list[str]]]:
    """Each row with its value cells: mean, ``pm`` sd when there is one, the best in ``bold``
    (a format string with one ``{}``)."""
    values = metric_columns(table)
    best = best_values(table, decimals)
    out = []
    for _, row in table.iterrows():
        cells = []
        for column in values:
            text = fmt(row[column], decimals)
            sd = row.get(f"{column}_sd")
            if sd is not None and not pd.isna(sd):
                text += f"{pm}{float(sd):.{decimals}f}"
            if _is_best(float(row[column]), best.get(column), decimals):
                text = bold.format(text)
            cells.append(text)
        out.append((row, cells))
    return out


# --------------------------------------------------------------------------------------------
# Markdown and LaTeX


def to_markdown(table: pd.DataFrame, decimals: int = 2, notes: Sequence[str] = ()) -> str:
    """GitHub Markdown of a wide results table; best per column in bold, notes below.

    Args:
        table: Output of :func:`metrics_table` (``kind`` and ``*_sd`` columns are folded in).
        decimals: Digits after the point.
        notes: Extra notes appended after ``table.attrs["notes"]``.
    """
    values = metric_columns(table)
    headers = ["Method"]
    for column in values:
        dataset, title, mark = _header_parts(column)
        arrow = "↑" if HIGHER_IS_BETTER[split_column(column)[1]] else "↓"
        headers.append(f"{md_escape(dataset)} {title}{f' ({mark})' if mark else ''} {arrow}")
    rows = [
        [md_escape(str(row["method"])), *cells]
        for row, cells in _value_cells(table, decimals, " ± ", "**{}**")
    ]
    lines = markdown_table(headers, rows, [LEFT, *[RIGHT] * len(values)])
    lines += markdown_notes([*table.attrs.get("notes", []), *notes])
    return "\n".join(lines) + "\n"


def _latex_header(values: Sequence[str]) -> list[str]:
    """Two header rows: OOD sets over their columns (with rules), then metric, mark, arrow."""
    groups: list[tuple[str, list[str]]] = []
    for column in values:
        dataset = split_column(column)[0]
        if groups and groups[-1][0] == dataset:
            groups[-1][1].append(column)
        else:
            groups.append((dataset, [column]))
    top = ["Method"]
    rules = []
    first = 2
    for dataset, columns in groups:
        name = "Average" if dataset == "average" else latex_escape(dataset)
        top.append(rf"\multicolumn{{{len(columns)}}}{{c}}{{{name}}}")
        rules.append(rf"\cmidrule(lr){{{first}-{first + len(columns) - 1}}}")
        first += len(columns)
    second = [""]
    for column in values:
        _, title, mark = _header_parts(column)
        arrow = r"$\uparrow$" if HIGHER_IS_BETTER[split_column(column)[1]] else r"$\downarrow$"
        second.append(title + (f"$^{{{mark}}}$" if mark else "") + arrow)
    return [" & ".join(top) + r" \\", "".join(rules), " & ".join(second) + r" \\"]


def to_latex(
    table: pd.DataFrame,
    caption: str | None = None,
    label: str | None = None,
    decimals: int = 2,
    notes: Sequence[str] = (),
) -> str:
    """booktabs LaTeX of a wide results table (a ``table`` float when a caption is given).

    Two header rows (OOD set, then metric with arrow and FPR@95 convention mark), a rule
    between the kinds of method, best value per column in bold (max AUROC, min FPR; ties all
    bold), ``--`` for missing cells, LaTeX special characters escaped in names and notes.
    The caption is LaTeX (not escaped); ``notes`` and ``table.attrs["notes"]`` are plain text.
    Needs the LaTeX packages booktabs and graphicx.
    """
    values = metric_columns(table)
    cells = _value_cells(table, decimals, r"$\pm$", r"\textbf{{{}}}")
    tabular = latex_tabular(
        "l" + "r" * len(values),
        _latex_header(values),
        [[latex_escape(str(row["method"])), *row_cells] for row, row_cells in cells],
        groups=[row.get("kind") for row, _ in cells],
    )
    return latex_float(
        tabular,
        caption=caption,
        label=label,
        notes=latex_notes([*table.attrs.get("notes", []), *notes]),
    )


# --------------------------------------------------------------------------------------------
# the rule


def read_metrics(path: str | Path) -> pd.DataFrame:
    """Read the long metrics CSV; empty cells stay missing, the word "NA" stays a string."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def render_tables_stage(
    metrics_csv: str | Path,
    out_dir_csv: str | Path,
    out_dir_tex: str | Path,
    out_dir_md: str | Path,
    *,
    run: str | None = None,
    note: str | None = None,
) -> list[Path]:
    """Rule ``render_tables``: write ``main_results.{csv,md,tex}``.

    Args:
        metrics_csv: Long metrics CSV of the run.
        out_dir_csv: Folder of the CSV table.
        out_dir_tex: Folder of the LaTeX table (the paper's ``paper/tables``).
        out_dir_md: Folder of the Markdown table.
        run: Run name for captions (default: the ``run`` column or the CSV's folder).
        note: The note on the published counterpart of the main table (default
            :data:`NO_PUBLISHED_NOTE`; published versus reproduced numbers are the paper tables
            of :mod:`diffguard.paper_tables`).

    Returns:
        Paths written.
    """
    metrics = read_metrics(metrics_csv)
    if run is None:
        runs = metrics["run"].dropna().unique() if "run" in metrics else []
        run = str(runs[0]) if len(runs) == 1 else Path(metrics_csv).parent.name
    table = metrics_table(metrics)
    note = NO_PUBLISHED_NOTE if note is None else note
    out_csv, out_tex, out_md = Path(out_dir_csv), Path(out_dir_tex), Path(out_dir_md)
    written = [
        out_csv / "main_results.csv",
        out_md / "main_results.md",
        out_tex / "main_results.tex",
    ]
    write_csv(written[0], table)
    write_text(written[1], f"# Main results ({run})\n\n" + to_markdown(table, notes=[note]))
    caption = (
        rf"OOD detection on the \texttt{{{latex_escape(run)}}} benchmark: baselines, DiffGuard "
        "(one row per experiment and similarity) and combinations (rule in brackets)."
    )
    write_text(written[2], to_latex(table, caption, "tab:main", notes=[note]))
    log.info("main results: %d methods x %d value columns", len(table), len(metric_columns(table)))
    return written
