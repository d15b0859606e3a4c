"""Result tables (CSV, Markdown, LaTeX) from the long metrics CSV, published numbers beside them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from diffguard.io import write_csv, write_text

log = logging.getLogger(__name__)

FPR_LABELS = {
    "fpr95_id_recall": "FPR@95 (OOD accepted at 95% ID recall; DiffGuard/OpenOOD v1)",
    "fpr95_ood_recall": "FPR@95 (ID rejected at 95% OOD recall; OpenOOD v1.5)",
}
KIND_ORDER = {"baseline": 0, "diffguard": 1, "combined": 2}


def main_results(metrics: pd.DataFrame, seed_mean: bool = True) -> pd.DataFrame:
    """One row per method; AUROC and both FPR@95 conventions per OOD set and on average.

    Rows with several seeds are averaged (mean; the ``_sd`` columns hold the spread).
    """
    frame = metrics[~metrics["dataset"].isin(["average_near", "average_far"])].copy()
    frame["seed"] = frame["seed"].astype(str)
    keys = ["kind", "method", "dataset"]
    values = ["auroc", "fpr95_id_recall", "fpr95_ood_recall"]
    grouped = frame.groupby(keys, sort=False)[values]
    mean = grouped.mean()
    wide = mean.unstack("dataset")
    wide.columns = [f"{dataset}_{metric}" for metric, dataset in wide.columns]
    wide = wide.reset_index()
    wide["_order"] = wide["kind"].map(KIND_ORDER)
    wide = wide.sort_values(["_order"], kind="stable").drop(columns="_order")
    datasets = [d for d in frame["dataset"].drop_duplicates() if d]
    columns = ["kind", "method"]
    for dataset in datasets:
        columns += [f"{dataset}_auroc", f"{dataset}_fpr95_id_recall"]
    columns.append("average_fpr95_ood_recall")
    return wide[[c for c in columns if c in wide.columns]].reset_index(drop=True)


def _best(series: pd.Series, higher: bool) -> float:
    return series.max() if higher else series.min()


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub Markdown of a results table, numbers to two decimals."""
    shown = table.drop(columns=["kind"], errors="ignore")
    return shown.to_markdown(index=False, floatfmt=".2f") + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters in one pass (no double escaping)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _header(column: str) -> str:
    if column.endswith("_auroc"):
        return latex_escape(column[: -len("_auroc")]) + r" AUROC$\uparrow$"
    if column.endswith("_fpr95_id_recall"):
        return latex_escape(column[: -len("_fpr95_id_recall")]) + r" FPR@95$^{a}\downarrow$"
    if column.endswith("_fpr95_ood_recall"):
        return latex_escape(column[: -len("_fpr95_ood_recall")]) + r" FPR@95$^{b}\downarrow$"
    return latex_escape(column)


def to_latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """booktabs LaTeX; best per column in bold (max AUROC, min FPR); FPR conventions named."""
    shown = table.drop(columns=["kind"], errors="ignore")
    numeric = [c for c in shown.columns if c != "method"]
    best = {c: _best(shown[c], c.endswith("auroc")) for c in numeric}
    lines = [
        r"\begin{table}[t]",
        r"\centering\scriptsize",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        r"\resizebox{\linewidth}{!}{%",
        r"\begin{tabular}{l" + "r" * len(numeric) + "}",
        r"\toprule",
        " & ".join(["Method", *(_header(c) for c in numeric)]) + r" \\",
        r"\midrule",
    ]
    previous_kind = None
    for _, row in table.iterrows():
        if previous_kind is not None and row.get("kind") != previous_kind:
            lines.append(r"\midrule")
        previous_kind = row.get("kind")
        cells = [latex_escape(str(row["method"]))]
        for c in numeric:
            value = row[c]
            text = "--" if pd.isna(value) else f"{value:.2f}"
            if not pd.isna(value) and np.isclose(value, best[c]):
                text = rf"\textbf{{{text}}}"
            cells.append(text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}}",
        r"\par\smallskip\raggedright $^{a}$"
        + latex_escape(FPR_LABELS["fpr95_id_recall"])
        + r". $^{b}$"
        + latex_escape(FPR_LABELS["fpr95_ood_recall"])
        + ".",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def published_vs_reproduced(
    reproduced: pd.DataFrame, published_csv: str | Path, mapping: dict[str, dict[str, str]]
) -> pd.DataFrame:
    """Cells ``reproduced | published | delta`` for each mapped (published row, column).

    ``mapping[published_method] = {"method": <our method name>, "columns": {pub_col: our_col}}``.
    Cells without a reproduced value stay empty: nothing is filled in.
    """
    published = pd.read_csv(published_csv)
    key = published.columns[0]
    rows = []
    for pub_method, spec in mapping.items():
        pub_row = published[published[key] == pub_method]
        if pub_row.empty:
            raise KeyError(f"{published_csv}: no row {pub_method!r} in column {key!r}")
        ours = reproduced[reproduced["method"] == spec["method"]]
        for pub_col, our_col in spec["columns"].items():
            pub_value = float(pub_row.iloc[0][pub_col])
            our_value = float(ours.iloc[0][our_col]) if not ours.empty else float("nan")
            rows.append(
                {
                    "published_method": pub_method,
                    "metric": pub_col,
                    "reproduced": our_value,
                    "published": pub_value,
                    "delta": our_value - pub_value,
                }
            )
    return pd.DataFrame(rows)


def render_tables(
    metrics_csv: str | Path,
    out_csv: str | Path,
    out_md: str | Path,
    out_tex: str | Path,
    run: str,
    published_note: str,
) -> pd.DataFrame:
    """Write the main results table in three formats; returns it."""
    metrics = pd.read_csv(metrics_csv, keep_default_na=False, na_values=[""])
    table = main_results(metrics)
    write_csv(out_csv, table)
    md = (
        f"# Main results ({run})\n\nAUROC and FPR@95 in percent. "
        f"{FPR_LABELS['fpr95_id_recall']}; {FPR_LABELS['fpr95_ood_recall']} (average column).\n\n"
        + to_markdown(table)
        + f"\n{published_note}\n"
    )
    write_text(out_md, md)
    caption = f"OOD detection on the {latex_escape(run)} benchmark (percent). " + latex_escape(
        published_note
    )
    write_text(out_tex, to_latex(table, caption, f"tab:{run}-main"))
    log.info("main results: %d methods", len(table))
    return table
