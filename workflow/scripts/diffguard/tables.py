"""Result tables from the long metrics CSV: CSV, Markdown and LaTeX (booktabs), and the
published-versus-reproduced comparison.

The wide table has one row per method (baselines, then DiffGuard, then combinations) and flat
column names ``<dataset>_<metric>`` (``average`` for the mean over OOD sets), so that the CSV
stays machine readable; :func:`to_markdown` and :func:`to_latex` turn them into readable
two-level headers. Both FPR@95 conventions are named wherever an FPR is shown.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from diffguard.io import write_csv, write_text
from diffguard.metrics import HIGHER_IS_BETTER, METRIC_DEFINITIONS, METRIC_KEYS, METRIC_TITLES

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

# Published CSV columns (config/published/*.csv): <set>_auroc, <set>_fpr95, each maybe + _std.
_PUBLISHED_METRIC = re.compile(r"^(?P<dataset>.+)_(?P<metric>auroc|fpr95)(?P<std>_std)?$")
_PUBLISHED_TO_OURS = {"auroc": "auroc", "fpr95": "fpr95_id_recall"}
_DATASET_ALIASES = {"avg": "average"}


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
    is_average = frame["dataset"].str.startswith("average")
    per_set = frame[~is_average]
    if per_set.empty:
        raise ValueError("metrics table: no per-OOD-set rows (every dataset starts with 'average')")
    datasets = list(dict.fromkeys(per_set["dataset"]))
    value_cols = list(dict.fromkeys([*per_set_metrics, *average_metrics]))
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
    table.attrs["notes"] = notes
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


def _fmt(value: object, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    return f"{float(value):.{decimals}f}"


def _header_parts(column: str) -> tuple[str, str, str | None]:
    """(dataset, metric title, FPR mark or None) of a value column."""
    dataset, metric = split_column(column)
    return dataset, METRIC_TITLES[metric], FPR_MARK.get(metric)


# --------------------------------------------------------------------------------------------
# Markdown


def _md_escape(text: str) -> str:
    # Only the pipe breaks a GitHub table cell; * and _ would turn into emphasis.
    return re.sub(r"([|*_])", r"\\\1", text)


def to_markdown(table: pd.DataFrame, decimals: int = 2, notes: Sequence[str] = ()) -> str:
    """GitHub Markdown of a wide results table; best per column in bold, notes below.

    Args:
        table: Output of :func:`metrics_table` (``kind`` and ``*_sd`` columns are folded in).
        decimals: Digits after the point.
        notes: Extra notes appended after ``table.attrs["notes"]``.
    """
    values = metric_columns(table)
    best = best_values(table, decimals)
    headers = ["Method"]
    for column in values:
        dataset, title, mark = _header_parts(column)
        arrow = "↑" if HIGHER_IS_BETTER[split_column(column)[1]] else "↓"
        headers.append(f"{_md_escape(dataset)} {title}{f' ({mark})' if mark else ''} {arrow}")
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join([":---", *["---:"] * len(values)]) + "|",
    ]
    for _, row in table.iterrows():
        cells = [_md_escape(str(row["method"]))]
        for column in values:
            text = _fmt(row[column], decimals)
            sd = row.get(f"{column}_sd")
            if sd is not None and not pd.isna(sd):
                text += f" ± {float(sd):.{decimals}f}"
            if _is_best(float(row[column]), best.get(column), decimals):
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    all_notes = [*table.attrs.get("notes", []), *notes]
    if all_notes:
        lines.append("")
        lines += [f"- {note}" for note in all_notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# LaTeX

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
_LATEX_UNICODE = {
    "±": r"$\pm$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "–": "--",
    "—": "---",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "≈": r"$\approx$",
    "×": r"$\times$",
    "ℓ": r"$\ell$",
    "\u00a0": "~",
    "‘": "`",
    "’": "'",
    "“": "``",
    "”": "''",
}
# Combining marks (NFD) as text-mode accent commands, e.g. x̂ -> \^{x}.
_COMBINING_ACCENTS = {
    "\u0300": "`",
    "\u0301": "'",
    "\u0302": "^",
    "\u0303": "~",
    "\u0304": "=",
    "\u0308": '"',
}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters (one pass, so nothing is escaped twice).

    A few non-ASCII symbols become their LaTeX commands and combining accents become accent
    commands (``x̂`` -> ``\\^{x}``), so that pdfLaTeX compiles any method or dataset name.
    """
    out: list[str] = []
    for ch in unicodedata.normalize("NFD", str(text)):
        if ch in _COMBINING_ACCENTS and out:
            out[-1] = "\\" + _COMBINING_ACCENTS[ch] + "{" + out[-1] + "}"
        elif unicodedata.combining(ch):
            continue  # an accent pdfLaTeX cannot place: drop it rather than fail the build
        else:
            out.append(_LATEX_SPECIAL.get(ch, _LATEX_UNICODE.get(ch, ch)))
    text = unicodedata.normalize("NFC", "".join(out))
    # A cell starting with "[" right after "\\" would be read as the row-skip argument.
    return "{}" + text if text.startswith("[") else text


def _latex_notes(notes: Sequence[str]) -> list[str]:
    lines = []
    for note in notes:
        mark = re.match(r"^FPR@95 \((?P<m>[ab])\) = ", note)
        if mark:
            body = note[mark.end() :]
            lines.append(rf"$^{{{mark['m']}}}$\,{latex_escape(body)}.")
        else:
            lines.append(latex_escape(note))
    return lines


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
    best = best_values(table, decimals)
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
    body = [
        r"\begin{tabular}{l" + "r" * len(values) + "}",
        r"\toprule",
        " & ".join(top) + r" \\",
        "".join(rules),
        " & ".join(second) + r" \\",
        r"\midrule",
    ]
    previous = None
    for _, row in table.iterrows():
        kind = row.get("kind")
        if previous is not None and kind != previous:
            body.append(r"\midrule")
        previous = kind
        cells = [latex_escape(str(row["method"]))]
        for column in values:
            text = _fmt(row[column], decimals)
            sd = row.get(f"{column}_sd")
            if sd is not None and not pd.isna(sd):
                text += rf"$\pm${float(sd):.{decimals}f}"
            if _is_best(float(row[column]), best.get(column), decimals):
                text = rf"\textbf{{{text}}}"
            cells.append(text)
        body.append(" & ".join(cells) + r" \\")
    body += [r"\bottomrule", r"\end{tabular}"]
    # Shrink a table wider than the text, never enlarge a narrow one.
    boxed = [
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        *body,
        "}",
    ]
    note_lines = _latex_notes([*table.attrs.get("notes", []), *notes])
    notes_block = (
        [r"\par\smallskip{\footnotesize\raggedright " + " ".join(note_lines) + r"\par}"]
        if note_lines
        else []
    )
    if caption is None:
        return "\n".join([r"\begin{center}\small", *boxed, *notes_block, r"\end{center}"]) + "\n"
    lines = [r"\begin{table}[tbp]", r"\centering\small", rf"\caption{{{caption}}}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [*boxed, *notes_block, r"\end{table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# published versus reproduced


def _published_key_columns(published: pd.DataFrame) -> list[str]:
    return [c for c in published.columns if not _PUBLISHED_METRIC.match(c)]


def _row_keys(published: pd.DataFrame, key_columns: Sequence[str]) -> list[str]:
    """One string per published row: its first column, or ``col=value, ...`` of the non-empty
    key cells when a table has several key columns (Table 4: PSNR and DISTS thresholds)."""
    if len(key_columns) == 1:
        return [str(v) for v in published[key_columns[0]]]
    keys = []
    for _, row in published[list(key_columns)].iterrows():
        parts = [
            f"{c}={row[c]:g}" if isinstance(row[c], float) else f"{c}={row[c]}"
            for c in key_columns
            if not pd.isna(row[c]) and str(row[c]) != ""
        ]
        keys.append(", ".join(parts))
    return keys


def published_vs_reproduced(
    reproduced: pd.DataFrame, published_csv: str | Path, mapping: Mapping[str, str]
) -> pd.DataFrame:
    """Reproduced next to published numbers for each mapped cell, with their difference.

    Published columns ``<set>_auroc`` / ``<set>_fpr95`` (FPR@95 at 95% ID recall, the paper's
    convention; ``avg`` = ``average``) are matched to the reproduced ``<set>_auroc`` /
    ``<set>_fpr95_id_recall``; ``<column>_std`` becomes ``published_sd``.

    Args:
        reproduced: Wide table from :func:`metrics_table`, or the long metrics frame.
        published_csv: One of ``config/published/table*.csv``.
        mapping: Published row key (first column; for several key columns
            ``"col=value, col=value"`` of the non-empty cells) -> reproduced method name.

    Returns:
        One row per mapped cell: ``published_row, method, dataset, metric, convention,
        reproduced, published, published_sd, delta, reproduced_sd, n_seeds`` (delta =
        reproduced - published; ``reproduced_sd`` is the sample SD over seeds when the
        method has several). A set
        the run did not evaluate gives an empty ``reproduced`` and ``delta``, and so does the
        average unless the run evaluated every published OOD set of that row.

    Raises:
        KeyError: A mapped published row or reproduced method does not exist.
    """
    if "dataset" in reproduced.columns:  # the long metrics frame
        reproduced = metrics_table(reproduced, convention_note=False)
    published = pd.read_csv(published_csv)
    key_columns = _published_key_columns(published)
    if not key_columns:
        raise ValueError(f"{published_csv}: no key column (every column is a metric)")
    keys = _row_keys(published, key_columns)
    by_method = {str(m): i for i, m in enumerate(reproduced["method"])}
    rows = []
    for pub_key, method in mapping.items():
        if pub_key not in keys:
            raise KeyError(f"{published_csv}: no published row {pub_key!r}; rows are {keys}")
        if method not in by_method:
            raise KeyError(
                f"published_vs_reproduced: reproduced method {method!r} (mapped from "
                f"{pub_key!r} of {published_csv}) is not in the reproduced table; methods are "
                f"{list(by_method)}"
            )
        pub_row = published.iloc[keys.index(pub_key)]
        our_row = reproduced.iloc[by_method[method]]
        # The averages are comparable only when the run evaluated every published OOD set.
        pub_sets = {
            _DATASET_ALIASES.get(m["dataset"], m["dataset"])
            for c in published.columns
            if (m := _PUBLISHED_METRIC.match(c)) and not m["std"] and not pd.isna(pub_row[c])
        } - {"average"}
        same_sets = all(
            f"{d}_auroc" in our_row.index and not pd.isna(our_row[f"{d}_auroc"]) for d in pub_sets
        )
        for column in published.columns:
            match = _PUBLISHED_METRIC.match(column)
            if not match or match["std"] or pd.isna(pub_row[column]):
                continue
            dataset = _DATASET_ALIASES.get(match["dataset"], match["dataset"])
            ours = f"{dataset}_{_PUBLISHED_TO_OURS[match['metric']]}"
            value = float(our_row[ours]) if ours in our_row.index else float("nan")
            if dataset == "average" and not same_sets:
                value = float("nan")
                log.warning(
                    "%s: %s average not compared (the run lacks some of the published OOD sets)",
                    published_csv,
                    method,
                )
            elif math.isnan(value):
                log.warning("%s: no reproduced value for %s / %s", published_csv, method, ours)
            std_column = f"{column}_std"
            sd = pub_row.get(std_column, np.nan) if std_column in published.columns else np.nan
            published_value = float(pub_row[column])
            our_sd = our_row.get(f"{ours}_sd", np.nan) if not math.isnan(value) else np.nan
            seeds = our_row.get("n_seeds", np.nan) if not math.isnan(value) else np.nan
            rows.append(
                {
                    "published_row": pub_key,
                    "method": method,
                    "dataset": dataset,
                    "metric": "AUROC" if match["metric"] == "auroc" else "FPR@95",
                    "convention": "" if match["metric"] == "auroc" else "a",
                    "reproduced": value,
                    "published": published_value,
                    "published_sd": float(sd) if not pd.isna(sd) else np.nan,
                    "delta": value - published_value,
                    "reproduced_sd": float(our_sd) if not pd.isna(our_sd) else np.nan,
                    "n_seeds": float(seeds) if not pd.isna(seeds) else np.nan,
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "published_row",
            "method",
            "dataset",
            "metric",
            "convention",
            "reproduced",
            "published",
            "published_sd",
            "delta",
            "reproduced_sd",
            "n_seeds",
        ],
    )


def comparison_notes(
    published_csv: str | Path, comparison: pd.DataFrame | None = None
) -> list[str]:
    """Notes of a published-vs-reproduced table (source, sign of delta, FPR convention)."""
    empty = []
    if comparison is not None and comparison["reproduced"].isna().all():
        empty = ["This run evaluated none of the published cells: nothing is compared."]
    return [
        *empty,
        f"Published: DiffGuard paper, {Path(published_csv).stem} (config/published).",
        "delta = reproduced - published, in percentage points.",
        FPR_CONVENTIONS["fpr95_id_recall"],
        "Averages are compared only when the run evaluated every published OOD set; "
        "missing cells (--) were not evaluated, nothing is filled in.",
    ]


def comparison_to_markdown(comparison: pd.DataFrame, notes: Sequence[str] = ()) -> str:
    """Markdown of :func:`published_vs_reproduced` output."""
    lines = [
        "| Published row | Method | OOD set | Metric | Reproduced | Published | Delta |",
        "|:---|:---|:---|:---|---:|---:|---:|",
    ]
    for _, r in comparison.iterrows():
        metric = r["metric"] + (f" ({r['convention']})" if r["convention"] else "")
        published = _fmt(r["published"], 2)
        if not pd.isna(r["published_sd"]):
            published += f" ± {r['published_sd']:.2f}"
        delta = "--" if pd.isna(r["delta"]) else f"{r['delta']:+.2f}"
        cells = [
            _md_escape(str(r["published_row"])),
            _md_escape(str(r["method"])),
            _md_escape(str(r["dataset"])),
            metric,
            _fmt(r["reproduced"], 2),
            published,
            delta,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def comparison_to_latex(
    comparison: pd.DataFrame, caption: str, label: str | None = None, notes: Sequence[str] = ()
) -> str:
    """booktabs LaTeX of :func:`published_vs_reproduced` output (a ``table`` float)."""
    lines = [
        r"\begin{table}[tbp]",
        r"\centering\small",
        rf"\caption{{{caption}}}",
        *([rf"\label{{{label}}}"] if label else []),
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        r"\begin{tabular}{lllrrrr}",
        r"\toprule",
        r"Published row & Method & OOD set & Metric & Reproduced & Published & $\Delta$ \\",
        r"\midrule",
    ]
    for _, r in comparison.iterrows():
        metric = r["metric"] + (f"$^{{{r['convention']}}}$" if r["convention"] else "")
        arrow = r"$\downarrow$" if r["metric"].startswith("FPR") else r"$\uparrow$"
        published = _fmt(r["published"], 2)
        if not pd.isna(r["published_sd"]):
            published += rf"$\pm${r['published_sd']:.2f}"
        delta = "--" if pd.isna(r["delta"]) else f"{r['delta']:+.2f}"
        cells = [
            latex_escape(str(r["published_row"])),
            latex_escape(str(r["method"])),
            "Average" if r["dataset"] == "average" else latex_escape(str(r["dataset"])),
            metric + arrow,
            _fmt(r["reproduced"], 2),
            published,
            delta,
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", "}"]
    if notes:
        lines.append(
            r"\par\smallskip{\footnotesize\raggedright " + " ".join(_latex_notes(notes)) + r"\par}"
        )
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the rule


def read_metrics(path: str | Path) -> pd.DataFrame:
    """Read the long metrics CSV; empty cells stay missing, the word "NA" stays a string."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def render_tables(
    metrics_csv: str | Path,
    out_dir_csv: str | Path,
    out_dir_tex: str | Path,
    out_dir_md: str | Path,
    published_dir: str | Path | None = None,
    mapping: Mapping[str, Mapping[str, str]] | None = None,
    *,
    run: str | None = None,
    note: str | None = None,
) -> list[Path]:
    """Write ``main_results.{csv,md,tex}`` and each ``tableN_published_vs_reproduced.*``.

    Args:
        metrics_csv: Long metrics CSV of the run.
        out_dir_csv: Folder of the CSV tables.
        out_dir_tex: Folder of the LaTeX tables (the paper's ``paper/tables``).
        out_dir_md: Folder of the Markdown tables.
        published_dir: Folder of the published CSVs (``config/published``).
        mapping: Published CSV stem (``"table2_imagenet"``) -> {published row: reproduced
            method}; the output is named after the stem's first part (``table2_...``). Empty or
            None: no comparison table, and the main table says there is no published analogue.
        run: Run name for captions (default: the ``run`` column or the CSV's folder).
        note: Replaces the default note on the published counterpart of the main table.

    Returns:
        Paths written.
    """
    metrics = read_metrics(metrics_csv)
    if run is None:
        runs = metrics["run"].dropna().unique() if "run" in metrics else []
        run = str(runs[0]) if len(runs) == 1 else Path(metrics_csv).parent.name
    table = metrics_table(metrics)
    mapping = dict(mapping or {})
    if note is None:
        note = (
            "Published counterparts: see the published-vs-reproduced table(s)."
            if mapping
            else NO_PUBLISHED_NOTE
        )
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
    if mapping and published_dir is None:
        raise ValueError("render_tables: a published mapping needs published_dir")
    for stem, cells in mapping.items():
        published_csv = Path(published_dir) / f"{stem}.csv"  # type: ignore[arg-type]
        if not published_csv.is_file():
            raise FileNotFoundError(
                f"render_tables: mapping names {stem!r} but {published_csv} does not exist"
            )
        comparison = published_vs_reproduced(table, published_csv, cells)
        name = f"{stem.split('_')[0]}_published_vs_reproduced"
        notes = comparison_notes(published_csv, comparison)
        paths = [out_csv / f"{name}.csv", out_md / f"{name}.md", out_tex / f"{name}.tex"]
        write_csv(paths[0], comparison)
        write_text(
            paths[1],
            f"# {stem}: published vs reproduced ({run})\n\n"
            + comparison_to_markdown(comparison, notes),
        )
        caption = (
            rf"Published ({latex_escape(stem)}) versus reproduced (\texttt{{{latex_escape(run)}}})."
        )
        write_text(paths[2], comparison_to_latex(comparison, caption, f"tab:{stem}", notes))
        log.info(
            "%s: %d published cells, %d with a reproduced value",
            name,
            len(comparison),
            int(comparison["reproduced"].notna().sum()),
        )
        written += paths
    return written
