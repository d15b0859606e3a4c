"""Paper figures driven by the report config: Fig. 7 sweeps (points from the metrics CSV's
columns, sweep membership from grid-generated names) and the Fig. 6 ablation grid (common
images, misclassified first); the paper's figure blocks and check macros."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffguard.config import resolve_all
from diffguard.paper import FIGURE_CAPTIONS, check_macros, figure_blocks
from diffguard.plotting import (
    FIGURES,
    ablation_rows,
    plot_ablation_grid,
    plot_sweeps,
    sweep_points,
    sweep_spec,
)

PDF_MAGIC = b"%PDF"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_figure(paths: list[Path]) -> None:
    pdf, png = paths
    assert pdf.read_bytes()[:4] == PDF_MAGIC and pdf.stat().st_size > 1000
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000


def _metrics(values: dict[str, list[float]]) -> pd.DataFrame:
    """Average rows (as pipeline._metric_rows writes them) of DiffGuard experiments, per seed."""
    rows = []
    for exp, aurocs in values.items():
        for seed, auroc in enumerate(aurocs):
            for distance, offset in (("dists", 0.0), ("l2", -10.0)):
                for dataset in ("species", "average"):
                    rows.append(
                        {
                            "run": "unit",
                            "method": f"DiffGuard (CFG: {exp}, {distance})",
                            "kind": "diffguard",
                            "experiment": exp,
                            "distance": distance,
                            "baseline": np.nan,
                            "rule": np.nan,
                            "seed": seed,
                            "dataset": dataset,
                            "role": "all" if dataset == "average" else "near",
                            "auroc": auroc + offset + (5 if dataset == "species" else 0),
                            "aupr_in": 50.0,
                            "aupr_out": 50.0,
                            "fpr95_id_recall": 50.0,
                            "fpr95_ood_recall": 50.0,
                        }
                    )
    return pd.DataFrame(rows)


EXPERIMENTS = resolve_all(
    {
        "ldm_main": {
            "method": "cfg",
            "model": "ldm",
            "cfg": {"cam_cut": 0.3, "ddim_steps": 25},
            "grid": {"cfg.cam_cut": [0.1, 0.2], "cfg.ddim_steps": [5, 50]},
        },
        "gdm_main": {"method": "gdm", "model": "adm", "gdm": {"respacing": "ddim100"}},
    }
)


def test_sweep_spec_from_grid_names() -> None:
    resolved = EXPERIMENTS  # as common.smk resolves them (grid members included)
    cam = sweep_spec(resolved, "ldm_main", "cfg.cam_cut")
    assert cam == {"ldm_main": 0.3, "ldm_main__cam_cut0.1": 0.1, "ldm_main__cam_cut0.2": 0.2}
    steps = sweep_spec(resolved, "ldm_main", "cfg.ddim_steps")
    assert steps == {"ldm_main": 25.0, "ldm_main__ddim_steps5": 5.0, "ldm_main__ddim_steps50": 50.0}
    with pytest.raises(KeyError, match="fewer than two"):
        sweep_spec(resolved, "gdm_main", "gdm.classifier_scale")
    with pytest.raises(KeyError, match="does not exist"):
        sweep_spec(resolved, "nope", "cfg.cam_cut")


def test_sweep_points_mean_sd_and_plot(tmp_path: Path) -> None:
    metrics = _metrics(
        {"ldm_main": [70.0, 72.0], "ldm_main__cam_cut0.1": [60.0], "ldm_main__cam_cut0.2": [75.0]}
    )
    sweeps = {
        "cam_cut": {
            "label": "CAM cut-point",
            "points": {
                "ldm_main": 0.3,
                "ldm_main__cam_cut0.1": 0.1,
                "ldm_main__cam_cut0.2": 0.2,
                "ldm_main__cam_cut0.9": 0.9,
            },  # not evaluated: left out
        }
    }
    points = sweep_points(metrics, sweeps, distance="dists")
    assert points["value"].tolist() == [0.1, 0.2, 0.3]  # sorted by value
    assert points["mean"].tolist() == [60.0, 75.0, 71.0]  # average rows, dists only
    assert points["sd"].tolist() == pytest.approx([0.0, 0.0, np.std([70, 72], ddof=1)])
    assert points["n_seeds"].tolist() == [1, 1, 2]
    _assert_figure(plot_sweeps(points, tmp_path / "sweeps", reference={"cam_cut": 0.3}))
    with pytest.raises(ValueError, match="no points"):
        plot_sweeps(points.iloc[0:0], tmp_path / "empty")


def _shard(ids: list[str], labels: list[int], preds: list[int], fill: float) -> dict:
    n = len(ids)
    return {
        "image_ids": np.array(ids),
        "labels": np.array(labels),
        "preds": np.array(preds),
        "guide_labels": np.array(preds),
        "x0": np.full((n, 3, 8, 8), -0.5, np.float16),
        "recon": np.full((n, 3, 8, 8), fill, np.float16),
    }


def test_ablation_rows_common_images_misclassified_first(tmp_path: Path) -> None:
    shards = {
        "no x0": _shard(["a", "b", "c", "d"], [1, 2, 3, 4], [1, 0, 3, 0], 0.1),
        "both": _shard(["a", "b", "c"], [1, 2, 3], [1, 0, 3], 0.9),  # stores 3 images only
    }
    ids, rows, captions = ablation_rows(shards, images=3)
    assert ids == ["b", "a", "c"]  # b misclassified (pred 0, true 2), d not stored by "both"
    assert [label for label, _ in rows] == ["input", "no x0", "both"]
    assert float(rows[2][1][0].mean()) == pytest.approx(0.9, abs=1e-3)
    assert captions[0] == "true 2, pred 0"
    ids, _, _ = ablation_rows(shards, images=2, prefer_misclassified=False)
    assert ids == ["a", "b"]
    _assert_figure(plot_ablation_grid(rows, tmp_path / "ablation", captions=captions))
    with pytest.raises(ValueError, match="no common image"):
        ablation_rows({"x": _shard(["a"], [1], [1], 0), "y": _shard(["z"], [1], [1], 0)})
    broken = _shard(["a"], [1], [1], 0)
    del broken["preds"]
    with pytest.raises(KeyError, match="preds"):
        ablation_rows({"x": broken})


def test_figure_blocks_and_check_macros() -> None:
    assert set(FIGURES) <= set(FIGURE_CAPTIONS)
    text = figure_blocks(["sweeps", "score_histograms"])
    # caption order, not argument order; every figure a float with its own label
    assert text.index("score_histograms.pdf") < text.index("sweeps.pdf")
    assert text.count(r"\begin{figure}") == 2 and r"\label{fig:sweeps}" in text
    assert "training_curves" not in text
    with pytest.raises(KeyError, match="no caption"):
        figure_blocks(["fig2_noisy_classifier"])
    check = pd.DataFrame({"status": ["pass", "fail", "missing", "pass"]})
    macros = "\n".join(check_macros(check))
    assert r"\newcommand{\checkStatus}{fail}" in macros
    assert r"\newcommand{\checkPassed}{2}" in macros and r"\newcommand{\checkCells}{4}" in macros
    na = "\n".join(check_macros(pd.DataFrame({"status": ["not applicable"]})))
    assert r"\newcommand{\checkStatus}{not applicable}" in na
    assert r"\newcommand{\checkCells}{0}" in na
