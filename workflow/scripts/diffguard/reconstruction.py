"""The reconstruction job: DiffGuard on one shard of a dataset, per-image scores to npz."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffguard import io
from diffguard.data import read_imglist, select_shard
from diffguard.runtime import (
    image_root,
    load_diffusion_model,
    load_records_images,
    load_trained_classifier,
    resolve_device,
)

log = logging.getLogger("diffguard")


def oracle_label(image_id: str, label: int, num_classes: int, seed: int) -> int:
    """Oracle guidance label: the true label for ID images, a seeded random label for OOD ones.

    The random label depends only on the image id and the seed, so shards do not matter.
    """
    if label >= 0:
        return label
    rng = np.random.default_rng([seed, zlib.crc32(image_id.encode())])
    return int(rng.integers(0, num_classes))


def reconstruct_shard(
    *,
    imglist: str | Path,
    benchmark_json: str | Path,
    predictions: str | Path,
    classifier_weights: str | Path,
    model_dir: str | Path,
    experiment: dict[str, Any],
    benchmark: dict[str, Any],
    seed: int,
    shard: int,
    shard_size: int,
    batch_size: int,
    distances: Sequence[str],
    save_images: int,
    device_name: str,
    out: str | Path,
    torch_hub_dir: str | None = None,
) -> None:
    """Run DiffGuard on one shard of a dataset and write per-image scores (npz)."""
    from diffguard import cfg, gdm
    from diffguard.cam import cam_mask
    from diffguard.config import method_settings
    from diffguard.distances import SimilarityScorer

    torch.manual_seed(seed)
    device = resolve_device(device_name)
    settings = method_settings(experiment, seed)
    records = select_shard(read_imglist(imglist), shard, shard_size)
    preds_npz = io.read_npz(predictions)
    pred_of = dict(zip(preds_npz["image_ids"].tolist(), preds_npz["preds"].tolist(), strict=True))
    classifier = load_trained_classifier(classifier_weights, device)
    unet = load_diffusion_model(model_dir, device)
    channels = benchmark["channels"]
    num_classes = benchmark["num_classes"]
    scorer = SimilarityScorer(list(distances), classifier, torch_hub_dir, device)
    root = image_root(benchmark_json)
    log.info(
        "experiment %s on %d images (shard %d), device %s",
        experiment["name"],
        len(records),
        shard,
        device,
    )

    def eps_uncond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return unet(x, t).sample[:, :channels]

    def eps_cond(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return unet(x, t, class_labels=y).sample[:, :channels]

    out_rows: dict[str, list[np.ndarray]] = {}
    kept: dict[str, list[torch.Tensor]] = {"x0": [], "recon": [], "recon_uncond": []}
    start_time = time.perf_counter()
    counter = gdm.CallCounter()
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        x01 = load_records_images(chunk, root, benchmark["image_size"], channels).to(device)
        x = x01 * 2 - 1
        preds = torch.tensor([pred_of[r.image_id] for r in chunk])
        if experiment.get("oracle_labels"):
            guide = torch.tensor(
                [oracle_label(r.image_id, r.label, num_classes, seed) for r in chunk]
            )
        else:
            guide = preds
        if experiment["method"] == "gdm":
            assert isinstance(settings, gdm.GdmSettings)
            res = gdm.reconstruct(
                eps_uncond, classifier, x, guide.to(device), settings, {}, counter
            )
            recon, recon_uncond = res.recon, res.recon_uncond
            rev_t, start_index, trace = res.rev_t, res.start_index, res.psnr_trace
        else:
            assert isinstance(settings, cfg.CfgSettings)
            mask = (
                cam_mask(classifier, classifier.cam_layer, x01, guide, settings.cam_cut)
                if settings.use_cam
                else None
            )
            res_c = cfg.reconstruct(
                eps_cond, x, guide, num_classes, settings, mask, counter=counter
            )
            recon, recon_uncond = res_c.recon, res_c.recon_uncond
            n = len(chunk)
            rev_t = torch.full((n,), settings.ddim_steps - 1)
            start_index = rev_t.clone()
            trace = torch.zeros((n, 0))
        reference_kind = experiment.get("score_reference", "auto")
        if reference_kind == "auto":
            reference_kind = "uncond_recon" if recon_uncond is not None else "input"
        if reference_kind == "uncond_recon":
            if recon_uncond is None:
                raise ValueError(
                    f"experiments.{experiment['name']}: score_reference uncond_recon "
                    "needs uncond_aux"
                )
            reference = recon_uncond
        else:
            reference = x.cpu()
        scores = scorer(reference.to(device), recon.to(device))
        batch = {
            "image_ids": np.array([r.image_id for r in chunk]),
            "labels": np.array([r.label for r in chunk]),
            "preds": preds.numpy(),
            "guide_labels": guide.numpy(),
            "rev_t": rev_t.numpy(),
            "start_index": start_index.numpy(),
            "psnr_trace": trace.numpy(),
            **{f"score_{k}": v.numpy() for k, v in scores.items()},
        }
        for key, value in batch.items():
            out_rows.setdefault(key, []).append(value)
        room = save_images - sum(len(t) for t in kept["x0"])
        if room > 0:
            kept["x0"].append(x[:room].cpu())
            kept["recon"].append(recon[:room])
            if recon_uncond is not None:
                kept["recon_uncond"].append(recon_uncond[:room])
        done = start + len(chunk)
        rate = done / (time.perf_counter() - start_time)
        log.info(
            "%d/%d images, %.2f images/s, ETA %.0f s",
            done,
            len(records),
            rate,
            (len(records) - done) / rate,
        )
    arrays = {k: np.concatenate(v) for k, v in out_rows.items()}
    for key, tensors in kept.items():
        arrays[key] = (
            torch.cat(tensors).to(torch.float16).numpy() if tensors else np.zeros((0,), np.float16)
        )
    arrays["nfe_per_image"] = np.array(counter.unet_rows / max(len(records), 1))
    io.write_npz(out, **arrays)
    log.info(
        "wrote %s: %.1f UNet evaluations/image, %.1f s",
        out,
        counter.unet_rows / max(len(records), 1),
        time.perf_counter() - start_time,
    )
