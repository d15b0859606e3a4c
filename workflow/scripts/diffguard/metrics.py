"""OOD detection metrics on "InD-ness" scores (higher = more in-distribution), in percent.

Conventions (PAPER.md C.5, FIELD.md 1.2):

- ``auroc``: area under the ROC curve; symmetric, so it does not depend on which class is positive.
- ``aupr_in``: ``precision_recall_curve(ID indicator, score)`` then ``auc(recall, precision)``
  (trapezoidal area, as the released code / OpenOOD do, not sklearn's average precision).
- ``aupr_out``: the same with OOD as the positive class and ``-score`` (the released code uses
  ``1 - score``; only the order matters).
- ``fpr95_id_recall``: FPR@95TPR with ID positive (DiffGuard's released code; OpenOOD up to
  8d44375, its v1.5 tag), the fraction of OOD samples *accepted* at the highest threshold that
  keeps at least 95% of ID samples (``fpr[argmax(tpr >= 0.95)]`` on
  ``roc_curve(ID indicator, score)``).
- ``fpr95_ood_recall``: FPR@95TPR with OOD positive (OpenOOD from 873e8c2, 2023-08-10, "fix ood
  eval (ood as pos)"), the fraction of ID samples *rejected* at the highest threshold on
  ``-score`` that catches at least 95% of OOD samples. The two FPR@95 conventions are not
  comparable with each other.

OpenOOD's labels are versioned by commit, not by release: its ``v1.5`` tag (8d44375, 2023-06-26)
still computes the ID-positive FPR@95; 873e8c2 switched to OOD positive and, until 4a72488
(2023-12-18, "fix #211"), also swapped AUPR_IN and AUPR_OUT (its AUPR_IN was OOD positive). The
labels below name each metric by its definition and that commit range (:data:`METRIC_DEFINITIONS`).

Both FPR@95 use ``roc_curve(..., drop_intermediate=False)``, i.e. every distinct score is an
operating point. sklearn's default (``True``, used by the released code) removes collinear ROC
points; with ties that can skip the exact operating point where the recall first reaches 95%
and report the FPR of the next kept point instead. Without ties both give the same value.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import auc, precision_recall_curve, roc_curve

log = logging.getLogger(__name__)

METRIC_KEYS = ("auroc", "aupr_in", "aupr_out", "fpr95_id_recall", "fpr95_ood_recall")
"""Keys of :func:`ood_metrics`, in table order."""

OPENOOD_ID_POSITIVE = "OpenOOD ≤ 8d44375, incl. its v1.5 tag"
"""OpenOOD commits whose FPR@95 is ID positive (before 873e8c2, 2023-08-10)."""
OPENOOD_OOD_POSITIVE = "OpenOOD ≥ 873e8c2"
"""OpenOOD commits whose FPR@95 is OOD positive."""
OPENOOD_AUPR_SWAPPED = "OpenOOD ≥ 873e8c2 and < 4a72488"
"""OpenOOD commits whose AUPR_IN is OOD positive and AUPR_OUT ID positive (swapped)."""

METRIC_DEFINITIONS = {
    "auroc": "AUROC: area under the ROC curve (the same with ID or OOD positive)",
    "aupr_in": (
        f"AUPR-IN, ID positive (OpenOOD's AUPR_IN, except {OPENOOD_AUPR_SWAPPED}: its AUPR_OUT)"
    ),
    "aupr_out": (
        f"AUPR-OUT, OOD positive (OpenOOD's AUPR_OUT, except {OPENOOD_AUPR_SWAPPED}: its AUPR_IN)"
    ),
    "fpr95_id_recall": (
        "FPR@95TPR, ID positive: OOD images accepted at 95% ID recall "
        f"(DiffGuard; {OPENOOD_ID_POSITIVE})"
    ),
    "fpr95_ood_recall": (
        f"FPR@95TPR, OOD positive: ID images rejected at 95% OOD recall ({OPENOOD_OOD_POSITIVE})"
    ),
}
"""Each metric by its definition and the OpenOOD commits that compute it so (table notes)."""

METRIC_LABELS = {key: f"{text} [%]" for key, text in METRIC_DEFINITIONS.items()}
"""Human labels (axis and column titles) naming each metric's convention, in percent."""

METRIC_TITLES = {
    "auroc": "AUROC",
    "aupr_in": "AUPR-In",
    "aupr_out": "AUPR-Out",
    "fpr95_id_recall": "FPR@95",
    "fpr95_ood_recall": "FPR@95",
}
"""Short column titles of tables (the two FPR@95 conventions are told apart by a mark)."""

HIGHER_IS_BETTER = {
    "auroc": True,
    "aupr_in": True,
    "aupr_out": True,
    "fpr95_id_recall": False,
    "fpr95_ood_recall": False,
    # A published table's FPR@95 column, before it is matched to one of the conventions above.
    "fpr95": False,
}
"""Direction of each metric (:func:`take_best_over`, best-value marks and arrows in tables)."""

RECALL_LEVEL = 0.95


def _check_scores(scores: ArrayLike, name: str) -> np.ndarray:
    """Return ``scores`` as a finite, non-empty 1-D float64 array or raise naming ``name``."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; need at least one score")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(
            f"{name} contains {idx.size} non-finite value(s) (NaN/inf), first at index "
            f"{idx[0]}: {arr[idx[0]]}"
        )
    return arr


def _fpr_at_recall(positive: np.ndarray, score: np.ndarray, level: float) -> float:
    """FPR at the highest threshold whose TPR reaches ``level`` (positive = higher score)."""
    fpr, tpr, _ = roc_curve(positive, score, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= level)])


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> dict[str, float]:
    """AUROC, AUPR-IN, AUPR-OUT and both FPR@95 conventions, in percent.

    Args:
        id_scores: InD-ness scores of the in-distribution samples (1-D, finite).
        ood_scores: InD-ness scores of the OOD samples (1-D, finite).

    Returns:
        ``{key: value}`` for the keys in :data:`METRIC_KEYS`.
    """
    id_arr = _check_scores(id_scores, "id_scores")
    ood_arr = _check_scores(ood_scores, "ood_scores")
    score = np.concatenate([id_arr, ood_arr])
    is_id = np.concatenate([np.ones(id_arr.size, int), np.zeros(ood_arr.size, int)])
    is_ood = 1 - is_id

    fpr, tpr, _ = roc_curve(is_id, score)
    precision_in, recall_in, _ = precision_recall_curve(is_id, score)
    precision_out, recall_out, _ = precision_recall_curve(is_ood, -score)
    return {
        "auroc": 100.0 * float(auc(fpr, tpr)),
        "aupr_in": 100.0 * float(auc(recall_in, precision_in)),
        "aupr_out": 100.0 * float(auc(recall_out, precision_out)),
        "fpr95_id_recall": 100.0 * _fpr_at_recall(is_id, score, RECALL_LEVEL),
        "fpr95_ood_recall": 100.0 * _fpr_at_recall(is_ood, -score, RECALL_LEVEL),
    }


def evaluate(scores_by_set: Mapping[str, ArrayLike], id_name: str) -> pd.DataFrame:
    """Metrics of every OOD set against the ID set, plus their unweighted ``average`` row.

    Args:
        scores_by_set: InD-ness scores per dataset name; must contain ``id_name`` and at least one
            other (OOD) set.
        id_name: Name of the in-distribution set in ``scores_by_set``.

    Returns:
        DataFrame indexed by dataset (``index.name == "dataset"``), columns :data:`METRIC_KEYS`,
        one row per OOD set in input order and a final ``average`` row (mean over OOD sets, as
        OpenOOD's near/far averages).
    """
    if id_name not in scores_by_set:
        raise KeyError(f"ID set {id_name!r} not in scores_by_set (have {sorted(scores_by_set)})")
    ood_names = [name for name in scores_by_set if name != id_name]
    if not ood_names:
        raise ValueError(f"scores_by_set holds only the ID set {id_name!r}; need an OOD set")
    if "average" in ood_names:
        raise ValueError("an OOD set may not be called 'average' (reserved for the mean row)")
    id_scores = _check_scores(scores_by_set[id_name], f"scores_by_set[{id_name!r}]")
    rows = {}
    for name in ood_names:
        ood = _check_scores(scores_by_set[name], f"scores_by_set[{name!r}]")
        rows[name] = ood_metrics(id_scores, ood)
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_KEYS))
    frame.loc["average"] = frame.mean(axis=0)
    frame.index.name = "dataset"
    return frame


def _best(values: pd.Series, metric: str) -> float:
    return float(values.max() if HIGHER_IS_BETTER[metric] else values.min())


def _rows_where(frame: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of ``frame`` whose columns equal every value of ``where``."""
    mask = pd.Series(True, index=frame.index)
    for column, value in where.items():
        if column not in frame.columns:
            raise KeyError(f"take_best_over: `where` column {column!r} not in frame")
        mask &= frame[column] == value
    return frame[mask]


def _relabel(
    row: dict[str, Any],
    values: Mapping[str, float],
    *,
    over: str,
    label: str,
    ignore: Sequence[str],
) -> dict[str, Any]:
    """``row`` with the metric ``values``, ``label`` in column ``over`` and, in the ``ignore``
    columns' strings (the method name), the old ``over`` value replaced by ``label``."""
    old = str(row[over])
    row[over] = label
    row.update(values)
    for column in ignore:
        if column in row and isinstance(row[column], str) and old:
            row[column] = row[column].replace(old, label)
    return row


def take_best_over(
    frame: pd.DataFrame,
    over: str = "distance",
    *,
    where: Mapping[str, Any] | None = None,
    label: str = "best",
    dataset_column: str = "dataset",
    role_column: str = "role",
    ignore: Sequence[str] = ("method",),
) -> pd.DataFrame:
    """Append the released code's optimistic "best over distances" rows (PAPER.md C.5, E.2.11).

    For every group of rows that agree on all columns except ``over``, the metric columns and
    ``ignore``, and for every OOD set separately, each metric is replaced by its best value over
    the group (max for AUROC/AUPR, min for FPR), so different metrics may come from different
    distances. Average rows (``dataset`` starting with ``average``) are recomputed as the mean of
    those per-set bests, as the released code does; an average row whose ``role`` is not ``all``
    averages only the per-set rows of that role. This is an oracle-like choice: call it only when
    the configuration explicitly asks for it.

    Args:
        frame: Long metric table, one row per (method settings, dataset), metric columns from
            :data:`METRIC_KEYS`.
        over: Column whose values are maximised over (the released code: the distance).
        where: Column values selecting the rows to combine; default ``{"kind": "diffguard"}``
            when a ``kind`` column exists, otherwise all rows.
        label: Value written to ``over`` in the new rows; ``method`` strings get the old
            ``over`` value replaced by it.
        dataset_column: Column naming the OOD set (or ``average*`` row).
        role_column: Column telling which group an average row covers (``near``/``far``/``all``).
        ignore: Columns that vary with ``over`` and are not grouping keys.

    Returns:
        A new frame: the input rows followed by the best-of rows.
    """
    metrics = [m for m in METRIC_KEYS if m in frame.columns]
    missing = [c for c in (over, dataset_column) if c not in frame.columns]
    if missing or not metrics:
        raise KeyError(
            f"take_best_over needs columns {over!r}, {dataset_column!r} and at least one of "
            f"{METRIC_KEYS}; frame has {list(frame.columns)}"
        )
    if where is None:
        where = {"kind": "diffguard"} if "kind" in frame.columns else {}
    selected = _rows_where(frame, where)
    if selected.empty:
        log.warning("take_best_over: no rows match %s; nothing added", dict(where))
        return frame.copy()

    # the role column describes the dataset (near/far), so it is not a grouping key either
    per_row = {over, *metrics, *ignore, dataset_column, role_column}
    keys = [c for c in frame.columns if c not in per_row]
    is_average = selected[dataset_column].astype(str).str.startswith("average")
    relabel = functools.partial(_relabel, over=over, label=label, ignore=ignore)
    new_rows: list[dict[str, Any]] = []
    group_iter = selected.groupby(keys, dropna=False, sort=False) if keys else [((), selected)]
    for _, group in group_iter:
        per_set = group[~is_average.loc[group.index]]
        best_rows: list[dict[str, Any]] = []
        for _, rows in per_set.groupby(dataset_column, dropna=False, sort=False):
            best = {metric: _best(rows[metric], metric) for metric in metrics}
            best_rows.append(relabel(rows.iloc[0].to_dict(), best))
        averages = group[is_average.loc[group.index]]
        average_rows: list[dict[str, Any]] = []
        for name in dict.fromkeys(averages[dataset_column]):
            template = averages[averages[dataset_column] == name].iloc[0].to_dict()
            role = template.get(role_column, "all")
            members = [
                r
                for r in best_rows
                if role == "all" or role_column not in r or r[role_column] == role
            ]
            if members:
                means = {m: float(np.mean([r[m] for r in members])) for m in metrics}
                average_rows.append(relabel(template, means))
        new_rows += best_rows + average_rows
    log.info("take_best_over(%r): added %d optimistic best-of rows", over, len(new_rows))
    return pd.concat([frame, pd.DataFrame(new_rows, columns=frame.columns)], ignore_index=True)
