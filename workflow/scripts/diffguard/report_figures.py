"""Figures (seaborn, PDF + PNG): score histograms, ROC curves, reconstruction grids, PSNR along
the inversion (paper Fig. 4) and training curves. Every function takes data and writes files."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from diffguard.io import atomic_path, read_npz  # noqa: E402

log = logging.getLogger(__name__)

FIGURES = ("score_histograms", "roc_curves", "recon_grid", "psnr_inversion", "training_curves")
"""File stems written by :func:`plot_all` (each as .pdf and .png)."""


def save(fig: plt.Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Save ``fig`` as PDF and PNG atomically (metadata without dates, for reproducibility)."""
    paths = []
    for ext in ("pdf", "png"):
        path = Path(out_dir) / f"{stem}.{ext}"
        with atomic_path(path) as tmp:
            metadata = {"CreationDate": None} if ext == "pdf" else {"Software": None}
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    plt.close(fig)
    return paths


def score_histograms(scores: dict[str, np.ndarray], title: str) -> plt.Figure:
    """Histogram of one score for the ID set and each OOD set."""
    frame = pd.concat(
        [pd.DataFrame({"score": v, "dataset": k}) for k, v in scores.items()], ignore_index=True
    )
    fig, ax = plt.subplots(figsize=(5, 3.2))
    sns.histplot(
        frame, x="score", hue="dataset", stat="density", common_norm=False, element="step", ax=ax
    )
    ax.set_title(title, fontsize=9)
    return fig


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> plt.Figure:
    """ROC (ID positive) of several methods; ``curves[name] = (id_scores, ood_scores)``."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for name, (id_scores, ood_scores) in curves.items():
        labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
        fpr, tpr, _ = roc_curve(labels, np.r_[id_scores, ood_scores])
        ax.plot(fpr, tpr, label=name, lw=1.2)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
    ax.set_xlabel("OOD accepted (FPR)")
    ax.set_ylabel("ID accepted (TPR)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    return fig


def recon_grid(panels: dict[str, dict[str, np.ndarray]], per_set: int = 4) -> plt.Figure:
    """Rows: input, guided reconstruction, unguided twin; columns: images of each set."""
    sets = list(panels)
    rows = ["x0", "recon", "recon_uncond"]
    rows = [
        r for r in rows if any(panels[s].get(r) is not None and len(panels[s][r]) for s in sets)
    ]
    cols = [(s, i) for s in sets for i in range(min(per_set, len(panels[s]["x0"])))]
    fig, axes = plt.subplots(
        len(rows), len(cols), figsize=(1.1 * len(cols), 1.2 * len(rows)), squeeze=False
    )
    for c, (s, i) in enumerate(cols):
        for r, key in enumerate(rows):
            ax = axes[r][c]
            ax.axis("off")
            images = panels[s].get(key)
            if images is None or len(images) <= i:
                continue
            img = (np.asarray(images[i], dtype=np.float32) + 1) / 2
            img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
            ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
            if r == 0:
                ax.set_title(f"{s}\npred {panels[s]['preds'][i]}", fontsize=6)
    for r, key in enumerate(rows):
        axes[r][0].text(
            -0.1, 0.5, key, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=7
        )
    return fig


def psnr_inversion(traces: dict[str, np.ndarray]) -> plt.Figure:
    """Mean +- sd over images of PSNR(x_t, x0) (paper units, peak 2) along the inversion."""
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, trace in traces.items():
        if trace.size == 0:
            continue
        mean = np.nanmean(trace, axis=0)
        sd = np.nanstd(trace, axis=0)
        steps = np.arange(1, len(mean) + 1)
        ax.plot(steps, mean, label=name)
        ax.fill_between(steps, mean - sd, mean + sd, alpha=0.2)
    ax.set_xlabel("DDIM inversion step")
    ax.set_ylabel("PSNR(x_t, x_0) [dB, peak 2]")
    ax.legend(fontsize=7)
    return fig


def training_curves(logs: dict[str, pd.DataFrame]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(logs), figsize=(3.2 * len(logs), 2.6), squeeze=False)
    for ax, (name, frame) in zip(axes[0], logs.items(), strict=True):
        x = "step" if "step" in frame else "epoch"
        ax.plot(frame[x], frame["loss"])
        ax.set_xlabel(x)
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def _read_scores(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path)


def plot_all(
    *,
    id_set: str,
    ood_sets: Sequence[str],
    headline_experiment: str,
    headline_distance: str,
    score_files: dict[str, str],
    baseline_files: dict[str, str],
    baselines: Sequence[str],
    shard_files: dict[str, str],
    train_logs: dict[str, str],
    out_dir: str | Path,
) -> list[Path]:
    """Write every figure of :data:`FIGURES` to ``out_dir``.

    ``score_files[dataset]`` / ``shard_files[dataset]`` belong to the headline experiment (first
    shard); ``baseline_files[dataset]`` hold per-image baseline scores.
    """
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
    sns.set_theme(style="whitegrid", context="paper")
    col = f"score_{headline_distance}"
    scores = {d: _read_scores(score_files[d])[col].to_numpy() for d in [id_set, *ood_sets]}
    written = save(
        score_histograms(
            scores, f"DiffGuard {headline_experiment}: {headline_distance} similarity"
        ),
        out_dir,
        "score_histograms",
    )
    base = {d: pd.read_csv(baseline_files[d]) for d in [id_set, *ood_sets]}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for d in ood_sets:
        curves[f"DiffGuard / {d}"] = (scores[id_set], scores[d])
        for b in baselines[:2]:
            curves[f"{b.upper()} / {d}"] = (base[id_set][b].to_numpy(), base[d][b].to_numpy())
    written += save(roc_curves(curves, "ROC, ID positive"), out_dir, "roc_curves")
    panels = {}
    traces = {}
    for d in [id_set, *ood_sets]:
        shard = read_npz(shard_files[d])
        panels[d] = {k: shard.get(k) for k in ("x0", "recon", "recon_uncond")}
        panels[d]["preds"] = shard["guide_labels"]
        traces[d] = shard["psnr_trace"].astype(np.float64)
    written += save(recon_grid(panels), out_dir, "recon_grid")
    written += save(psnr_inversion(traces), out_dir, "psnr_inversion")
    logs = {name: pd.read_csv(path) for name, path in train_logs.items()}
    written += save(training_curves(logs), out_dir, "training_curves")
    log.info("wrote %d figure files to %s", len(written), out_dir)
    return written
