"""The tune sweep figure: validation objective against each grid axis, the choice marked."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from diffguard.plot_base import _theme, save_figure  # noqa: E402

log = logging.getLogger(__name__)


def sweep_axes(sweep: pd.DataFrame, chosen: Mapping[str, Any]) -> list[str]:
    """The grid axes of a sweep table (the keys of ``chosen["settings"]``, in grid order)."""
    axes = list(chosen["settings"])
    missing = [a for a in axes if a not in sweep.columns]
    if missing:
        raise ValueError(f"sweep.csv of tune {chosen['tune']!r} lacks the grid column(s) {missing}")
    return axes


def plot_tune_sweeps(
    sweeps: Mapping[str, pd.DataFrame],
    chosen: Mapping[str, Mapping[str, Any]],
    out_stem: str | Path,
) -> list[Path]:
    """One panel per tune and grid axis: the validation objective against the axis value, one
    line per distance (the best over the other axes at each value); a star at the choice."""
    _theme()
    panels = [(name, axis) for name in sweeps for axis in sweep_axes(sweeps[name], chosen[name])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 2.7), squeeze=False)
    palette = sns.color_palette()
    for ax, (name, axis) in zip(axes[0], panels, strict=True):
        sweep, pick = sweeps[name], chosen[name]
        for k, (dist, rows) in enumerate(sweep.groupby("distance", sort=False)):
            best = rows.groupby(axis)["objective"].max().sort_index()
            ax.plot(best.index, best.to_numpy(), marker="o", color=palette[k], label=dist)
        ax.plot(
            [pick["settings"][axis]],
            [pick["objective"]],
            marker="*",
            markersize=13,
            color="black",
            linestyle="none",
            label=f"chosen ({pick['distance']})",
        )
        ax.set_xlabel(axis)
        ax.set_ylabel(f"val AUROC, {sweep.attrs.get('objective', 'objective')} (%)")
        ax.set_title(f"{name}: {pick['experiment']}", fontsize=8)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return save_figure(fig, out_stem)
