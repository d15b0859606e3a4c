"""Figures of a run (matplotlib Agg + seaborn; each saved as PDF and PNG, atomically).

:func:`plot_all` reads the workflow's files and draws every figure of :data:`FIGURES` (the rule
``plot_figures``); the figures themselves live in :mod:`diffguard.plot_scores`,
:mod:`diffguard.plot_images` and :mod:`diffguard.plot_curves` (shared plumbing:
:mod:`diffguard.plot_base`) and are re-exported here. Scores are "InD-ness" scores: higher means
more in-distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from diffguard.config import sweep_spec  # noqa: F401  (re-exported; torch-free for parsing)
from diffguard.io import read_npz
from diffguard.plot_base import _as_1d, _auroc, _theme, _to_image, save_figure  # noqa: F401
from diffguard.plot_curves import (  # noqa: F401  (re-exported)
    PAPER_PSNR_PEAK,
    plot_psnr_inversion,
    plot_sweeps,
    plot_training_curves,
    sweep_points,
    trace_summary,
)
from diffguard.plot_images import (  # noqa: F401  (re-exported)
    GridColumn,
    ablation_rows,
    grid_columns,
    plot_ablation_grid,
    plot_recon_grid,
)
from diffguard.plot_scores import FPR_LEGEND, plot_roc_curves, plot_score_histograms  # noqa: F401
from diffguard.targets import rule_figures

log = logging.getLogger(__name__)

FIGURES = rule_figures("plot_figures")
"""File stems :func:`plot_all` writes into its folder, each as ``.pdf`` and ``.png``
(``training_curves`` only when the run trained a model); from the registry
:data:`diffguard.targets.FIGURES`. Fig. 2, 4, 6 and 7 are drawn by their own rules."""

# --------------------------------------------------------------------------------------------
# every figure of a run


def _paths(value: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(value, str | Path):
        return [Path(value)]
    return [Path(v) for v in value]


def _baseline_rocs(
    frames: Mapping[str, pd.DataFrame],
    baselines: Sequence[str],
    *,
    id_set: str,
    ood_sets: Sequence[str],
    labels: Mapping[str, str],
    keep: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Display name -> dataset -> scores of the ``keep`` baselines of best mean AUROC."""
    candidates = [b for b in baselines if all(b in f for f in frames.values())]
    dropped = sorted(set(baselines) - set(candidates))
    if dropped:
        log.warning("baselines %s missing from the baseline score files: not plotted", dropped)
    ranked = sorted(
        candidates,
        key=lambda b: (
            -np.mean(
                [_auroc(_as_1d(frames[id_set][b], b), _as_1d(frames[d][b], b)) for d in ood_sets]
            )
        ),
    )
    return {
        labels.get(b, b.upper()): {d: frame[b].to_numpy() for d, frame in frames.items()}
        for b in ranked[:keep]
    }


def plot_all(
    *,
    id_set: str,
    ood_sets: Sequence[str],
    score_files: Mapping[str, str | Path],
    shard_files: Mapping[str, str | Path | Sequence[str | Path]],
    train_logs: Mapping[str, str | Path],
    out_dir: str | Path,
    baseline_files: Mapping[str, str | Path] | None = None,
    baselines: Sequence[str] = (),
    experiment: str = "",
    distance: str = "ssim",
    baseline_labels: Mapping[str, str] | None = None,
    max_baselines: int = 3,
    per_set: int = 4,
) -> list[Path]:
    """Draw every figure of :data:`FIGURES` into ``out_dir``; returns the files written.

    Args:
        id_set: The in-distribution set.
        ood_sets: OOD sets, in table order.
        score_files: Dataset -> per-image score CSV of the headline experiment.
        shard_files: Dataset -> reconstruction shard(s) of the headline experiment (images are
            shown from the first).
        train_logs: Model name -> ``train_log.csv``.
        out_dir: Figure folder.
        baseline_files: Dataset -> per-image baseline score CSV (for the ROC figure).
        baselines: Baseline columns to consider for the ROC figure.
        experiment: Headline experiment name (titles).
        distance: Headline similarity; the score column is ``score_<distance>``.
        baseline_labels: Display name of each baseline column (default: upper case).
        max_baselines: ROC curves of at most this many baselines (best mean AUROC first).
        per_set: Images per dataset in the reconstruction grid.
    """
    out = Path(out_dir)
    sets = [id_set, *ood_sets]
    missing = [d for d in sets if d not in score_files or d not in shard_files]
    if missing:
        raise KeyError(f"plot_all: no score file or shard for dataset(s) {missing}")
    column = f"score_{distance}"
    scores: dict[str, np.ndarray] = {}
    for d in sets:
        frame = pd.read_csv(score_files[d])
        if column not in frame:
            raise KeyError(f"{score_files[d]}: no column {column!r}; columns {list(frame.columns)}")
        scores[d] = frame[column].to_numpy()
    name = f"DiffGuard ({experiment}, {distance})" if experiment else f"DiffGuard ({distance})"
    written = plot_score_histograms(
        scores,
        out / "score_histograms",
        id_name=id_set,
        score_name=f"{distance} similarity",
        title=name,
    )

    roc: dict[str, dict[str, np.ndarray]] = {name: scores}
    if baseline_files and baselines:
        roc |= _baseline_rocs(
            {d: pd.read_csv(baseline_files[d]) for d in sets},
            baselines,
            id_set=id_set,
            ood_sets=ood_sets,
            labels=baseline_labels or {},
            keep=max_baselines,
        )
    written += plot_roc_curves(roc, out / "roc_curves", id_name=id_set)

    shards = {d: read_npz(_paths(shard_files[d])[0]) for d in sets}
    columns = grid_columns(shards, id_name=id_set, score_key=column, per_set=per_set)
    if not columns:
        raise ValueError("plot_all: the reconstruction shards store no images to show")
    written += plot_recon_grid(
        columns, out / "recon_grid", score_name=distance, title=f"{name}: regenerations"
    )
    if train_logs:  # downloaded models (paper configs) have no training log
        logs = {model: pd.read_csv(path) for model, path in train_logs.items()}
        written += plot_training_curves(logs, out / "training_curves")
    log.info("wrote %d figure files to %s", len(written), out)
    return written
