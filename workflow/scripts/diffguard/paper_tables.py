"""Paper tables: published versus reproduced values, configured per run.

A paper table is configured under ``report.tables.<name>`` (see config/report/*.yaml; the
section is read and checked by :mod:`diffguard.report_config`):

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
seeds of a selected experiment become mean ± sample SD. The comparison CSVs written here are
what the reproduction check (:mod:`diffguard.reproduction`) reads.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diffguard.io import write_csv, write_text
from diffguard.tables import (
    FPR_CONVENTIONS,
    NO_PUBLISHED_NOTE,
    metric_columns,
    metrics_table,
    read_metrics,
    split_column,
)
from diffguard.tabular import (
    LEFT,
    RIGHT,
    latex_escape,
    latex_float,
    latex_tabular,
    markdown_notes,
    markdown_table,
    value_cell,
)

log = logging.getLogger(__name__)

SELECTOR_KEYS = ("experiment", "distance", "baseline", "method")

COMPARISON_COLUMNS = [
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
]
"""Columns of a paper table's CSV: one row per cell."""

# Published CSV columns (config/published/*.csv): <set>_auroc, <set>_fpr95, each maybe + _std.
_PUBLISHED_METRIC = re.compile(r"^(?P<dataset>.+)_(?P<metric>auroc|fpr95)(?P<std>_std)?$")
_PUBLISHED_TO_OURS = {"auroc": "auroc", "fpr95": "fpr95_id_recall"}
_DATASET_ALIASES = {"avg": "average"}


# --------------------------------------------------------------------------- published values


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


def _compared_cells(
    published: pd.DataFrame,
    pub_row: pd.Series,
    our_row: pd.Series,
    names: tuple[str, str],
    published_csv: str | Path,
) -> list[dict[str, Any]]:
    """The cells of one published row next to the reproduced row ``names = (published row,
    method)`` (see :func:`published_vs_reproduced`)."""
    pub_key, method = names
    # The averages are comparable only when the run evaluated every published OOD set.
    pub_sets = {
        _DATASET_ALIASES.get(m["dataset"], m["dataset"])
        for c in published.columns
        if (m := _PUBLISHED_METRIC.match(c)) and not m["std"] and not pd.isna(pub_row[c])
    } - {"average"}
    same_sets = all(
        f"{d}_auroc" in our_row.index and not pd.isna(our_row[f"{d}_auroc"]) for d in pub_sets
    )
    rows = []
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
    return rows


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
        rows += _compared_cells(published, pub_row, our_row, (pub_key, method), published_csv)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


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
        The :func:`published_vs_reproduced` frame (``reproduced_sd`` and
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
    return pd.DataFrame(out, columns=COMPARISON_COLUMNS)


def has_published(comparison: pd.DataFrame) -> bool:
    """Whether a paper table's comparison holds any published value (else reproduced-only)."""
    return bool(pd.to_numeric(comparison["published"], errors="coerce").notna().any())


# --------------------------------------------------------------------------- rendering


def _set_name(dataset: str) -> str:
    return {"average": "Average", "average_near": "Near avg.", "average_far": "Far avg."}.get(
        dataset, dataset
    )


def _columns(comparison: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(dataset, metric, convention) columns in published order."""
    keys = comparison[["dataset", "metric", "convention"]].astype(str)
    return list(dict.fromkeys(map(tuple, keys.to_numpy().tolist())))


def _grid(comparison: pd.DataFrame) -> list[tuple[str, list[pd.Series | None]]]:
    """Each published row with its cells in :func:`_columns` order (None: no such cell)."""
    cells = {
        (str(r["published_row"]), str(r["dataset"]), str(r["metric"]), str(r["convention"])): r
        for _, r in comparison.iterrows()
    }
    columns = _columns(comparison)
    return [
        (row, [cells.get((row, d, m, c)) for d, m, c in columns])
        for row in dict.fromkeys(comparison["published_row"].astype(str))
    ]


def _delta(r: pd.Series) -> str:
    return "--" if pd.isna(r["delta"]) else f"{r['delta']:+.2f}"


def wide_markdown(comparison: pd.DataFrame, title: str, notes: Sequence[str] = ()) -> str:
    """Paper-shaped Markdown: one row per published row, each cell
    ``reproduced (published, delta)``."""
    columns = _columns(comparison)
    published = has_published(comparison)
    header = ["Published row" if published else "Method"] + [
        f"{_set_name(d)} {m}{f' ({c})' if c else ''}" for d, m, c in columns
    ]
    rows = []
    for row, cells in _grid(comparison):
        out = [row.replace("|", "\\|")]
        for r in cells:
            if r is None:
                out.append("")
                continue
            reproduced = value_cell(r["reproduced"], r.get("reproduced_sd"))
            if not published:
                out.append(reproduced)
                continue
            out.append(
                f"{reproduced} ({value_cell(r['published'], r['published_sd'])}, {_delta(r)})"
            )
        rows.append(out)
    lines = [
        f"# {title}",
        "",
        "Each cell: reproduced (published, delta = reproduced - published)."
        if published
        else "Reproduced values only: nothing was published for this table.",
        "",
        *markdown_table(header, rows, [LEFT, *[RIGHT] * len(columns)]),
        *markdown_notes(notes),
    ]
    return "\n".join(lines) + "\n"


def wide_latex(
    comparison: pd.DataFrame, caption: str, label: str, notes: Sequence[str] = ()
) -> str:
    """Paper-shaped booktabs LaTeX: reproduced value over ``(published, delta)`` per cell."""
    columns = _columns(comparison)
    published_any = has_published(comparison)
    top = ["Published row" if published_any else "Method"]
    for d, m, c in columns:
        name = latex_escape(_set_name(d))
        arrow = r"$\downarrow$" if m.startswith("FPR") else r"$\uparrow$"
        top.append(rf"\shortstack{{{name}\\{latex_escape(m)}{f'$^{c}$' if c else ''}{arrow}}}")
    rows = []
    for row, cells in _grid(comparison):
        out = [latex_escape(row)]
        for r in cells:
            if r is None:
                out.append("")
                continue
            reproduced = value_cell(r["reproduced"], r.get("reproduced_sd"), pm=r"$\pm$")
            if not published_any:
                out.append(reproduced)
                continue
            published = value_cell(r["published"], r["published_sd"], pm=r"$\pm$")
            out.append(rf"\shortstack{{{reproduced}\\{{\scriptsize ({published}, {_delta(r)})}}}}")
        rows.append(out)
    tabular = latex_tabular("l" + "c" * len(columns), [" & ".join(top) + r" \\"], rows)
    # notes escaped as plain text (no FPR@95 superscript marks, unlike the main table)
    return latex_float(
        tabular, caption=caption, label=label, notes=[latex_escape(n) for n in notes]
    )


def _comparison_and_notes(
    metrics: pd.DataFrame,
    name: str,
    spec: Mapping[str, Any],
    published_dir: str | Path,
    headline_distance: str,
) -> tuple[pd.DataFrame, list[str]]:
    """One configured paper table's cells (:func:`paper_table`, or :func:`reproduced_table`
    with ``published: null``) and its notes."""
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
    return comparison, notes


def render_paper_tables_stage(
    metrics_csv: str | Path,
    tables: Mapping[str, Mapping[str, Any]],
    outputs: Mapping[str, Mapping[str, str | Path]],
    *,
    published_dir: str | Path,
    headline_distance: str,
    run: str,
) -> None:
    """Rule ``render_paper_tables``: write each configured paper table as CSV (long, one row
    per cell), Markdown and LaTeX.

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
        comparison, notes = _comparison_and_notes(
            metrics, name, spec, published_dir, headline_distance
        )
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
