"""Figures of a run (matplotlib Agg + seaborn; each saved as PDF and PNG, atomically).

Every ``plot_*`` function is pure: it takes arrays / frames and an output stem
(``<dir>/<name>`` without extension), writes ``<stem>.pdf`` and ``<stem>.png`` and returns
their paths. :func:`plot_all` reads the workflow's files and draws every figure of
:data:`FIGURES`. Scores are "InD-ness" scores: higher means more in-distribution.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from diffguard.config import sweep_spec  # noqa: E402, F401  (re-exported; torch-free for parsing)
from diffguard.io import atomic_path, read_npz  # noqa: E402
from diffguard.tables import FPR_CONVENTIONS, FPR_MARK  # noqa: E402

log = logging.getLogger(__name__)

FIGURES = ("score_histograms", "roc_curves", "recon_grid", "training_curves")
"""File stems :func:`plot_all` writes into its folder, each as ``.pdf`` and ``.png``
(``training_curves`` only when the run trained a model). Fig. 4 (``psnr_inversion``), Fig. 6
and Fig. 7 are drawn by their own rules when the report config names them."""

FPR_LEGEND = {mark: FPR_CONVENTIONS[metric] for metric, mark in FPR_MARK.items()}
"""Legend of the two FPR@95 reference lines: the tables' notes (definition, OpenOOD commits)."""

_DPI = 150


def _theme() -> None:
    sns.set_theme(style="whitegrid", context="paper", font_scale=0.9)


def save_figure(fig: plt.Figure, out_stem: str | Path) -> list[Path]:
    """Save ``fig`` as ``<out_stem>.pdf`` and ``.png`` atomically and close it.

    The PDF carries no creation date and the PNG no software tag, so reruns on the same data
    give the same bytes.
    """
    stem = Path(out_stem)
    paths = []
    for ext, metadata in (("pdf", {"CreationDate": None}), ("png", {"Software": None})):
        path = stem.with_name(f"{stem.name}.{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=_DPI, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    plt.close(fig)
    return paths


def _as_1d(values: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(arr)
    if not finite.all():
        log.warning("%s: dropping %d non-finite score(s)", what, int((~finite).sum()))
    return arr[finite]


def _auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """AUROC in percent, ID positive (as :func:`diffguard.metrics.ood_metrics`)."""
    labels = np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)]
    return 100.0 * float(roc_auc_score(labels, np.r_[id_scores, ood_scores]))


# --------------------------------------------------------------------------------------------
# score histograms


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
        # Bins over the pooled range so both sets share the same edges.
        n_bins = min(40, max(5, len(frame) // 8))
        # gap_log: bins and densities in log10 space (seaborn's log_scale), so bar areas stay
        # comparable; bins=int then spans the pooled range of this panel.
        log_scale = scale == "gap_log"
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
        ax.set_title(f"ID vs {ood}: AUROC {_auroc(id_scores, ood_scores):.1f}%", fontsize=8)
        if log_scale:
            ax.set_xlabel(f"max - {score_name} (log; lower = more ID)")
        else:
            ax.set_xlabel(f"{score_name} (higher = more ID)")
        legend = ax.get_legend()
        if legend is not None:
            legend.set_title(None)
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


# --------------------------------------------------------------------------------------------
# reconstruction grid


@dataclass(frozen=True)
class GridColumn:
    """One image of the reconstruction grid (arrays C x H x W in [-1, 1])."""

    dataset: str
    image_id: str
    pred: int
    score: float
    x0: np.ndarray
    recon: np.ndarray
    recon_uncond: np.ndarray | None = None
    is_id: bool = False


def grid_columns(
    shards: Mapping[str, Mapping[str, np.ndarray]],
    *,
    id_name: str,
    score_key: str,
    per_set: int = 4,
) -> list[GridColumn]:
    """Pick ``per_set`` images per dataset from reconstruction shards for :func:`plot_recon_grid`.

    Shards store images for their first rows only (``len(x0)``); among those, the chosen images
    are spread evenly over the score ranking (lowest to highest score), so a column set shows
    both well and badly reconstructed images. The ID set comes first.

    Args:
        shards: Dataset -> shard arrays (``image_ids, guide_labels, x0, recon, <score_key>``,
            optional ``recon_uncond`` which may have shape ``(0,)``).
        id_name: The in-distribution set.
        score_key: Score array to show and rank by, e.g. ``"score_ssim"``.
        per_set: Images per dataset.
    """
    columns: list[GridColumn] = []
    order = [id_name, *(d for d in shards if d != id_name)] if id_name in shards else list(shards)
    for dataset in order:
        shard = shards[dataset]
        for key in ("image_ids", "guide_labels", "x0", "recon", score_key):
            if key not in shard:
                raise KeyError(f"reconstruction shard of {dataset!r}: no array {key!r}")
        n = min(len(shard["x0"]), len(shard["recon"]))
        if n == 0:
            log.warning("reconstruction shard of %s stores no images", dataset)
            continue
        uncond = shard.get("recon_uncond")
        has_uncond = uncond is not None and uncond.ndim == 4 and len(uncond) >= n
        scores = np.asarray(shard[score_key][:n], dtype=np.float64)
        ranked = np.argsort(scores, kind="stable")
        picks = ranked[np.unique(np.linspace(0, n - 1, min(per_set, n)).round().astype(int))]
        for i in picks:
            columns.append(
                GridColumn(
                    dataset=dataset,
                    image_id=str(shard["image_ids"][i]),
                    pred=int(shard["guide_labels"][i]),
                    score=float(scores[i]),
                    x0=np.asarray(shard["x0"][i], dtype=np.float32),
                    recon=np.asarray(shard["recon"][i], dtype=np.float32),
                    recon_uncond=np.asarray(uncond[i], dtype=np.float32) if has_uncond else None,
                    is_id=dataset == id_name,
                )
            )
    return columns


def _to_image(array: np.ndarray) -> tuple[np.ndarray, str | None]:
    """C x H x W in [-1, 1] -> an image for imshow (and its colour map)."""
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"expected an image of shape C x H x W, got {arr.shape}")
    img = np.clip((arr + 1.0) / 2.0, 0.0, 1.0)
    if img.shape[0] == 1:
        return img[0], "gray"
    return np.transpose(img[:3], (1, 2, 0)), None


def plot_recon_grid(
    columns: Sequence[GridColumn],
    out_stem: str | Path,
    *,
    score_name: str = "score",
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> list[Path]:
    """Grid of inputs and regenerations (cf. the paper's Fig. 1 and 6).

    Rows: input, regeneration guided by the predicted label, and the unguided regeneration
    when any column has one. Columns: the given images, titled with their set, predicted label
    and score.
    """
    if not columns:
        raise ValueError("reconstruction grid: no images")
    rows = [("input", "x0"), ("guided by pred.", "recon")]
    if any(c.recon_uncond is not None for c in columns):
        rows.append(("unguided", "recon_uncond"))
    _theme()
    size = 1.15
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        figsize=(size * len(columns) + 0.6, size * len(rows) + 0.7),
        squeeze=False,
    )
    for c, column in enumerate(columns):
        label = (
            class_names[column.pred]
            if class_names is not None and 0 <= column.pred < len(class_names)
            else str(column.pred)
        )
        for r, (_, attr) in enumerate(rows):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            image = getattr(column, attr)
            if image is None:
                ax.axis("off")
                continue
            img, cmap = _to_image(image)
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:blue" if column.is_id else "tab:red")
                spine.set_linewidth(1.2)
        kind = "ID" if column.is_id else "OOD"
        axes[0][c].set_title(
            f"{column.dataset} ({kind})\npred {label}\n{score_name} {column.score:.3g}",
            fontsize=5.5,
        )
    for r, (name, _) in enumerate(rows):
        axes[r][0].set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_stem)


# --------------------------------------------------------------------------------------------
# PSNR along the inversion


TRACE_REQUIRED = ("image_id", "step", "timestep", "psnr_db", "psnr_peak")
"""Columns :func:`trace_summary` needs (an ``inversion_trace`` rule CSV)."""

PAPER_PSNR_PEAK = 2.0
"""The paper's PSNR peak on [-1, 1] images (the released code uses 255: +42.11 dB)."""


def trace_summary(traces: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean and SD of PSNR(x_t, x_0) per dataset and inversion level (Fig. 4's curves).

    Args:
        traces: Dataset -> long trace frame (one row per image and level, see
            :data:`TRACE_REQUIRED`; every dataset in the same PSNR peak).

    Returns:
        Columns ``dataset, step, timestep, images, mean_db, sd_db, mean_paper_db, psnr_peak``
        (``mean_paper_db``: the mean in the paper's units, peak 2).

    Raises:
        ValueError: A frame without the needed columns, with no rows, with several peaks, or
            with images that do not share the same levels.
    """
    rows = []
    peaks: set[float] = set()
    for name, frame in traces.items():
        missing = [c for c in TRACE_REQUIRED if c not in frame]
        if missing:
            raise ValueError(
                f"inversion trace of {name!r}: missing column(s) {missing}; "
                f"got {list(frame.columns)}"
            )
        if frame.empty:
            raise ValueError(f"inversion trace of {name!r}: no rows")
        peaks |= set(frame["psnr_peak"].astype(float))
        per_image = frame.groupby("image_id")["step"].apply(lambda s: tuple(sorted(s)))
        if per_image.nunique() != 1:
            raise ValueError(f"inversion trace of {name!r}: images cover different steps")
        values = pd.to_numeric(frame["psnr_db"], errors="coerce")
        grouped = frame.assign(psnr_db=values.where(np.isfinite(values))).groupby(
            ["step", "timestep"], sort=True
        )["psnr_db"]
        stats = grouped.agg(["count", "mean", "std"]).reset_index()
        for row in stats.itertuples(index=False):
            rows.append(
                {
                    "dataset": name,
                    "step": int(row.step),
                    "timestep": int(row.timestep),
                    "images": int(row.count),
                    "mean_db": float(row.mean),
                    "sd_db": float(row.std) if row.count > 1 else 0.0,
                }
            )
    if len(peaks) > 1:
        raise ValueError(f"inversion traces: PSNR in several peaks {sorted(peaks)}")
    summary = pd.DataFrame(
        rows, columns=["dataset", "step", "timestep", "images", "mean_db", "sd_db"]
    )
    peak = peaks.pop() if peaks else PAPER_PSNR_PEAK
    summary["mean_paper_db"] = summary["mean_db"] - 20 * np.log10(peak / PAPER_PSNR_PEAK)
    summary["psnr_peak"] = peak
    return summary


def plot_psnr_inversion(
    summary: pd.DataFrame,
    out_stem: str | Path,
    *,
    threshold: float | None = None,
    title: str | None = None,
) -> list[Path]:
    """PSNR(x_t, x_0) along the full DDIM inversion, mean +- sd per dataset (the paper's Fig. 4).

    The left axis is in the traces' PSNR peak (the released code's 255 for exp6.1), the right
    axis in the paper's units (peak 2); the x axis is the original timestep ``t`` of each
    inversion level (up to ``T``). ``threshold`` (same units as the left axis) draws the
    experiment's PSNR early-stop threshold.

    Args:
        summary: :func:`trace_summary` frame.
        out_stem: Output path without extension.
        threshold: Early-stop PSNR threshold, or None.
        title: Figure title.
    """
    if summary.empty:
        raise ValueError("PSNR along the inversion: no trace to draw")
    peaks = summary["psnr_peak"].unique()
    if len(peaks) != 1:
        raise ValueError(f"PSNR along the inversion: several peaks {sorted(peaks)}")
    peak = float(peaks[0])
    offset = 20 * np.log10(peak / PAPER_PSNR_PEAK)
    _theme()
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    names = list(dict.fromkeys(summary["dataset"]))
    palette = sns.color_palette("colorblind", len(names))
    for color, name in zip(palette, names, strict=True):
        part = summary[summary["dataset"] == name].sort_values("timestep")
        t, mean, sd = part["timestep"], part["mean_db"], part["sd_db"]
        ax.plot(t, mean, color=color, lw=1.2, label=f"{name} (n={int(part['images'].max())})")
        ax.fill_between(t, mean - sd, mean + sd, color=color, alpha=0.2, lw=0)
    if threshold is not None:
        ax.axhline(
            threshold, color="0.3", ls="--", lw=0.9, label=f"early-stop threshold ({threshold:g})"
        )
    ax.legend(fontsize=6)
    ax.set_xlabel("$t$ (DDIM inversion, no early stop)")
    ax.set_ylabel(f"PSNR($x_t$, $x_0$) [dB, peak {peak:g}]")
    if offset != 0:
        right = ax.secondary_yaxis("right", functions=(lambda v: v - offset, lambda v: v + offset))
        right.set_ylabel(f"[dB, peak {PAPER_PSNR_PEAK:g}: paper units]")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_stem)


# --------------------------------------------------------------------------------------------
# training curves


def plot_training_curves(
    logs: Mapping[str, pd.DataFrame], out_stem: str | Path, *, title: str | None = None
) -> list[Path]:
    """Training loss (and accuracy when logged) of each trained model, one panel per model.

    Each log needs a ``loss`` column and a ``step`` or ``epoch`` column.
    """
    if not logs:
        raise ValueError("training curves: no training logs given")
    for name, frame in logs.items():
        if "loss" not in frame or not ({"step", "epoch"} & set(frame.columns)):
            raise ValueError(
                f"training log of {name!r}: expected columns 'loss' and 'step' or 'epoch', "
                f"got {list(frame.columns)}"
            )
    _theme()
    fig, axes = plt.subplots(1, len(logs), figsize=(3.0 * len(logs), 2.5), squeeze=False)
    for ax, (name, frame) in zip(axes[0], logs.items(), strict=True):
        x = "step" if "step" in frame else "epoch"
        loss = pd.to_numeric(frame["loss"], errors="coerce")
        ax.plot(frame[x], loss, color="tab:blue", lw=1.1, marker="." if len(frame) < 30 else None)
        if (loss.dropna() > 0).all() and len(loss.dropna()):
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel("training loss", color="tab:blue")
        ax.set_title(name, fontsize=8)
        if "accuracy" in frame:
            twin = ax.twinx()
            twin.plot(frame[x], frame["accuracy"], color="tab:orange", lw=1.0, ls="--")
            twin.set_ylabel("train accuracy", color="tab:orange")
            twin.grid(False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_stem)


# --------------------------------------------------------------------------------------------
# every figure of a run


def _paths(value: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(value, str | Path):
        return [Path(value)]
    return [Path(v) for v in value]


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
        frames = {d: pd.read_csv(baseline_files[d]) for d in sets}
        candidates = [b for b in baselines if all(b in f for f in frames.values())]
        dropped = sorted(set(baselines) - set(candidates))
        if dropped:
            log.warning("baselines %s missing from the baseline score files: not plotted", dropped)
        ranked = sorted(
            candidates,
            key=lambda b: (
                -np.mean(
                    [
                        _auroc(_as_1d(frames[id_set][b], b), _as_1d(frames[d][b], b))
                        for d in ood_sets
                    ]
                )
            ),
        )
        for b in ranked[:max_baselines]:
            label = (baseline_labels or {}).get(b, b.upper())
            roc[label] = {d: frames[d][b].to_numpy() for d in sets}
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


# --------------------------------------------------------------------------------------------
# Fig. 7: average AUROC along one-dimensional sweeps (CAM cut-point, DDIM steps)


def sweep_points(
    metrics: pd.DataFrame,
    sweeps: Mapping[str, Mapping[str, object]],
    *,
    distance: str,
    metric: str = "auroc",
) -> pd.DataFrame:
    """Average-over-OOD-sets metric of every experiment of each sweep, mean and SD over seeds.

    Args:
        metrics: Long metrics frame (the ``evaluate`` rule's CSV).
        sweeps: Sweep name -> ``{"label": axis label, "points": {experiment: value}}``.
        distance: DiffGuard distance whose rows are used.
        metric: Metric column.

    Returns:
        Columns ``sweep, label, experiment, value, mean, sd, n_seeds`` (sd 0 for one seed);
        experiments without metrics rows are left out with a warning.
    """
    rows = []
    kind = metrics["kind"].astype(str)
    dist = metrics["distance"].fillna("").astype(str)
    dataset = metrics["dataset"].astype(str)
    for sweep, spec in sweeps.items():
        points = dict(spec["points"])  # type: ignore[arg-type]
        for experiment, value in points.items():
            sel = metrics[
                (kind == "diffguard")
                & (metrics["experiment"].astype(str) == experiment)
                & (dist == distance)
                & (dataset == "average")
            ]
            if sel.empty:
                log.warning("sweep %s: no average %s rows of %s", sweep, distance, experiment)
                continue
            values = sel[metric].astype(float)
            rows.append(
                {
                    "sweep": sweep,
                    "label": spec.get("label", sweep),
                    "experiment": experiment,
                    "value": float(value),  # type: ignore[arg-type]
                    "mean": float(values.mean()),
                    "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "n_seeds": len(values),
                }
            )
    columns = ["sweep", "label", "experiment", "value", "mean", "sd", "n_seeds"]
    return pd.DataFrame(rows, columns=columns).sort_values(["sweep", "value"], kind="stable")


def plot_sweeps(
    points: pd.DataFrame,
    out_stem: str | Path,
    *,
    reference: Mapping[str, float] | None = None,
    metric_label: str = "average AUROC (%)",
    title: str | None = None,
) -> list[Path]:
    """One panel per sweep: the metric against the swept value (cf. the paper's Fig. 7).

    Args:
        points: Output of :func:`sweep_points`.
        out_stem: Output stem.
        reference: Sweep -> value of the configured (released) setting, drawn as a dotted line.
        metric_label: y-axis label.
        title: Figure title.
    """
    if points.empty:
        raise ValueError("sweep figure: no points (did the run evaluate the sweep experiments?)")
    _theme()
    sweeps = list(dict.fromkeys(points["sweep"]))
    fig, axes = plt.subplots(1, len(sweeps), figsize=(3.3 * len(sweeps), 2.7), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps, strict=True):
        data = points[points["sweep"] == sweep].sort_values("value")
        ax.errorbar(
            data["value"],
            data["mean"],
            yerr=data["sd"].where(data["n_seeds"] > 1),
            marker="o",
            capsize=3,
            color=sns.color_palette()[0],
        )
        if reference and sweep in reference:
            ax.axvline(reference[sweep], color="0.4", linestyle=":", linewidth=1, label="config")
            ax.legend(fontsize=6, loc="best")
        ax.set_xlabel(str(data["label"].iloc[0]))
        ax.set_ylabel(metric_label)
        ax.set_title(sweep, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_stem)


# --------------------------------------------------------------------------------------------
# Fig. 6: the same images regenerated by each ablation


def ablation_rows(
    shards: Mapping[str, Mapping[str, np.ndarray]],
    *,
    images: int = 6,
    prefer_misclassified: bool = True,
) -> tuple[list[str], list[tuple[str, list[np.ndarray]]], list[str]]:
    """Pick images stored by every experiment's shard and collect their regenerations.

    Args:
        shards: Row label -> shard arrays (``image_ids, labels, preds, guide_labels, x0,
            recon``) of one dataset, in row order; the first shard's inputs form the top row.
        images: Columns (images).
        prefer_misclassified: Put images whose predicted label is wrong first (the paper's
            Fig. 6 regenerates under a false label).

    Returns:
        Image ids, ``[("input", x0s), (label, recons), ...]`` and per-column captions.
    """
    if not shards:
        raise ValueError("ablation grid: no experiments")
    stored = []
    for label, shard in shards.items():
        for key in ("image_ids", "labels", "preds", "guide_labels", "x0", "recon"):
            if key not in shard:
                raise KeyError(f"ablation grid: shard of {label!r} has no array {key!r}")
        n = min(len(shard["x0"]), len(shard["recon"]))
        stored.append({str(i): j for j, i in enumerate(shard["image_ids"][:n])})
    common = [i for i in stored[0] if all(i in s for s in stored[1:])]
    if not common:
        raise ValueError(
            "ablation grid: the experiments' shards store no common image (same dataset, "
            "same image list, save_images > 0?)"
        )
    first = next(iter(shards.values()))
    wrong = [i for i in common if first["preds"][stored[0][i]] != first["labels"][stored[0][i]]]
    order = (wrong + [i for i in common if i not in wrong]) if prefer_misclassified else common
    ids = order[:images]
    rows: list[tuple[str, list[np.ndarray]]] = [
        ("input", [np.asarray(first["x0"][stored[0][i]], np.float32) for i in ids])
    ]
    for (label, shard), index in zip(shards.items(), stored, strict=True):
        rows.append((label, [np.asarray(shard["recon"][index[i]], np.float32) for i in ids]))
    captions = []
    for i in ids:
        j = stored[0][i]
        captions.append(f"true {int(first['labels'][j])}, pred {int(first['preds'][j])}")
    return ids, rows, captions


def plot_ablation_grid(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]],
    out_stem: str | Path,
    *,
    captions: Sequence[str] = (),
    title: str | None = None,
) -> list[Path]:
    """Image grid: one row per ablation (and the input), one column per image (Fig. 6)."""
    if not rows or not rows[0][1]:
        raise ValueError("ablation grid: no images")
    width = len(rows[0][1])
    bad = [label for label, images in rows if len(images) != width]
    if bad:
        raise ValueError(f"ablation grid: rows {bad} do not have {width} images")
    _theme()
    size = 1.15
    fig, axes = plt.subplots(
        len(rows), width, figsize=(size * width + 1.4, size * len(rows) + 0.5), squeeze=False
    )
    for r, (label, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            img, cmap = _to_image(image)
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[r][0].set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    for c, caption in enumerate(captions[:width]):
        axes[0][c].set_title(caption, fontsize=5.5)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_stem)
