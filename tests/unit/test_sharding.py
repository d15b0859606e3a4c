"""Sharding never changes a score: batches lie on a global grid aligned to ``batch_size``.

``aligned_chunks`` is checked exhaustively on small sizes; ``reconstruct_shard`` (GDM with
random cutouts and adaptive early stop, and CFG) is run on one made-up dataset with several
shard sizes, and the concatenated shards must equal the unsharded run bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from diffguard import io
from diffguard.classifiers import build_classifier
from diffguard.config import resolve_experiment
from diffguard.data import num_shards
from diffguard.model_io import WEIGHTS_FILE, save_model
from diffguard.predictions import cache_predictions_stage
from diffguard.reconstruction import aligned_chunks, reconstruct_shard
from diffguard.training import small_unet_kwargs

SIZE = 16
NUM_CLASSES = 3
N_IMAGES = 10
BATCH = 4
BENCHMARK = {"image_size": SIZE, "channels": 1, "num_classes": NUM_CLASSES}


@pytest.mark.parametrize("batch_size", [1, 3, 4, 16])
@pytest.mark.parametrize("shard_size", [1, 2, 3, 4, 5, 8, 11, 100])
@pytest.mark.parametrize("n", [1, 7, 10, 16, 17])
def test_aligned_chunks_cover_each_image_once_on_the_global_grid(
    n: int, shard_size: int, batch_size: int
) -> None:
    kept = []
    for shard in range(num_shards(n, shard_size)):
        lo, hi = shard * shard_size, min((shard + 1) * shard_size, n)
        chunks = aligned_chunks(n, shard, shard_size, batch_size)
        for first, stop, keep in chunks:
            # Every computed batch is a batch of the unsharded run: same start, same members.
            assert first % batch_size == 0 and stop == min(first + batch_size, n)
            rows = list(range(first, stop))[keep]
            assert rows and all(lo <= r < hi for r in rows)
            kept.extend(rows)
        assert chunks, "a shard without a batch"
    assert kept == list(range(n))


def test_aligned_chunks_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="outside"):
        aligned_chunks(10, 3, 4, 4)
    with pytest.raises(ValueError, match=">= 1"):
        aligned_chunks(10, 0, 0, 4)
    with pytest.raises(ValueError, match=">= 1"):
        aligned_chunks(10, 0, 4, 0)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Ten random gray images, a classifier, its cached predictions and two tiny UNets."""
    from diffusers import UNet2DModel

    root = tmp_path_factory.mktemp("shard-bench")
    (root / "images" / "ds").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(N_IMAGES):
        pixels = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(root / "images" / "ds" / f"img_{i}.png")
        lines.append(f"ds/img_{i}.png {i % NUM_CLASSES if i < 6 else -1}\n")
    imglist = root / "ds.txt"
    imglist.write_text("".join(lines))
    benchmark_json = root / "benchmark.json"
    benchmark_json.write_text(json.dumps({"image_root": "images"}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        classifier = build_classifier(
            {"arch": "small_cnn", "num_classes": NUM_CLASSES, "in_channels": 1, "width": 4}
        )
        uncond = UNet2DModel(**small_unet_kwargs(1, SIZE, False))
        cond = UNet2DModel(**small_unet_kwargs(1, SIZE, True, NUM_CLASSES))
    save_model(classifier, root / "classifier")
    save_model(uncond, root / "uncond" / "weights")
    save_model(cond, root / "cond" / "weights")
    weights = root / "classifier" / WEIGHTS_FILE
    predictions = root / "predictions.npz"
    cache_predictions_stage(imglist, benchmark_json, weights, BENCHMARK, predictions)
    return {
        "root": root,
        "common": {
            "imglist": imglist,
            "benchmark_json": benchmark_json,
            "predictions": predictions,
            "classifier_weights": weights,
            "benchmark": BENCHMARK,
            "seed": 0,
            "batch_size": BATCH,
            "distances": ["l2", "ssim"],
            "save_images": 2,
            "device_name": "cpu",
        },
    }


EXPERIMENTS: dict[str, dict[str, Any]] = {
    "gdm": {
        "method": "gdm",
        "model": "uncond",
        "gdm": {
            "respacing": "ddim5",
            "early_stop_steps": 2,
            "early_stop_metrics": ["psnr"],
            "early_stop_thresholds": [30.0],
            "forback_skip_diff": 2,
            "classifier_scale": 3.0,
            "cutouts_num": 2,
            "cutouts_size": 12,
            "uncond_aux": True,
        },
    },
    "cfg": {
        "method": "cfg",
        "model": "cond",
        "cfg": {"ddim_steps": 3, "use_cam": True, "beta_schedule": "linear", "cam_cut": 0.3},
    },
}


def _run_sharded(bench: dict[str, Any], method: str, shard_size: int, out: Path) -> dict:
    experiment = resolve_experiment({method: EXPERIMENTS[method]}, method)
    parts = []
    for shard in range(num_shards(N_IMAGES, shard_size)):
        path = out / f"shard-{shard:03d}.npz"
        reconstruct_shard(
            **bench["common"],
            model_dir=bench["root"] / EXPERIMENTS[method]["model"],
            experiment=experiment,
            shard=shard,
            shard_size=shard_size,
            out=path,
        )
        parts.append(io.read_npz(path))
    per_image = [k for k in parts[0] if k not in {"x0", "recon", "recon_uncond", "nfe_per_image"}]
    return {k: np.concatenate([p[k] for p in parts]) for k in per_image}


@pytest.mark.parametrize("method", sorted(EXPERIMENTS))
def test_any_shard_size_gives_bit_identical_scores(
    bench: dict[str, Any], method: str, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    reference = _run_sharded(bench, method, N_IMAGES, tmp_path / "unsharded")
    assert reference["image_ids"].tolist() == [f"ds/img_{i}" for i in range(N_IMAGES)]
    assert any(k.startswith("score_") for k in reference)
    for shard_size in (3, BATCH, 5):  # cuts inside batches, on batches, and both
        sharded = _run_sharded(bench, method, shard_size, tmp_path / f"shards-{shard_size}")
        assert sharded.keys() == reference.keys()
        for key, value in reference.items():
            assert sharded[key].tobytes() == value.tobytes(), (
                f"{method}: {key} with shard_size {shard_size} differs from the unsharded run"
            )
