"""Figures: each plot function writes a valid, non-empty PDF and PNG from tiny synthetic data;
image selection of the reconstruction grid; plot_all on synthetic workflow files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffguard.io import write_npz
from diffguard.plotting import (
    FIGURES,
    grid_columns,
    plot_all,
    plot_psnr_inversion,
    plot_recon_grid,
    plot_roc_curves,
    plot_score_histograms,
    plot_training_curves,
    trace_summary,
)

PDF_MAGIC = b"%PDF"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_figure(paths: list[Path], stem: Path) -> None:
    assert paths == [stem.with_name(stem.name + ".pdf"), stem.with_name(stem.name + ".png")]
    pdf, png = paths
    assert pdf.read_bytes()[:4] == PDF_MAGIC and pdf.stat().st_size > 1000
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in stem.parent.iterdir() if p.name.startswith(".")) == []


def _scores(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "id": rng.normal(1.0, 0.3, 40),
        "near": rng.normal(0.5, 0.3, 30),
        "far": rng.normal(0.0, 0.3, 30),
    }


def test_score_histograms(tmp_path: Path) -> None:
    stem = tmp_path / "hist"
    _assert_figure(
        plot_score_histograms(
            _scores(np.random.default_rng(0)), stem, id_name="id", score_name="l2", title="t"
        ),
        stem,
    )


def test_score_histograms_gap_log_for_piled_up_similarities(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    piled = {
        "id": 1 - rng.exponential(1e-5, 50),
        "ood": np.r_[1 - rng.exponential(1e-2, 45), rng.uniform(0.2, 0.8, 5)],
    }
    stem = tmp_path / "piled"
    _assert_figure(plot_score_histograms(piled, stem, id_name="id", score_name="ssim"), stem)
    with pytest.raises(ValueError, match="scale"):
        plot_score_histograms(piled, stem, id_name="id", score_name="ssim", scale="cubic")


def test_score_histograms_bad_input(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="'id'"):
        plot_score_histograms({"a": [1.0]}, tmp_path / "x", id_name="id", score_name="s")
    with pytest.raises(ValueError, match="OOD"):
        plot_score_histograms({"id": [1.0, 2.0]}, tmp_path / "x", id_name="id", score_name="s")


def test_roc_curves(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    scores = {"DiffGuard": _scores(rng), "MSP": _scores(rng)}
    del scores["MSP"]["far"]  # a method without one OOD set is drawn where it has data
    stem = tmp_path / "roc"
    _assert_figure(plot_roc_curves(scores, stem, id_name="id"), stem)
    with pytest.raises(KeyError, match="ID set"):
        plot_roc_curves({"m": {"near": [1.0]}}, tmp_path / "x", id_name="id")


def _shard(rng: np.random.Generator, n: int, stored: int, prefix: str, uncond: bool) -> dict:
    images = rng.uniform(-1, 1, (stored, 1, 8, 8)).astype(np.float16)
    trace = 40 - np.cumsum(rng.uniform(1, 3, (n, 12)), axis=1)
    stop = rng.integers(4, 12, n)
    trace[np.arange(12)[None, :] >= stop[:, None]] = np.nan  # NaN after the early stop
    return {
        "image_ids": np.array([f"{prefix}/{i:03d}" for i in range(n)]),
        "labels": np.zeros(n, int),
        "preds": rng.integers(0, 3, n),
        "guide_labels": rng.integers(0, 3, n),
        "rev_t": stop,
        "start_index": stop + 2,
        "psnr_trace": trace.astype(np.float32),
        "x0": images,
        "recon": np.clip(images + 0.1, -1, 1).astype(np.float16),
        "recon_uncond": images if uncond else np.zeros((0,), np.float16),
        "score_l2": rng.normal(0, 1, n).astype(np.float32),
    }


def test_grid_columns_spread_over_scores() -> None:
    rng = np.random.default_rng(3)
    shards = {"ood": _shard(rng, 20, 6, "ood", True), "id": _shard(rng, 20, 6, "id", False)}
    shards["id"]["score_l2"][:6] = [5.0, 1.0, 3.0, 0.0, 4.0, 2.0]
    columns = grid_columns(shards, id_name="id", score_key="score_l2", per_set=3)
    assert [c.dataset for c in columns] == ["id"] * 3 + ["ood"] * 3  # ID first
    # only the 6 stored images are candidates; picks: ranks 0, 2 (of 0..5) and 5
    assert [c.score for c in columns[:3]] == [0.0, 2.0, 5.0]
    assert [c.image_id for c in columns[:3]] == ["id/003", "id/005", "id/000"]
    assert all(c.is_id for c in columns[:3]) and not any(c.is_id for c in columns[3:])
    assert columns[0].recon_uncond is None and columns[3].recon_uncond is not None
    np.testing.assert_array_equal(columns[0].x0, shards["id"]["x0"][3].astype(np.float32))
    with pytest.raises(KeyError, match="score_ssim"):
        grid_columns(shards, id_name="id", score_key="score_ssim")


@pytest.mark.parametrize("channels", [1, 3])
def test_recon_grid(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(4)
    shard = _shard(rng, 10, 4, "id", True)
    shard["x0"] = rng.uniform(-1, 1, (4, channels, 8, 8))
    shard["recon"] = shard["x0"]
    shard["recon_uncond"] = shard["x0"]
    columns = grid_columns({"id": shard}, id_name="id", score_key="score_l2", per_set=2)
    stem = tmp_path / f"grid{channels}"
    paths = plot_recon_grid(columns, stem, score_name="l2", class_names=["a", "b", "c"])
    _assert_figure(paths, stem)
    with pytest.raises(ValueError, match="no images"):
        plot_recon_grid([], tmp_path / "x")


def _trace_frame(rng: np.random.Generator, n: int, steps: int, peak: float = 255.0) -> pd.DataFrame:
    """An inversion_trace CSV: PSNR falling over the levels, one row per image and step."""
    psnr = 60 - np.cumsum(rng.uniform(0.5, 1.5, (n, steps)), axis=1)
    return pd.DataFrame(
        {
            "image_id": np.repeat([f"img/{i:03d}" for i in range(n)], steps),
            "label": 0,
            "step": np.tile(np.arange(1, steps + 1), n),
            "timestep": np.tile(np.append(np.arange(1, steps) * 100, 1000), n),
            "psnr_db": psnr.ravel(),
            "psnr_peak": peak,
        }
    )


def test_psnr_inversion(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    traces = {"id": _trace_frame(rng, 6, 10), "ood": _trace_frame(rng, 4, 10)}
    summary = trace_summary(traces)
    assert summary.groupby("dataset")["images"].max().to_dict() == {"id": 6, "ood": 4}
    first = traces["id"][traces["id"]["step"] == 1]["psnr_db"]
    row = summary[(summary["dataset"] == "id") & (summary["step"] == 1)].iloc[0]
    assert row["mean_db"] == pytest.approx(first.mean()) and row["sd_db"] == pytest.approx(
        first.std()
    )
    assert row["mean_paper_db"] == pytest.approx(first.mean() - 20 * np.log10(127.5))
    assert summary["timestep"].max() == 1000 and len(summary) == 20
    stem = tmp_path / "psnr"
    _assert_figure(plot_psnr_inversion(summary, stem, threshold=48.5, title="t"), stem)
    paper = tmp_path / "psnr_paper_units"
    two = trace_summary({"id": _trace_frame(rng, 3, 5, peak=2.0)})
    assert (two["mean_paper_db"] == two["mean_db"]).all()
    _assert_figure(plot_psnr_inversion(two, paper), paper)
    with pytest.raises(ValueError, match="missing column"):
        trace_summary({"id": traces["id"].drop(columns="psnr_peak")})
    with pytest.raises(ValueError, match="several peaks"):
        trace_summary({"id": traces["id"], "two": _trace_frame(rng, 2, 10, peak=2.0)})
    with pytest.raises(ValueError, match="different steps"):
        trace_summary({"id": traces["id"].iloc[:-1]})
    with pytest.raises(ValueError, match="no rows"):
        trace_summary({"id": traces["id"].iloc[:0]})


def test_training_curves(tmp_path: Path) -> None:
    logs = {
        "classifier": pd.DataFrame(
            {"epoch": [1, 2, 3], "loss": [1.0, 0.5, 0.2], "accuracy": [0.5, 0.8, 0.9]}
        ),
        "unet": pd.DataFrame({"step": [50, 100, 150], "loss": [0.3, 0.1, 0.05]}),
    }
    stem = tmp_path / "train"
    _assert_figure(plot_training_curves(logs, stem), stem)
    with pytest.raises(ValueError, match="'unet'"):
        plot_training_curves({"unet": pd.DataFrame({"iteration": [1], "loss": [1.0]})}, stem)


def test_plot_all_on_synthetic_workflow_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    sets = {"test_id": 0.0, "near": 1.0, "far": 2.0}
    score_files, baseline_files, shard_files = {}, {}, {}
    for name, shift in sets.items():
        n = 24
        frame = pd.DataFrame(
            {
                "image_id": [f"{name}/{i}" for i in range(n)],
                "label": np.zeros(n, int) if name == "test_id" else -np.ones(n, int),
                "pred": rng.integers(0, 3, n),
                "score_l2": rng.normal(-shift, 1.0, n),
            }
        )
        score_files[name] = tmp_path / f"scores_{name}.csv"
        frame.to_csv(score_files[name], index=False)
        baseline = frame[["image_id", "label", "pred"]].assign(
            msp=rng.normal(-shift, 1, n), knn=rng.normal(-shift, 2, n), ebo=rng.normal(0, 1, n)
        )
        baseline_files[name] = tmp_path / f"baselines_{name}.csv"
        baseline.to_csv(baseline_files[name], index=False)
        shard_files[name] = []
        for k in range(2):
            path = tmp_path / "recon" / name / f"shard-{k:03d}.npz"
            write_npz(path, **_shard(rng, 12, 4, name, k == 0))
            shard_files[name].append(path)
    log = tmp_path / "train_log.csv"
    pd.DataFrame({"step": [1, 2], "loss": [0.5, 0.25]}).to_csv(log, index=False)
    out = tmp_path / "figures"
    written = plot_all(
        id_set="test_id",
        ood_sets=["near", "far"],
        score_files=score_files,
        shard_files=shard_files,
        train_logs={"unet": log},
        out_dir=out,
        baseline_files=baseline_files,
        baselines=["msp", "knn", "ebo", "not_there"],
        experiment="gdm_main",
        distance="l2",
        max_baselines=2,
    )
    assert sorted(p.name for p in written) == sorted(
        f"{name}.{ext}" for name in FIGURES for ext in ("pdf", "png")
    )
    for path in written:
        assert path.parent == out and path.stat().st_size > 1000
    with pytest.raises(KeyError, match="score_ssim"):
        plot_all(
            id_set="test_id",
            ood_sets=["near", "far"],
            score_files=score_files,
            shard_files=shard_files,
            train_logs={"unet": log},
            out_dir=out,
            distance="ssim",
        )
