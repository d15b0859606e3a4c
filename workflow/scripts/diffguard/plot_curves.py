"""Curve figures: PSNR along the inversion (Fig. 4), training curves, sweeps (Fig. 7)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from diffguard.plot_base import _theme, save_figure  # noqa: E402

log = logging.getLogger(__name__)

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
