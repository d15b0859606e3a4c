"""Combining DiffGuard's score with a post-hoc baseline's score (higher = more in-distribution).

The paper says only that "the combined method only trusts samples with high detection confidence
by the baselines, while resorting to DiffGuard for hard cases" (PAPER.md C.6); the exact rule is
not published. Two documented rules are implemented here. Both are fitted on ID scores only (the
empirical distribution of each score over the ID set); OOD labels are never used.

Normalisation: each score ``s`` is mapped through the mid-rank empirical CDF of that score over
the ``n`` ID reference scores ``r_1..r_n``::

    F(s) = (#{i : r_i < s} + #{i : r_i <= s}) / (2 n)          in [0, 1]

``F`` depends only on order relations, so any strictly increasing transform of a score (applied to
reference and test alike) leaves ``F`` and therefore every combined score unchanged. Test scores
between the same two consecutive ID scores get the same ``F``; when the ID reference set is the ID
set being evaluated (as in the workflow), no ID-versus-OOD order is lost, so AUROC and FPR@95
equal those of the raw scores.

Rules (``a = F_baseline(baseline score)``, ``d = F_diffguard(DiffGuard score)``):

- ``cascade`` (defaults ``q_low = 0.05``, ``q_high = 0.5``)::

      c = a - 1    if a < q_low            (baseline confidently OOD: in [-1, 0))
      c = d        if q_low <= a <= q_high (hard case: DiffGuard decides, in [0, 1])
      c = 1 + a    if a > q_high           (baseline confidently ID: in (1, 2])

  so confident-OOD samples rank below every hard case and confident-ID samples above. Defaults:
  ``q_low = 0.05`` marks as confidently OOD what the baseline scores below the 5th percentile of
  ID, i.e. beyond the operating point of FPR@95 (95% ID recall), where at most ~5% of ID data
  can land; ``q_high = 0.5`` trusts the baseline's "ID" verdict only above the ID median, so
  every sample the baseline rates as less ID-like than a typical ID sample (which includes most
  OOD samples of a reasonable baseline) is sent to DiffGuard. Neither was tuned on OOD data.
  ``q_low = 0, q_high = 1`` gives DiffGuard alone; ``q_low = q_high`` gives the baseline alone
  (DiffGuard only breaks the baseline's exact ties at ``F = q``).
- ``rank_average`` (default ``weight = 0.5``)::

      c = weight * d + (1 - weight) * a

  ``weight = 1`` is DiffGuard alone, ``weight = 0`` the baseline alone.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

log = logging.getLogger(__name__)


def _check(scores: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return arr


def id_cdf(reference: ArrayLike, scores: ArrayLike) -> np.ndarray:
    """Mid-rank empirical CDF of ``reference`` (ID scores) evaluated at ``scores``, in [0, 1].

    ``F(s) = (#{r < s} + #{r <= s}) / (2 n)``.
    """
    ref = np.sort(_check(reference, "reference"))
    s = _check(scores, "scores")
    below = np.searchsorted(ref, s, side="left")
    at_or_below = np.searchsorted(ref, s, side="right")
    return (below + at_or_below) / (2.0 * ref.size)


def cascade(
    diffguard_id: ArrayLike,
    diffguard_test: ArrayLike,
    baseline_id: ArrayLike,
    baseline_test: ArrayLike,
    q_low: float = 0.05,
    q_high: float = 0.5,
) -> np.ndarray:
    """Trust the baseline where it is confident (ID-CDF < q_low or > q_high), else DiffGuard.

    ``c = a - 1`` if ``a < q_low``; ``c = d`` if ``q_low <= a <= q_high``; ``c = 1 + a`` if
    ``a > q_high``; ``a``, ``d`` = ID-CDF of the baseline and DiffGuard scores (module docstring).
    """
    if not 0.0 <= q_low <= q_high <= 1.0:
        raise ValueError(
            f"cascade needs 0 <= q_low <= q_high <= 1, got q_low={q_low}, q_high={q_high}"
        )
    a = id_cdf(baseline_id, baseline_test)
    d = id_cdf(diffguard_id, diffguard_test)
    confident_ood = a < q_low
    confident_id = a > q_high
    combined = np.where(confident_ood, a - 1.0, np.where(confident_id, 1.0 + a, d))
    log.debug(
        "cascade q=(%g, %g): %d confident OOD, %d hard, %d confident ID",
        q_low,
        q_high,
        confident_ood.sum(),
        (~confident_ood & ~confident_id).sum(),
        confident_id.sum(),
    )
    return combined


def rank_average(
    diffguard_id: ArrayLike,
    diffguard_test: ArrayLike,
    baseline_id: ArrayLike,
    baseline_test: ArrayLike,
    weight: float = 0.5,
) -> np.ndarray:
    """``weight * F_dg(diffguard_test) + (1 - weight) * F_bl(baseline_test)`` (ID-CDF values)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"rank_average needs 0 <= weight <= 1, got {weight}")
    d = id_cdf(diffguard_id, diffguard_test)
    a = id_cdf(baseline_id, baseline_test)
    return weight * d + (1.0 - weight) * a


COMBINATION_RULES: dict[str, Callable[..., np.ndarray]] = {
    "cascade": cascade,
    "rank_average": rank_average,
}
"""Combination rules by config name; each takes the four score arrays and its parameters."""


def combine(
    diffguard_id: ArrayLike,
    diffguard_test: ArrayLike,
    baseline_id: ArrayLike,
    baseline_test: ArrayLike,
    rule: str,
    **params: float,
) -> np.ndarray:
    """Combined InD-ness scores of the test samples with ``rule`` fitted on the ID scores.

    Args:
        diffguard_id: DiffGuard scores of the ID reference set.
        diffguard_test: DiffGuard scores of the samples to score.
        baseline_id: Baseline scores of the same ID reference samples (same order; tables of
            per-image scores are paired with :func:`align_by_image`).
        baseline_test: Baseline scores of the same test samples (same order).
        rule: A key of :data:`COMBINATION_RULES`.
        **params: The rule's parameters (``q_low``/``q_high`` or ``weight``).

    Returns:
        ``(N_test,)`` combined scores (only their order is meaningful).
    """
    if rule not in COMBINATION_RULES:
        raise KeyError(f"unknown combination rule {rule!r}; valid: {sorted(COMBINATION_RULES)}")
    dg_id = _check(diffguard_id, "diffguard_id")
    dg_test = _check(diffguard_test, "diffguard_test")
    bl_id = _check(baseline_id, "baseline_id")
    bl_test = _check(baseline_test, "baseline_test")
    if dg_id.size != bl_id.size:
        raise ValueError(
            f"diffguard_id ({dg_id.size}) and baseline_id ({bl_id.size}) must score the same ID "
            "samples"
        )
    if dg_test.size != bl_test.size:
        raise ValueError(
            f"diffguard_test ({dg_test.size}) and baseline_test ({bl_test.size}) must score the "
            "same test samples"
        )
    fn = COMBINATION_RULES[rule]
    allowed = list(inspect.signature(fn).parameters)[4:]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(
            f"combination rule {rule!r}: unknown parameters {unknown}; valid: {allowed}"
        )
    return fn(dg_id, dg_test, bl_id, bl_test, **params)


IMAGE_KEY = "image_id"
"""Column both per-image score tables (DiffGuard's and the baselines') identify images by."""
_SHOWN_IDS = 5


def align_by_image(
    diffguard: pd.DataFrame,
    baseline: pd.DataFrame,
    *,
    diffguard_file: str | Path,
    baseline_file: str | Path,
    key: str = IMAGE_KEY,
) -> pd.DataFrame:
    """``baseline``'s rows reordered to match ``diffguard``'s, joined on the image id.

    The two tables come from different jobs (sharded reconstruction, one baseline pass), so
    their row order is not a contract: pairing by position would silently combine scores of
    different images.

    Raises:
        ValueError: A table without ``key``, a repeated id, or different id sets (naming both
            files and the first ids each lacks).
    """
    for frame, file in ((diffguard, diffguard_file), (baseline, baseline_file)):
        if key not in frame.columns:
            raise ValueError(f"{file}: no {key!r} column to join on (columns {list(frame)})")
        repeated = frame[key][frame[key].duplicated()].astype(str).unique().tolist()
        if repeated:
            raise ValueError(f"{file}: repeated {key} {repeated[:_SHOWN_IDS]}")
    ours, theirs = set(diffguard[key].astype(str)), set(baseline[key].astype(str))
    if ours != theirs:
        lacks_baseline = sorted(ours - theirs)
        lacks_diffguard = sorted(theirs - ours)
        raise ValueError(
            f"{diffguard_file} ({len(ours)} images) and {baseline_file} ({len(theirs)} images) "
            f"score different images: {len(lacks_baseline)} missing from the baseline file "
            f"(first {lacks_baseline[:_SHOWN_IDS]}), {len(lacks_diffguard)} missing from the "
            f"DiffGuard file (first {lacks_diffguard[:_SHOWN_IDS]})"
        )
    by_id = baseline.set_index(baseline[key].astype(str), drop=False)
    return by_id.loc[diffguard[key].astype(str).to_numpy()].reset_index(drop=True)
