"""Shared figure plumbing: the theme, atomic PDF + PNG saving, score and image helpers.

Every ``plot_*`` function of :mod:`diffguard.plot_scores`, :mod:`diffguard.plot_images` and
:mod:`diffguard.plot_curves` is pure: it takes arrays / frames and an output stem
(``<dir>/<name>`` without extension), writes ``<stem>.pdf`` and ``<stem>.png`` with
:func:`save_figure` and returns their paths. Scores are "InD-ness" scores: higher means more
in-distribution.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from diffguard.io import atomic_path  # noqa: E402

log = logging.getLogger(__name__)

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


def _to_image(array: np.ndarray) -> tuple[np.ndarray, str | None]:
    """C x H x W in [-1, 1] -> an image for imshow (and its colour map)."""
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"expected an image of shape C x H x W, got {arr.shape}")
    img = np.clip((arr + 1.0) / 2.0, 0.0, 1.0)
    if img.shape[0] == 1:
        return img[0], "gray"
    return np.transpose(img[:3], (1, 2, 0)), None
