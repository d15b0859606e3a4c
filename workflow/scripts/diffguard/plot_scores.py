"""Score figures: histograms of a score on the ID set against each OOD set, ROC curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from diffguard.plot_base import _as_1d, _auroc, _theme, save_figure  # noqa: E402
from diffguard.tables import FPR_CONVENTIONS, FPR_MARK  # noqa: E402

FPR_LEGEND = {mark: FPR_CONVENTIONS[metric] for metric, mark in FPR_MARK.items()}
"""Legend of the two FPR@95 reference lines: the tables' notes (definition, OpenOOD commits)."""

# --------------------------------------------------------------------------------------------
# score histograms


def _histogram_panel(
    ax: plt.Axes,
    frame: pd.DataFrame,
    *,
    auroc: float,
    ood: str,
    score_name: str,
    log_scale: bool,
    palette: Sequence[tuple[float, float, float]],
) -> None:
    """One panel of :func:`plot_score_histograms`: the ID set's scores against one OOD set's."""
    # Bins over the pooled range so both sets share the same edges.
    n_bins = min(40, max(5, len(frame) // 8))
    # gap_log: bins and densities in log10 space (seaborn's log_scale), so bar areas stay
    # comparable; bins=int then spans the pooled range of this panel.
    bins = n_bins if log_scale else np.histogram_bin_edges(frame["score"], bins=n_bins)
    sns.histplot(
        frame,
        x="score",
        hue="set",
        bins=bins,
        stat="density",
        common_norm=False,
        element="step",
        palette=palette,
        log_scale=log_scale,
        ax=ax,
    )
    ax.set_title(f"ID vs {ood}: AUROC {auroc:.1f}%", fontsize=8)
    if log_scale:
        ax.set_xlabel(f"max - {score_name} (log; lower = more ID)")
    else:
        ax.set_xlabel(f"{score_name} (higher = more ID)")
    legend = ax.get_legend()
    if legend is not None:
        legend.set_title(None)


def plot_score_histograms(
    scores: Mapping[str, ArrayLike],
    out_stem: str | Path,
    *,
    id_name: str,
    score_name: str,
    title: str | None = None,
    scale: str = "auto",
) -> list[Path]:
    """One panel per OOD set: histogram of a score on the ID set against that OOD set.

    Args:
        scores: Dataset name -> per-image scores; must contain ``id_name`` and >= 1 other set.
        out_stem: Output path without extension.
        id_name: The in-distribution set.
        score_name: Axis label of the score (e.g. ``"DiffGuard ssim similarity"``).
        title: Figure title.
        scale: ``"linear"`` (the score), ``"gap_log"`` (``max - score`` on a log axis, for
            similarities piled up just below their maximum) or ``"auto"`` (``gap_log`` when the
            central 50% of the pooled scores span under 5% of their range).
    """
    if scale not in ("auto", "linear", "gap_log"):
        raise ValueError(f"score histograms: scale {scale!r} not in auto, linear, gap_log")
    if id_name not in scores:
        raise KeyError(f"score histograms: ID set {id_name!r} not in {list(scores)}")
    oods = [name for name in scores if name != id_name]
    if not oods:
        raise ValueError("score histograms: need at least one OOD set besides the ID set")
    _theme()
    id_scores = _as_1d(scores[id_name], id_name)
    pooled = np.concatenate([_as_1d(v, k) for k, v in scores.items()])
    top = float(pooled.max())
    if scale == "auto":
        spread = float(np.ptp(pooled))
        central = float(np.subtract(*np.percentile(pooled, [75, 25])))
        scale = "gap_log" if spread > 0 and central < 0.05 * spread else "linear"
    gaps = top - pooled
    # Images at the maximum would sit at log(0): put them half the smallest gap below.
    floor = float(gaps[gaps > 0].min()) / 2 if (gaps > 0).any() else 1.0

    def shown(values: np.ndarray) -> np.ndarray:
        return np.maximum(top - values, floor) if scale == "gap_log" else values

    fig, axes = plt.subplots(1, len(oods), figsize=(3.3 * len(oods), 2.7), squeeze=False)
    palette = sns.color_palette("colorblind", 2)
    for ax, ood in zip(axes[0], oods, strict=True):
        ood_scores = _as_1d(scores[ood], ood)
        frame = pd.concat(
            [
                pd.DataFrame({"score": shown(id_scores), "set": f"{id_name} (ID)"}),
                pd.DataFrame({"score": shown(ood_scores), "set": f"{ood} (OOD)"}),
            ],
            ignore_index=True,
        )
        _histogram_panel(
            ax,
            frame,
            auroc=_auroc(id_scores, ood_scores),
            ood=ood,
            score_name=score_name,
            log_scale=scale == "gap_log",
            palette=palette,
        )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_stem)


# --------------------------------------------------------------------------------------------
# ROC curves


def plot_roc_curves(
    scores: Mapping[str, Mapping[str, ArrayLike]],
    out_stem: str | Path,
    *,
    id_name: str,
    title: str | None = None,
) -> list[Path]:
    """ROC curves (ID positive) of several methods, one panel per OOD set.

    The two FPR@95 operating points are drawn as reference lines: the horizontal line at 95%
    ID recall (convention (a): FPR@95 = the curve's x there) and the vertical line at 95% OOD
    recall (convention (b): FPR@95 = 1 - the curve's y there).

    Args:
        scores: Method display name -> dataset -> per-image scores (ID set and OOD sets).
        out_stem: Output path without extension.
        id_name: The in-distribution set.
        title: Figure title.
    """
    if not scores:
        raise ValueError("ROC curves: no methods given")
    oods: list[str] = []
    for method, per_set in scores.items():
        if id_name not in per_set:
            raise KeyError(f"ROC curves: method {method!r} has no scores for ID set {id_name!r}")
        oods += [d for d in per_set if d != id_name and d not in oods]
    if not oods:
        raise ValueError("ROC curves: need at least one OOD set besides the ID set")
    _theme()
    palette = sns.color_palette("colorblind", len(scores))
    fig, axes = plt.subplots(1, len(oods), figsize=(3.3 * len(oods), 3.5), squeeze=False)
    for ax, ood in zip(axes[0], oods, strict=True):
        for color, (method, per_set) in zip(palette, scores.items(), strict=True):
            if ood not in per_set:
                continue
            id_scores = _as_1d(per_set[id_name], f"{method}/{id_name}")
            ood_scores = _as_1d(per_set[ood], f"{method}/{ood}")
            labels = np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)]
            fpr, tpr, _ = roc_curve(labels, np.r_[id_scores, ood_scores])
            auroc = _auroc(id_scores, ood_scores)
            ax.plot(fpr, tpr, color=color, lw=1.1, label=f"{method} ({auroc:.1f})")
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.6, ls=":")
        ax.axhline(0.95, color="0.3", lw=0.6, ls="--")
        ax.axvline(0.05, color="0.3", lw=0.6, ls="-.")
        ax.text(0.98, 0.93, "95% ID recall (a)", ha="right", va="top", fontsize=6)
        ax.text(0.07, 0.02, "95% OOD recall (b)", ha="left", va="bottom", fontsize=6, rotation=90)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel(f"OOD accepted ({ood})")
        ax.set_ylabel(f"ID accepted ({id_name})")
        ax.set_title(f"ID vs {ood}", fontsize=8)
        ax.legend(fontsize=5.5, loc="lower right", title="method (AUROC %)", title_fontsize=6)
    fig.text(
        0.5,
        -0.02,
        f"{FPR_LEGEND['a']}; x where a curve crosses the dashed line.\n"
        f"{FPR_LEGEND['b']}; 1 - y where a curve crosses the dash-dotted line.",
        ha="center",
        va="top",
        fontsize=6,
    )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_stem)
